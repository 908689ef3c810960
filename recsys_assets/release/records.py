"""Release records and the served state: what each release is, what happened to it, what serves now.

A *release* is a manifest (:class:`recsys_assets.release.repository.Release`, ``serving/releases/<n>.json``)
naming one version of every model. Its record (``releases/records/<n>.json``, :class:`ReleaseRecord`) says what it
was built from (kind ``full`` or ``finetune``, parent release, day, the models it can be fine-tuned from), its
gate outcome and status (``candidate`` -> ``promoted`` | ``gate_failed`` | ``load_failed`` | ``rolled_back``). The
served state (``releases/served.json``, :class:`ServedState`) holds the release serving now and the stack of
promoted releases (the rollback targets).

Pure: reads and writes through an :class:`~recsys_assets.lib.artifacts.ArtifactStore`; no Dagster, no server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np

from recsys_assets.lib import paths
from recsys_assets.release.repository import Release, ReleaseError

KINDS = ("full", "finetune")
STATUSES = ("candidate", "gate_failed", "promoted", "load_failed", "rolled_back")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


def ensemble_config(store, live: Path, release: int) -> str:
    """The canonical ensemble config ``release`` was built with (its record's), else the live repository's."""
    from recsys_assets.release.repository import canonical_ensemble

    found = record(store, release)
    return found.ensemble_config if found is not None and found.ensemble_config else canonical_ensemble(live)
