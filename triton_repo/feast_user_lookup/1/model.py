"""Triton model `feast_user_lookup`: the shared executor running FeastUserLookup (see config.pbtxt)."""

from recsys_assets.serving.stages.feast_user_lookup import FeastUserLookup
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(FeastUserLookup)
