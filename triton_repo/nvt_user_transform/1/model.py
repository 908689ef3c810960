"""Triton model `nvt_user_transform`: the shared executor running UserTransform (see config.pbtxt)."""

from recsys_assets.serving.stages.nvt_transforms import UserTransform
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(UserTransform)
