"""Triton model `unroll_features`: the shared executor running UnrollFeatures (see config.pbtxt)."""

from recsys_assets.serving.stages.unroll_features import UnrollFeatures
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(UnrollFeatures)
