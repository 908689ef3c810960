"""Serving: the versioned Triton model repository and its deployment (local tritonserver or Helm release).

- ``triton_model_repository``: assembles ``serving/triton_repository`` from the ``triton_repo/`` templates and the
  trained artifacts (compiled transforms, query tower and DLRM as ONNX, the FAISS index, the multimodal
  embeddings, the catalogue), injecting trained values (the training mean age, the start date) and the serving
  defaults of :class:`RepositoryConfig` as config parameters, and writes a release manifest
  (``serving/releases/<n>.json``: the version of every model). Blocking check ``configs_valid``: every config
  parses with Triton's protobufs, name == directory, the ensemble's tensors exist on both ends, required
  parameters are set. Runtime endpoints are never written into it (they come from the server's environment).
- ``triton_deployment``: local profile: starts the bundled tritonserver on fixed loopback ports (or hot-swaps the
  running one to the new release), waits for the ensemble, and sends one request as a smoke test; the server is
  left running for the API and ``make serve`` (stop it with ``python -m recsys_assets.serving.serve stop``).
  k8s profile: ``helm upgrade --install`` of ``infra/helm/triton`` with the repository's S3 URI.
"""

import time
from pathlib import Path
from typing import Dict

import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import markdown_table
from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.serving.resources import TritonResource
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore
from recsys_assets.serving import deploy
from recsys_assets.serving.repository import (
    MODELS,
    Release,
    RepositoryError,
    ServingDefaults,
    TrainedArtifacts,
    build_repository,
)

GROUP = "serving"
# Trained artifacts of the models issue, relative to the artifact root.
QUERY_TOWER_ONNX = getattr(paths, "QUERY_TOWER_ONNX", "models/query_tower.onnx")
DLRM_ONNX = getattr(paths, "DLRM_ONNX", "models/dlrm.onnx")
FAISS_INDEX = getattr(paths, "FAISS_INDEX", "index/items.faiss")
UPSTREAM = ["items", "serving_transforms", "item_multimodal_embeddings"]


class RepositoryConfig(dg.Config):
    """Serving defaults injected into the repository as config parameters (requests may override top_k/diversity)."""

    retrieval_topk: int = 300
    """RETRIEVAL_TOPK: candidates FAISS hands on (after the seen filter) to the ranker."""
    retrieval_margin: int = 100
    """Extra neighbours FAISS fetches so padding, unreleased and seen items can be dropped."""
    ranking_topk: int = 100
    """RANKING_TOPK: the most a request may ask for, and the pool diversity sampling draws from."""
    default_top_k: int = 10
    diversity_mode: bool = False
    """DIVERSITY_MODE: sample instead of greedy when a request does not say."""
    diversity_temperature: float = 0.5
    sampling_seed: int = -1
    bloom_capacity: int = 1000
    bloom_error_rate: float = 0.01
    bloom_ttl_days: int = 7
    bloom_mode: str = "auto"
    item_cache_refresh_s: float = 300.0
    instances: int = 1
    """Instances of every python model (one each suits 2 cores)."""
    instance_counts: Dict[str, int] = {}
    """Per-model overrides, e.g. a second instance of an I/O-bound lookup: {"feast_user_lookup": 2}."""
    keep_releases: int = 3
    query_tower_input_map: Dict[str, str] = {}
    dlrm_input_map: Dict[str, str] = {}

    def defaults(self) -> ServingDefaults:
        return ServingDefaults(
            retrieval_topk=self.retrieval_topk, retrieval_margin=self.retrieval_margin,
            ranking_topk=self.ranking_topk, default_top_k=self.default_top_k, diversity_mode=self.diversity_mode,
            diversity_temperature=self.diversity_temperature, sampling_seed=self.sampling_seed,
            bloom_capacity=self.bloom_capacity, bloom_error_rate=self.bloom_error_rate,
            bloom_ttl_s=self.bloom_ttl_days * 86400, bloom_mode=self.bloom_mode,
            item_cache_refresh_s=self.item_cache_refresh_s, instances=self.instances,
            instance_counts=dict(self.instance_counts))


def releases(store: ArtifactStore) -> list[Release]:
    """Every release manifest under the artifact root, oldest first."""
    found = [p for p in store.list(paths.TRITON_RELEASES) if p.endswith(".json")]
    return sorted((Release.from_json(store.read_bytes(p).decode()) for p in found), key=lambda r: r.release)


def trained_artifacts(store: ArtifactStore, config: RepositoryConfig) -> TrainedArtifacts:
    multimodal = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS), mmap_mode="r")
    return TrainedArtifacts(
        transforms_dir=store.local_path(paths.SERVING_TRANSFORMS),
        query_tower=store.local_path(QUERY_TOWER_ONNX),
        dlrm=store.local_path(DLRM_ONNX),
        faiss_index=store.local_path(FAISS_INDEX),
        multimodal=store.local_path(paths.MULTIMODAL_EMBEDDINGS),
        items=store.local_path(paths.ITEMS),
        query_tower_input_map=dict(config.query_tower_input_map),
        dlrm_input_map=dict(config.dlrm_input_map),
        image_dims=int(multimodal.shape[1]) // 2,
    )


def _failed(check: str, description: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"problem": description},
        check_results=[dg.AssetCheckResult(check_name=check, passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                           description=description, metadata={"description": description})])


@dg.asset(group_name=GROUP, kinds={"triton"}, deps=UPSTREAM,
          check_specs=[dg.AssetCheckSpec("configs_valid", asset="triton_model_repository", blocking=True)])
def triton_model_repository(context: dg.AssetExecutionContext, config: RepositoryConfig,
                            artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """The versioned Triton repository (15 models) plus the release manifest naming every model's version."""
    store = artifacts.store()
    try:
        trained = trained_artifacts(store, config)
    except ArtifactNotFound as exc:
        return _failed("configs_valid", f"a trained artifact is missing: {exc}")
    history = releases(store)
    release = (history[-1].release if history else 0) + 1
    previous = store.local_path(paths.TRITON_REPOSITORY) if store.exists(paths.TRITON_REPOSITORY) else None
    t0 = time.perf_counter()
    try:
        with store.writing(paths.TRITON_REPOSITORY) as tmp:
            manifest = build_repository(Path(tmp), trained, config.defaults(), world.start_date, release,
                                        previous=previous, previous_releases=history,
                                        keep_releases=config.keep_releases)
    except RepositoryError as exc:
        return _failed("configs_valid", str(exc))
    seconds = time.perf_counter() - t0
    store.write_bytes(paths.triton_release(release), manifest.to_json().encode())
    import pandas as pd

    table = pd.DataFrame({"model": list(manifest.models), "version": list(manifest.models.values()),
                          "changed": [m in manifest.changed for m in manifest.models]})
    params = pd.DataFrame([(m, k, v) for m, kv in manifest.parameters.items() for k, v in kv.items()
                           if k.isupper() and m in MODELS], columns=["model", "parameter", "value"])
    description = f"{len(manifest.models)} configs parse, names match directories, ensemble wiring complete"
    return dg.MaterializeResult(
        metadata={
            "release": release,
            "changed_models": len(manifest.changed),
            "mean_age": float(manifest.parameters["feast_user_lookup"]["MEAN_AGE"]),
            "bytes": store.size_bytes(paths.TRITON_REPOSITORY),
            "seconds": round(seconds, 2),
            "path": store.uri(paths.TRITON_REPOSITORY),
            "manifest": store.uri(paths.triton_release(release)),
            "versions": markdown_table(table),
            "parameters": markdown_table(params),
        },
        check_results=[dg.AssetCheckResult(check_name="configs_valid", passed=True,
                                           severity=dg.AssetCheckSeverity.ERROR, description=description,
                                           metadata={"description": description})],
    )


class DeploymentConfig(dg.Config):
    smoke_user_id: int = -1
    """The user of the smoke-test request sent once the ensemble is ready (-1: anonymous)."""
    smoke_device_type: int = 1


@dg.asset(group_name=GROUP, kinds={"triton"}, deps=[triton_model_repository, "online_features", "popularity_tables"])
def triton_deployment(context: dg.AssetExecutionContext, config: DeploymentConfig, artifacts: ArtifactStoreResource,
                      profile: DeploymentProfileResource, triton: TritonResource) -> dg.MaterializeResult:
    """The served release: the local tritonserver (started or hot-swapped) or the Helm release on Kubernetes."""
    store = artifacts.store()
    history = releases(store)
    if not history:
        raise dg.Failure("no release manifest under serving/releases: materialize triton_model_repository first")
    release = history[-1]
    if profile.is_k8s:
        cmd = deploy.helm_command(store.uri(paths.TRITON_REPOSITORY), release=triton.helm_release,
                                  namespace=triton.helm_namespace, chart=Path(triton.helm_chart),
                                  values=triton.helm_values, helm=triton.helm,
                                  extra_set={"env.RECSYS_RELEASE": str(release.release)})
        context.log.info("+ " + " ".join(cmd))
        out = deploy.run_helm(cmd)
        return dg.MaterializeResult(metadata={"release": release.release, "helm": " ".join(cmd),
                                              "output": dg.MetadataValue.md(f"```\n{out[-3000:]}\n```")})
    if store.is_s3:
        raise dg.Failure("the local profile serves a local artifact root; with s3:// use RECSYS_PROFILE=k8s")
    root = Path(store.root)
    environ, valkey = deploy.local_environ(root)
    server, action, seconds = deploy.deploy_local(root, store.local_path(paths.TRITON_REPOSITORY), environ,
                                                  triton.ports(), changed=release.changed,
                                                  timeout=triton.load_timeout_s)
    smoke = _smoke_test(server, config)
    return dg.MaterializeResult(metadata={
        "release": release.release,
        "action": action,
        "seconds_to_ready": round(seconds, 1),
        "http": f"http://{server.http_url}",
        "grpc": server.grpc_url,
        "metrics": f"http://{server.host}:{server.metrics_port}/metrics",
        "pid": server.pid,
        "valkey": environ["RECSYS_VALKEY_URL"] + (" (embedded)" if valkey is not None else ""),
        "log": str(server.log_path),
        "smoke_test": dg.MetadataValue.json(smoke),
        "stop": "python -m recsys_assets.serving.serve stop",
    })


def _smoke_test(server, config: DeploymentConfig) -> dict:
    from recsys_assets.serving.client import RecommendationClient

    with RecommendationClient(server.http_url, protocol="http") as client:
        t0 = time.perf_counter()
        ids, scores = client.recommend(config.smoke_user_id, device_type=config.smoke_device_type)
        ms = (time.perf_counter() - t0) * 1e3
    if len(ids) == 0:
        raise dg.Failure(f"the deployed ensemble answered an empty list for user {config.smoke_user_id}")
    return {"user_id": config.smoke_user_id, "device_type": config.smoke_device_type, "ms": round(ms, 1),
            "ids": ids.tolist(), "scores": [round(float(s), 4) for s in scores]}
