"""Triton model `filter_seen_items`: the shared executor running FilterSeenItems (see config.pbtxt)."""

from recsys_assets.serving.stages.filter_seen_items import FilterSeenItems
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(FilterSeenItems)
