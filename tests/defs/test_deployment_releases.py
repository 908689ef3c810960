"""One owner of the live Triton repository: ``triton_deployment`` deploys through the release path.

On a real tritonserver with the tiny worlds: the pipeline's path (``triton_model_repository`` +
``triton_deployment``) starts the server on release 1 served through its aliases; a promotion switches to release 2
(every model changed); a later ``triton_deployment`` with no newer repository build changes nothing (no reload,
release 2 keeps answering, under traffic every answer from release 2); a new repository build is deployed as
release 3 by the same promotion code (loaded beside release 2, switched at once, no request mixing the two), and
no plain (canonical, un-aliased) model is ever loaded.
"""

import time

import dagster as dg
import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.release import assets as release_assets
from recsys_assets.defs.release.resources import TritonResource
from recsys_assets.lib import paths
from recsys_assets.release import records, repository
from recsys_assets.release import deploy
from recsys_assets.release.repository import ENSEMBLE, MODELS
from recsys_assets.release.tiny import build_tiny_artifacts, publish_online_state, serving_environ
from tests.defs.test_finetune import DAY5, Traffic, _ports, _promote, add_release, answers_of, assert_no_mixing
from tests.serving.test_serving_assets import place_trained_artifacts
from tests.release.tiny_serving import tiny_artifacts


def _loaded(root) -> set:
    server = deploy.running_server(root)
    with server.client() as client:  # the key, where RECSYS_TRITON_ADMIN_KEY restricts the repository API
        return {m["name"] for m in client.get_model_repository_index(headers=server.admin_headers)
                if m.get("state") == "READY"}


def _aliases(store, release: int) -> set:
    manifest = records.manifest(store, release)
    return {ENSEMBLE, *(repository.alias(m, manifest.models[m]) for m in MODELS)}


@pytest.mark.integration
def test_a_deployment_after_a_promotion_neither_mixes_versions_nor_undoes_it(tmp_path_factory, valkey, monkeypatch):
    tiny_a = tiny_artifacts(tmp_path_factory)
    tiny_b = build_tiny_artifacts(tmp_path_factory.mktemp("tiny-other"), n_users=90, seed=11, dim=24)
    root = tmp_path_factory.mktemp("owner") / "artifacts"
    store = place_trained_artifacts(root, tiny_a)
    url = f"redis://127.0.0.1:{valkey.port}"
    monkeypatch.setenv("RECSYS_VALKEY_URL", url)
    publish_online_state(tiny_a, serving_environ(url, root))
    ports = _ports()
    http = f"127.0.0.1:{ports['http_port']}"
    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
                 "profile": DeploymentProfileResource(profile="local"), "triton": TritonResource(**ports)}
    users = tiny_a.users["user_id"].head(6).tolist()
    requests = [{"user_id": u, "device_type": d, "timestamp": DAY5 + h * 3600}
                for u in [*users, -1] for d, h in ((0, 9), (1, 20))]
    live = root / paths.TRITON_REPOSITORY
    try:
        # the pipeline's path: the first release, served through its aliases like any promoted release
        result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                resources=resources)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "started" and meta["release"].value == 1
        assert repository.served_release_of(live) == 1 and records.served_state(store).release == 1
        assert _loaded(root) == _aliases(store, 1)
        release, expected_1 = answers_of(http, requests)
        assert release == 1

        # a promotion (what the fine-tune / weekly retrain path does): release 2, every model changed
        add_release(store, tiny_b.trained, 2)
        assert _promote(root, ports, run_config={"ops": {"served_release": {"config": {"release": 2}}}}).success
        release, expected_2 = answers_of(http, requests)
        assert release == 2 and expected_2 != expected_1

        # a deployment with no newer repository build: nothing reloaded, the promotion stands
        with Traffic(http, requests) as traffic:
            time.sleep(0.5)
            result = dg.materialize([release_assets.triton_deployment], resources=resources)
            time.sleep(0.5)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "unchanged" and meta["release"].value == 2
        assert "not undone" in meta["why"].value
        assert assert_no_mixing(traffic, {2: expected_2}) == {2}
        assert answers_of(http, requests) == (2, expected_2)
        assert _loaded(root) == _aliases(store, 2) and records.served_state(store).release == 2

        # a new repository build (the trained artifacts, another top_k) goes out as release 3 through the same
        # promotion: loaded beside release 2, switched at once; no request mixes the two, no plain model loads
        config = {"ops": {"triton_model_repository": {"config": {"default_top_k": 5}}}}
        with Traffic(http, requests) as traffic:
            time.sleep(0.5)
            result = dg.materialize([release_assets.triton_model_repository, release_assets.triton_deployment],
                                    resources=resources, run_config=config)
            time.sleep(0.5)
        meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
        assert meta["action"].value == "reloaded" and meta["release"].value == 3 and meta["previous"].value == 2
        release, expected_3 = answers_of(http, requests)
        assert release == 3 and all(len(ids) == 5 for ids in expected_3)
        assert assert_no_mixing(traffic, {2: expected_2, 3: expected_3}) <= {2, 3}
        assert _loaded(root) == _aliases(store, 3)
        assert records.served_state(store).release == 3 and records.served_state(store).stack[-3:] == [1, 2, 3]

        # and again with nothing new: unchanged, release 3 still answers
        result = dg.materialize([release_assets.triton_deployment], resources=resources)
        assert result.asset_materializations_for_node("triton_deployment")[0].metadata["action"].value == "unchanged"
        assert answers_of(http, requests) == (3, expected_3)
    finally:
        deploy.stop_local(root)
