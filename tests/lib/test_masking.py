"""The join of a day's features and the cold-start masking (pure pandas/numpy)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.lib import masking
from recsys_assets.lib.feature_spec import INTERESTS, MASKED_SCHEMA, USER_HISTORY, encode_gender

MEAN_AGE = 33.25


def _joined(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "interaction_id": np.arange(n, dtype=np.int64),
        "user_id": rng.integers(0, 500, n),
        "item_id": rng.integers(0, 2465, n),
        "timestamp": 1767225600 + rng.integers(0, 86400, n),
        "device_type": rng.integers(0, 3, n),
        "click": rng.integers(0, 2, n),
        "age": rng.integers(18, 90, n).astype(float),
        "gender": rng.integers(0, 2, n),
        **{name: rng.integers(-1, 20, n) for name in USER_HISTORY},
        "category_l1": ["apparel"] * n, "category_l2": ["shirt"] * n, "item_gender": ["U"] * n,
        "price": rng.uniform(1, 100, n),
        "masked_user": np.zeros(n, bool), "masked_device": np.zeros(n, bool),
    })


@pytest.mark.parametrize("n", [1, 19, 20, 1000, 23_457])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5, 1.0])
def test_mask_rows_masks_exactly_the_rounded_share(n, rate):
    mask = masking.mask_rows(n, rate, np.random.default_rng(1))
    assert mask.sum() == round(rate * n)
    assert abs(mask.mean() - rate) <= 0.5 / n + 1e-12


@given(n=st.integers(1, 5000), rate=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_mask_rows_rate_is_within_one_row(n, rate):
    assert abs(masking.mask_rows(n, rate, np.random.default_rng(n)).mean() - rate) <= 1 / n


def test_mask_rate_out_of_range_is_refused():
    with pytest.raises(ValueError, match="outside"):
        masking.mask_rows(10, 1.5, np.random.default_rng(0))


def test_mask_day_sets_user_sentinels_together_and_the_mean_age():
    df = _joined(20_000)
    out, stats = masking.mask_day(df, seed=3, day=2, mean_age=MEAN_AGE)
    users, devices = out["masked_user"].to_numpy(), out["masked_device"].to_numpy()
    assert stats.masked_users == users.sum() == 1000 and stats.masked_devices == devices.sum() == 1000
    assert (out.loc[users, ["user_id", "gender", *USER_HISTORY]] == -1).all().all()
    assert (out.loc[users, "age"] == MEAN_AGE).all()
    assert (out.loc[devices, "device_type"] == -1).all()
    # Untouched where not masked: the user mask leaves devices alone and the device mask leaves users alone.
    keep = ~users
    for col in ("user_id", "gender", *USER_HISTORY, "age"):
        assert (out.loc[keep, col].to_numpy() == df.loc[keep, col].to_numpy()).all()
    assert (out.loc[~devices, "device_type"].to_numpy() == df.loc[~devices, "device_type"].to_numpy()).all()
    for col in ("interaction_id", "item_id", "timestamp", "click", "price"):
        assert (out[col].to_numpy() == df[col].to_numpy()).all()
    # Independent masks: the overlap is about rate^2 of the rows, not 0 and not 5%.
    assert 0 < stats.masked_both < 200
    assert list(out.columns) == list(MASKED_SCHEMA) and not df["masked_user"].any()  # input not modified


def test_mask_day_is_seeded_per_day():
    df = _joined(5_000)
    a, _ = masking.mask_day(df, seed=3, day=4, mean_age=MEAN_AGE)
    b, _ = masking.mask_day(df, seed=3, day=4, mean_age=MEAN_AGE)
    c, _ = masking.mask_day(df, seed=3, day=5, mean_age=MEAN_AGE)
    d, _ = masking.mask_day(df, seed=4, day=4, mean_age=MEAN_AGE)
    assert a.equals(b)
    assert not np.array_equal(a["masked_user"], c["masked_user"])
    assert not np.array_equal(a["masked_user"], d["masked_user"])


def _inputs():
    raw = pd.DataFrame({"interaction_id": [10, 11, 12, 13], "user_id": [0, 1, 7, -1], "item_id": [2, 0, 1, 2],
                        "timestamp": [100, 200, 300, 400], "device_type": [0, 1, 2, 1], "click": [1, 0, 0, 1]})
    users = pd.DataFrame({"user_id": [0, 1, 2], "age": [20, 60, 35], "gender": ["F", "M", "M"],
                          "signup_day": [0, 0, 9]})
    items = pd.DataFrame({"item_id": [0, 1, 2], "category_l1": ["books", "tools", "apparel"],
                          "category_l2": ["novel", "saw", "shirt"], "item_gender": ["U", "M", "F"],
                          "price": [9.99, 25.0, 40.0]})
    top = pd.DataFrame({"interaction_id": [10, 11, 12, 13], "top_category": [3, -1, 5, -1],
                        **{name: [k, -1, 5 + k, -1] for k, name in enumerate(INTERESTS)}})
    return raw, users, items, top


def test_join_day_gives_unregistered_users_the_cold_start_defaults():
    raw, users, items, top = _inputs()
    df = masking.join_day(raw, users, items, top, MEAN_AGE)
    assert list(df.columns) == list(MASKED_SCHEMA)
    assert {c: str(t) for c, t in df.dtypes.items()} == MASKED_SCHEMA
    assert df["age"].tolist() == [20.0, 60.0, MEAN_AGE, MEAN_AGE]  # user 7 unregistered, -1 anonymous
    assert df["gender"].tolist() == [0, 1, -1, -1]
    assert df["user_id"].tolist() == [0, 1, 7, -1]  # the id stays: the workflow maps an unseen id to OOV
    assert df["top_category"].tolist() == [3, -1, 5, -1]
    assert df["interest_2"].tolist() == [1, -1, 6, -1]
    assert df["category_l1"].tolist() == ["apparel", "books", "tools", "apparel"]
    assert df["price"].tolist() == [40.0, 9.99, 25.0, 40.0]
    assert not df["masked_user"].any() and not df["masked_device"].any()


def test_join_day_refuses_misaligned_top_category_and_unknown_items():
    raw, users, items, top = _inputs()
    with pytest.raises(masking.JoinError, match="user_top_category"):
        masking.join_day(raw, users, items, top.iloc[::-1], MEAN_AGE)
    with pytest.raises(masking.JoinError, match=r"\[2\]"):
        masking.join_day(raw, users, items[items["item_id"] != 2], top, MEAN_AGE)


def test_training_mean_age_counts_users_registered_by_the_last_train_day():
    _, users, _, _ = _inputs()
    assert masking.training_mean_age(users, 8) == 40.0
    assert masking.training_mean_age(users, 9) == pytest.approx(115 / 3)
    with pytest.raises(ValueError, match="no users"):
        masking.training_mean_age(users[users["signup_day"] > 0], 8)


def test_encode_gender():
    assert encode_gender(["F", "M", "m", None, float("nan"), "X", ""]) == [0, 1, 1, -1, -1, -1, -1]
