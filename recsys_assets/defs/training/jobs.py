"""``full_retrain_job``: the weekly retrain (``weekly_retrain_schedule`` starts it; Merlin run tag).

One unpartitioned run, so every step shows in the UI as one graph: ``nvt_workflows`` refit on a sliding window of
recent days (``window: true``; ``window_train_days`` 9 and ``window_validation_days`` 3 ending at the newest
masked day, the train days cold-start masked like the original ones) -> ``serving_transforms`` (compiled,
parity-checked) -> ``retrain_transformed_days`` (every window day transformed with the refit workflows in *one*
merlin process, into ``transforms/retrain/``: one process per day would pay NVTabular's start-up once per day)
-> both towers, DLRM, ONNX, item vectors, FAISS index and the evaluations on the window (``window: true``), whose
blocking gates stop the run before -> ``retrained_release``: the new compiled transforms, towers, ranker and index
as one gated candidate release, which ``release_promotion_sensor`` promotes as a whole like any other. The daily
``transformed_interactions`` partitions are not rewritten: the release serving until then keeps being fine-tuned
in its own vocabulary (``lib.retrain``), and so does the new one once promoted.

The day's fine-tune has no job of its own: ``finetuned_models`` is part of ``daily_job`` (``defs/ingest/jobs.py``).
"""

import dagster as dg

from recsys_assets.defs.transforms.assets import MERLIN_TAGS

FULL_RETRAIN_ASSETS = ("nvt_workflows", "serving_transforms", "retrain_transformed_days", "two_tower_model",
                       "dlrm_model", "query_tower_onnx", "dlrm_onnx", "item_embeddings", "faiss_index",
                       "retrieval_evaluation", "ranking_evaluation", "retrained_release")
# The assets that read the retrain window when ``window: true`` (the others read what these wrote).
WINDOWED = ("nvt_workflows", "two_tower_model", "dlrm_model", "query_tower_onnx", "dlrm_onnx", "retrieval_evaluation",
            "ranking_evaluation")


def retrain_run_config(ops: dict | None = None, **window) -> dict:
    """The weekly retrain's run config: ``window: true`` on every windowed asset, ``window`` settings
    (``window_train_days``, ``window_validation_days``, ``window_newest_day``) on ``nvt_workflows``, and ``ops``
    (``{asset: {field: value}}``) merged on top."""
    ops = ops or {}
    out = {}
    for name in sorted(set(WINDOWED) | set(ops)):
        config = {"window": True} if name in WINDOWED else {}
        if name == "nvt_workflows":
            config.update(window)
        config.update(ops.get(name, {}))
        out[name] = {"config": config}
    return {"ops": out}


full_retrain_job = dg.define_asset_job(
    "full_retrain_job",
    selection=dg.AssetSelection.assets(*FULL_RETRAIN_ASSETS),
    config=retrain_run_config(),
    description="Weekly retrain: refit the NVTabular workflows on a sliding window of recent days, transform the "
                "window, train both towers, DLRM, item vectors and FAISS index on it, and build one gated candidate "
                "release of it all (new vocabularies included).",
    tags=MERLIN_TAGS,
)
