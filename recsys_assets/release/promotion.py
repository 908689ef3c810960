"""Promotion of a whole release into a running Triton, rollback, and the one state machine that records them.

A *release* is a manifest (:class:`recsys_assets.release.repository.Release`, ``serving/releases/<n>.json``) naming
one version of every model. This module adds what a release needs to be served as one unit, built on the versioned
repository of :mod:`recsys_assets.release.repository` (composed, not duplicated):

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

The executor layout (a release's ``layout``, ``serving.graph``)
    ``ensemble_model`` is then one python model running the whole graph, version = the release number; step 1
    writes the aliases' folders but loads none (the executor builds their stages itself), step 2 loads the
    executor, which swaps versions the same way: a request runs entirely on the version it entered. Switching
    layouts is a promotion like any other (step 4 unloads the ensemble layout's aliases).

The state machine around it (:func:`switch_release`): every way a release comes to serve (promotion, rollback,
restart, deployment) switches through :func:`serve_release` and records the outcome the same way (the target's
record, the served state and its trimmed history, the configs restored on failure). Records and the served state:
:mod:`recsys_assets.release.records`; scoring a candidate: :mod:`recsys_assets.release.scoring`.

Pure: the release package and Triton's client; no Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Mapping, Sequence

from recsys_assets.release import records
from recsys_assets.release.records import ServedState
from recsys_assets.release.repository import (
    ENSEMBLE,
    MODELS,
    Release,
    ReleaseError,
    RepositoryError,
    alias,
    repository_lock,
    restore_release,
    write_aliases,
    write_served,
    write_served_ensemble,
)

ACTIONS = ("promotion", "rollback", "restart", "deployment")
HISTORY_KEPT = 20  # promoted releases the served state remembers (the rollback targets)
EVENTS_KEPT = 50


class PromotionError(ReleaseError):
    """A switch did not happen; the release named in :attr:`serving` still serves."""

    def __init__(self, message: str, serving: int | None, restored: int | None = None) -> None:
        super().__init__(message)
        self.serving = serving
        self.restored = restored  # the release the model folders' configs were put back on, if any


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
    """One ensemble request (``user_id`` and optional ``device_type``, ``timestamp``, ``top_k``, ``diversity``): the
    ids, scores and the ensemble version (= release) that answered."""
    import tritonclient.http as httpclient

    from recsys_assets.lib.ensemble_request import infer_inputs, requested_outputs

    fields = ("user_id", "device_type", "timestamp", "top_k", "diversity")
    inputs = infer_inputs(httpclient, **{name: request.get(name) for name in fields})
    result = client.infer(ENSEMBLE, inputs, outputs=requested_outputs(httpclient))
    return {"ids": result.as_numpy("ordered_ids").tolist(), "scores": result.as_numpy("ordered_scores").tolist(),
            "release": int(result.get_response()["model_version"])}


def promote(server, repository: Path, target: Release, target_ensemble: str, current: Release | None = None,
            current_ensemble: str = "", smoke: Sequence[Mapping] = ({"user_id": -1, "device_type": 1},),
            timeout: float = 300.0) -> SwitchReport:
    """Switch the running ``server`` (a :class:`~recsys_assets.release.triton_server.TritonServer`) to ``target``.

    See the module doc for the steps. On any failure the ensemble keeps (or is put back on) ``current`` and
    :class:`PromotionError` says what failed; the repository's served config is left describing what serves.
    """
    from recsys_assets.release.triton_server import TritonError

    repository = Path(repository)
    serving = current.release if current is not None else None
    t0 = time.perf_counter()
    names = write_aliases(repository, target)
    if target.layout == "executor":  # the executor builds the aliases' stages itself: Triton loads none of them
        names = []
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
        still_used = (set() if current is None or current.layout == "executor"
                      else {alias(m, current.models[m]) for m in MODELS})
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
    from recsys_assets.release import deploy

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


# -- the release state machine ---------------------------------------------------------------------------------
def served_after(state: ServedState | None, release: int, action: str, event: Mapping) -> ServedState:
    """The served state once ``release`` serves after ``action`` (pure).

    ``rollback``: the serving release leaves the top of the stack, so a second rollback goes further back;
    ``restart``: the stack stays as it is; ``promotion`` and ``deployment``: ``release`` moves to the top (once).
    Only the last :data:`HISTORY_KEPT` releases and :data:`EVENTS_KEPT` events are kept.
    """
    if action not in ACTIONS:
        raise ValueError(f"release action {action!r}: expected one of {ACTIONS}")
    stack = list(state.stack) if state is not None else []
    if action == "rollback" and state is not None and stack and stack[-1] == state.release:
        stack.pop()
    if action != "restart" or not stack:
        stack = [r for r in stack if r != release] + [release]
    events = [*(state.events if state is not None else []), {"action": action, "release": release, **event}]
    return ServedState(release=release, stack=stack[-HISTORY_KEPT:], events=events[-EVENTS_KEPT:])


@dataclasses.dataclass
class Switched:
    server: object          # the TritonServer now serving
    report: dict            # serve_release's report (action ``reloaded`` or ``started``, loaded, unloaded, smoke)
    state: ServedState      # the served state written
    record: object          # the target's ReleaseRecord (None for a release without one)


def switch_release(store, root: Path, live: Path, target: Release, current: Release | None,
                   state: ServedState | None, action: str, smoke: Sequence[Mapping], ports, run_id: str = "",
                   timeout: float = 300.0, redact=str, serve=None) -> Switched:
    """The one release state machine: serve ``target`` in place of ``current`` and record what happened.

    Every way a release comes to serve goes through here (``served_release``: promotion, rollback, restart;
    ``triton_deployment``: deployment), under the repository lock:

    1. :func:`serve_release` (promote into the running server, or start one on the release);
    2. success: the served state moves on (:func:`served_after`), the target's record becomes ``promoted``, and a
       rollback marks the release it left ``rolled_back``;
    3. failure (a model that does not load, a smoke request not answered by the target): the target's record
       becomes ``load_failed`` with the reason, the model folders' configs are restored to ``current`` (the ensemble
       already serves it again), and :class:`PromotionError` says what failed, which release serves and which one
       the configs were restored to. The served state is left as it was.

    ``redact`` cleans a message before it is recorded (credentials in URLs). ``serve`` replaces
    :func:`serve_release` (same signature), for tests of the bookkeeping without a server.
    """
    if action not in ACTIONS:
        raise ValueError(f"release action {action!r}: expected one of {ACTIONS}")
    record = records.record(store, target.release)
    with repository_lock(root):
        target_text = records.ensemble_config(store, live, target.release)
        current_text = records.ensemble_config(store, live, current.release) if current is not None else ""
        try:
            server, report = (serve or serve_release)(root, live, target, target_text, current, current_text,
                                                      smoke, ports, timeout=timeout)
        except PromotionError as exc:
            reason = redact(str(exc))[:1500]
            if record is not None:
                record.status = "load_failed"
                record.reasons = [*record.reasons, reason]
                record.event(f"{action}_failed", run_id=run_id, error=reason)
                records.write_record(store, record)
            restored = None
            if current is not None:
                try:  # the model folders' own configs describe the release that serves
                    restore_release(live, current)
                    restored = current.release
                except RepositoryError as back:
                    reason = f"{reason}; restoring the configs of release {current.release} failed too: {back}"
            raise PromotionError(reason, exc.serving, restored) from exc
    new_state = served_after(state, target.release, action, {
        "previous": current.release if current is not None else None, "at": records.now(), "run_id": run_id,
        "seconds": report["seconds"], "how": report["action"]})
    records.write_served_state(store, new_state)
    if record is not None:
        record.status = "promoted"
        record.event(action, run_id=run_id, seconds=report["seconds"])
        records.write_record(store, record)
    if action == "rollback" and current is not None:
        left = records.record(store, current.release)
        if left is not None:
            left.status = "rolled_back"
            left.event("rolled_back", run_id=run_id, to=target.release)
            records.write_record(store, left)
    return Switched(server=server, report=report, state=new_state, record=record)
