"""Triton model `feast_item_lookup`: the shared executor running FeastItemLookup (see config.pbtxt)."""

from recsys_assets.serving.stages.feast_item_lookup import FeastItemLookup
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(FeastItemLookup)
