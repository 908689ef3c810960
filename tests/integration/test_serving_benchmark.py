"""The in-process floor of ``benchmarks/serving.py`` on a served release (aliases, versioned ensemble) answers as on
the plain build of the same release. The benchmark itself runs, every column, on the release the pipeline builds
as ``make demo`` does, in ``tests/integration/test_seed_scale.py``."""

import shutil

import numpy as np
import pytest

from recsys_assets.release import repository
from recsys_assets.release.pipeline import InProcessPipeline
from recsys_assets.release.tiny import publish_online_state, serving_environ
from tests.release.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration


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
