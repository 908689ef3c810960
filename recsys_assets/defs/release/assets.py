"""The release build: the versioned Triton model repository and its deployment (local tritonserver or Helm).

**One owner of the live repository: releases.** Models change in the live repository (``serving/
triton_repository``) only as whole releases, through one state machine,
:func:`recsys_assets.release.promotion.switch_release` (promote into the running server, or start one on the
release, then record it), which both ``triton_deployment`` and the
promotion jobs (``served_release`` in ``defs/release/releases.py``) call. Every served model is an alias
``<model>_v<version>`` and the ensemble's version is the release number, so no request mixes two releases and a
deployment never reloads the plain model folders under a promoted release.

- ``triton_model_repository``: assembles ``serving/triton_repository`` from the ``triton_repo/`` templates and the
  trained artifacts (compiled transforms, query tower and DLRM as ONNX, the FAISS index, the multimodal
  embeddings, the catalogue), injecting trained values (the training mean age, the start date) and the serving
  defaults of :class:`RepositoryConfig` as config parameters, and writes a release manifest
  (``serving/releases/<n>.json``: the version of every model) and its record (``releases/records/<n>.json``,
  kind ``full``, built by this asset; no gate, so the promotion sensor leaves it to ``triton_deployment``). When a
  release serves, the new one is built as a *candidate* beside it (``release.repository.assemble_candidate``: in place,
  the served configs untouched), exactly like a fine-tuned or retrained release. Blocking check ``configs_valid``:
  every config parses with Triton's protobufs, name == directory, the ensemble's tensors exist on both ends,
  required parameters are set. **Gated**: the evaluation assets (``retrieval_evaluation``, ``ranking_evaluation``)
  are upstream of it, so in a run that holds them (``serving_job``, the build's last layer) a failed blocking
  ``beats_popularity`` or ``no_regression`` skips it and ``triton_deployment``: nothing new is served, and the
  failed check's description says why. Runtime endpoints are never written into it (they come from the server's
  environment). What it serves: the query tower of the variant ``retrieval_evaluation`` selected
  (``RepositoryConfig.variant`` overrides; with a single trained variant, that one), the DLRM, and the FAISS index
  of that variant that ``lib.daily.served_index`` names (the daily-grown index when it grew the trained one, else
  the trained index under ``index/faiss``). A model whose content and parameters did not change keeps its
  version AND its folder untouched, so a switch loads only the changed models.
- ``triton_deployment``: local profile: deploys the newest release ``triton_model_repository`` built *as a
  release*: no server yet -> the server starts on it (``started``); a server runs an older release -> the new
  one is promoted into it (``reloaded``: its changed models load beside the serving ones, the ensemble switches,
  smoke requests must answer from it, then the old aliases unload); the release serving is the repository's or
  a newer one (a promoted fine-tune, a weekly retrain, a rollback target) -> nothing changes (``unchanged``: a
  deployment never undoes a promotion), and with no server running it starts on the release that serves. A
  release whose models fail to load or whose smoke test fails is taken back out by the same promotion code
  (the old release keeps or gets back the traffic, the model folders' configs are restored to it), then the run
  fails saying what failed and which release serves. The served release is recorded (``releases/served.json``,
  shared with the promotion jobs). Credentials in URLs never reach metadata or logs (redacted).
  k8s profile: ``helm upgrade --install`` of ``infra/helm/triton`` with the repository's S3 URI.
"""

import time
from pathlib import Path
from typing import Dict

import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.params import config_from_params, params_of
from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.release.resources import TritonResource
from recsys_assets.lib import paths
from recsys_assets.release import promotion, records, repository
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore
from recsys_assets.release import deploy
from recsys_assets.release.repository import (
    MODELS,
    Release,
    RepositoryError,
    ServingDefaults,
    TrainedArtifacts,
    build_repository,
)

GROUP = "release"
# Trained artifacts of the models stage, relative to the artifact root. The query tower and the index exist per
# variant (plain, context); DEFAULT_VARIANT is served when nothing selected one and both exist.
DEFAULT_VARIANT = "plain"
QUERY_TOWER_ONNX = paths.query_tower_onnx(DEFAULT_VARIANT)
DLRM_ONNX = paths.DLRM_ONNX
FAISS_INDEX = paths.FAISS_INDEX  # the folder: <variant>.faiss (+ meta.json)
VARIANTS = ("plain", "context")
# The evaluation gates are upstream on purpose: their blocking checks stop the repository in the run that holds
# them (the repository also reads the variant retrieval_evaluation selected).
GATES = ["retrieval_evaluation", "ranking_evaluation"]
UPSTREAM = ["items", "serving_transforms", "item_multimodal_embeddings", "query_tower_onnx", "dlrm_onnx",
            "faiss_index", *GATES]


class RepositoryConfig(config_from_params(ServingDefaults)):
    """The serving defaults injected into the repository as config parameters (``ServingDefaults``, declared there;
    requests may override top_k/diversity), and what to package."""

    keep_releases: int = 3
    variant: str = ""
    """The query tower (and its index) to serve: "" = the one retrieval_evaluation selected."""
    query_tower_input_map: Dict[str, str] = {}
    dlrm_input_map: Dict[str, str] = {}

    def defaults(self) -> ServingDefaults:
        return ServingDefaults(**params_of(self, ServingDefaults))


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
        **chosen_prior(store),
    )


def chosen_prior(store: ArtifactStore) -> dict:
    """The ordering prior's weight and coefficients ``ranking_evaluation`` chose for the trained DLRM, as
    :class:`TrainedArtifacts` fields (weight 0 and the default coefficients where it recorded none)."""
    import json

    from recsys_assets.lib import prior

    summary = f"{paths.RANKING_EVALUATION}/summary.json"
    chosen = json.loads(store.read_bytes(summary)).get("prior", {}) if store.exists(summary) else {}
    return {"prior_weight": float(chosen.get("weight", 0.0)),
            "prior_coefficients": prior.check_coefficients(chosen.get("coefficients", prior.DEFAULT_COEFFICIENTS))}


def _failed(name: str, description: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"problem": description},
        check_results=[check(name, False, description)])


@dg.asset(group_name=GROUP, kinds={"triton"}, deps=UPSTREAM,
          check_specs=check_specs("triton_model_repository", ("configs_valid",)))
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
    state = records.served_state(store) if store.exists(paths.SERVED_RELEASE) else None
    ensemble_text = ""
    t0 = time.perf_counter()
    try:
        if previous is not None and not store.is_s3 and state is not None:
            # A release serves: build the new one as a candidate beside it (in place, unchanged models' folders
            # untouched, the served configs left as they are); triton_deployment then promotes it like any
            # release, so a deployment never reloads models under the serving release.
            with repository.repository_lock(Path(store.root)):
                served = records.manifest(store, state.release)
                found = records.record(store, served.release)
                manifest, ensemble_text = repository.assemble_candidate(
                    previous, previous, trained, config.defaults(), world.start_date, release,
                    [records.manifest(store, r) for r in state.stack], config.keep_releases, served=served,
                    served_ensemble=found.ensemble_config if found is not None and found.ensemble_config
                    else repository.canonical_ensemble(previous),
                    pending=records.pending_candidates(store, served.release))
        elif previous is not None and not store.is_s3:
            # In place, nothing served yet (the configs are the plain build's).
            with repository.repository_lock(Path(store.root)):
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
    if not store.is_s3:
        if not ensemble_text:
            ensemble_text = (store.local_path(paths.TRITON_REPOSITORY) / "ensemble_model" / "config.pbtxt").read_text()
        record = records.ReleaseRecord(release=release, kind="full", status="candidate",
                                  parent=state.release if state else None, ensemble_config=ensemble_text)
        record.event("built", by="triton_model_repository", run_id=context.run.run_id)
        records.write_record(store, record)
    import pandas as pd

    table = pd.DataFrame({"model": list(manifest.models), "version": list(manifest.models.values()),
                          "changed": [m in manifest.changed for m in manifest.models]})
    params = pd.DataFrame([(m, k, v) for m, kv in manifest.parameters.items() for k, v in kv.items()
                           if k.isupper() and m in MODELS], columns=["model", "parameter", "value"])
    description = f"{len(manifest.models)} configs parse, names match directories, ensemble wiring complete"
    return dg.MaterializeResult(
        metadata={
            "release": release,
            "layout": manifest.layout,
            "changed_models": len(manifest.changed),
            "mean_age": float(manifest.parameters["feast_user_lookup"]["MEAN_AGE"]),
            "bytes": store.size_bytes(paths.TRITON_REPOSITORY),
            "seconds": round(seconds, 2),
            "path": store.uri(paths.TRITON_REPOSITORY),
            "manifest": store.uri(paths.triton_release(release)),
            "versions": markdown_table(table),
            "parameters": markdown_table(params),
        },
        check_results=[check("configs_valid", True, description)],
    )


class DeploymentConfig(dg.Config):
    smoke_user_id: int = -1
    """The user of the smoke-test request sent once the ensemble is ready (-1: anonymous)."""
    smoke_device_type: int = 1


@dg.asset(group_name=GROUP, kinds={"triton"}, deps=[triton_model_repository, "online_features", "popularity_tables"])
def triton_deployment(context: dg.AssetExecutionContext, config: DeploymentConfig, artifacts: ArtifactStoreResource,
                      profile: DeploymentProfileResource, triton: TritonResource) -> dg.MaterializeResult:
    """The served release: the local tritonserver (started, or switched to the repository's new release through
    the release path) or the Helm release on Kubernetes."""
    store = artifacts.store()
    history = releases(store)
    if not history:
        raise dg.Failure("no release manifest under serving/releases: materialize triton_model_repository first")
    if profile.is_k8s:
        release = history[-1]
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
    live = store.local_path(paths.TRITON_REPOSITORY)
    state = records.served_state(store) if store.exists(paths.SERVED_RELEASE) else None
    target = _repository_release(store, history)
    built = records.record(store, target.release)
    if state is not None and state.release != target.release and built is not None \
            and built.status == "load_failed":
        # Its deployment failed once: it is not retried (a restart must come up on what served); rebuild it.
        context.log.warning(f"release {target.release} failed to deploy before; release {state.release} serves")
        target = records.manifest(store, state.release)
    server = deploy.running_server(root)
    on_live = server is not None and Path(server.model_repository).resolve() == live.resolve()
    environ, valkey = deploy.local_environ(root)
    valkey_url = deploy.redact_url(environ["RECSYS_VALKEY_URL"])
    if state is not None and state.release >= target.release:
        # A release promoted after the repository's (a fine-tune, a retrain, a rollback target) serves: deploying
        # must not take it back; with no server running, start one on the release that serves.
        if on_live:
            why = (f"release {state.release} serves (promoted after or as the repository's release "
                   f"{target.release}): nothing to deploy, the promotion is not undone")
            context.log.info(why)
            return dg.MaterializeResult(metadata={"release": state.release, "previous": state.release,
                                                  "action": "unchanged", "loaded": "-", "why": why,
                                                  "http": f"http://{server.http_url}", "valkey": valkey_url})
        target = records.manifest(store, state.release)
    current = records.manifest(store, state.release) if state is not None and on_live else None
    smoke = [{"user_id": config.smoke_user_id, "device_type": config.smoke_device_type}]
    try:
        switched = promotion.switch_release(store, root, live, target, current, state, "deployment", smoke,
                                            triton.ports(), run_id=context.run.run_id,
                                            timeout=triton.load_timeout_s, redact=deploy.redact_text)
    except promotion.PromotionError as exc:
        if exc.restored is None:
            raise dg.Failure(description=f"release {target.release} failed and no earlier release served to go "
                                         f"back to: {exc}", metadata={"release": target.release}) from exc
        context.log.warning(f"release {target.release} failed; release {exc.restored} serves")
        raise dg.Failure(description=f"release {target.release} was taken back out: {exc}. Release "
                                     f"{exc.restored} serves again (configs restored)",
                         metadata={"release": target.release, "restored": exc.restored}) from exc
    server, report = switched.server, switched.report
    loaded = [parsed[0] for parsed in map(repository.parse_alias, report["loaded"]) if parsed is not None]
    return dg.MaterializeResult(metadata={
        "release": target.release,
        "layout": target.layout,
        "previous": current.release if current is not None else -1,
        "action": report["action"],
        "loaded": ", ".join(m for m in MODELS if m in loaded) if report["action"] == "reloaded"
        else "all (server started)",
        "unloaded": ", ".join(report["unloaded"]) or "-",
        "seconds_to_ready": round(report["seconds"], 1),
        "http": f"http://{server.http_url}",
        "grpc": server.grpc_url,
        "metrics": f"http://{server.host}:{server.metrics_port}/metrics",
        "pid": server.pid,
        "valkey": valkey_url + (" (embedded)" if valkey is not None else ""),
        "log": str(server.log_path),
        "smoke_test": dg.MetadataValue.json(report["smoke"][0] if report["smoke"] else {}),
        "stop": "python -m recsys_assets.release.serve stop",
    })


def _repository_release(store: ArtifactStore, history: list) -> Release:
    """The newest release ``triton_model_repository`` built (its record says so); the newest manifest on a root
    whose releases predate records."""
    for manifest in reversed(history):
        found = records.record(store, manifest.release)
        if found is not None and any(e.get("by") == "triton_model_repository" for e in found.events):
            return manifest
    built = [m for m in history if records.record(store, m.release) is None]
    return built[-1] if built else history[-1]

