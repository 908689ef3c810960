"""A shop's own data through the whole build, run by :mod:`tests.integration.test_own_data_end_to_end` in a process
of its own (the settings are read from its environment: ``RECSYS_SOURCE``, ``RECSYS_ARTIFACTS``, ports).

``python -m tests.integration.own_data_run build`` runs ``full_build_job`` layer by layer exactly as ``make demo``
does (``recsys_assets.demo.run_plan``: ingest, top_category and masking per day, NVTabular workflows and
transformed days, embeddings, Feast into Valkey, a short training of both models, ONNX, FAISS, the evaluation
gates, the Triton repository and its local deployment), with the tiny training settings of the other merlin
tests, with the demo's quiet console (``recsys_assets.demo.quiet_definitions``), then asks the API (its own app, in
process, against the running Triton and Valkey) for recommendations
in the shop's ids, posts a click, and stops Triton and Valkey. ``... more_days`` re-runs the catalogue and ingests
the day the test added. Each prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

DAY0 = 1767225600  # 2026-01-01 00:00 UTC, RECSYS_START_DATE of the test's data

# The tiny-world training settings of tests/defs/test_training_assets.py (one variant, a few epochs).
OPS = {
    "two_tower_model": {"config": {"variants": ["context"], "batch_size": 64, "epochs": 4}},
    "dlrm_model": {"config": {"batch_size": 256, "epochs": 2}},
    "query_tower_onnx": {"config": {"parity_rows": 256}},
    "dlrm_onnx": {"config": {"parity_rows": 256}},
    "retrieval_evaluation": {"config": {"max_requests": 2000}},
    "ranking_evaluation": {"config": {"rerank_requests": 100}},
}


def _instance():
    from recsys_assets.demo import _instance
    from recsys_assets.lib.settings import Settings

    return _instance(Settings.from_env())


def build() -> dict:
    from fastapi.testclient import TestClient

    from recsys_assets.api.app import create_app
    from recsys_assets.api.config import ApiConfig
    from recsys_assets.demo import _stop_embedded_valkey, quiet_definitions, run_plan
    from recsys_assets.lib.settings import Settings
    from recsys_assets.release import deploy

    settings = Settings.from_env()
    assert not settings.uses_generator, settings.source
    defs, _ = quiet_definitions(settings)  # the console as make demo keeps it: the test reads it
    t0 = time.perf_counter()
    timings = run_plan(defs, _instance(), ops=OPS)
    root = Path(settings.artifacts).resolve()
    answers = {}
    try:
        with TestClient(create_app(ApiConfig.from_environ(os.environ))) as api:
            at = DAY0 + 14 * 86_400 + 13 * 3600

            def recommend(user, device=1):
                r = api.get("/recommendations", params={"user_id": user, "device_type": device, "timestamp": at,
                                                        "k": 10})
                return {"status": r.status_code, "body": r.json()}

            users = json.loads(os.environ["OWN_RUN_USERS"])
            for user in users:
                answers[user] = recommend(user)
            known = users[0]
            first = answers[known]["body"]["items"][0]["item_id"]
            posted = api.post("/events", json={"user_id": known, "item_id": first, "device_type": 1,
                                               "timestamp": at})
            answers["click"] = {"status": posted.status_code, "item_id": first}
            answers["after_click"] = recommend(known)
            answers["unknown_item"] = api.post("/events", json={"user_id": known, "item_id": "SKU-NOT-THERE",
                                                                "device_type": 1, "timestamp": at}).status_code
            api.delete(f"/users/{known}/seen")
    finally:
        deploy.stop_local(root)
        _stop_embedded_valkey(root)
    return {"timings": timings, "seconds": time.perf_counter() - t0, "answers": answers}


def more_days() -> dict:
    """The catalogue again and the day the test added (day 14), as the daily job would ingest them."""
    from recsys_assets.definitions import defs
    from recsys_assets.demo import run_job
    from recsys_assets.defs.partitions import START_DATE
    from recsys_assets.lib.settings import partition_key

    instance = _instance()
    run_job(defs, "full_build_job", instance, ["items", "item_descriptions", "item_images"])
    counts = {}
    for day in (0, 14):
        result = run_job(defs, "full_build_job", instance, ["raw_interactions"],
                         partition_key=partition_key(day, START_DATE))
        meta = next(m.metadata for m in result.asset_materializations_for_node("raw_interactions")
                    if m.asset_key.to_user_string() == "raw_interactions")
        counts[f"day{day}"] = {k: v.value for k, v in meta.items() if isinstance(getattr(v, "value", None), int)}
    return counts


if __name__ == "__main__":
    step = {"build": build, "more_days": more_days}[sys.argv[1]]
    print(json.dumps(step(), default=str))
