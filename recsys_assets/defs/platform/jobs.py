"""``full_build_job``: everything a fresh platform builds, from the merlin env check to the served release;
``backfill_days_job``: the history days alone (``dagster job backfill -j backfill_days_job --from .. --to ..``).

The job holds the daily-partitioned assets (raw interactions, top_category, masking, transformed days) and the
unpartitioned ones that read many days at once, so a build runs in the layers of :data:`BUILD_LAYERS`: a layer
with ``days`` runs once per day of the backfill (00-13), the others once. ``python -m recsys_assets.demo`` runs
the layers in order; from the UI, materializing the job's assets over days 00-13 is one asset backfill that
orders the same way. ``backfill_days_job`` is the build's days layer as a job of its own, because a job backfill
(the CLI's, the daemon's) runs every asset of its job in each partition's run. The last layer holds the evaluation gates with the release they judge
(``retrieval_evaluation``, ``ranking_evaluation`` -> ``triton_model_repository`` -> ``triton_deployment``), so a
failed gate stops the build before anything is served.
"""

import dataclasses

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS, daily_partitions
from recsys_assets.defs.transforms.assets import MERLIN_TAGS

FULL_BUILD_JOB = "full_build_job"


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    assets: tuple[str, ...]
    days: range | None = None  # None: the layer's assets are unpartitioned and run once
    what: str = ""


BUILD_LAYERS = (
    Layer("platform", ("merlin_environment",), what="merlin env reachable through Pipes"),
    Layer("catalogue", ("items", "item_descriptions", "item_images", "users"),
          what="catalogue, descriptions, product images, users"),
    Layer("days", ("raw_interactions", "user_top_category", "masked_interactions"), BACKFILL_DAYS,
          "raw interactions, top_category, masking"),
    Layer("workflows", ("nvt_workflows", "serving_transforms"),
          what="NVTabular workflows fit on the train days, compiled serving transforms"),
    Layer("transformed days", ("transformed_interactions",), BACKFILL_DAYS, "transformed interactions"),
    Layer("embeddings", ("item_clip_embeddings", "item_text_embeddings", "item_multimodal_embeddings"),
          what="CLIP + Sentence-BERT item embeddings, PCA 64"),
    Layer("feature store", ("offline_features", "online_features", "popularity_tables"),
          what="Feast offline/online features in Valkey, popularity tables"),
    Layer("models", ("two_tower_model", "dlrm_model", "query_tower_onnx", "dlrm_onnx", "item_embeddings",
                     "faiss_index"), what="Two-Tower, DLRM, ONNX, item embeddings + FAISS"),
    Layer("release", ("retrieval_evaluation", "ranking_evaluation", "triton_model_repository", "triton_deployment"),
          what="evaluation gates, versioned Triton repository, local Triton started"),
)

full_build_job = dg.define_asset_job(
    FULL_BUILD_JOB,
    selection=dg.AssetSelection.assets(*(a for layer in BUILD_LAYERS for a in layer.assets)),
    partitions_def=daily_partitions,
    tags=MERLIN_TAGS,
    description="A fresh build, layer by layer (python -m recsys_assets.demo, or an asset backfill of days 00-13): "
                "catalogue, days, NVTabular workflows, embeddings, feature store, models, evaluation gates, the "
                "Triton repository and its deployment.",
)

DAYS_LAYER = next(layer for layer in BUILD_LAYERS if layer.name == "days")
backfill_days_job = dg.define_asset_job(
    "backfill_days_job",
    selection=dg.AssetSelection.assets(*DAYS_LAYER.assets),
    partitions_def=daily_partitions,
    description="One day of history in the pipeline env: raw interactions, point-in-time top_category, cold-start "
                "masking (backfill days 00-13 with it before the NVTabular workflows are fit).",
)
