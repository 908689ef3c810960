"""Triton model `dlrm_ranking`: the shared executor running DlrmRanking (see config.pbtxt)."""

from recsys_assets.serving.stages.onnx_models import DlrmRanking
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(DlrmRanking)
