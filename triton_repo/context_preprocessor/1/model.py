"""Triton model `context_preprocessor`: the shared executor running ContextPreprocessor (see config.pbtxt)."""

from recsys_assets.serving.stages.context_preprocessor import ContextPreprocessor
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(ContextPreprocessor)
