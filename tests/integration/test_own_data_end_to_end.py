"""Issue 20 end to end: a shop's own data, written here in the source contract (string SKUs, ISO timestamps with
offsets, one CSV and one parquet part, no ``users`` file, an event for an unknown item, a duplicate, a malformed
row, an unknown event type, anonymous rows, no images), goes through the whole build as ``make demo SOURCE=``
runs it (ingest, masking, NVTabular transforms, embeddings, Feast in a real Valkey, a tiny training of both
models, ONNX, FAISS, the evaluation gates without truth, a Triton repository served by a real tritonserver), and
the API answers in the shop's string ids (:mod:`tests.integration.own_data_run`). The rejected rows sit in the
quarantine files with their reasons, and a second run with one more day of events keeps every earlier id.

The behaviour is the generator's tiny world exported the way a shop would (``scripts/own_data_example.py``), so
the short training has something to learn and passes the gates.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.platform.jobs import BUILD_LAYERS
from recsys_assets.lib import paths, policy_value
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.sources.id_maps import load_id_map
from recsys_assets.lib.valkey_server import free_port, ping

pytestmark = [pytest.mark.merlin, pytest.mark.integration]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START = "2026-01-01"
UNKNOWN_SKU = "SKU-99999"


def _example_module():
    spec = importlib.util.spec_from_file_location("own_data_example", PROJECT_ROOT / "scripts" / "own_data_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_shop(folder: Path) -> dict:
    """Days 00-13 of the example, gathered into one CSV (event rows, ISO with offsets) and one parquet part
    (click labels, Unix ms), plus the faults; no users file, no images."""
    _example_module().write_example(folder, days=14, seed=7, scale="tiny", start_date=START, users=False)
    events = folder / "events"
    csvs, parts = sorted(events.glob("*.csv")), sorted(events.glob("*.parquet"))
    log = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in csvs], ignore_index=True)
    labelled = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    for p in csvs + parts:
        p.unlink()
    first = log.iloc[0]
    faults = pd.DataFrame([
        first.to_dict(),                                                       # a duplicate of the first event
        {**first.to_dict(), "item_id": UNKNOWN_SKU},                           # an item the catalogue lacks
        {**first.to_dict(), "event": "view", "timestamp": "2026-01-01T09:00:00+01:00"},  # not impression/click
    ])
    text = pd.concat([log, faults], ignore_index=True).to_csv(index=False)
    # a malformed line: one field more than the header
    text += f"{first['user_id']},{first['item_id']},2026-01-01T10:00:00Z,impression,mobile,s-x,extra\n"
    (events / "log.csv").write_text(text)
    labelled.to_parquet(events / "part-0001.parquet", index=False)
    assert not (folder / "users.csv").exists() and "image" not in pd.read_csv(folder / "items.csv", nrows=1)
    return {"first": first.to_dict(), "anonymous_rows": int((log["user_id"] == "").sum())}


def _run(step: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.own_data_run", step], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"own_data_run {step} failed:\n{(proc.stdout + proc.stderr)[-8000:]}")
    lines = proc.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "console": lines[:-1]}


@pytest.fixture(scope="module")
def own_world(tmp_path_factory, embedding_cache):
    work = tmp_path_factory.mktemp("own-e2e")
    shop = work / "shop-export"
    written = write_shop(shop)
    root = work / "artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({
        "PYTHONPATH": str(PROJECT_ROOT), "RECSYS_SOURCE": str(shop), "RECSYS_ARTIFACTS": str(root),
        "RECSYS_START_DATE": START, "RECSYS_SEED": "7", "RECSYS_SCALE": "tiny", "DAGSTER_HOME": str(work / "dagster"),
        "RECSYS_CLIP_OFFLINE_FALLBACK": "1", "RECSYS_EMBEDDING_CACHE": str(embedding_cache),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "RECSYS_TRITON_HTTP_PORT": str(free_port()), "RECSYS_TRITON_GRPC_PORT": str(free_port()),
        "RECSYS_TRITON_METRICS_PORT": str(free_port()), "RECSYS_VALKEY_PORT": str(free_port()),
        "OWN_RUN_USERS": json.dumps([written["first"]["user_id"], "", "someone-new"]),
    })
    built = _run("build", env)
    assert not ping("127.0.0.1", int(env["RECSYS_VALKEY_PORT"])), "the build left its Valkey running"
    store = ArtifactStore(root)
    before = {name: load_id_map(store, rel, name) for name, rel in (("user", paths.USER_ID_MAP),
                                                                   ("item", paths.ITEM_ID_MAP))}
    day0 = store.read_parquet(paths.raw_interactions(0))[["user_id", "item_id"]]
    # one more day of events (a new parquet part), then the catalogue, day 00 again and the new day
    _example_module().write_example(shop, days=15, seed=7, scale="tiny", start_date=START, first_day=14)
    more = _run("more_days", env)
    return {"store": store, "built": built, "before": before, "day0": day0, "written": written,
            "day0_counts": more["day0"]}


def test_the_builds_console_is_the_demos_lines_only(own_world):
    """What make demo prints of its steps (on the tiny world here): one ``[demo]`` line per step, no library
    warnings, log records or tracebacks (those go to the log files under the artifact root)."""
    console = own_world["built"]["console"]
    assert len(console) == len(BUILD_LAYERS) and all(line.startswith("[demo]") for line in console), "\n".join(
        line for line in console if not line.startswith("[demo]"))[:4000]
    assert not [line for line in console if "Traceback" in line or "Warning" in line]


def test_the_api_answers_in_the_shops_string_ids(own_world):
    store, answers = own_world["store"], own_world["built"]["answers"]
    skus = set(load_id_map(store, paths.ITEM_ID_MAP, "item").source_ids)
    for user in (own_world["written"]["first"]["user_id"], "", "someone-new"):
        answer = answers[user]
        assert answer["status"] == 200, answer
        ids = [item["item_id"] for item in answer["body"]["items"]]
        assert len(ids) == 10 and len(set(ids)) == 10, user
        assert all(isinstance(i, str) and i.startswith("SKU-") and i in skus for i in ids), ids
    assert answers["click"]["status"] in (200, 201), answers["click"]
    clicked = answers["click"]["item_id"]
    assert clicked not in [i["item_id"] for i in answers["after_click"]["body"]["items"]]
    assert answers["unknown_item"] == 422


def test_the_build_ran_every_layer_and_served_a_release(own_world):
    timings = own_world["built"]["timings"]
    assert list(timings) == ["platform", "catalogue", "days", "workflows", "transformed days", "embeddings",
                             "feature store", "models", "release"]
    store = own_world["store"]
    summary = json.loads(store.read_bytes(f"{paths.RETRIEVAL_EVALUATION}/summary.json"))
    assert summary["measure"] == policy_value.LOGGED_MEASURE and "true" not in summary  # no truth
    assert not any(row["method"] == "oracle" for row in summary["metrics"])
    assert all(g["passed"] for g in summary["gates"]), summary["gates"]
    assert not store.exists(paths.interactions_truth(0))


def test_rejected_rows_sit_in_the_quarantine_with_their_reasons(own_world):
    store = own_world["store"]
    undated = store.read_parquet(paths.UNDATED_QUARANTINE)
    assert undated["reason"].str.contains("malformed line").sum() == 1, undated
    day0 = store.read_parquet(paths.quarantine(0))
    assert (day0["column"] == "event").sum() == 1 and day0["values"].str.contains('"view"').any(), day0
    unknown = store.read_parquet(paths.unknown_item_events(0))
    assert (unknown["item"] == UNKNOWN_SKU).sum() == 1, unknown
    counts = own_world["day0_counts"]  # the metadata of raw_interactions day 00 (its re-run: the same counts)
    assert counts["duplicate_events"] >= 1 and counts["events_for_unknown_items"] == 1, counts
    assert counts["rows_quarantined"] == 1 and counts["anonymous_rows"] > 0, counts
    raw = store.read_parquet(paths.raw_interactions(0))
    assert (raw["user_id"] == -1).any()  # anonymous rows kept as -1
    assert raw["impression_source"].isin(["logged", "click_only"]).all()


def test_a_second_run_with_one_more_day_keeps_every_earlier_id(own_world):
    store, before = own_world["store"], own_world["before"]
    users = load_id_map(store, paths.USER_ID_MAP, "user")
    items = load_id_map(store, paths.ITEM_ID_MAP, "item")
    assert items == before["item"]
    n = len(before["user"])
    assert users.source_ids[:n] == before["user"].source_ids and len(users) > n  # day 14 brought new users
    again = store.read_parquet(paths.raw_interactions(0))[["user_id", "item_id"]]
    np.testing.assert_array_equal(again.to_numpy(), own_world["day0"].to_numpy())
    assert len(store.read_parquet(paths.raw_interactions(14))) > 0
