"""Triton model `item_id_decoder`: the shared executor running ItemIdDecoder (see config.pbtxt)."""

from recsys_assets.serving.stages.item_id_decoder import ItemIdDecoder
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(ItemIdDecoder)
