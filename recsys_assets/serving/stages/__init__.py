"""One module per Triton model of the ensemble; each defines one :class:`~recsys_assets.serving.executor.Stage`.

:data:`STAGES` maps a model name (= its directory in ``triton_repo/``) to its stage class, for the in-process
pipeline and the tests; Triton's ``model.py`` shims import their stage directly.
"""

from __future__ import annotations

import importlib

from recsys_assets.serving.executor import Stage

# model name -> "module:Class" (imported on demand: faiss, onnxruntime and feast load only where used)
STAGE_CLASSES = {
    "context_preprocessor": "context_preprocessor:ContextPreprocessor",
    "feast_user_lookup": "feast_user_lookup:FeastUserLookup",
    "nvt_user_transform": "nvt_transforms:UserTransform",
    "nvt_context_transform": "nvt_transforms:ContextTransform",
    "query_tower": "onnx_models:QueryTower",
    "faiss_retrieval": "faiss_retrieval:FaissRetrieval",
    "filter_seen_items": "filter_seen_items:FilterSeenItems",
    "feast_item_lookup": "feast_item_lookup:FeastItemLookup",
    "nvt_item_transform": "nvt_transforms:ItemTransform",
    "multimodal_embedding_lookup": "multimodal_embedding_lookup:MultimodalEmbeddingLookup",
    "unroll_features": "unroll_features:UnrollFeatures",
    "dlrm_ranking": "onnx_models:DlrmRanking",
    "softmax_sampling": "softmax_sampling:SoftmaxSampling",
    "item_id_decoder": "item_id_decoder:ItemIdDecoder",
}
MODELS = tuple(STAGE_CLASSES)  # the ensemble's composing models, in the graph's order


def stage_class(model_name: str) -> type[Stage]:
    try:
        module, cls = STAGE_CLASSES[model_name].split(":")
    except KeyError:
        raise KeyError(f"no serving stage named {model_name!r}: expected one of {', '.join(STAGE_CLASSES)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
