"""triton_deployment on the local profile: starts the real server on the release, hot-swaps it to the next
release, the client command prints named recommendations, and the serve command reports and stops it."""

import dagster as dg
import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.serving import assets as serving
from recsys_assets.defs.serving.resources import TritonResource
from recsys_assets.lib.triton_server import free_port
from recsys_assets.serving import client as client_cli
from recsys_assets.serving import deploy
from recsys_assets.serving import serve as serve_cli
from recsys_assets.serving.client import RecommendationClient
from recsys_assets.serving.tiny import publish_online_state, serving_environ
from tests.serving.test_serving_assets import place_trained_artifacts
from tests.serving.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration


def test_local_deployment_starts_hot_swaps_and_stops(tmp_path_factory, valkey, monkeypatch, capsys):
    tiny = tiny_artifacts(tmp_path_factory)
    root = tmp_path_factory.mktemp("deployment") / "artifacts"
    url = f"redis://127.0.0.1:{valkey.port}"
    monkeypatch.setenv("RECSYS_VALKEY_URL", url)  # the deployment's Valkey (else the embedded one of the root)
    publish_online_state(tiny, serving_environ(url, root))
    place_trained_artifacts(root, tiny)
    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
                 "profile": DeploymentProfileResource(profile="local"), "triton": TritonResource(**ports)}
    try:
        result = dg.materialize([serving.triton_model_repository, serving.triton_deployment], resources=resources)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "started" and meta["release"].value == 1
        assert len(meta["smoke_test"].value["ids"]) == 10
        http = f"127.0.0.1:{ports['http_port']}"

        assert client_cli.main(["--user", "3", "--device", "1", "--k", "4", "--url", http]) == 0
        out = capsys.readouterr().out
        names = tiny.items.set_index("item_id")["name"]
        assert "4 recommendations for user 3 on mobile" in out and sum(n in out for n in names.head(2465)) >= 4
        assert client_cli.main(["--user", "-9", "--url", http]) == 2
        assert "-1 (anonymous) is the only negative id" in capsys.readouterr().err

        config = {"ops": {"triton_model_repository": {"config": {"default_top_k": 5}}}}
        result = dg.materialize([serving.triton_model_repository, serving.triton_deployment], resources=resources,
                                run_config=config)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "reloaded" and meta["release"].value == 2
        with RecommendationClient(f"127.0.0.1:{ports['grpc_port']}", "grpc") as grpc:
            ids, _ = grpc.recommend(3, 1)
        assert len(ids) == 5  # the new release's default top_k, served without a restart

        assert serve_cli.main(["status", "--artifacts", str(root)]) == 0
        assert f"http://{http}" in capsys.readouterr().out
    finally:
        stopped = serve_cli.main(["stop", "--artifacts", str(root)]) == 0
    assert stopped and deploy.running_server(root) is None
    assert client_cli.main(["--user", "3", "--url", f"127.0.0.1:{ports['http_port']}"]) == 3
