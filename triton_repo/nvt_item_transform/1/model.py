"""Triton model `nvt_item_transform`: the shared executor running ItemTransform (see config.pbtxt)."""

from recsys_assets.serving.stages.nvt_transforms import ItemTransform
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(ItemTransform)
