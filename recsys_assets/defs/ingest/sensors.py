"""``new_day_sensor``: requests the daily run of each new day, once.

* ``landing`` mode (production): a day is new when ``<artifact root>/interactions/day=YYYY-MM-DD/`` holds its
  completion marker (``_SUCCESS``); days are requested in order, and a gap (a later day landed before an earlier
  one) waits for the missing day, which the skip reason names.
* ``generator`` mode (local): the synthetic world can make any day, so the next day is requested once it is over
  on the clock: the wall clock (``seconds_per_day`` 0) or a simulated one that starts day ``first_day`` at the
  sensor's first tick and ends one day every ``seconds_per_day`` wall seconds.

The cursor holds the last day requested (and the simulated clock's start). Each request has ``run_key`` = the
partition key, and a day that already has a ``daily_job`` run (from ``daily_schedule``, say) is skipped and
passed (``runs.day_run``: a run of ``daily_job`` that has not failed), so a
partition never runs twice whichever trigger saw it first. Days whose Dagster partition does not
exist yet (today's) wait. At most ``max_runs_per_tick`` days per tick: a clock far ahead catches up gradually.
"""

import json
import time

import dagster as dg

from recsys_assets.defs.ingest.jobs import daily_job
from recsys_assets.defs.ingest.resources import NewDaySource
from recsys_assets.defs.ingest.runs import day_run
from recsys_assets.defs.partitions import START_DATE, daily_partitions
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import daily
from recsys_assets.lib.settings import partition_key


def parse_cursor(cursor: str | None, source: NewDaySource) -> dict:
    state = json.loads(cursor) if cursor else {}
    return {"last": int(state.get("last", source.first_day - 1)), "started_at": state.get("started_at")}


def _landed(store, source: NewDaySource, last: int) -> tuple[list, str]:
    landed = set(daily.landed_days(store.list(source.landing_prefix), START_DATE, source.marker))
    days, d = [], last + 1
    while d in landed and len(days) < source.max_runs_per_tick and (source.last_day is None or d <= source.last_day):
        days.append(d)
        d += 1
    later = sorted(x for x in landed if x > d)
    why = (f"waiting for day {d:02d} ({partition_key(d, START_DATE)}) to land under "
           f"{store.uri(source.landing_prefix)}; landed after it: {[partition_key(x, START_DATE) for x in later]}"
           if later and not days else f"no new day landed under {store.uri(source.landing_prefix)} after day {last:02d}")
    return days, why


@dg.sensor(job=daily_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests daily_job for each new day (a landed S3 day in production, the generator's next "
                       "day on the clock locally), once per partition")
def new_day_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStoreResource,
                   new_day_source: NewDaySource):
    source = new_day_source
    source.validate()
    state = parse_cursor(context.cursor, source)
    last, now = state["last"], time.time()
    if source.mode == "landing":
        days, why = _landed(artifacts.store(), source, last)
    else:
        state["started_at"] = state["started_at"] if state["started_at"] is not None else now
        clock = daily.DayClock(START_DATE, source.seconds_per_day, started_at=state["started_at"],
                               first_day=source.first_day)
        over = clock.last_over(now)
        days = daily.next_days(last, over, source.max_runs_per_tick, source.last_day)
        why = (f"day {last + 1:02d} is not over yet on the {'simulated' if clock.simulated else 'wall'} clock "
               f"(day in progress: {clock.current_day(now):02d})"
               if source.last_day is None or last < source.last_day else f"last_day {source.last_day:02d} reached")
    requests, passed = [], []
    for day in days:
        key = partition_key(day, START_DATE)
        if not daily_partitions.has_partition_key(key):
            why = f"partition {key} (day {day:02d}) does not exist yet: its UTC day is not over"
            break
        existing = day_run(context.instance, key)
        if existing is not None:  # the schedule (or a person) ran it already: pass it, never run it twice
            passed.append(f"{key} (run {existing.run_id[:8]} of {existing.job_name})")
        else:
            requests.append(dg.RunRequest(partition_key=key, run_key=key, tags={"recsys/trigger": "new_day_sensor"}))
        state["last"] = day
    cursor = json.dumps(state)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    if passed:
        why = f"already run by the schedule or by hand, passed: {', '.join(passed)}"
    return dg.SensorResult(skip_reason=why, cursor=cursor)
