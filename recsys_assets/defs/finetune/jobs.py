"""Fine-tuning and release jobs.

- The day's fine-tune has no job of its own: ``finetuned_models`` is part of ``daily_job`` (``defs/daily``: ingest
  -> top_category -> masking -> transform -> refresh -> fine-tune), which the daily schedule, the new-day sensor
  and backfills of any day range run, so every day replays the same logic in one run.
- ``full_retrain_job``: the full training (both towers, DLRM, ONNX, item vectors, FAISS index, evaluation) and a
  whole new candidate release (``retrained_release``); the weekly schedule runs it. Merlin run tag.
- ``promote_release_job`` / ``rollback_release_job``: ``served_release``, switched to a candidate (the promotion
  sensor requests it) or back to the release promoted before the serving one.
"""

import dagster as dg

from recsys_assets.defs.finetune import assets as finetune
from recsys_assets.defs.transforms.assets import MERLIN_TAGS

FULL_RETRAIN_ASSETS = ("two_tower_model", "dlrm_model", "query_tower_onnx", "dlrm_onnx", "item_embeddings",
                       "faiss_index", "retrieval_evaluation", "ranking_evaluation", "retrained_release")

full_retrain_job = dg.define_asset_job(
    "full_retrain_job",
    selection=dg.AssetSelection.assets(*FULL_RETRAIN_ASSETS),
    description="Full training (new item tower, FAISS index, ranker) and a whole new gated candidate release.",
    tags=MERLIN_TAGS,
)
promote_release_job = dg.define_asset_job(
    "promote_release_job",
    selection=[finetune.served_release],
    description="Switch the running server to a candidate release (whole set at once); the old one keeps serving "
                "if anything fails.",
)
rollback_release_job = dg.define_asset_job(
    "rollback_release_job",
    selection=[finetune.served_release],
    config={"ops": {"served_release": {"config": {"rollback": True}}}},
    description="Serve the release promoted before the serving one again (whole set at once).",
)
