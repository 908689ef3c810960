"""Stable id maps: a source's string ids -> the int64 ids the pipeline uses (DESIGN.md Contracts, Ids).

A map is append-only. Ids are ``0..N-1`` in order of first appearance; a re-run of the same data gives the same
numbers, a new source id gets the next number, and nothing is ever renumbered or removed, so every table, model,
index and release built earlier keeps meaning the same entities. :func:`save_id_map` refuses a map that is not an
extension of the stored one.

Persisted through the artifact store as parquet (``lib.paths.USER_ID_MAP``, ``ITEM_ID_MAP``): ``source_id``
(string), ``id`` (int64, equal to the row number) and ``first_day`` (the day index of the partition that first
named it; the users table derives ``signup_day`` from it).

Anonymous users have no entry: an empty source user id maps to -1 (:data:`ANONYMOUS`) and back to ``""``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ANONYMOUS = -1
COLUMNS = ("source_id", "id", "first_day")


class IdMapError(ValueError):
    """A map would be renumbered, or an id asked for is not in it."""


@dataclasses.dataclass(frozen=True)
class IdMap:
    """``source_ids[k]`` is the source id of int id ``k``; ``first_days[k]`` the day it first appeared."""

    name: str
    source_ids: tuple[str, ...] = ()
    first_days: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.source_ids) != len(self.first_days):
            raise IdMapError(f"{self.name} id map: {len(self.source_ids)} ids but {len(self.first_days)} first days")
        if len(set(self.source_ids)) != len(self.source_ids):
            raise IdMapError(f"{self.name} id map: a source id appears twice")

    def __len__(self) -> int:
        return len(self.source_ids)

    @property
    def index(self) -> dict[str, int]:
        return {source_id: k for k, source_id in enumerate(self.source_ids)}

    def extended(self, source_ids, day: int) -> "IdMap":
        """This map with the ids of ``source_ids`` it lacks appended, in their order of first appearance there.

        Empty ids (anonymous users) are skipped. Existing numbers never change.
        """
        known = self.index
        new: list[str] = []
        for source_id in source_ids:
            if source_id and source_id not in known:
                known[source_id] = len(known)
                new.append(source_id)
        if not new:
            return self
        return IdMap(self.name, self.source_ids + tuple(new), self.first_days + (int(day),) * len(new))

    def to_int(self, source_ids, missing: int | None = None) -> np.ndarray:
        """int64 ids of ``source_ids``; ``""`` -> -1 (anonymous). An id not in the map raises :class:`IdMapError`,
        unless ``missing`` gives the value to put there."""
        known = self.index
        out = np.empty(len(source_ids), dtype=np.int64)
        unknown: list[str] = []
        for k, source_id in enumerate(source_ids):
            if not source_id:
                out[k] = ANONYMOUS
            elif source_id in known:
                out[k] = known[source_id]
            elif missing is None:
                unknown.append(source_id)
            else:
                out[k] = missing
        if unknown:
            raise IdMapError(f"{self.name} id map: {len(unknown)} source ids are not mapped, e.g. {unknown[:5]}: "
                             "ingest the data that names them first")
        return out

    def to_source(self, ids) -> list[str]:
        """Source ids of int64 ids; -1 -> ``""`` (anonymous). An id outside the map raises :class:`IdMapError`."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids < ANONYMOUS) | (ids >= len(self))]
        if len(bad):
            raise IdMapError(f"{self.name} id map: ids {bad[:5].tolist()} outside -1..{len(self) - 1}")
        return ["" if k == ANONYMOUS else self.source_ids[k] for k in ids.tolist()]

    def frame(self):
        import pandas as pd

        return pd.DataFrame({"source_id": pd.Series(self.source_ids, dtype=object),
                             "id": np.arange(len(self), dtype=np.int64),
                             "first_day": np.asarray(self.first_days, dtype=np.int64)})

    @classmethod
    def from_frame(cls, name: str, frame, where: str = "") -> "IdMap":
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise IdMapError(f"{where or name}: id map lacks columns {missing}")
        if not np.array_equal(frame["id"].to_numpy(np.int64), np.arange(len(frame))):
            raise IdMapError(f"{where or name}: ids are not 0..{len(frame) - 1} in row order: the map was edited; "
                             "restore it from a backup (every artifact built on it uses its numbers)")
        return cls(name, tuple(frame["source_id"].astype(str)), tuple(int(d) for d in frame["first_day"]))


def load_id_map(store, rel: str, name: str) -> IdMap:
    """The stored map at ``rel``, or an empty one when none is stored yet."""
    if not store.exists(rel):
        return IdMap(name)
    return IdMap.from_frame(name, store.read_parquet(rel), store.uri(rel))


def save_id_map(store, rel: str, id_map: IdMap) -> bool:
    """Store ``id_map`` if it extends the stored one; returns whether anything was written.

    Raises :class:`IdMapError` when it would renumber or drop a stored id (for example two ingests that grew the
    map from the same old copy at once: re-run the later one).
    """
    stored = load_id_map(store, rel, id_map.name)
    if id_map.source_ids[: len(stored)] != stored.source_ids:
        raise IdMapError(f"{store.uri(rel)}: the new {id_map.name} map does not extend the stored one (it would "
                         "renumber ids); another ingest changed it meanwhile: run this one again")
    if len(id_map) == len(stored):
        return False
    store.write_parquet(rel, id_map.frame())
    return True
