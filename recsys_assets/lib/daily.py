"""Daily operations, pure logic: when a new day is due, which days a sliding window holds, what the online store
must take for one day, and how the retrieval index grows by the items a day makes available.

New days (what the ``new_day_sensor`` asks)
  * Production: a raw day lands as a prefix ``<landing>/day=YYYY-MM-DD/`` under the artifact root (an S3 prefix;
    the same layout works in a local folder). :func:`landed_days` reads the day keys off an object listing; with
    a completion marker (``_SUCCESS``, written last by Spark, Glue or a Firehose-to-S3 compaction job) a day that
    is still being written is not taken.
  * Locally the generator can make any day on demand, so a day is due when it is *over* on a clock
    (:class:`DayClock`): the wall clock (a day is over once its UTC end has passed), or a simulated clock that
    starts day ``first_day`` when the sensor first looks and then ends one day every ``seconds_per_day`` wall
    seconds (a demo that lives through a week in an hour).
  * :func:`next_days` picks, in order, the days after the last one requested that are due.

Sliding popularity window (:func:`window_days`): the ``length`` days ending with the day itself (fewer at the
start of time). :func:`publishable` says whether a day's tables may replace the published ones: never a window
that ends before the current one (a backfill of an old day must not roll popularity back).

Online store for one day (:func:`materialize_window`): ``[start of day d, start of day d+1 + 1 s)`` in UTC: the
day's new users (timestamped at signup, the start of the day), the items that become available on it (the start
of the day) and the end-of-day ``top_category`` snapshot (stamped at the start of the next day). An explicit
window per partition is idempotent and order-independent, unlike ``feast materialize-incremental``, which starts
where the last run ended and would skip a day backfilled out of order. Feast's online store keeps the row with the
newest event time, so re-running an old day never overwrites a newer value (such as a pushed top_category).

Retrieval index growth (:func:`items_to_index`, :func:`extend_index`): the items available by the day that the
index does not hold yet get their candidate-tower vector added with ``IndexIDMap.add_with_ids``; nothing already
in the index is touched or rebuilt, and the set only grows (re-running a day adds nothing). The candidate tower
is frozen between full retrains, so its vectors for new items live in the same space as the indexed ones.

``faiss`` is imported inside the functions (this module also loads where FAISS is absent).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Iterable, Sequence

import numpy as np

from recsys_assets.lib import settings
from recsys_assets.lib.digests import file_sha256
from recsys_assets.lib.settings import day_of_timestamp

LANDING_DAY = re.compile(r"(?:^|/)day=(\d{4}-\d{2}-\d{2})(?:/|$)")
DEFAULT_WINDOW_DAYS = 7


# -- new days -----------------------------------------------------------------------------------------------
def day_of_date(date: dt.date, start_date: dt.date) -> int:
    return (date - start_date).days


def landed_days(keys: Iterable[str], start_date: dt.date, marker: str = "_SUCCESS") -> list[int]:
    """Day indices of the ``day=YYYY-MM-DD/`` prefixes in an object listing (relative keys), oldest first.

    With a ``marker`` a day counts only once an object of that name sits directly in its prefix; ``""`` takes
    any object. Temporary objects (``.tmp-`` in the name) and days before ``start_date`` are ignored.
    """
    seen: dict[int, bool] = {}
    for key in keys:
        match = LANDING_DAY.search(key)
        if match is None or ".tmp-" in key:
            continue
        try:
            day = day_of_date(dt.date.fromisoformat(match.group(1)), start_date)
        except ValueError:
            continue  # day=2026-13-40: not a date, not a day
        if day < 0:
            continue
        rest = key[match.end():]
        complete = (not marker) or rest == marker
        seen[day] = seen.get(day, False) or complete
    return sorted(d for d, complete in seen.items() if complete)


@dataclasses.dataclass(frozen=True)
class DayClock:
    """Which days are over.

    ``seconds_per_day == 0``: the wall clock (UTC). Otherwise a simulated clock: day ``first_day`` began at wall
    time ``started_at`` (Unix seconds) and every day lasts ``seconds_per_day`` wall seconds.
    """

    start_date: dt.date
    seconds_per_day: float = 0.0
    started_at: float | None = None
    first_day: int = 0

    def __post_init__(self) -> None:
        if self.seconds_per_day < 0:
            raise ValueError(f"seconds_per_day must be >= 0 (0: the wall clock), got {self.seconds_per_day}")
        if self.seconds_per_day > 0 and self.started_at is None:
            raise ValueError("a simulated clock needs started_at (the wall time its first day began)")

    @property
    def simulated(self) -> bool:
        return self.seconds_per_day > 0

    def current_day(self, now: float) -> int:
        """The day in progress at wall time ``now`` (Unix seconds)."""
        if self.simulated:
            return self.first_day + int((now - float(self.started_at)) // self.seconds_per_day)
        return day_of_timestamp(float(now), settings.start_epoch(self.start_date))

    def last_over(self, now: float) -> int:
        """The newest day that is over at ``now`` (-1 when none is)."""
        return self.current_day(now) - 1


def next_days(after: int, due_through: int, limit: int, last_day: int | None = None) -> list[int]:
    """Days ``after + 1 ..`` that are due (``<= due_through``), at most ``limit``, never past ``last_day``."""
    if limit < 1:
        return []
    end = due_through if last_day is None else min(due_through, last_day)
    return list(range(after + 1, end + 1))[:limit]


# -- sliding windows ----------------------------------------------------------------------------------------
def window_days(day: int, length: int = DEFAULT_WINDOW_DAYS) -> list[int]:
    """The ``length`` days ending with ``day`` (inclusive), clipped at day 00."""
    if length < 1:
        raise ValueError(f"a window holds at least one day, got length {length}")
    if day < 0:
        raise ValueError(f"day must be >= 0, got {day}")
    return list(range(max(0, day - length + 1), day + 1))


def publishable(current_window: Sequence[int] | None, day: int) -> bool:
    """Whether tables whose window ends on ``day`` may replace the published ones (whose window is given)."""
    return not current_window or day >= max(current_window)


def window_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of the first list's items that are also in the second (1.0 for two empty lists)."""
    if not len(a):
        return 1.0
    return len(set(map(int, a)) & set(map(int, b))) / len(a)


# -- the online store's day ---------------------------------------------------------------------------------
def day_start(day: int, start_date: dt.date) -> dt.datetime:
    return dt.datetime.combine(start_date, dt.time(), tzinfo=dt.timezone.utc) + dt.timedelta(days=int(day))


def materialize_window(day: int, start_date: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """``(start, end)`` with end exclusive: the rows the online store takes for ``day`` (see the module doc)."""
    return day_start(day, start_date), day_start(day + 1, start_date) + dt.timedelta(seconds=1)


# -- the retrieval index ------------------------------------------------------------------------------------
def items_to_index(indexed_ids: np.ndarray, available_from_day: np.ndarray, day: int) -> np.ndarray:
    """Raw ids available by ``day`` (``available_from_day <= day``, row r = item r) that the index lacks."""
    available = np.flatnonzero(np.asarray(available_from_day) <= day).astype(np.int64)
    return np.setdiff1d(available, np.asarray(indexed_ids, dtype=np.int64), assume_unique=False)


@dataclasses.dataclass(frozen=True)
class IndexGrowth:
    added: np.ndarray      # raw ids added, ascending
    before: int            # vectors held before
    after: int             # vectors held after

    @property
    def rebuilt(self) -> bool:  # only ever grown in place; kept as a field for metadata readers
        return False


def extend_index(index, vectors: np.ndarray, ids: Sequence[int]) -> IndexGrowth:
    """Add ``vectors`` under raw ``ids`` to an ``IndexIDMap`` in place (``add_with_ids``), skipping ids it holds.

    Raises on a width mismatch, non-finite vectors, negative or duplicated ids: the index is left untouched then.
    """
    import faiss

    if not hasattr(index, "id_map"):
        raise TypeError("the index must be an IndexIDMap (ids are raw item ids); got "
                        f"{type(index).__name__}: rebuild it with lib.faiss_index.build")
    x = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    before = int(index.ntotal)
    if len(ids) == 0:
        return IndexGrowth(added=np.zeros(0, np.int64), before=before, after=before)
    if x.shape[0] != len(ids):
        raise ValueError(f"{x.shape[0]} vectors for {len(ids)} ids")
    if x.shape[1] != index.d:
        raise ValueError(f"vectors have {x.shape[1]} dims, the index {index.d}: they come from another candidate "
                         "tower (a full retrain): rebuild the index (materialize faiss_index) instead of growing it")
    if not np.isfinite(x).all():
        raise ValueError("the new items' vectors hold NaN or inf: re-materialize item_embeddings")
    if (ids < 0).any():
        raise ValueError("item ids must be >= 0 (-1 is FAISS's padding)")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("item ids to add must be unique")
    held = faiss.vector_to_array(index.id_map).astype(np.int64)
    new = ~np.isin(ids, held)
    order = np.argsort(ids[new], kind="stable")
    added_ids, added_x = ids[new][order], x[new][order]
    if len(added_ids):
        index.add_with_ids(np.ascontiguousarray(added_x), np.ascontiguousarray(added_ids))
    return IndexGrowth(added=added_ids, before=before, after=int(index.ntotal))


# -- which index serving should package ---------------------------------------------------------------------
def daily_index_manifest(variant: str) -> str:
    from recsys_assets.lib import paths

    return paths.daily_index(variant)[: -len(".faiss")] + ".json"


def served_index(store, variant: str) -> str:
    """The index a release should package for ``variant`` (a path relative to the artifact root).

    The daily-grown index (``index/daily/<variant>.faiss``) when it grew the trained index that exists now (its
    manifest names the trained index's digest), else the trained one (``index/faiss/<variant>.faiss``): after a
    full retrain the old growth no longer applies, and the next daily run grows the new index instead.
    """
    import json

    from recsys_assets.lib import paths

    trained = paths.faiss_index(variant)
    grown, manifest = paths.daily_index(variant), daily_index_manifest(variant)
    if not (store.exists(grown) and store.exists(manifest) and store.exists(trained)):
        return trained
    meta = json.loads(store.read_bytes(manifest))
    return grown if meta.get("base_digest") == file_sha256(store.local_path(trained)) else trained
