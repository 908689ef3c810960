"""The one partitioning of the project: a partition per day of interactions, keyed by ISO date.

Day 00 is ``RECSYS_START_DATE`` (default 2026-01-01). This is the single setting read when the code location
loads, because it defines the partition set itself; day index <-> key conversions live in lib.settings.
"""

from __future__ import annotations

import dagster as dg

from recsys_assets.lib.settings import Settings, day_index

TRAIN_DAYS = range(0, 9)        # days 00-08
VALIDATION_DAYS = range(9, 12)  # days 09-11; 12+ arrive daily
BACKFILL_DAYS = range(0, 14)    # days 00-13

START_DATE = Settings.from_env().start_date
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE.isoformat(), fmt="%Y-%m-%d")


def partition_day(context) -> int:
    """The day index of the partition an asset or op is materializing."""
    return day_index(context.partition_key, START_DATE)
