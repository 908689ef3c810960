import datetime as dt

import pytest

from recsys_assets.lib.settings import (Settings, SettingsError, day_index, day_name, day_of_timestamp,
                                         day_start_timestamp, partition_key)


def test_defaults():
    s = Settings.from_env({})
    assert (s.profile, s.scale, s.start_date, s.valkey_url) == ("local", "demo", dt.date(2026, 1, 1), None)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RECSYS_PROFILE": "cloud"}, "RECSYS_PROFILE"),
        ({"RECSYS_SCALE": "huge"}, "RECSYS_SCALE"),
        ({"RECSYS_START_DATE": "01/02/2026"}, "ISO date"),
        ({"RECSYS_SEED": "abc"}, "RECSYS_SEED"),
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


def test_day_of_timestamp_counts_utc_days_from_the_start():
    start = dt.date(2026, 1, 1)
    first = day_start_timestamp(0, start)
    assert day_start_timestamp(2, start) == first + 2 * 86_400
    assert day_of_timestamp([first - 1, first, first + 86_399, first + 86_400], start).tolist() == [-1, 0, 0, 1]
