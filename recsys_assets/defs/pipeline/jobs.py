"""Cross-stage jobs: what `make demo` runs, layer by layer, and what a backfill of days 00-13 replays.

The order of a fresh build (``recsys_assets.defs.demo.PLAN``):
catalogue -> per day: raw interactions, top_category, masking -> NVTabular workflows (train days) ->
per day: transformed interactions -> embeddings -> feature store -> models, index, evaluation -> serving.
"""

import dagster as dg

from recsys_assets.defs.partitions import daily_partitions

daily_data_job = dg.define_asset_job(
    "daily_data_job",
    selection=dg.AssetSelection.assets("raw_interactions", "user_top_category", "masked_interactions"),
    partitions_def=daily_partitions,
    description="One day in the pipeline env: raw interactions, point-in-time top_category, cold-start masking.",
)
daily_transformed_job = dg.define_asset_job(
    "daily_transformed_job",
    selection=dg.AssetSelection.assets("transformed_interactions"),
    partitions_def=daily_partitions,
    description="One day through the fitted NVTabular workflow (merlin env; needs nvt_workflows).",
    tags={"recsys/merlin": "true"},
)
feature_store_job = dg.define_asset_job(
    "feature_store_job",
    selection=dg.AssetSelection.groups("feature_store"),
    description="Offline sources, Feast apply + materialize into Valkey, popularity tables.",
)
models_job = dg.define_asset_job(
    "models_job",
    selection=dg.AssetSelection.assets("two_tower_model", "dlrm_model", "query_tower_onnx", "dlrm_onnx",
                                       "item_embeddings", "faiss_index", "retrieval_evaluation",
                                       "ranking_evaluation"),
    description="Full training: Two-Tower (both variants), DLRM, ONNX export, item embeddings + FAISS, gates.",
    tags={"recsys/merlin": "true"},
)
serving_job = dg.define_asset_job(
    "serving_job",
    selection=dg.AssetSelection.assets("triton_model_repository", "triton_deployment"),
    description="Assemble a versioned Triton repository from the trained artifacts and (re)deploy it.",
)
