"""The daily stage's resources: where new days come from (and when one is due), and which Triton is served.

| variable                | default (local / k8s)   | meaning                                                    |
|-------------------------|-------------------------|------------------------------------------------------------|
| RECSYS_NEW_DAY_MODE     | generator / landing     | ``generator``: the synthetic world makes the next day when |
|                         |                         | the clock says it is over; ``landing``: a day is due once  |
|                         |                         | ``<root>/interactions/day=YYYY-MM-DD/_SUCCESS`` exists     |
| RECSYS_NEW_DAY_SECONDS  | 600 / 0                 | generator mode: wall seconds per simulated day (0: the     |
|                         |                         | wall clock, a day is due once it has ended in UTC)         |
| RECSYS_NEW_DAY_FIRST    | 14                      | the first day the sensor requests (00-13: the backfill)    |
| RECSYS_TRITON_URL       | 127.0.0.1:<HTTP port>   | the running ensemble the served-list evaluation replays    |
|                         | (RECSYS_TRITON_HTTP_PORT)| requests through                                          |

Read by :func:`build_resources` when the code location loads, never at import time.
"""

import os
from typing import Optional

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS
from recsys_assets.lib.settings import Settings, SettingsError

MODES = ("generator", "landing")


class NewDaySource(dg.ConfigurableResource):
    """Where the new-day sensor looks for the next day, and which clock says a day is over (``lib.daily``)."""

    mode: str = "generator"
    """``generator`` (local: the world makes any day; the clock decides) or ``landing`` (production: S3 prefixes)."""
    landing_prefix: str = "interactions"
    """Landing mode: days arrive as ``<artifact root>/<landing_prefix>/day=YYYY-MM-DD/`` prefixes."""
    marker: str = "_SUCCESS"
    """Landing mode: the object that marks a landed day complete (empty: any object)."""
    seconds_per_day: float = 600.0
    """Generator mode: wall seconds per simulated day, counted from the sensor's first tick (0: the wall clock)."""
    first_day: int = BACKFILL_DAYS.stop
    """The first day the sensor requests; earlier days come from the backfill."""
    last_day: Optional[int] = None
    """Stop after this day (None: run for ever)."""
    max_runs_per_tick: int = 1
    """Days requested per tick at most (a clock far ahead catches up one tick at a time, not in a flood)."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise dg.Failure(f"new-day mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.seconds_per_day < 0:
            raise dg.Failure(f"seconds_per_day={self.seconds_per_day}: expected >= 0 (0 = the wall clock)")


class ServedEnsemble(dg.ConfigurableResource):
    """The running Triton whose lists the served-list evaluation scores (HTTP, ``host:port``)."""

    url: str = "127.0.0.1:8000"
    timeout_s: float = 30.0

    def client(self):
        from recsys_assets.release.client import RecommendationClient

        return RecommendationClient(self.url, protocol="http", timeout_s=self.timeout_s)


def _float(env, name: str, default: float) -> float:
    raw = env.get(name) or str(default)
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from exc


def build_resources(settings: Settings, environ=None) -> dict:
    env = os.environ if environ is None else environ
    k8s = settings.profile == "k8s"
    mode = (env.get("RECSYS_NEW_DAY_MODE") or ("landing" if k8s else "generator")).strip().lower()
    if mode not in MODES:
        raise SettingsError(f"RECSYS_NEW_DAY_MODE={mode!r}: expected one of {', '.join(MODES)}")
    raw_first = env.get("RECSYS_NEW_DAY_FIRST") or str(BACKFILL_DAYS.stop)
    try:
        first = int(raw_first)
    except ValueError as exc:
        raise SettingsError(f"RECSYS_NEW_DAY_FIRST={raw_first!r}: expected a day index such as 14") from exc
    port = env.get("RECSYS_TRITON_HTTP_PORT") or "8000"
    url = settings.triton_url or f"127.0.0.1:{port}"
    return {
        "new_day_source": NewDaySource(mode=mode, first_day=first,
                                       seconds_per_day=_float(env, "RECSYS_NEW_DAY_SECONDS", 0.0 if k8s else 600.0)),
        "served_ensemble": ServedEnsemble(url=url),
    }
