"""``benchmarks/seed_scale.py`` at the tiny scale (issue 19): the same script that runs the seed scale runs the
generator's whole pipeline through Dagster as ``make demo`` does (every build layer, then day 14's ``daily_job``
requested by ``new_day_sensor`` and the promotion sensor, then ``benchmarks/serving.py`` on the release), with the
short trainings of the other end-to-end test, and reports every stage's wall time and peak memory, the data's size
and Valkey's keys; the servers it started are stopped. Numbers are not asserted, only that each is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_assets.defs.platform.jobs import BUILD_LAYERS
from recsys_assets.lib.valkey_server import free_port, ping
from tests.integration.own_data_run import OPS

pytestmark = [pytest.mark.merlin, pytest.mark.integration]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("seed-scale")
    ops = work / "ops.json"
    ops.write_text(json.dumps(OPS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    ports = {name: str(free_port()) for name in ("RECSYS_TRITON_HTTP_PORT", "RECSYS_TRITON_GRPC_PORT",
                                                 "RECSYS_TRITON_METRICS_PORT", "RECSYS_VALKEY_PORT")}
    env.update({"RECSYS_SEED": "7", "RECSYS_CLIP_OFFLINE_FALLBACK": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "DAGSTER_HOME": str(work / "dagster"), **ports})
    report = work / "tiny.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/seed_scale.py", "--scale", "tiny", "--artifacts", str(work / "artifacts"),
         "--json", str(report), "--ops", str(ops), "--serving-seconds", "1", "--concurrency", "1"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=2400)
    if proc.returncode != 0:
        raise AssertionError(f"seed_scale.py failed:\n{(proc.stdout + proc.stderr)[-8000:]}")
    return {"report": json.loads(report.read_text()), "path": report, "ports": ports, "stdout": proc.stdout,
            "work": work}


@pytest.mark.timeout(2700)
def test_every_stage_is_timed_and_measured(tiny_run):
    report = tiny_run["report"]
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == [layer.name for layer in BUILD_LAYERS] + ["daily", "serving benchmark"]
    assert not [s for s in stages.values() if "failed" in s]
    for name, stage in stages.items():
        assert stage["seconds"] > 0 and stage["peak_rss_gib"] > 0, (name, stage)
        assert stage["peak_rss_gib"] >= max(stage["peak_rss_gib_by_kind"].values()), (name, stage)
    # the processes beside this one are counted: the merlin Pipes steps, Triton's, Valkey's
    assert stages["models"]["peak_rss_gib_by_kind"].get("merlin", 0) > 0, stages["models"]
    assert stages["release"]["peak_rss_gib_by_kind"].get("triton", 0) > 0, stages["release"]
    assert stages["feature store"]["peak_rss_gib_by_kind"].get("valkey", 0) > 0, stages["feature store"]
    assert report["peak_rss_gib"] == max(s["peak_rss_gib"] for s in stages.values())
    assert report["build_seconds"] < report["total_seconds"]


def test_the_data_valkey_and_serving_are_reported(tiny_run):
    report = tiny_run["report"]
    data = report["data"]
    assert data["interaction_days"] == 14 and data["users"] > 600 and data["items"] > 0
    assert 0 < data["clicks"] < data["impressions"]
    valkey = report["valkey"]
    assert valkey["keys"] > 0 and valkey["used_memory_gib"] > 0
    assert valkey["kinds"]["feast user_id"]["keys"] > 0 and valkey["kinds"]["feast item_id"]["keys"] > 0
    serving = next(s for s in report["stages"] if s["stage"] == "serving benchmark")["results"]
    assert serving, "the serving benchmark wrote no results"
    assert "[seed-scale] daily" in tiny_run["stdout"] and "[demo] promotion" in tiny_run["stdout"]


def test_the_servers_it_started_are_stopped(tiny_run):
    ports = tiny_run["ports"]
    assert not ping("127.0.0.1", int(ports["RECSYS_VALKEY_PORT"]))
    assert not ping("127.0.0.1", int(ports["RECSYS_TRITON_HTTP_PORT"]))


def test_the_plot_compares_reports(tiny_run):
    out = tiny_run["work"] / "stages.png"
    proc = subprocess.run([sys.executable, "benchmarks/seed_scale.py", "--plot", str(tiny_run["path"]),
                           str(tiny_run["path"]), "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
