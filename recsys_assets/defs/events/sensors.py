"""``live_events_sensor``: lands the days that received clicks since it last looked.

Every ``minimum_interval_seconds`` it reads the click stream after its cursor (the last stream id it saw), groups
the new entries by click day and requests a ``live_interactions`` run for each such day; the run re-lands the day
from its file's high-water mark, so requesting a day twice, or a cursor lost and rebuilt from the start, only
costs a run and never duplicates an event. A day whose partition does not exist yet (today's: a daily partition
exists once its day is over) is kept in the cursor as pending and requested as soon as it exists.

It only looks: with the embedded Valkey not running it skips (nothing can be appended then either), and it
never starts the server.
"""

import json

import dagster as dg

from recsys_assets.api import landing
from recsys_assets.defs.events.assets import start_epoch
from recsys_assets.defs.events.jobs import live_interactions_job
from recsys_assets.defs.events.resources import EventStreamResource
from recsys_assets.defs.feature_store.resources import ValkeyResource
from recsys_assets.defs.partitions import START_DATE, daily_partitions
from recsys_assets.lib.settings import partition_key
from recsys_assets.lib.valkey_server import ValkeyError

MAX_ENTRIES_PER_TICK = 200_000


def parse_cursor(cursor: str | None) -> tuple[str, list[str]]:
    if not cursor:
        return landing.START, []
    state = json.loads(cursor)
    return state.get("after", landing.START), list(state.get("pending", []))


def _exists(key: str) -> bool:
    """Whether the daily partition exists now (a day's partition exists once the day is over, UTC)."""
    return daily_partitions.has_partition_key(key)


@dg.sensor(job=live_interactions_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests live_interactions runs for the days that received clicks")
def live_events_sensor(context: dg.SensorEvaluationContext, valkey: ValkeyResource,
                       event_stream: EventStreamResource):
    after, pending = parse_cursor(context.cursor)
    try:
        client = event_stream.client_if_running(valkey)
    except ValkeyError as exc:
        return dg.SkipReason(f"not reading the click stream: {exc}")
    if client is None:
        return dg.SkipReason(f"Valkey is not running on {valkey.host}:{valkey.port}: no click stream to read")
    try:
        days, last = landing.days_after(client, after, start_epoch(), limit=MAX_ENTRIES_PER_TICK)
    finally:
        client.close()
    keys = sorted({partition_key(d, START_DATE) for d in days if d >= 0} | set(pending))
    ready = [k for k in keys if _exists(k)]
    waiting = [k for k in keys if k not in ready]
    cursor = json.dumps({"after": last, "pending": waiting})
    if not ready:
        reason = (f"no new clicks after {after}" if not days else
                  f"{sum(days.values())} new clicks, all of days not over yet ({', '.join(waiting)})")
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"live-{k}@{last}") for k in ready],
        cursor=cursor,
    )
