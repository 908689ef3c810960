"""Triton model `nvt_context_transform`: the shared executor running ContextTransform (see config.pbtxt)."""

from recsys_assets.serving.stages.nvt_transforms import ContextTransform
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(ContextTransform)
