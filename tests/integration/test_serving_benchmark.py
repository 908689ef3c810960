"""``benchmarks/serving.py --artifacts`` on a release built the way ``make demo`` builds one: every column is
produced (both layouts at concurrency 1, the seed-faithful configuration, the in-process floor). Numbers are not asserted;
the columns rotted unnoticed once when releases started serving through aliases (issue 18).

The artifact root is the pipeline's: the tiny artifacts where the upstream assets write theirs (with NVTabular
workflows really fitted, so the seed-faithful side runs them), ``triton_model_repository`` materialized, and
release 1 written as served (aliases ``<model>_v1``, versioned ensemble) by ``write_served``, which is what
``triton_deployment`` writes before it starts a server; the benchmark starts its own servers (the standard
repository and its seed-faithful twin), so no deployment server is started here."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from recsys_assets.defs.release import assets as release_assets
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import paths
from recsys_assets.release import records, repository
from recsys_assets.release.pipeline import InProcessPipeline
from recsys_assets.release.tiny import publish_online_state, serving_environ
from tests.release.tiny_serving import tiny_artifacts, tiny_fitted_workflows
from tests.serving.test_serving_assets import place_trained_artifacts

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_serving_benchmark_produces_every_column_on_a_served_release(tmp_path_factory, valkey):
    work = tmp_path_factory.mktemp("serving-benchmark")
    tiny, workflows = tiny_fitted_workflows(tmp_path_factory)  # read-only: copied below
    root = work / "artifacts"
    store = place_trained_artifacts(root, tiny)
    shutil.copytree(workflows, root / paths.NVT_WORKFLOWS)
    (root / paths.USERS).parent.mkdir(parents=True, exist_ok=True)
    tiny.users.to_parquet(root / paths.USERS, index=False)
    url = f"redis://127.0.0.1:{valkey.port}"
    publish_online_state(tiny, serving_environ(url, root))
    result = dg.materialize([release_assets.triton_model_repository],
                            resources={"artifacts": ArtifactStoreResource(root=str(root)),
                                       "world": WorldResource(seed=7, scale="tiny")})
    assert result.success
    live = store.local_path(paths.TRITON_REPOSITORY)
    repository.write_served(live, records.manifest(store, 1), records.record(store, 1).ensemble_config)
    assert repository.served_release_of(live) == 1

    out = work / "results.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/serving.py", "--artifacts", str(root), "--seconds", "2", "--concurrency", "1",
         "--seed-concurrency", "1", "--seed-seconds", "3", "--rounds", "0", "--in-process-requests", "100",
         "--json", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RECSYS_VALKEY_URL": url})
    print(proc.stdout)  # the tables, for `pytest -rP` (docs/serving.md quotes such a run)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads(out.read_text())
    assert results["source"].endswith("(release 1)")

    def measured(row):
        return row["n"] > 0 and math.isfinite(row["p50"]) and row["p50"] > 0

    ours = [row for row in results["server"] if row["concurrency"] == 1]
    executor = [row for row in results["executor"]["server"] if row["concurrency"] == 1]
    assert len(executor) == 1 and measured(executor[0]) and executor[0]["errors"] == 0
    assert [m["model"] for m in results["executor"]["models"]] == ["ensemble_model"]  # one model runs it all
    assert "executor layout (2 instances" in proc.stdout
    seed = [row for row in results["seed_faithful"]["server"] if row["concurrency"] == 1]
    assert len(ours) == 1 and measured(ours[0]) and ours[0]["errors"] == 0
    assert len(seed) == 1 and measured(seed[0]) and seed[0]["errors"] == 0
    assert measured(results["in_process"])
    # the three columns as printed, each with its latency
    assert "| 1 | " in proc.stdout.split("seed-faithful configuration")[0]
    assert "| 1 | " in proc.stdout.split("seed-faithful configuration")[1]
    assert f"in-process floor (same stages, one process, sequential): p50 {results['in_process']['p50']:.2f} ms" \
        in proc.stdout
    # Triton ran the release's aliases, the seed-faithful transforms through the aliases too
    assert {m["model"] for m in results["models"]} >= {"ensemble_model", "nvt_user_transform_v1"}
    assert {m["model"] for m in results["seed_faithful"]["models"]} >= {"nvt_item_transform_v1"}


def test_the_in_process_floor_runs_a_served_release_like_its_plain_build(tmp_path, tmp_path_factory, valkey):
    """No server: the in-process pipeline walks the served ensemble's aliases (their configs and versions) and
    answers exactly as on the plain build of the same release."""
    tiny = tiny_artifacts(tmp_path_factory)
    environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", tmp_path / "artifacts")
    publish_online_state(tiny, environ)
    release = repository.build_repository(tmp_path / "plain", tiny.trained, repository.ServingDefaults(),
                                          tiny.start_date, release=1)
    shutil.copytree(tmp_path / "plain", tmp_path / "served", symlinks=True)
    repository.write_served(tmp_path / "served", release,
                            (tmp_path / "plain" / repository.ENSEMBLE / "config.pbtxt").read_text())
    day5 = 1767225600 + 5 * 86400
    users = [*tiny.users["user_id"].head(3).tolist(), -1, 10**6 + 3]  # known, anonymous, new
    requests = [(user, device, day5 + hour * 3600) for user in users for device, hour in ((0, 9), (2, 20))]
    answers = {}
    for name in ("plain", "served"):
        with InProcessPipeline(tmp_path / name, environ=environ) as pipeline:
            answers[name] = [pipeline(*request) for request in requests]
            assert [model for model, *_ in pipeline.steps] == list(repository.MODELS)
            assert type(pipeline.stage("feast_item_lookup")).__name__ == "FeastItemLookup"
    for plain, served in zip(answers["plain"], answers["served"]):
        assert plain["ordered_ids"].tolist() == served["ordered_ids"].tolist()
        np.testing.assert_allclose(plain["ordered_scores"], served["ordered_scores"])
