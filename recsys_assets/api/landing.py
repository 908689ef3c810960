"""Landing the click stream into daily files, each event exactly once, whatever restarts in between.

``live/interactions/day_XX.parquet`` holds the clicks whose *timestamp* falls on day XX (UTC days since day 00),
with the columns of raw interactions that apply to a click (``user_id``, ``item_id``, ``timestamp``,
``device_type``, ``click`` = 1) plus ``event_id`` (the stream id), ordered by ``event_id``.

How exactly-once holds (idempotent re-landing by stream-id range, no consumer group):

- Every file carries a **high-water mark** in its parquet metadata: the id of the last stream entry that was
  examined when the file was written. All entries up to it that belong to the day are in the file.
- Landing a day reads the file (rows + mark), reads the stream strictly after the mark, keeps the entries of that
  day, appends them, drops duplicate ``event_id``s (defensive: none can arise) and publishes the new file with the
  new mark **in one atomic write** (``ArtifactStore.writing``: a temporary file, then a rename or one upload).
- Stream ids only grow (Valkey assigns them at append), so an entry either is at or below the mark (already
  examined, and in the file if it belongs there) or above it (examined now). A crash before the publish changes
  nothing and the next run does the same work again; a crash after it finds the new mark. No acknowledgement has
  to happen after the write, so there is no window in which an event is written but not acknowledged or the
  other way round. Two runs of one day at once: both start from the same file; whichever publishes last, the
  file is consistent with its own mark, and the next run continues from there.
- The stream keeps every entry until :func:`trim_landed` removes it, and that only removes entries older than a
  retention period whose day file's mark covers them. Entries of a day that was never landed stay.

Pure of Dagster: ``recsys_assets.defs.events`` wraps it as the ``live_interactions`` asset and its sensor.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_assets.api import stream

COLUMNS = {"event_id": "object", "user_id": "int64", "item_id": "int64", "timestamp": "int64",
           "device_type": "int64", "click": "int64"}
HIGH_WATER_KEY = b"recsys.stream_high_water"
START = "0-0"


def live_interactions_path(day: int) -> str:
    """= ``recsys_assets.lib.paths.live_interactions``."""
    from recsys_assets.lib import paths

    return paths.live_interactions(day)


def events_frame(events: list[stream.Event]):
    """The rows of a day file for ``events`` (any order in, the file's dtypes out)."""
    import pandas as pd

    frame = pd.DataFrame({
        "event_id": pd.Series([e.event_id for e in events], dtype=object),
        "user_id": np.array([e.user_id for e in events], dtype=np.int64),
        "item_id": np.array([e.item_id for e in events], dtype=np.int64),
        "timestamp": np.array([e.timestamp for e in events], dtype=np.int64),
        "device_type": np.array([e.device_type for e in events], dtype=np.int64),
        "click": np.ones(len(events), dtype=np.int64),
    })
    return frame


def order_by_event_id(frame):
    keys = [stream.parse_id(i) for i in frame["event_id"]]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return frame.iloc[order].reset_index(drop=True)


def read_landed(store, day: int):
    """``(frame, high_water)`` of a day file; an empty frame and ``"0-0"`` when the day was never landed."""
    import pyarrow.parquet as pq

    rel = live_interactions_path(day)
    if not store.exists(rel):
        return events_frame([]), START
    path = store.local_path(rel)
    table = pq.read_table(path)
    mark = (table.schema.metadata or {}).get(HIGH_WATER_KEY)
    if mark is None:
        raise ValueError(f"{store.uri(rel)} has no stream high-water mark ({HIGH_WATER_KEY.decode()}): it was not "
                         "written by the lander; delete it and land the day again")
    frame = table.to_pandas()
    return frame.astype(COLUMNS)[list(COLUMNS)], mark.decode()


def high_water(store, day: int) -> str:
    """Only the mark of a day file (reads the footer, not the rows)."""
    import pyarrow.parquet as pq

    rel = live_interactions_path(day)
    if not store.exists(rel):
        return START
    mark = (pq.read_schema(store.local_path(rel)).metadata or {}).get(HIGH_WATER_KEY)
    return mark.decode() if mark else START


def write_landed(store, day: int, frame, mark: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.astype(COLUMNS)[list(COLUMNS)], preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), HIGH_WATER_KEY: mark.encode()})
    rel = live_interactions_path(day)
    with store.writing(rel) as tmp:
        pq.write_table(table, tmp)
    return store.uri(rel)


@dataclasses.dataclass(frozen=True)
class LandingResult:
    day: int
    path: str
    rows: int
    new_rows: int
    previous_rows: int
    scanned: int
    previous_high_water: str
    high_water: str
    duplicates_dropped: int
    frame: object  # the day's rows as written


def land_day(store, client, day: int, start_epoch: int, count: int = 10_000) -> LandingResult:
    """Bring the day file up to date with the stream (see the module docstring); safe to repeat at any time."""
    import pandas as pd

    previous, mark = read_landed(store, day)
    fresh: list[stream.Event] = []
    scanned = 0
    new_mark = mark
    for batch in stream.read_after(client, mark, count=count):
        scanned += len(batch)
        new_mark = batch[-1].event_id
        fresh.extend(e for e in batch if e.day(start_epoch) == day)
    combined = pd.concat([previous, events_frame(fresh)], ignore_index=True) if fresh else previous
    before = len(combined)
    combined = order_by_event_id(combined.drop_duplicates("event_id", keep="first"))
    path = write_landed(store, day, combined, new_mark)
    return LandingResult(day=day, path=path, rows=len(combined), new_rows=len(combined) - len(previous),
                         previous_rows=len(previous), scanned=scanned, previous_high_water=mark,
                         high_water=new_mark, duplicates_dropped=before - len(combined), frame=combined)


def days_after(client, after: str, start_epoch: int, count: int = 10_000,
               limit: int | None = None) -> tuple[dict[int, int], str]:
    """``({day: events}, last id)`` of the entries after ``after`` (what the sensor looks at)."""
    days: dict[int, int] = {}
    last = after
    for batch in stream.read_after(client, after, count=count, limit=limit):
        for event in batch:
            d = event.day(start_epoch)
            days[d] = days.get(d, 0) + 1
        last = batch[-1].event_id
    return days, last


def trim_landed(client, store, start_epoch: int, older_than_ms: int, count: int = 10_000) -> int:
    """Remove stream entries that arrived before ``older_than_ms`` *and* are in their day file; returns how many.

    Walks the old entries in id order and stops at the first one whose day file does not cover it (its mark is
    below the entry), so an event that has not reached a day file is never removed.
    """
    cutoff = f"{int(older_than_ms)}-0"
    marks: dict[int, tuple[int, int]] = {}
    trim_to = cutoff
    done = False
    cursor = START
    while not done:
        batch = client.xrange(stream.STREAM_KEY, min=f"({cursor}", max=f"({cutoff}", count=count)
        if not batch:
            break
        for raw_id, fields in batch:
            event = stream.decode(raw_id, fields)
            day = event.day(start_epoch)
            if day not in marks:
                marks[day] = stream.parse_id(high_water(store, day)) if day >= 0 else (-1, -1)
            if stream.parse_id(event.event_id) > marks[day]:
                trim_to, done = event.event_id, True
                break
            cursor = event.event_id
        if len(batch) < count:
            break
    return int(client.xtrim(stream.STREAM_KEY, minid=trim_to, approximate=False))
