"""Triton model `query_tower`: the shared executor running QueryTower (see config.pbtxt)."""

from recsys_assets.serving.stages.onnx_models import QueryTower
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(QueryTower)
