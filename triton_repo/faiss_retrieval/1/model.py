"""Triton model `faiss_retrieval`: the shared executor running FaissRetrieval (see config.pbtxt)."""

from recsys_assets.serving.stages.faiss_retrieval import FaissRetrieval
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(FaissRetrieval)
