import datetime as dt

import numpy as np
import pytest

from recsys_assets.lib import settings
from recsys_assets.lib.settings import Settings, SettingsError, day_index, day_name, partition_key


def test_defaults():
    s = Settings.from_env({})
    assert (s.profile, s.scale, s.start_date, s.valkey_url) == ("local", "demo", dt.date(2026, 1, 1), None)
    assert s.last_day is None  # open-ended partitions


@pytest.mark.parametrize("raw, last_day", [("", None), ("20", 20), (" Demo ", "demo")])
def test_last_day_setting(raw, last_day):
    assert Settings.from_env({"RECSYS_LAST_DAY": raw}).last_day == last_day


@pytest.mark.parametrize("raw, count, last", [("", None, None), ("demo", 15, "2026-01-15"), ("3", 4, "2026-01-04")])
def test_the_partition_set_ends_at_the_last_day(raw, count, last):
    """Read when the code location loads, so each setting gets a fresh interpreter."""
    import json
    import subprocess
    import sys

    code = ("import json; from recsys_assets.defs.partitions import daily_partitions as p; k = p.get_partition_keys();"
            "print(json.dumps([len(k), k[0], k[-1], p.end is not None]))")
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2],
                         env={"PATH": "/usr/bin:/bin", "RECSYS_LAST_DAY": raw, "RECSYS_START_DATE": "2026-01-01"})
    n, first, final, ended = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == "2026-01-01" and ended == (count is not None)
    if count is not None:
        assert (n, final) == (count, last)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RECSYS_PROFILE": "cloud"}, "RECSYS_PROFILE"),
        ({"RECSYS_SCALE": "huge"}, "RECSYS_SCALE"),
        ({"RECSYS_START_DATE": "01/02/2026"}, "ISO date"),
        ({"RECSYS_SEED": "abc"}, "RECSYS_SEED"),
        ({"RECSYS_LAST_DAY": "-1"}, "RECSYS_LAST_DAY"),
        ({"RECSYS_LAST_DAY": "yesterday"}, "RECSYS_LAST_DAY"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("day, key, name", [(0, "2026-01-01", "day_00"), (13, "2026-01-14", "day_13"),
                                             (120, "2026-05-01", "day_120")])
def test_partition_day_round_trip(day, key, name):
    start = dt.date(2026, 1, 1)
    assert partition_key(day, start) == key
    assert day_index(key, start) == day
    assert day_name(day) == name


def test_partition_before_start_is_rejected():
    with pytest.raises(ValueError, match="before the start date"):
        day_index("2025-12-31", dt.date(2026, 1, 1))


@pytest.mark.parametrize("value, source, generator", [(None, "generator", True), ("", "generator", True),
                                                      ("/data/shop", "/data/shop", False),
                                                      ("s3://shop/exports", "s3://shop/exports", False)])
def test_source_setting(value, source, generator):
    settings = Settings.from_env({} if value is None else {"RECSYS_SOURCE": value})
    assert (settings.source, settings.uses_generator) == (source, generator)


def test_an_s3_source_needs_a_bucket():
    with pytest.raises(SettingsError, match="RECSYS_SOURCE"):
        Settings.from_env({"RECSYS_SOURCE": "s3://"})


@pytest.mark.parametrize("timestamp, day", [
    (1767225600, 0),            # 2026-01-01T00:00:00Z
    (1767225600 + 86_399, 0),
    (1767225600 + 86_400, 1),
    (1767225600 - 1, -1),       # before day 00: negative, never rounded towards 0
])
def test_day_of_timestamp_counts_whole_utc_days_for_ints_and_arrays(timestamp, day):
    epoch = settings.start_epoch(dt.date(2026, 1, 1))
    assert epoch == 1767225600
    assert settings.day_of_timestamp(timestamp, epoch) == day
    assert settings.day_of_timestamp(np.array([timestamp]), epoch).tolist() == [day]
    assert settings.day_start(day, epoch) <= timestamp < settings.day_start(day + 1, epoch)
