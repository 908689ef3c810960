import datetime as dt

import pytest

from recsys_assets.lib.settings import Settings, SettingsError, day_index, day_name, partition_key


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
