"""Triton model `multimodal_embedding_lookup`: the shared executor over MultimodalEmbeddingLookup."""

from recsys_assets.serving.stages.multimodal_embedding_lookup import MultimodalEmbeddingLookup
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model(MultimodalEmbeddingLookup)
