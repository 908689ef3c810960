"""The Dagster CLIs as a person would run them: ``dagster`` over workspace.yaml (validate, materialize, backfill via
the daemon) and ``dg`` over ``[tool.dg]`` in pyproject.toml (check, list, launch)."""

import json

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


@pytest.fixture()
def cli_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_ARTIFACTS": str(tmp_path / "artifacts"),
           "RECSYS_SCALE": "tiny"}
    return env


def _dagster(env, *args, timeout=300):
    return subprocess.run([str(BIN / "dagster"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _dg(env, *args, timeout=300):
    return subprocess.run([str(BIN / "dg"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dg_checks_lists_and_launches_the_project(cli_env):
    out = _dg(cli_env, "check", "defs")
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr
    out = _dg(cli_env, "list", "defs", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    listed = json.loads(out.stdout)
    # what dg lists is what the code location loads
    from recsys_assets.definitions import defs

    repo = defs.get_repository_def()
    assert {a["asset_key"] for a in listed["assets"]} == {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()
                                                          if repo.asset_graph.get(k).is_materializable}
    assert {j["name"] for j in listed["jobs"]} == {j.name for j in defs.jobs}
    assert {s["name"] for s in listed["sensors"]} == {s.name for s in defs.sensors}
    out = _dg(cli_env, "launch", "--assets", "items,users")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (Path(cli_env["RECSYS_ARTIFACTS"]) / "raw/items.parquet").exists()
    assert (Path(cli_env["RECSYS_ARTIFACTS"]) / "raw/users.parquet").exists()


def test_definitions_validate(cli_env):
    out = _dagster(cli_env, "definitions", "validate", "-w", "workspace.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Validation successful" in out.stderr + out.stdout


def test_materialize_one_partition_from_the_cli(cli_env):
    out = _dagster(cli_env, "asset", "materialize", "-m", "recsys_assets.definitions", "--select", "raw_interactions",
                   "--partition", "2026-01-05")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (Path(cli_env["RECSYS_ARTIFACTS"]) / "raw/interactions/day_04.parquet").exists()


def test_backfill_from_the_cli_runs_through_the_daemon(cli_env, monkeypatch):
    # the days need the catalogue and users (top_category and masking read them): materialized first, as a build does
    out = _dagster(cli_env, "asset", "materialize", "-m", "recsys_assets.definitions", "--select", "items,users")
    assert out.returncode == 0, out.stderr[-2000:]
    out = _dagster(cli_env, "job", "backfill", "-w", "workspace.yaml", "-j", "backfill_days_job",
                   "--from", "2026-01-01", "--to", "2026-01-02", "--noprompt")
    assert out.returncode == 0, out.stderr[-2000:]
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=ROOT, env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        monkeypatch.setenv("DAGSTER_HOME", cli_env["DAGSTER_HOME"])
        instance = DagsterInstance.get()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            runs = instance.get_runs(RunsFilter(job_name="backfill_days_job"))
            done = [r for r in runs if r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)]
            if len(runs) == 2 and len(done) == 2:
                break
            time.sleep(2)
        assert sorted(r.tags.get("dagster/partition") for r in runs) == ["2026-01-01", "2026-01-02"]
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        files = sorted(p.name for p in (Path(cli_env["RECSYS_ARTIFACTS"]) / "raw/interactions").iterdir())
        assert files == ["day_00.parquet", "day_01.parquet"]
        masked = sorted(p.name for p in (Path(cli_env["RECSYS_ARTIFACTS"]) / "transforms/masked").glob("day_*.parquet"))
        assert masked == ["day_00.parquet", "day_01.parquet"]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
