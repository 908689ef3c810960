"""The seed-faithful configuration on a real tritonserver: Feast per request for items (and users, through the SDK),
the three saved NVTabular workflows run per request in the merlin env (``EXECUTION_ENV_PATH``). It must rank
exactly like the standard ensemble on the same artifacts, or the benchmark's comparison would not be like for like.

One server start (the seed-faithful repository); the standard side is the same built repository walked in this
process by ``InProcessPipeline`` (the executor and stages Triton's python models run)."""

import numpy as np
import pytest

from recsys_assets.release.triton_server import TritonServer
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from recsys_assets.release.client import RecommendationClient
from recsys_assets.release.pipeline import InProcessPipeline
from recsys_assets.release.repository import ServingDefaults, build_repository
from recsys_assets.release.seed_faithful import make_seed_faithful, probe_merlin_env, server_environ
from recsys_assets.release.tiny import publish_online_state, serving_environ
from tests.release.tiny_serving import tiny_fitted_workflows

pytestmark = pytest.mark.integration

DAY5 = 1767225600 + 5 * 86400


def test_seed_faithful_ensemble_ranks_like_the_standard_one(tmp_path_factory):
    work = tmp_path_factory.mktemp("seed-faithful")
    merlin = probe_merlin_env()
    tiny, workflows = tiny_fitted_workflows(tmp_path_factory)  # fitted in the env probe_merlin_env finds
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "artifacts")
        publish_online_state(tiny, environ)
        build_repository(work / "repo", tiny.trained, ServingDefaults(), tiny.start_date, release=1)
        make_seed_faithful(work / "repo", work / "repo-seed", workflows, merlin)
        users = tiny.users["user_id"].tolist()
        # known users, a new id, anonymous; every device and unknown; morning and evening
        requests = [(users[0], 0, DAY5 + 9 * 3600), (users[7], 1, DAY5 + 20 * 3600), (users[23], -1, DAY5),
                    (10**6 + 3, 2, DAY5 + 13 * 3600), (-1, 1, DAY5 + 8 * 3600), (-1, 0, DAY5 + 22 * 3600)]
        with InProcessPipeline(work / "repo", environ=environ) as standard:
            expected = [standard(u, d, t) for u, d, t in requests]

        server = TritonServer(work / "repo-seed", env=server_environ(environ, merlin), exit_timeout=2,
                              workdir=work / "triton")
        server.start(models=["ensemble_model"], timeout=900)
        with RecommendationClient(server.http_url, "http") as client:
            for (user, device, ts), want in zip(requests, expected):
                ids, scores = client.recommend(user, device, ts)
                assert ids.tolist() == want["ordered_ids"].tolist(), (user, device, ts)
                np.testing.assert_allclose(scores, want["ordered_scores"], rtol=1e-5, atol=1e-6)
        log = server.log_path.read_text()
        # the transforms really ran NVTabular in the merlin env's interpreter, not the server's
        for group in ("user", "context", "item"):
            assert f"NVTabular {group} workflow per request" in log
        assert f"Using Python execution env {merlin.path}" in log
        assert f"({merlin.path})" in log
    finally:
        if server is not None:
            server.stop()
        valkey.stop()
