import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib.calibration import calibration_report
from recsys_assets.lib.generator import IMPRESSION_SOURCES, World


def test_same_seed_same_day_is_bit_identical_in_any_order():
    a = World(seed=11, scale="tiny")
    b = World(seed=11, scale="tiny")
    b.generate_day(5)  # generating another day first must not change day 2
    da, ta = a.generate_day(2)
    db, tb = b.generate_day(2)
    pd.testing.assert_frame_equal(da, db)
    pd.testing.assert_frame_equal(ta, tb)


def test_different_seeds_differ():
    a, _ = World(seed=1, scale="tiny").generate_day(0)
    b, _ = World(seed=2, scale="tiny").generate_day(0)
    assert not a[["user_id", "item_id"]].equals(b[["user_id", "item_id"]])


def test_day_schema_and_truth_alignment(tiny_world):
    df, truth = tiny_world.generate_day(3)
    assert list(df.columns) == ["interaction_id", "session_id", "user_id", "item_id", "timestamp", "device_type",
                                "position", "impression_source", "click"]
    assert df["interaction_id"].is_unique
    assert (df["interaction_id"].to_numpy() == truth["interaction_id"].to_numpy()).all()
    assert set(df["impression_source"].unique()) == set(IMPRESSION_SOURCES)
    assert set(df["device_type"].unique()) <= {0, 1, 2}
    assert set(df["click"].unique()) == {0, 1}
    start = tiny_world.day_start_ts(3)
    assert df["timestamp"].between(start, start + 86_399).all()
    p = truth["p_click"].to_numpy()
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert "p_click" not in df.columns  # models never see the truth


def test_truth_matches_the_click_model(tiny_world):
    df, truth = tiny_world.generate_day(1)
    p = tiny_world.click_probability(df["user_id"], df["item_id"], df["device_type"], df["timestamp"])
    np.testing.assert_allclose(p, truth["p_click"].to_numpy())


def test_cold_items_never_shown_before_their_day(tiny_world):
    avail = tiny_world.item_available_from
    held = np.flatnonzero(avail > 0)
    assert 0.03 * len(avail) < len(held) < 0.10 * len(avail)
    shown_later = set()
    for day in range(0, 14):
        df, _ = tiny_world.generate_day(day)
        assert (avail[df["item_id"].to_numpy()] <= day).all(), f"day {day} shows an item before its first day"
        shown_later |= set(df["item_id"][avail[df["item_id"].to_numpy()] > 0].tolist())
    assert shown_later, "held-back items must appear once available"


def test_new_users_arrive_every_day_and_visit(tiny_world):
    day0 = set(tiny_world.generate_day(0)[0]["user_id"])
    df4, _ = tiny_world.generate_day(4)
    first_new = sum(tiny_world.cohort_size(d) for d in range(4))
    newcomers = np.arange(first_new, first_new + tiny_world.cohort_size(4))
    assert len(newcomers) > 0
    assert set(newcomers) <= set(df4["user_id"])  # every newcomer visits on the day they arrive
    assert max(day0) < first_new
    users = tiny_world.users(4)
    assert users["user_id"].tolist() == list(range(len(users)))
    assert users["age"].between(18, 100).all()


def test_user_ages_follow_the_retail_demo_store_distribution():
    users = World(seed=3, scale="demo").users(0)
    assert 30 < users["age"].mean() < 38  # a normal(32, 15) truncated at 18 has a mean near 35
    assert users["age"].min() >= 18 and users["age"].max() <= 100


def test_context_changes_category_ctr_by_device_and_hour():
    world = World(seed=5, scale="demo")
    df = pd.concat([world.generate_day(d)[0] for d in range(4)])
    df["category"] = world.items["category_l1"].to_numpy()[df["item_id"]]
    by_device = df[df["category"].isin(["electronics", "beauty"])].groupby(["category", "device_type"])["click"].mean()
    # electronics is a desktop category, beauty a mobile one: the ordering flips between devices
    assert by_device["electronics", 0] > by_device["electronics", 1]
    assert by_device["beauty", 1] > by_device["beauty", 0]
    # the click model itself: the same user and item, at two hours, get different probabilities
    morning = world.click_probability([0], [world.items.index[world.items.category_l1 == "groceries"][0]], [0],
                                      [world.day_start_ts(1) + 8 * 3600])
    night = world.click_probability([0], [world.items.index[world.items.category_l1 == "groceries"][0]], [0],
                                    [world.day_start_ts(1) + 2 * 3600])
    assert morning[0] > night[0]


def test_drifting_users_shift_their_interest():
    world = World(seed=9, scale="tiny")
    pop = world._population(13)
    drifters = np.flatnonzero((pop["drift_cat"] >= 0) & (pop["drift_start"] + pop["drift_days"] <= 13))
    assert len(drifters) > 0
    u = drifters[0]
    before = world.affinity({k: v[[u]] for k, v in pop.items()}, 0)[0]
    after = world.affinity({k: v[[u]] for k, v in pop.items()}, 13)[0]
    assert after[pop["drift_cat"][u]] == pytest.approx(0.6)
    assert before[pop["drift_cat"][u]] == 0.0
    assert after.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def demo_report():
    return calibration_report(World(seed=20260101, scale="demo"), range(0, 12), split_day=9)


def test_calibration_ctr(demo_report):
    assert 0.05 <= demo_report["ctr"] <= 0.10


def test_calibration_oracle_auc(demo_report):
    assert 0.75 <= demo_report["oracle_auc"] <= 0.85


def test_calibration_popularity_clearly_below_oracle(demo_report):
    assert demo_report["oracle_auc"] - demo_report["popularity_auc"] >= 0.08


def test_calibration_context_alone_is_informative(demo_report):
    assert demo_report["context_auc"] > 0.53


def test_calibration_persona_is_the_strongest_signal(demo_report):
    signals = {k: v for k, v in demo_report.items() if k.startswith("signal_auc_")}
    assert max(signals, key=signals.get) == "signal_auc_persona"
