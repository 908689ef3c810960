"""The serving assets: the versioned repository and its release manifests, built from artifacts at their paths."""

import json
import shutil

import dagster as dg
import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.release import assets as release_assets
from recsys_assets.defs.release.resources import TritonResource, build_resources
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.settings import Settings
from recsys_assets.release import deploy


def place_trained_artifacts(root, tiny):
    """The tiny artifacts where the upstream assets write theirs."""
    store = ArtifactStore(root)
    with store.writing(paths.SERVING_TRANSFORMS) as tmp:
        shutil.copytree(tiny.trained.transforms_dir, tmp)
    for rel, source in ((release_assets.QUERY_TOWER_ONNX, tiny.trained.query_tower),
                        (release_assets.DLRM_ONNX, tiny.trained.dlrm),
                        (paths.faiss_index(release_assets.DEFAULT_VARIANT), tiny.trained.faiss_index),
                        (paths.MULTIMODAL_EMBEDDINGS, tiny.trained.multimodal), (paths.ITEMS, tiny.trained.items)):
        store.write_bytes(rel, source.read_bytes())
    return store


def resources(root):
    return {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny")}


def test_repository_asset_writes_a_servable_release_and_bumps_only_changed_models(tmp_path, tiny):
    store = place_trained_artifacts(tmp_path / "artifacts", tiny)
    result = dg.materialize([release_assets.triton_model_repository], resources=resources(tmp_path / "artifacts"))
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("configs_valid", True)]
    meta = result.asset_materializations_for_node("triton_model_repository")[0].metadata
    assert meta["release"].value == 1 and meta["changed_models"].value == 15
    manifest = json.loads(store.read_bytes(paths.triton_release(1)))
    assert manifest["models"]["dlrm_ranking"] == 1
    assert manifest["parameters"]["faiss_retrieval"]["RETRIEVAL_TOPK"] == "300"

    config = {"ops": {"triton_model_repository": {"config": {"default_top_k": 5, "retrieval_topk": 200}}}}
    result = dg.materialize([release_assets.triton_model_repository], resources=resources(tmp_path / "artifacts"),
                            run_config=config)
    manifest = json.loads(store.read_bytes(paths.triton_release(2)))
    assert sorted(manifest["changed"]) == ["context_preprocessor", "faiss_retrieval", "filter_seen_items"]
    assert manifest["models"]["faiss_retrieval"] == 2 and manifest["models"]["dlrm_ranking"] == 1
    assert [r.release for r in release_assets.releases(store)] == [1, 2]


def test_a_missing_trained_artifact_fails_the_blocking_check_and_publishes_nothing(tmp_path, tiny):
    store = place_trained_artifacts(tmp_path / "artifacts", tiny)
    store.delete(release_assets.DLRM_ONNX)
    result = dg.materialize([release_assets.triton_model_repository], resources=resources(tmp_path / "artifacts"),
                            raise_on_error=False)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "a trained artifact is missing" in check.description
    assert not store.exists(paths.TRITON_REPOSITORY)


def test_deployment_on_k8s_runs_helm_with_the_release_repository(tmp_path, tiny):
    store = place_trained_artifacts(tmp_path / "artifacts", tiny)
    dg.materialize([release_assets.triton_model_repository], resources=resources(tmp_path / "artifacts"))
    fake_helm = tmp_path / "helm"
    fake_helm.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'helm-args'}\n")  # no cluster here
    fake_helm.chmod(0o755)
    result = dg.materialize([release_assets.triton_deployment], resources={
        **resources(tmp_path / "artifacts"), "profile": DeploymentProfileResource(profile="k8s"),
        "triton": TritonResource(helm=str(fake_helm), helm_values=["infra/helm/triton/values-cpu.yaml"])})
    assert result.success
    args = (tmp_path / "helm-args").read_text().split()
    assert args[:4] == ["upgrade", "--install", "triton", str(deploy.HELM_CHART)]
    assert f"modelRepository.uri={store.uri(paths.TRITON_REPOSITORY)}" in args
    assert "env.RECSYS_RELEASE=1" in args and "--wait" in args


def test_helm_command_shape():
    cmd = deploy.helm_command("s3://bucket/recsys/serving/triton_repository", values=["v.yaml"], helm="helm")
    assert cmd[:3] == ["helm", "upgrade", "--install"] and ["-f", "v.yaml"] == cmd[cmd.index("-f"):cmd.index("-f") + 2]
    assert "--set-string" in cmd and "modelRepository.uri=s3://bucket/recsys/serving/triton_repository" in cmd


def test_ports_and_helm_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_TRITON_HTTP_PORT", "18000")
    monkeypatch.setenv("RECSYS_TRITON_HELM_VALUES", "a.yaml, b.yaml")
    triton = build_resources(Settings())["triton"]
    assert triton.http_port == 18000 and triton.grpc_port == 8001 and triton.helm_values == ["a.yaml", "b.yaml"]
    monkeypatch.setenv("RECSYS_TRITON_GRPC_PORT", "x")
    with pytest.raises(ValueError, match="RECSYS_TRITON_GRPC_PORT='x'"):
        build_resources(Settings())


def test_the_release_serves_the_selected_variant_and_the_daily_grown_index(tmp_path, tiny):
    import numpy as np

    from recsys_assets.lib import daily, digests
    from recsys_assets.lib import faiss_index as fx
    from recsys_assets.lib.digests import path_sha256

    root = tmp_path / "artifacts"
    store = place_trained_artifacts(root, tiny)
    # one trained variant only: that one is served
    assert release_assets.served_variant(store) == "plain"
    # both trained, retrieval_evaluation selected "context": its tower and its index
    store.write_bytes(paths.query_tower_onnx("context"), tiny.trained.query_tower.read_bytes())
    store.write_bytes(paths.faiss_index("context"), tiny.trained.faiss_index.read_bytes())
    summary = json.dumps({"selected_variant": "context"}).encode()
    store.write_bytes(f"{paths.RETRIEVAL_EVALUATION}/summary.json", summary)
    assert release_assets.served_variant(store) == "context" and release_assets.served_variant(store, "plain") == "plain"
    # the daily refresh grew the context index by one new item: the release packages the grown index
    index = fx.load(store.local_path(paths.faiss_index("context")))
    index.add_with_ids(np.zeros((1, index.d), np.float32), np.array([10**6], np.int64))
    import faiss

    with store.writing(paths.daily_index("context")) as tmp:
        faiss.write_index(index, str(tmp))
    store.write_bytes(daily.daily_index_manifest("context"), json.dumps(
        {"base_digest": digests.file_sha256(store.local_path(paths.faiss_index("context")))}).encode())
    trained = release_assets.trained_artifacts(store, release_assets.RepositoryConfig())
    assert trained.faiss_index == store.local_path(paths.daily_index("context"))
    assert trained.query_tower == store.local_path(paths.query_tower_onnx("context"))
    result = dg.materialize([release_assets.triton_model_repository], resources=resources(root))
    assert result.success
    manifest = release_assets.releases(store)[-1]
    assert manifest.inputs["faiss_index"] == path_sha256(store.local_path(paths.daily_index("context")))
    # a full retrain replaced the trained index since: the old growth no longer applies
    index = fx.load(store.local_path(paths.faiss_index("context")))
    index.add_with_ids(np.ones((1, index.d), np.float32), np.array([10**6 + 1], np.int64))
    with store.writing(paths.faiss_index("context")) as tmp:
        faiss.write_index(index, str(tmp))
    assert release_assets.trained_artifacts(store, release_assets.RepositoryConfig()).faiss_index == \
        store.local_path(paths.faiss_index("context"))
