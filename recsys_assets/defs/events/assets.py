"""``live_interactions``: the clicks recorded by the events API, one daily partition per click day.

Source: the Valkey stream the API appends every click to (``recsys_assets.api.stream``; in the embedded Valkey's
append-only file under the artifact root, so it survives restarts of the API and of Valkey). Output:
``live/interactions/day_XX.parquet`` with ``event_id`` (the stream id), ``user_id`` (-1 for anonymous clicks),
``item_id``, ``timestamp``, ``device_type`` (-1 unknown) and ``click`` = 1: the columns of ``raw_interactions``
that apply to a click, ordered by ``event_id``.

Exactly once across restarts: each materialization re-lands its day from the file's stream high-water mark
(``recsys_assets.api.landing``: the file and its mark are published in one atomic write, so there is no
ack-after-write gap), which is why it can run any number of times, from the sensor, a backfill or by hand, and
the file still holds every event of the day once. Landed entries older than ``retention_hours`` are then trimmed
from the stream, never one that its day file does not hold.

Blocking checks: the schema, unique event ids, and value ranges (ids, devices, clicks, timestamps on the day).
"""

import dagster as dg
import numpy as np

from recsys_assets.api import landing
from recsys_assets.api import stream as click_stream
from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.events.resources import EventStreamResource
from recsys_assets.defs.feature_store.resources import ValkeyResource
from recsys_assets.defs.partitions import START_DATE, daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib.feature_spec import DEVICE_NAMES
from recsys_assets.lib.settings import day_of_timestamp

GROUP = "events"
CHECKS = ("schema", "unique_event_ids", "value_ranges")


def start_epoch() -> int:
    import datetime as dt

    return int(dt.datetime.combine(START_DATE, dt.time(), tzinfo=dt.timezone.utc).timestamp())


class LiveInteractionsConfig(dg.Config):
    batch: int = 10_000
    """Stream entries read per round trip."""
    trim: bool = True
    """Remove landed stream entries older than ``retention_hours`` (the day files keep them)."""
    retention_hours: float = 48.0
    """How long landed entries stay in the stream anyway (a margin for late re-landing and for inspection)."""


def _checks(frame, day: int, where: str) -> list[dg.AssetCheckResult]:
    wrong = {c: str(frame[c].dtype) for c, t in landing.COLUMNS.items() if c in frame and str(frame[c].dtype) != t}
    missing = sorted(set(landing.COLUMNS) - set(frame.columns))
    schema_ok = not wrong and not missing
    schema = check("schema", schema_ok, f"{where}: columns and dtypes as expected" if schema_ok else
                    f"{where}: missing columns {missing}, wrong dtypes {wrong}")
    duplicated = int(frame["event_id"].duplicated().sum()) if "event_id" in frame else -1
    unique = check("unique_event_ids", duplicated == 0,
                    f"{where}: every event once" if duplicated == 0 else
                    f"{where}: {duplicated} duplicated event_id values", duplicates=duplicated)
    problems = []
    if schema_ok and len(frame):
        epoch = start_epoch()
        days = day_of_timestamp(frame["timestamp"].to_numpy(), epoch)
        for bad, what in (((frame["user_id"] < -1).sum(), "user_id below -1"),
                          ((frame["item_id"] < 0).sum(), "negative item_id"),
                          ((~frame["device_type"].isin(list(DEVICE_NAMES))).sum(), "device_type not in -1..2"),
                          ((frame["click"] != 1).sum(), "click != 1"),
                          ((days != day).sum(), f"timestamp not on day {day:02d}")):
            if int(bad):
                problems.append(f"{int(bad)} rows with {what}")
    ranges = check("value_ranges", schema_ok and not problems,
                    f"{where}: ids, devices, clicks and days in range" if schema_ok and not problems else
                    f"{where}: " + ("; ".join(problems) or "schema is wrong, ranges not checked"))
    return [schema, unique, ranges]


@dg.asset(group_name=GROUP, kinds={"valkey", "parquet"}, partitions_def=daily_partitions,
          check_specs=check_specs("live_interactions", CHECKS))
def live_interactions(context: dg.AssetExecutionContext, config: LiveInteractionsConfig,
                      artifacts: ArtifactStoreResource, valkey: ValkeyResource,
                      event_stream: EventStreamResource) -> dg.MaterializeResult:
    """The clicks recorded by the events API whose timestamp falls on the partition's day, each exactly once."""
    import time

    day = partition_day(context)
    store = artifacts.store()
    client = event_stream.client(valkey)
    try:
        landed = landing.land_day(store, client, day, start_epoch(), count=config.batch)
        trimmed = 0
        if config.trim:
            cutoff_ms = int((time.time() - config.retention_hours * 3600) * 1000)
            trimmed = landing.trim_landed(client, store, start_epoch(), cutoff_ms, count=config.batch)
        remaining = click_stream.length(client)
    finally:
        client.close()
    context.log.info(f"day {day:02d}: {landed.new_rows} new events ({landed.rows} in all) from "
                     f"{landed.scanned} stream entries after {landed.previous_high_water}; trimmed {trimmed}")
    frame = landed.frame
    by_device = (frame.assign(device=frame["device_type"].map(DEVICE_NAMES).fillna("?"))
                 .groupby("device").agg(clicks=("click", "size"), users=("user_id", "nunique")).reset_index())
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "rows": landed.rows,
            "new_rows": landed.new_rows,
            "previous_rows": landed.previous_rows,
            "stream_entries_scanned": landed.scanned,
            "high_water": landed.high_water,
            "previous_high_water": landed.previous_high_water,
            "users": int(frame.loc[frame["user_id"] >= 0, "user_id"].nunique()),
            "anonymous_clicks": int((frame["user_id"] == -1).sum()),
            "items": int(frame["item_id"].nunique()),
            "stream_entries_trimmed": trimmed,
            "stream_length": remaining,
            "valkey": valkey.describe(),
            "path": landed.path,
            "clicks_by_device": markdown_table(by_device) if len(by_device) else "no clicks",
            "first_event_id": str(frame["event_id"].iloc[0]) if len(frame) else "",
            "last_event_id": str(frame["event_id"].iloc[-1]) if len(frame) else "",
            "mean_clicks_per_user": float(np.round(frame.groupby("user_id").size().mean(), 3)) if len(frame) else 0.0,
        },
        check_results=_checks(frame, day, landed.path),
    )
