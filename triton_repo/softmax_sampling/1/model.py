"""Triton model `softmax_sampling`: the shared executor running SoftmaxSampling (see config.pbtxt)."""

from recsys_assets.serving.stages.softmax_sampling import SoftmaxSampling
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(SoftmaxSampling)
