"""Serving: the versioned Triton model repository and its deployment (local tritonserver or Helm release).

- ``triton_model_repository``: assembles ``serving/triton_repository`` from the ``triton_repo/`` templates and the
  trained artifacts (compiled transforms, query tower and DLRM as ONNX, the FAISS index, the multimodal
  embeddings, the catalogue), injecting trained values (the training mean age, the start date) and the serving
  defaults of :class:`RepositoryConfig` as config parameters, and writes a release manifest
  (``serving/releases/<n>.json``: the version of every model). Blocking check ``configs_valid``: every config
  parses with Triton's protobufs, name == directory, the ensemble's tensors exist on both ends, required
  parameters are set. Runtime endpoints are never written into it (they come from the server's environment).
  What it serves: the query tower of the variant ``retrieval_evaluation`` selected (``RepositoryConfig.variant``
  overrides; with a single trained variant, that one), the DLRM, and the FAISS index of that variant that
  ``lib.daily.served_index`` names (the daily-grown index when it grew the trained one, else the trained index
  under ``index/faiss``). A model whose content and parameters did not change keeps its version AND its folder
  untouched, so a hot swap loads only the changed models (Triton reloads any model whose folder changed).
- ``triton_deployment``: local profile: starts the bundled tritonserver on fixed loopback ports (or hot-swaps the
  running one to the new release: the changed models, then the ensemble), waits for the ensemble, and sends one
  request as a smoke test; the server is left running for the API and ``make serve`` (stop it with
  ``python -m recsys_assets.serving.serve stop``). A release whose models fail to load or whose smoke test fails
  is taken back out by the deployment itself: the configs are restored to the release that served before
  (``restore_release``) and the models it changed reloaded, then the run fails saying what failed and which
  release serves. The served release is recorded (``releases/served.json``, the state the promotion jobs of
  ``defs/finetune`` share). Credentials in URLs never reach metadata or logs (redacted).
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
from recsys_assets.lib import releases as rl
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
# Trained artifacts of the models stage, relative to the artifact root. The query tower and the index exist per
# variant (plain, context); DEFAULT_VARIANT is served when nothing selected one and both exist.
DEFAULT_VARIANT = "plain"
QUERY_TOWER_ONNX = paths.query_tower_onnx(DEFAULT_VARIANT)
DLRM_ONNX = paths.DLRM_ONNX
FAISS_INDEX = paths.FAISS_INDEX  # the folder: <variant>.faiss (+ meta.json)
VARIANTS = ("plain", "context")
UPSTREAM = ["items", "serving_transforms", "item_multimodal_embeddings", "query_tower_onnx", "dlrm_onnx", "faiss_index"]


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
    variant: str = ""
    """The query tower (and its index) to serve: "" = the one retrieval_evaluation selected."""
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


def served_variant(store: ArtifactStore, configured: str = "") -> str:
    """The query-tower variant to serve: the configured one, else the one ``retrieval_evaluation`` selected, else
    the only variant with both a query tower and an index, else ``DEFAULT_VARIANT``."""
    import json

    if configured:
        if configured not in VARIANTS:
            raise ValueError(f"variant {configured!r}: expected one of {VARIANTS}")
        return configured
    summary = f"{paths.RETRIEVAL_EVALUATION}/summary.json"
    if store.exists(summary):
        selected = json.loads(store.read_bytes(summary)).get("selected_variant")
        if selected:
            return selected
    trained = [v for v in VARIANTS if store.exists(paths.query_tower_onnx(v)) and store.exists(paths.faiss_index(v))]
    return trained[0] if len(trained) == 1 else DEFAULT_VARIANT


def trained_artifacts(store: ArtifactStore, config: RepositoryConfig) -> TrainedArtifacts:
    from recsys_assets.lib.daily import served_index

    variant = served_variant(store, config.variant)
    multimodal = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS), mmap_mode="r")
    return TrainedArtifacts(
        transforms_dir=store.local_path(paths.SERVING_TRANSFORMS),
        query_tower=store.local_path(paths.query_tower_onnx(variant)),
        dlrm=store.local_path(DLRM_ONNX),
        faiss_index=store.local_path(served_index(store, variant)),
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
        if previous is not None and not store.is_s3:
            # In place: a running server's repository, where unchanged models' folders must stay untouched so
            # the next hot swap reloads only what changed (a failed build restores every config it rewrote).
            with rl.repository_lock(Path(store.root)):
                manifest = build_repository(previous, trained, config.defaults(), world.start_date, release,
                                            previous=previous, previous_releases=history,
                                            keep_releases=config.keep_releases)
        else:
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
    repository = store.local_path(paths.TRITON_REPOSITORY)
    state = rl.served_state(store) if store.exists(paths.SERVED_RELEASE) else None
    serving = deploy.running_server(root)
    previous = _previous_release(serving, store, history, state) if serving is not None else None
    environ, valkey = deploy.local_environ(root)
    valkey_url = deploy.redact_url(environ["RECSYS_VALKEY_URL"])
    # What to load: the models whose version differs from what serves (the manifest's own list when nothing does)
    changed = ([m for m in MODELS if previous.models.get(m) != release.models.get(m)] if previous is not None
               else list(release.changed))
    try:
        server, action, seconds = deploy.deploy_local(root, repository, environ, triton.ports(), changed=changed,
                                                      timeout=triton.load_timeout_s)
        smoke = _smoke_test(server, config)
    except Exception as exc:  # a model that cannot load, a smoke test that fails: take the release back out
        reason = deploy.redact_text(str(exc).split("; log:")[0])[:1500]
        if previous is None:
            raise dg.Failure(description=f"release {release.release} failed and no earlier release served to go "
                                         f"back to: {reason}", metadata={"release": release.release}) from exc
        try:
            restored = _restore(serving, repository, previous, changed, triton.load_timeout_s)
        except Exception as back:
            raise dg.Failure(description=f"release {release.release} failed ({reason}) and restoring release "
                                         f"{previous.release} failed too: {deploy.redact_text(str(back))[:1500]}",
                             metadata={"release": release.release, "restored": -1}) from exc
        context.log.warning(f"release {release.release} failed; release {previous.release} restored "
                            f"(reloaded: {', '.join(restored) or '-'})")
        raise dg.Failure(description=f"release {release.release} was taken back out: {reason}. Release "
                                     f"{previous.release} serves again (configs restored, reloaded: "
                                     f"{', '.join(restored) or 'nothing'})",
                         metadata={"release": release.release, "restored": previous.release,
                                   "reloaded": ", ".join(restored) or "-"}) from exc
    stack = [r for r in (state.stack if state else []) if r != release.release] + [release.release]
    events = [*(state.events if state else []), {"action": f"triton_deployment ({action})", "release":
                                                 release.release, "at": rl.now(), "run_id": context.run.run_id}]
    rl.write_served_state(store, rl.ServedState(release=release.release, stack=stack[-20:], events=events[-50:]))
    return dg.MaterializeResult(metadata={
        "release": release.release,
        "previous": previous.release if previous is not None else -1,
        "action": action,
        "loaded": ", ".join(changed) if action == "reloaded" else "all (server started)",
        "seconds_to_ready": round(seconds, 1),
        "http": f"http://{server.http_url}",
        "grpc": server.grpc_url,
        "metrics": f"http://{server.host}:{server.metrics_port}/metrics",
        "pid": server.pid,
        "valkey": valkey_url + (" (embedded)" if valkey is not None else ""),
        "log": str(server.log_path),
        "smoke_test": dg.MetadataValue.json(smoke),
        "stop": "python -m recsys_assets.serving.serve stop",
    })


def _previous_release(server, store: ArtifactStore, history: list, state) -> Release | None:
    """The release the running server answers with before this deployment: the newest earlier manifest whose
    every model version the server has loaded, else the recorded served release, else the newest but one."""
    with server.client() as client:
        ready: dict = {}
        for entry in client.get_model_repository_index():
            if entry.get("state") == "READY" and entry.get("version"):
                ready.setdefault(entry["name"], set()).add(str(entry["version"]))
    for candidate in reversed(history[:-1]):
        if all(str(candidate.models[m]) in ready.get(m, ()) for m in MODELS):
            return candidate
    if state is not None and state.release != history[-1].release:
        try:
            return rl.manifest(store, state.release)
        except rl.ReleaseError:
            pass
    return history[-2] if len(history) >= 2 else None


def _restore(server, repository: Path, previous: Release, changed: list, timeout: float) -> list:
    """Point the configs at ``previous`` again and reload what the failed release changed (the ensemble too when
    its config changed), so the server answers as before; returns the models reloaded."""
    from recsys_assets.serving.repository import ENSEMBLE, restore_release

    if server is None:
        return []
    restore_release(repository, previous)
    ready: dict = {}
    with server.client() as client:
        for entry in client.get_model_repository_index():
            if entry.get("state") == "READY" and entry.get("version"):
                ready.setdefault(entry["name"], set()).add(str(entry["version"]))
    # A model whose new version failed to load still serves its old one: leave it alone (no reload, no stall).
    reload = [m for m in changed if m != ENSEMBLE and m in ready and ready[m] != {str(previous.models[m])}]
    if reload:
        server.load(reload + [ENSEMBLE], timeout=timeout)
    return reload


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
