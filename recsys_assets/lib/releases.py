"""Whole releases: candidates, their evaluation as served, promotion into a running Triton, rollback.

A *release* is a manifest (:class:`recsys_assets.serving.repository.Release`, ``serving/releases/<n>.json``) naming
one version of every model. This module adds what a release needs to be served as one unit, built on the versioned
repository of :mod:`recsys_assets.serving.repository` (composed, not duplicated):

Served names (the switch is atomic per request)
    Every served (model, version) pair is a Triton model of its own, ``<model>_v<version>``
    (:func:`alias`): a folder with that model's config for that version (its own parameters) and one version
    folder, a relative symlink to ``<model>/<version>``. The served ``ensemble_model`` names those aliases in its
    steps, and its own version *is the release number*. Triton's ensemble scheduler takes a handle on every
    step model when a request starts, so a request runs entirely on the models of the ensemble version it
    entered: no request mixes two releases, and the response's ``model_version`` says which release answered.
    A version changes only when its content or parameters change, so a fine-tune (new ``query_tower`` and
    ``dlrm_ranking``) loads two models beside the serving ones; a weekly retrain (new vocabularies, towers,
    index, ranker, mean age) loads every changed one, each with its own parameters, before the switch.

Promotion (:func:`promote`)
    1. write the aliases of the target release and load those not loaded yet (the old release keeps serving;
       a load failure stops here and says which model failed and why);
    2. rewrite ``ensemble_model/config.pbtxt`` for the target (steps -> its aliases, version = release) and
       load it: Triton swaps ensemble versions once the new one is ready, requests in flight finish on the
       old one (their handles keep its models alive);
    3. verify: the ensemble serves exactly the target version and every smoke request answers from it (else
       switch back and fail);
    4. unload every model the target does not use.
    Rollback is a promotion of the previous release of the promotion stack (:class:`ServedState`).

Records (``releases/records/<n>.json``, :class:`ReleaseRecord`): what a release was built from (kind
``full`` or ``finetune``, parent release, day, the SavedModels it can be fine-tuned from), its gate outcome and
status (``candidate`` -> ``promoted`` | ``gate_failed`` | ``load_failed`` | ``rolled_back``). The served state
(``releases/served.json``) holds the release serving now and the stack of promoted releases.

Evaluation as served (:class:`ReleaseScorer`): a release is scored from its own repository versions (compiled
transforms, ONNX towers through the serving stage's feeder, FAISS index, availability, multimodal table) on raw
rows, so a candidate and the served release are compared on the same held-out rows even when their
vocabularies differ.

Pure: numpy/pandas, the serving package and Triton's client; no Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from recsys_assets.lib import paths
from recsys_assets.serving.repository import (
    ENSEMBLE,
    MODELS,
    Release,
    ServingDefaults,
    TrainedArtifacts,
    _header,
    build_repository,
    parse_config,
    write_config,
)

KINDS = ("full", "finetune")
STATUSES = ("candidate", "gate_failed", "promoted", "load_failed", "rolled_back")
_ALIAS = re.compile(r"^(?P<model>.+)_v(?P<version>\d+)$")


class ReleaseError(RuntimeError):
    """A release cannot be built, recorded or served as asked; the message says why and what to do."""


class PromotionError(ReleaseError):
    """A switch did not happen; the release named in :attr:`serving` still serves."""

    def __init__(self, message: str, serving: int | None) -> None:
        super().__init__(message)
        self.serving = serving


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- names ------------------------------------------------------------------------------------------------------
def alias(model: str, version: int) -> str:
    """The Triton model name serving ``version`` of ``model`` (``query_tower_v3``)."""
    return f"{model}_v{int(version)}"


def parse_alias(name: str) -> tuple[str, int] | None:
    """``(model, version)`` of an alias name, None for anything else (canonical names, the ensemble)."""
    m = _ALIAS.match(name)
    if m is None or m.group("model") not in MODELS:
        return None
    return m.group("model"), int(m.group("version"))


# -- records ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReleaseRecord:
    """What a release is, where its trainable models are, and what happened to it."""

    release: int
    kind: str
    status: str = "candidate"
    created_at: str = dataclasses.field(default_factory=now)
    parent: int | None = None
    day: int | None = None
    # variant, two_tower (folder holding model/ query_tower/ candidate_tower/), dlrm (folder holding model/ and
    # meta.json),
    # item_vectors (.npy the FAISS index was built from): relative to the artifact root
    lineage: dict = dataclasses.field(default_factory=dict)
    evaluation: dict = dataclasses.field(default_factory=dict)
    gate_passed: bool | None = None
    reasons: list = dataclasses.field(default_factory=list)
    ensemble_config: str = ""  # the canonical ensemble config this release was built with
    events: list = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"release kind {self.kind!r}: expected one of {KINDS}")
        if self.status not in STATUSES:
            raise ValueError(f"release status {self.status!r}: expected one of {STATUSES}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> "ReleaseRecord":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def event(self, action: str, **details) -> None:
        self.events.append({"action": action, "at": now(), **details})


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclasses.dataclass
class ServedState:
    """The release the server answers with, and every release promoted before it (oldest first)."""

    release: int
    stack: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> "ServedState":
        data = json.loads(text)
        return cls(release=int(data["release"]), stack=[int(r) for r in data.get("stack", [])],
                   events=list(data.get("events", [])))

    def previous(self) -> int | None:
        """The release a rollback returns to: the one promoted before the serving one."""
        earlier = [r for r in self.stack if r != self.release]
        return earlier[-1] if earlier else None


def manifests(store) -> list[Release]:
    """Every release manifest under the artifact root, oldest first."""
    found = [p for p in store.list(paths.TRITON_RELEASES) if p.endswith(".json")]
    return sorted((Release.from_json(store.read_bytes(p).decode()) for p in found), key=lambda r: r.release)


def manifest(store, release: int) -> Release:
    rel = paths.triton_release(release)
    if not store.exists(rel):
        raise ReleaseError(f"release {release} has no manifest ({store.uri(rel)})")
    return Release.from_json(store.read_bytes(rel).decode())


def records(store) -> dict[int, ReleaseRecord]:
    found = [p for p in store.list(paths.RELEASE_RECORDS) if p.endswith(".json")]
    out = {}
    for p in found:
        record = ReleaseRecord.from_json(store.read_bytes(p).decode())
        out[record.release] = record
    return dict(sorted(out.items()))


def record(store, release: int) -> ReleaseRecord | None:
    rel = paths.release_record(release)
    return ReleaseRecord.from_json(store.read_bytes(rel).decode()) if store.exists(rel) else None


def write_record(store, rec: ReleaseRecord) -> None:
    store.write_bytes(paths.release_record(rec.release), rec.to_json().encode())


def served_state(store) -> ServedState | None:
    """The recorded served release; before the first promotion, the newest release no record marks as a
    candidate (the one ``triton_deployment`` put into service), or None when there is no release at all."""
    if store.exists(paths.SERVED_RELEASE):
        return ServedState.from_json(store.read_bytes(paths.SERVED_RELEASE).decode())
    known = records(store)
    bootstrap = [m.release for m in manifests(store) if m.release not in known or known[m.release].status == "promoted"]
    return ServedState(release=bootstrap[-1], stack=[bootstrap[-1]]) if bootstrap else None


def write_served_state(store, state: ServedState) -> None:
    store.write_bytes(paths.SERVED_RELEASE, state.to_json().encode())


def next_release(store) -> int:
    known = [m.release for m in manifests(store)] + list(records(store))
    return max(known, default=0) + 1


@contextlib.contextmanager
def repository_lock(root: Path, timeout_s: float = 600.0):
    """An exclusive lock on the live repository of a local artifact root (candidate builds and switches)."""
    import fcntl

    path = Path(root) / "serving" / ".repository.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ReleaseError(f"the repository lock {path} is held by another run for {timeout_s:.0f} s: "
                                       "wait for it to finish (a promotion or a candidate build)") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- a release's artifacts inside the repository ---------------------------------------------------------------
def version_dir(repository: Path, release: Release, model: str) -> Path:
    path = Path(repository) / model / str(release.models[model])
    if not path.is_dir():
        raise ReleaseError(f"release {release.release} needs {model}/{release.models[model]}, which is no longer in "
                           f"{repository}: it was pruned (only the last releases are kept); rebuild it")
    return path


def trained_from_release(repository: Path, release: Release, **overrides) -> TrainedArtifacts:
    """The artifacts ``release`` serves, read from its repository versions; ``overrides`` replace some
    (a fine-tune passes its new ``query_tower`` and ``dlrm``)."""
    faiss_dir = version_dir(repository, release, "faiss_retrieval")
    params = release.parameters
    fields = dict(
        transforms_dir=version_dir(repository, release, "nvt_user_transform") / "transforms",
        query_tower=version_dir(repository, release, "query_tower") / "model.onnx",
        dlrm=version_dir(repository, release, "dlrm_ranking") / "model.onnx",
        faiss_index=faiss_dir / "index.faiss",
        faiss_ids=(faiss_dir / "index_ids.npy") if (faiss_dir / "index_ids.npy").exists() else None,
        multimodal=version_dir(repository, release, "multimodal_embedding_lookup") / "multimodal.npy",
        items=version_dir(repository, release, "feast_item_lookup") / "items.parquet",
        query_tower_input_map=json.loads(params["query_tower"].get("INPUT_MAP") or "{}"),
        dlrm_input_map=json.loads(params["dlrm_ranking"].get("INPUT_MAP") or "{}"),
        image_dims=int(params["multimodal_embedding_lookup"]["IMAGE_DIMS"]),
    )
    fields.update(overrides)
    return TrainedArtifacts(**fields)


def defaults_from_release(repository: Path, release: Release) -> ServingDefaults:
    """The serving defaults ``release`` was built with (its parameters and instance counts), so a rebuild that
    only swaps artifacts leaves every other model's version as it is."""
    p = release.parameters
    cp, fr, fs = p["context_preprocessor"], p["faiss_retrieval"], p["filter_seen_items"]
    counts = {}
    for model in MODELS:
        config = parse_config(Path(repository) / model / "config.pbtxt")
        counts[model] = int(config.instance_group[0].count) if config.instance_group else 1
    instances = max(set(counts.values()), key=list(counts.values()).count)
    return ServingDefaults(
        retrieval_topk=int(fr["RETRIEVAL_TOPK"]), retrieval_margin=int(fr["RETRIEVAL_MARGIN"]),
        ranking_topk=int(cp["RANKING_TOPK"]), default_top_k=int(cp["DEFAULT_TOP_K"]),
        diversity_mode=cp["DIVERSITY_MODE"] == "true",
        diversity_temperature=float(p["softmax_sampling"]["DIVERSITY_TEMPERATURE"]),
        sampling_seed=int(p["softmax_sampling"]["SAMPLING_SEED"]),
        bloom_capacity=int(fs["BLOOM_CAPACITY"]), bloom_error_rate=float(fs["BLOOM_ERROR_RATE"]),
        bloom_ttl_s=int(fs["BLOOM_TTL_S"]), bloom_mode=fs["BLOOM_MODE"],
        item_cache_refresh_s=float(p["feast_item_lookup"]["ITEM_CACHE_REFRESH_S"]),
        feast_read=p["feast_user_lookup"]["FEAST_READ"], instances=instances,
        instance_counts={m: c for m, c in counts.items() if c != instances},
    )


def start_date_of(release: Release) -> str:
    return release.parameters["faiss_retrieval"]["START_DATE"]


def canonical_ensemble(repository: Path) -> str:
    """The ensemble config as the build wrote it (model names, no aliases); from the templates if the live one
    is already a served (aliased) config."""
    from recsys_assets.serving.repository import TEMPLATES

    path = Path(repository) / ENSEMBLE / "config.pbtxt"
    if path.exists():
        text = path.read_text()
        config = parse_config(path)
        if not any(parse_alias(s.model_name) for s in config.ensemble_scheduling.step):
            return text
    return (TEMPLATES / ENSEMBLE / "config.pbtxt").read_text()


# -- candidates -------------------------------------------------------------------------------------------------
def assemble_candidate(target: Path, previous: Path | None, trained: TrainedArtifacts, defaults: ServingDefaults,
                       start_date: str, release: int, history: Sequence[Release], keep_releases: int = 3,
                       served: Release | None = None, served_ensemble: str = "",
                       expected_changes: Iterable[str] | None = None,
                       pending: Sequence[Release] = ()) -> tuple[Release, str]:
    """Build release ``release`` into ``target`` from the live repository ``previous``, keeping what serves.

    ``target`` == ``previous`` builds in place (the local live repository): the folders of the models the
    candidate does not change are left untouched, so promoting it loads only the changed models' aliases.

    ``history``: the promoted releases, oldest first, the serving one last: unchanged models keep its versions,
    and the versions of the last ``keep_releases - 1`` of them stay (rollback) beside the candidate's. The
    configs still describe ``served`` afterwards (the candidate is not served until promoted). With
    ``expected_changes``, a model outside it that changed fails the build (a fine-tune changes only the towers).
    ``pending``: candidates not promoted yet whose versions must survive this build (:func:`pending_candidates`).
    Returns the candidate manifest and its canonical ensemble config.
    """
    # Candidates not promoted yet keep their versions too (a fine-tune built while a weekly retrain's candidate
    # waits must not prune the retrain's versions); the serving release stays last (unchanged models keep its
    # versions).
    history = list(history)
    pending = [p for p in pending if p.release not in {h.release for h in history}]
    if pending and history:
        history = [*history[:-1], *pending, history[-1]]
    built = build_repository(Path(target), trained, defaults, start_date, release, previous=previous,
                             previous_releases=history, keep_releases=keep_releases + len(pending))
    ensemble_text = (Path(target) / ENSEMBLE / "config.pbtxt").read_text()
    if expected_changes is not None:
        unexpected = sorted(set(built.changed) - set(expected_changes) - {ENSEMBLE})
        if unexpected:
            if served is not None:  # built in place: the configs describe the served release again
                write_served(Path(target), served, served_ensemble or canonical_ensemble(Path(target)))
                from recsys_assets.serving.repository import restore_release

                restore_release(Path(target), served)
            raise ReleaseError(f"release {release} changes {unexpected} beyond {sorted(expected_changes)}: the "
                               "artifacts it was built from differ from the served release's; rebuild the release "
                               "with the full pipeline instead")
    _drop_stale_aliases(Path(target))
    if served is not None:
        write_served(Path(target), served, served_ensemble or canonical_ensemble(Path(target)))
    return built, ensemble_text


def pending_candidates(store, serving: int | None, limit: int = 2) -> list[Release]:
    """The newest ``limit`` releases built after the serving one and still promotable (a candidate, or a failed
    gate a person may still force), whose manifests exist."""
    found = [r.release for r in records(store).values() if r.status in ("candidate", "gate_failed")
             and (serving is None or r.release > serving)]
    out = []
    for number in sorted(found)[-limit:]:
        with contextlib.suppress(ReleaseError):
            out.append(manifest(store, number))
    return out


def _drop_stale_aliases(repository: Path) -> None:
    """Remove alias folders whose model version was pruned (their symlink points nowhere)."""
    for path in repository.iterdir():
        parsed = parse_alias(path.name)
        if parsed is not None and not (repository / parsed[0] / str(parsed[1])).is_dir():
            shutil.rmtree(path)


# -- served configs ---------------------------------------------------------------------------------------------
def write_aliases(repository: Path, release: Release) -> list[str]:
    """The alias model of every composing model of ``release`` (created or left as is); returns their names."""
    from google.protobuf import text_format

    repository = Path(repository)
    names = []
    for model in MODELS:
        version = int(release.models[model])
        version_dir(repository, release, model)
        name = alias(model, version)
        folder = repository / name
        folder.mkdir(exist_ok=True)
        link = folder / str(version)
        if link.is_symlink() and not link.exists():
            link.unlink()
        if not link.exists():
            link.symlink_to(Path("..") / model / str(version), target_is_directory=True)
        config = parse_config(repository / model / "config.pbtxt")
        config.name = name
        del config.version_policy.specific.versions[:]
        config.version_policy.specific.versions.append(version)
        config.parameters.clear()
        for key, value in release.parameters.get(model, {}).items():
            config.parameters[key].string_value = value
        text = _header(repository / model / "config.pbtxt") + text_format.MessageToString(config)
        path = folder / "config.pbtxt"
        if not path.exists() or path.read_text() != text:  # an unchanged file must not look modified to Triton
            path.write_text(text)
        names.append(name)
    return names


def write_served_ensemble(repository: Path, release: Release, ensemble_text: str) -> None:
    """``ensemble_model/config.pbtxt`` serving ``release``: steps on its aliases, version = the release number."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(ensemble_text, model_config_pb2.ModelConfig())
    for step in config.ensemble_scheduling.step:
        model = step.model_name
        if model not in release.models:
            raise ReleaseError(f"release {release.release}: the ensemble names {model!r}, which the manifest lacks")
        step.model_name = alias(model, release.models[model])
        step.model_version = int(release.models[model])
    del config.version_policy.specific.versions[:]
    config.version_policy.specific.versions.append(int(release.release))
    (Path(repository) / ENSEMBLE / str(release.release)).mkdir(parents=True, exist_ok=True)
    header = "# Served release %d (written by recsys_assets.lib.releases): steps run the release's model versions.\n"
    write_config(config, Path(repository) / ENSEMBLE / "config.pbtxt", header % release.release)


def write_served(repository: Path, release: Release, ensemble_text: str) -> list[str]:
    names = write_aliases(repository, release)
    write_served_ensemble(repository, release, ensemble_text)
    return names


def served_release_of(repository: Path) -> int | None:
    """The release the ensemble config on disk serves (None when it is a plain build, not a served config)."""
    config = parse_config(Path(repository) / ENSEMBLE / "config.pbtxt")
    if not any(parse_alias(s.model_name) for s in config.ensemble_scheduling.step):
        return None
    return int(config.version_policy.specific.versions[0])


# -- the switch -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SwitchReport:
    release: int
    previous: int | None
    loaded: list
    unloaded: list
    load_seconds: float
    switch_seconds: float
    seconds: float
    smoke: list

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _ready_models(client, headers=None) -> set[str]:
    return {m["name"] for m in client.get_model_repository_index(headers=headers) if m.get("state") == "READY"}


def answer(client, request: Mapping) -> dict:
    """One ensemble request (``user_id`` and optional ``device_type``, ``timestamp``, ``top_k``): the ids, scores
    and the ensemble version (= release) that answered."""
    import tritonclient.http as httpclient

    inputs = []
    for name in ("user_id", "device_type", "timestamp", "top_k"):
        if request.get(name) is not None:
            tensor = httpclient.InferInput(name, [1], "INT64")
            tensor.set_data_from_numpy(np.array([int(request[name])], np.int64))
            inputs.append(tensor)
    result = client.infer(ENSEMBLE, inputs, outputs=[httpclient.InferRequestedOutput("ordered_ids"),
                                                     httpclient.InferRequestedOutput("ordered_scores")])
    return {"ids": result.as_numpy("ordered_ids").tolist(), "scores": result.as_numpy("ordered_scores").tolist(),
            "release": int(result.get_response()["model_version"])}


def promote(server, repository: Path, target: Release, target_ensemble: str, current: Release | None = None,
            current_ensemble: str = "", smoke: Sequence[Mapping] = ({"user_id": -1, "device_type": 1},),
            timeout: float = 300.0) -> SwitchReport:
    """Switch the running ``server`` (a :class:`~recsys_assets.lib.triton_server.TritonServer`) to ``target``.

    See the module doc for the steps. On any failure the ensemble keeps (or is put back on) ``current`` and
    :class:`PromotionError` says what failed; the repository's served config is left describing what serves.
    """
    from recsys_assets.lib.triton_server import TritonError

    repository = Path(repository)
    serving = current.release if current is not None else None
    t0 = time.perf_counter()
    names = write_aliases(repository, target)
    with server.client() as client:
        ready = _ready_models(client, server.admin_headers)
    to_load = [n for n in names if n not in ready]
    try:
        server.load(to_load, timeout=timeout)
    except TritonError as exc:
        _unload(server, to_load)
        raise PromotionError(f"release {target.release} was not promoted: {_short(exc)}; release {serving} keeps "
                             "serving", serving) from exc
    t1 = time.perf_counter()
    write_served_ensemble(repository, target, target_ensemble)
    try:
        server.load([ENSEMBLE], timeout=timeout)
        smoke_results = verify(server, target.release, smoke, timeout=30.0)
    except Exception as exc:  # a failed load, a wrong version, a failed smoke request
        reason = _short(exc)
        if current is not None:
            write_served_ensemble(repository, current, current_ensemble)
            try:
                server.load([ENSEMBLE], timeout=timeout)
            except TritonError as back:
                raise PromotionError(f"release {target.release} failed ({reason}) and switching back to release "
                                     f"{serving} failed too ({_short(back)}): check the server log "
                                     f"{server.log_path}", None) from exc
        still_used = set() if current is None else {alias(m, current.models[m]) for m in MODELS}
        _unload(server, [n for n in to_load if n not in still_used])
        raise PromotionError(f"release {target.release} was not promoted: the ensemble switch failed ({reason}); "
                             f"release {serving} keeps serving", serving) from exc
    t2 = time.perf_counter()
    keep = set(names) | {ENSEMBLE}
    with server.client() as client:
        extra = sorted(_ready_models(client, server.admin_headers) - keep)
    _unload(server, extra)
    return SwitchReport(release=target.release, previous=serving, loaded=to_load, unloaded=extra,
                        load_seconds=round(t1 - t0, 3), switch_seconds=round(t2 - t1, 3),
                        seconds=round(time.perf_counter() - t0, 3), smoke=smoke_results)


def serve_release(root: Path, live: Path, target: Release, target_ensemble: str, current: Release | None,
                  current_ensemble: str, smoke: Sequence[Mapping], ports, timeout: float = 300.0) -> tuple:
    """The one way models change in the local live repository: serve ``target`` as a whole release.

    A server running on ``live``: :func:`promote` (load what the release adds beside what serves, switch the
    ensemble, verify, unload the rest; the old release keeps or gets back the traffic on failure). No server (or
    one on another folder): write the release's served configs and start the server on them. Both the promotion
    jobs (``served_release``) and ``triton_deployment`` call this. Returns ``(server, report)``; report
    ``action`` is ``reloaded`` or ``started``; raises :class:`PromotionError`.
    """
    from recsys_assets.serving import deploy

    server = deploy.running_server(root)
    if server is not None and Path(server.model_repository).resolve() == Path(live).resolve():
        report = promote(server, live, target, target_ensemble, current, current_ensemble, smoke,
                         timeout=timeout).as_dict()
        return server, {**report, "action": "reloaded"}
    write_served(live, target, target_ensemble)
    environ, _ = deploy.local_environ(root)
    t0 = time.perf_counter()
    try:
        server, _, _ = deploy.deploy_local(root, live, environ, ports, timeout=timeout)
        checked = verify(server, target.release, smoke, timeout=30.0)
    except Exception as exc:
        raise PromotionError(f"release {target.release} could not be started: {_short(exc)}", None) from exc
    return server, {"release": target.release, "previous": None, "loaded": ["(server started)"], "unloaded": [],
                    "seconds": round(time.perf_counter() - t0, 3), "smoke": checked, "action": "started"}


def verify(server, release: int, smoke: Sequence[Mapping], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:  # the old ensemble version leaves once its last request is done
            versions = [str(v) for v in client.get_model_metadata(ENSEMBLE).get("versions", [])]
            if versions == [str(release)]:
                break
            if time.monotonic() > deadline:
                raise ReleaseError(f"the ensemble serves versions {versions}, expected only [{release}]")
            time.sleep(0.05)
        results = []
        for request in smoke:
            got = answer(client, request)
            if got["release"] != release or not got["ids"]:
                raise ReleaseError(f"smoke request {dict(request)} was answered by release {got['release']} with "
                                   f"{len(got['ids'])} items (expected release {release}, at least one item)")
            results.append({**dict(request), **got})
    return results


def _unload(server, names: Sequence[str]) -> None:
    if not names:
        return
    with server.client() as client:
        for name in names:
            with contextlib.suppress(Exception):  # best effort: a model that never loaded has nothing to unload
                client.unload_model(name, headers=server.admin_headers)


def _short(exc: BaseException, limit: int = 600) -> str:
    text = str(exc).split("; log:")[0]
    return text if len(text) <= limit else text[:limit] + " ..."


# -- evaluation as served ---------------------------------------------------------------------------------------
class ReleaseScorer:
    """One release's models, read from its repository versions and fed the way the serving stages feed them."""

    def __init__(self, repository: Path, release: Release) -> None:
        from recsys_assets.lib import faiss_index as fx
        from recsys_assets.serving.stages.onnx_models import DlrmRanking, OnnxModel, QueryTower
        from recsys_assets.serving.transforms import CompiledTransforms

        self.release = release.release
        params = release.parameters
        self.transforms = CompiledTransforms.load(version_dir(repository, release, "nvt_user_transform") / "transforms")
        self.query = OnnxModel(version_dir(repository, release, "query_tower") / "model.onnx",
                               json.loads(params["query_tower"].get("INPUT_MAP") or "{}"), set(QueryTower.features))
        self.dlrm = OnnxModel(version_dir(repository, release, "dlrm_ranking") / "model.onnx",
                              json.loads(params["dlrm_ranking"].get("INPUT_MAP") or "{}"),
                              set(DlrmRanking.features) | set(DlrmRanking.derived))
        faiss_dir = version_dir(repository, release, "faiss_retrieval")
        self.index = fx.load(faiss_dir / "index.faiss")
        ids = faiss_dir / "index_ids.npy"
        self.position_ids = np.load(ids) if ids.exists() else None
        self.available_from = np.load(faiss_dir / "availability.npy")
        self.multimodal = np.load(version_dir(repository, release, "multimodal_embedding_lookup") / "multimodal.npy")
        self.image_dims = int(params["multimodal_embedding_lookup"]["IMAGE_DIMS"])

    def _features(self, rows, item: bool) -> dict:
        t = self.transforms
        out = {**t.transform_user(rows["user_id"].to_numpy(), rows["age"].to_numpy(), rows["gender"].to_numpy(),
                                  rows["top_category"].to_numpy()),
               **t.transform_context(rows["device_type"].to_numpy(), rows["timestamp"].to_numpy())}
        if item:
            raw = rows["item_id"].to_numpy(np.int64)
            out.update(t.transform_item(raw, rows["category_l1"].to_numpy(), rows["category_l2"].to_numpy(),
                                        rows["item_gender"].to_numpy(), rows["price"].to_numpy()))
            vectors = self.multimodal[raw]
            out["image_embedding"] = vectors[:, :self.image_dims]
            out["text_embedding"] = vectors[:, self.image_dims:]
            out["multimodal_embedding"] = vectors
        return out

    def click_probability(self, rows, batch: int = 8192) -> np.ndarray:
        """The ranker's p(click) for each impression row (raw columns of ``masked_interactions``)."""
        out = [np.asarray(self.dlrm.run(self._features(rows.iloc[s:s + batch], item=True)), np.float64).reshape(-1)
               for s in range(0, len(rows), batch)]
        return np.concatenate(out) if out else np.zeros(0)

    def retrieve(self, requests, day: int, k: int) -> np.ndarray:
        """Top-``k`` raw item ids per request among the items available on ``day`` (-1 padded)."""
        from recsys_assets.lib import faiss_index as fx

        vectors = np.asarray(self.query.run(self._features(requests, item=False)), np.float32)
        vectors = vectors.reshape(len(requests), -1)
        if self.position_ids is None:  # an IndexIDMap over raw ids
            allowed = np.flatnonzero(self.available_from <= day)
            return fx.search(self.index, vectors, k, allowed_ids=allowed).padded(k)
        allowed = np.flatnonzero(self.available_from[self.position_ids] <= day)  # positions of available ids
        found = fx.search(self.index, vectors, k, allowed_ids=allowed).padded(k)
        return np.where(found >= 0, self.position_ids[np.maximum(found, 0)], -1)


@dataclasses.dataclass
class EvaluationSlice:
    """Held-out rows of one day: every impression of the chosen sessions, and one retrieval request per session
    with a click (the features of its first impression; relevant = the items it clicked)."""

    day: int
    rows: object       # DataFrame: masked_interactions columns + session_id
    requests: object   # DataFrame: first impression per clicked session
    relevant: list

    @property
    def fingerprint(self) -> str:
        from recsys_assets.lib.evaluation import rows_fingerprint

        return rows_fingerprint(self.rows["interaction_id"].to_numpy())


def held_out_sessions(session_ids, share: float, seed: int, day: int) -> np.ndarray:
    """The session ids held out of fine-tuning for evaluation: a seeded ``share`` of the day's sessions."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout share {share}: expected a fraction strictly between 0 and 1")
    sessions = np.unique(np.asarray(session_ids, dtype=np.int64))
    n = int(round(share * len(sessions)))
    rng = np.random.default_rng([int(seed), int(day)])
    return np.sort(rng.choice(sessions, size=n, replace=False)) if n else np.zeros(0, np.int64)


def evaluation_slice(masked, raw, held_out: np.ndarray, day: int) -> EvaluationSlice:
    """The held-out sessions' rows: ``masked`` (features, unmasked days) joined with ``raw`` (session ids)."""
    rows = masked.merge(raw[["interaction_id", "session_id"]], on="interaction_id", how="inner", validate="1:1")
    rows = rows[rows["session_id"].isin(held_out)].sort_values(["session_id", "timestamp", "interaction_id"])
    rows = rows.reset_index(drop=True)
    clicked = rows[rows["click"] == 1]
    sessions = np.unique(clicked["session_id"].to_numpy())
    first = rows.groupby("session_id", sort=True).head(1).set_index("session_id").loc[sessions].reset_index()
    relevant = [np.unique(g["item_id"].to_numpy(np.int64)) for _, g in clicked.groupby("session_id", sort=True)]
    return EvaluationSlice(day=day, rows=rows, requests=first, relevant=relevant)


def popularity_scores(clicked_item_ids, n_items: int) -> np.ndarray:
    """Click counts per raw item with ties broken towards lower ids (the popularity tables' order)."""
    from recsys_assets.lib.popularity import tie_broken_scores

    counts = np.bincount(np.asarray(clicked_item_ids, np.int64), minlength=n_items).astype(np.float64)
    return tie_broken_scores(counts, np.arange(n_items), n_items)


def evaluate(scorer: ReleaseScorer | None, data: EvaluationSlice, k: int = 100, popularity: np.ndarray | None = None,
             available_from: np.ndarray | None = None) -> dict:
    """recall@k of retrieval and AUC of ranking on the slice, for a release (``scorer``) or, without one, for
    ``popularity`` scores (raw item id -> score) over the items available that day (``available_from``)."""
    from recsys_assets.lib.evaluation import popularity_top_k
    from recsys_assets.lib.metrics import auc, recall_at_k

    labels = data.rows["click"].to_numpy()
    items = data.rows["item_id"].to_numpy(np.int64)
    if scorer is None:
        if popularity is None or available_from is None:
            raise ValueError("evaluate needs a release scorer, or popularity scores and item availability")
        allowed = np.asarray(available_from) <= data.day
        ranked = popularity_top_k(popularity, np.broadcast_to(allowed, (len(data.requests), len(allowed))), k)
        scores = np.asarray(popularity)[items]
    else:
        ranked = scorer.retrieve(data.requests, data.day, k)
        scores = scorer.click_probability(data.rows)
    return {f"recall@{k}": recall_at_k(ranked, data.relevant, k), "auc": auc(labels, scores),
            "requests": int(len(data.requests)), "rows": int(len(data.rows)), "clicks": int(labels.sum())}


def gate(candidate: Mapping, served: Mapping | None, popularity: Mapping, fingerprint: str, k: int = 100,
         tolerance: float = 0.005) -> list:
    """DESIGN.md "Gates" on the slice: beat popularity on recall@k and AUC, and drop neither by more than
    ``tolerance`` against the served release on the same rows (no served release: popularity test only).
    Returns ``[(check name, passed, description)]`` for ``beats_popularity`` and ``no_regression``."""
    from recsys_assets.lib.evaluation import gate as metric_gate

    outcomes: dict[str, list] = {"beats_popularity": [], "no_regression": []}
    for metric in (f"recall@{k}", "auc"):
        deployed = None if served is None else {"fingerprint": fingerprint, "metrics": {metric: served[metric]}}
        for o in metric_gate(metric, float(candidate[metric]), float(popularity[metric]), deployed, fingerprint,
                             tolerance):
            outcomes[o.name].append(o)
    return [(name, all(o.passed for o in found), "; ".join(o.description for o in found))
            for name, found in outcomes.items()]


# -- lineage: where a release's trainable models are -----------------------------------------------------------
VARIANTS = ("plain", "context")  # = recsys_assets.ml.model_inputs.VARIANTS (lib does not import ml)


def file_digest(path) -> str:
    from recsys_assets.serving.repository import _input_digest

    return _input_digest(Path(path))


def lineage_of(store, release: Release) -> dict:
    """Where the models ``release`` serves can be restored from for fine-tuning: its record's lineage, or, for a
    release the full pipeline built (``triton_model_repository``), the trained models whose ONNX exports it
    serves (matched by digest, so a model retrained since is never mistaken for the served one)."""
    found = record(store, release.release)
    if found is not None and found.lineage:
        return dict(found.lineage)
    served_query, served_dlrm = release.inputs.get("query_tower"), release.inputs.get("dlrm")
    if store.exists(paths.DLRM_ONNX) and file_digest(store.local_path(paths.DLRM_ONNX)) != served_dlrm:
        raise ReleaseError(f"release {release.release} serves a DLRM other than {store.uri(paths.DLRM_ONNX)} (it was "
                           "retrained since): fine-tune from a release with a record, or build and promote a new "
                           "full release (retrained_release) first")
    for variant in VARIANTS:
        onnx = paths.query_tower_onnx(variant)
        if store.exists(onnx) and file_digest(store.local_path(onnx)) == served_query:
            return {"variant": variant, "two_tower": paths.two_tower(variant), "dlrm": paths.DLRM,
                    "item_vectors": paths.item_embeddings(variant)}
    raise ReleaseError(f"release {release.release}: no trained query tower under {store.uri(paths.ONNX)} is the one it "
                       "serves, so there is nothing to fine-tune from; build and promote a full release "
                       "(retrained_release) first")
