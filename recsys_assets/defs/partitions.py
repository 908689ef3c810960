"""The one partitioning of the project: a partition per day of interactions, keyed by ISO date.

Day 00 is ``RECSYS_START_DATE`` (default 2026-01-01); the set is open-ended (a partition per UTC day up to today)
unless ``RECSYS_LAST_DAY`` ends it: ``make demo`` and ``make dev`` end it with the demo's days (the backfill and
the one new day its daily loop runs), so the UI shows those days, all filled, instead of every day up to today.
These are the settings read when the code location loads, because they define the partition set itself; day
index <-> key conversions live in lib.settings.
"""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from recsys_assets.lib.settings import LAST_DAY_DEMO, Settings, day_index, partition_key

TRAIN_DAYS = range(0, 9)        # days 00-08
VALIDATION_DAYS = range(9, 12)  # days 09-11; 12+ arrive daily
BACKFILL_DAYS = range(0, 14)    # days 00-13
DEMO_DAY = BACKFILL_DAYS.stop    # day 14: the new day the demo's daily loop runs

_SETTINGS = Settings.from_env()
START_DATE = _SETTINGS.start_date
LAST_DAY = DEMO_DAY if _SETTINGS.last_day == LAST_DAY_DEMO else _SETTINGS.last_day
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=START_DATE.isoformat(), fmt="%Y-%m-%d",
    end_date=None if LAST_DAY is None else (START_DATE + dt.timedelta(days=LAST_DAY + 1)).isoformat())


def partition_day(context) -> int:
    """The day index of the partition an asset or op is materializing."""
    return day_index(context.partition_key, START_DATE)


def partition_keys(days) -> list[str]:
    """The partition keys of day indices."""
    return [partition_key(d, START_DATE) for d in days]


def window_dep(asset, days_before: int) -> dg.AssetDep:
    """``asset`` over the ``days_before`` days before the partition and the partition's own day; the window is
    clipped at day 00 (``allow_nonexistent_upstream_partitions``, a beta flag of Dagster 1.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        mapping = dg.TimeWindowPartitionMapping(start_offset=-days_before, end_offset=0,
                                                allow_nonexistent_upstream_partitions=True)
    return dg.AssetDep(asset, partition_mapping=mapping)
