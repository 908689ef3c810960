"""triton_deployment on the local profile: starts the real server on the release, hot-swaps it to the next
release (reloading only the models whose version changed), takes a release whose smoke test fails back out by
itself (the previous answers return), keeps passwords out of its metadata, the client command prints named
recommendations, and the serve command reports and stops it."""

import dagster as dg
import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.release import assets as release_assets
from recsys_assets.defs.release.resources import TritonResource
from recsys_assets.lib import paths
from recsys_assets.release import records, repository
from recsys_assets.lib.feature_spec import FIRST_INDEX
from recsys_assets.release.triton_server import free_port
from recsys_assets.release import client as client_cli
from recsys_assets.release import deploy
from recsys_assets.release import serve as serve_cli
from recsys_assets.release.client import RecommendationClient
from recsys_assets.release.tiny import TinySizes, publish_online_state, serving_environ, write_onnx_models
from tests.serving.test_serving_assets import place_trained_artifacts
from tests.release.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration


def test_local_deployment_starts_hot_swaps_and_stops(tmp_path_factory, valkey, monkeypatch, capsys):
    tiny = tiny_artifacts(tmp_path_factory)
    root = tmp_path_factory.mktemp("deployment") / "artifacts"
    url = f"redis://127.0.0.1:{valkey.port}"
    monkeypatch.setenv("RECSYS_VALKEY_URL", url)  # the deployment's Valkey (else the embedded one of the root)
    publish_online_state(tiny, serving_environ(url, root))
    store = place_trained_artifacts(root, tiny)
    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
                 "profile": DeploymentProfileResource(profile="local"), "triton": TritonResource(**ports)}
    try:
        result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                resources=resources)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "started" and meta["release"].value == 1
        assert meta["layout"].value == "ensemble"  # the default (docs/serving.md, "Two layouts")
        assert result.asset_materializations_for_node("triton_model_repository")[0].metadata["layout"].value \
            == "ensemble"
        assert len(meta["smoke_test"].value["ids"]) == 10
        http = f"127.0.0.1:{ports['http_port']}"

        assert client_cli.main(["--user", "3", "--device", "1", "--k", "4", "--url", http]) == 0
        out = capsys.readouterr().out
        names = tiny.items.set_index("item_id")["name"]
        assert "4 recommendations for user 3 on mobile" in out and sum(n in out for n in names.head(2465)) >= 4
        assert client_cli.main(["--user", "-9", "--url", http]) == 2
        assert "-1 (anonymous) is the only negative id" in capsys.readouterr().err

        config = {"ops": {"triton_model_repository": {"config": {"default_top_k": 5}}}}
        result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                resources=resources,
                                run_config=config)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "reloaded" and meta["release"].value == 2
        with RecommendationClient(f"127.0.0.1:{ports['grpc_port']}", "grpc") as grpc:
            ids, _ = grpc.recommend(3, 1)
        assert len(ids) == 5  # the new release's default top_k, served without a restart
        assert meta["loaded"].value == "context_preprocessor"
        assert "password" not in meta["valkey"].value and meta["valkey"].value.startswith(url)

        # a retrained query tower + DLRM: only those two models get new python stubs, the other 12 are untouched
        # (a model whose folder changed would be reloaded by Triton when the ensemble loads)
        server = deploy.running_server(root)
        stubs = _stub_pids(server)
        assert len(stubs) == 14, stubs
        before = _answers(http)
        retrained = tmp_path_factory.mktemp("retrained")
        write_onnx_models(retrained, _sizes(tiny, seed=8))
        store.write_bytes(release_assets.QUERY_TOWER_ONNX, (retrained / "query_tower.onnx").read_bytes())
        store.write_bytes(release_assets.DLRM_ONNX, (retrained / "dlrm.onnx").read_bytes())
        result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                resources=resources,
                                run_config=config)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["release"].value == 3 and meta["loaded"].value == "query_tower, dlrm_ranking"
        after_stubs = _stub_pids(server)
        # (a stub of an earlier swap may still be exiting in ``stubs``: count the models that got a new one)
        assert sorted(m for m in after_stubs if after_stubs[m] - stubs.get(m, set())) == ["dlrm_ranking", "query_tower"]
        retrained_answers = _answers(http)
        assert retrained_answers != before
        assert records.served_state(store).release == 3

        # a DLRM that loads but raises on every request (a user table of one row): the smoke test fails, the
        # deployment restores release 3 by itself and says so; release 3's answers come back
        broken = tmp_path_factory.mktemp("broken")
        write_onnx_models(broken, _sizes(tiny, seed=9, users=1))
        store.write_bytes(release_assets.DLRM_ONNX, (broken / "dlrm.onnx").read_bytes())
        result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                resources=resources,
                                run_config=config, raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.event_specific_data.error.message
        assert "release 4 was taken back out" in message and "Release 3 serves again" in message, message
        assert "out of data bounds" in message
        assert _answers(http) == retrained_answers
        assert records.served_state(store).release == 3 and release_assets.releases(store)[-1].release == 4
        config_text = (store.local_path(paths.TRITON_REPOSITORY) / "dlrm_ranking" / "config.pbtxt").read_text()
        assert f"versions: {records.manifest(store, 3).models['dlrm_ranking']}" in config_text

        assert serve_cli.main(["status", "--artifacts", str(root)]) == 0
        assert f"http://{http}" in capsys.readouterr().out
    finally:
        stopped = serve_cli.main(["stop", "--artifacts", str(root)]) == 0
    assert stopped and deploy.running_server(root) is None
    assert client_cli.main(["--user", "3", "--url", f"127.0.0.1:{ports['http_port']}"]) == 3


def _sizes(tiny, seed: int, users: int | None = None) -> TinySizes:
    """The tiny models' table sizes (as release.tiny builds them), other weights; ``users`` overrides a table."""
    items = tiny.items
    return TinySizes(users=users if users is not None else FIRST_INDEX + len(tiny.users),
                     items=FIRST_INDEX + len(items), categories=FIRST_INDEX + items["category_l1"].nunique(),
                     top_categories=FIRST_INDEX + 20, seed=seed)


def _stub_pids(server) -> dict:
    """The python-backend stub processes of every model (a reloaded model gets new ones)."""
    import psutil

    out: dict = {}
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        for part in cmdline:
            if "/triton_repository/" in part:
                folder = part.split("/triton_repository/")[1].split("/")[0]
                alias = repository.parse_alias(folder)  # releases serve <model>_v<n>
                out.setdefault(alias[0] if alias else folder, set()).add(child.pid)
    return out


def _answers(http: str) -> list:
    with RecommendationClient(http, "http") as client:
        return [client.recommend(u, device_type=d, timestamp=1767225600 + 5 * 86400)[0].tolist()
                for u in (1, 2, 3, -1) for d in (0, 1)]
