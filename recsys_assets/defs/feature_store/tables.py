"""The offline feature tables Feast reads (plain pandas, no Dagster): one parquet per source, with event timestamps.

- ``users``: user_id, age, gender, event_timestamp (signup time).
- ``user_top_category``: user_id, top_category, event_timestamp. A row at signup with -1 for every user, then
  the value at the end of each day (the ``user_top_category`` snapshots), kept only where it changed, so the
  table is a point-in-time history: the value as of time t is the last row at or before t. Between two day
  ends the history holds the earlier day's value; training uses the per-row point-in-time feature instead
  (``features/top_category/day_XX.parquet``), and serving the value the click path pushes.
- ``user_interests``: user_id, interest_1..3, event_timestamp, built the same way from the same snapshots
  (the click path pushes new values, as for top_category).
- ``user_interest_weights``: user_id, interest_weights (float32 per category code), event_timestamp: each user's
  weights of the latest snapshot (zeros at signup for a user without one), what the click path adds a click to
  before it ranks the interests again (``lib.top_category.interests_after_clicks``). Only the latest row is kept:
  training computes interests point in time itself, the history is not needed.
- ``items``: item_id, price, category_l1, category_l2, item_gender, available_from_day, event_timestamp
  (the start of the day the item becomes available).

Event timestamps are tz-aware UTC datetimes (what Feast compares against).
"""

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.masking import NO_KNOWN_AGE
from recsys_assets.lib.sources.catalogue import NO_GENDER
from recsys_assets.lib.top_category import CATEGORIES, INTEREST_WEIGHTS, NONE, category_vocabulary

SECONDS_PER_DAY = 86_400
USER_COLUMNS = ["user_id", "age", "gender", "event_timestamp"]
TOP_CATEGORY_COLUMNS = ["user_id", "top_category", "event_timestamp"]
INTEREST_COLUMNS = ["user_id", *INTERESTS, "event_timestamp"]
WEIGHT_COLUMNS = ["user_id", INTEREST_WEIGHTS, "event_timestamp"]
ITEM_COLUMNS = ["item_id", "price", "category_l1", "category_l2", "item_gender", "available_from_day",
                "event_timestamp"]


def _utc(seconds) -> pd.Series:
    return pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s", utc=True)


def users_table(users: pd.DataFrame, mean_age: float | None = None) -> pd.DataFrame:
    """``mean_age``: what an unknown age (NaN: own data) becomes, the training mean age the transforms give such
    a user (``lib.masking.training_mean_age``), rounded to the table's whole years."""
    out = users[["user_id", "age", "gender"]].copy()
    out["user_id"] = out["user_id"].astype(np.int64)
    unknown = out["age"].isna()
    if unknown.any():
        if mean_age is None:
            raise ValueError(f"{int(unknown.sum())} users have no age: pass the training mean age to fill them")
        out.loc[unknown, "age"] = round(mean_age)
    out["age"] = out["age"].astype(np.int64)
    out["event_timestamp"] = _utc(users["signup_timestamp"])
    return out[USER_COLUMNS].sort_values("user_id", kind="stable").reset_index(drop=True)


def history_table(users: pd.DataFrame, snapshots: dict[int, pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Signup rows (-1 in every code) plus the end-of-day snapshots' ``columns`` (user_id, codes...,
    event_timestamp), keeping only the rows where a user's codes changed."""
    codes = columns[1:-1]
    base = pd.DataFrame({"user_id": users["user_id"].astype(np.int64), **{c: np.int64(NONE) for c in codes},
                         "event_timestamp": _utc(users["signup_timestamp"])})
    frames = [base] + [snapshots[d][columns] for d in sorted(snapshots)]
    df = pd.concat(frames, ignore_index=True)
    df["user_id"] = df["user_id"].astype(np.int64)
    df[codes] = df[codes].astype(np.int64)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df = df.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)
    same_user = df["user_id"].eq(df["user_id"].shift())
    unchanged = same_user & df[codes].eq(df[codes].shift()).all(axis=1)
    return df[~unchanged].reset_index(drop=True)[columns]


def top_category_history(users: pd.DataFrame, snapshots: dict[int, pd.DataFrame]) -> pd.DataFrame:
    return history_table(users, snapshots, TOP_CATEGORY_COLUMNS)


def interest_weights_table(users: pd.DataFrame, snapshots: dict[int, pd.DataFrame],
                           n_categories: int) -> pd.DataFrame:
    """The latest snapshot's interest weights per user; a user it lacks gets zeros at signup."""
    latest = snapshots[max(snapshots)] if snapshots else pd.DataFrame(columns=WEIGHT_COLUMNS)
    if INTEREST_WEIGHTS not in latest.columns:  # a snapshot written before the weights existed
        latest = latest.iloc[:0].assign(**{INTEREST_WEIGHTS: []})
    latest = latest[WEIGHT_COLUMNS].copy()
    latest["user_id"] = latest["user_id"].astype(np.int64)
    latest["event_timestamp"] = pd.to_datetime(latest["event_timestamp"], utc=True)
    rest = users.loc[~users["user_id"].isin(latest["user_id"])]
    zeros = np.zeros(n_categories, np.float32)
    base = pd.DataFrame({"user_id": rest["user_id"].astype(np.int64),
                         INTEREST_WEIGHTS: [zeros] * len(rest), "event_timestamp": _utc(rest["signup_timestamp"])})
    df = pd.concat([base, latest], ignore_index=True)
    df[INTEREST_WEIGHTS] = [np.asarray(w, np.float32) for w in df[INTEREST_WEIGHTS]]
    return df.sort_values("user_id", kind="stable").reset_index(drop=True)[WEIGHT_COLUMNS]


def offline_tables(users: pd.DataFrame, items: pd.DataFrame, snapshots: dict[int, pd.DataFrame], mean_age: float,
                   start_date: dt.date) -> dict[str, pd.DataFrame]:
    """Every offline source Feast reads, by its name (``lib.paths.FEAST_TABLES`` says where each is written)."""
    return {"users": users_table(users, mean_age),
            "user_top_category": top_category_history(users, snapshots),
            "user_interests": history_table(users, snapshots, INTEREST_COLUMNS),
            "user_interest_weights": interest_weights_table(users, snapshots, len(category_vocabulary(
                items["category_l1"]))),
            "items": items_table(items, start_date)}


def items_table(items: pd.DataFrame, start_date: dt.date) -> pd.DataFrame:
    out = items[["item_id", "price", "category_l1", "category_l2", "item_gender", "available_from_day"]].copy()
    out["item_id"] = out["item_id"].astype(np.int64)
    out["price"] = out["price"].astype(np.float64)
    out["available_from_day"] = out["available_from_day"].astype(np.int64)
    day0 = int(dt.datetime.combine(start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp())
    out["event_timestamp"] = _utc(day0 + out["available_from_day"].to_numpy() * SECONDS_PER_DAY)
    return out[ITEM_COLUMNS].sort_values("item_id", kind="stable").reset_index(drop=True)


# -- checks -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Problem:
    table: str
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}: {self.message}"


def missing_ids(table: pd.DataFrame, column: str, expected_ids) -> np.ndarray:
    present = np.unique(table[column].to_numpy())
    return np.setdiff1d(np.asarray(expected_ids, dtype=np.int64), present)


def coverage_problems(tables: dict[str, pd.DataFrame], user_ids, item_ids) -> list[Problem]:
    """Every table must hold a row for every id of its entity."""
    problems = []
    for name, table in tables.items():
        column, expected = ("item_id", item_ids) if "item_id" in table.columns else ("user_id", user_ids)
        missing = missing_ids(table, column, expected)
        if len(missing):
            problems.append(Problem(name, column, f"{len(missing)} of {len(expected)} ids have no row "
                                                  f"(first: {missing[:5].tolist()})"))
    return problems


def domains(categories: tuple[str, ...] = CATEGORIES) -> dict:
    """Each feature's valid values; ``categories``: the catalogue's vocabulary (``lib.top_category``)."""
    return {
        # An unknown age is the training mean age (a whole number; own data without ages: masking.NO_KNOWN_AGE).
        "age": lambda s: s.between(18, 100) | (s == round(NO_KNOWN_AGE)),
        "gender": lambda s: s.isin(["M", "F", NO_GENDER]),
        **{code: (lambda s: s.between(NONE, len(categories) - 1)) for code in ("top_category", *INTERESTS)},
        INTEREST_WEIGHTS: lambda s: s.map(lambda w: len(w) <= len(categories) and bool(np.all(np.isfinite(w)))
                                          and bool(np.all(np.asarray(w) >= 0))).astype(bool),
        "price": lambda s: s > 0,
        "item_gender": lambda s: s.isin(["M", "F", "U"]),
        "category_l1": lambda s: s.isin(categories),
        "category_l2": lambda s: s.astype(str).str.len() > 0,
    }


def value_problems(tables: dict[str, pd.DataFrame], categories: tuple[str, ...] = CATEGORIES) -> list[Problem]:
    """No nulls anywhere, and every feature value inside its domain."""
    valid = domains(categories)
    problems = []
    for name, table in tables.items():
        for column in table.columns:
            nulls = int(table[column].isna().sum())
            if nulls:
                problems.append(Problem(name, column, f"{nulls} null values"))
                continue
            check = valid.get(column)
            if check is not None:
                bad = table.loc[~check(table[column]), column]
                if len(bad):
                    problems.append(Problem(name, column, f"{len(bad)} values outside the expected domain "
                                                          f"(first: {bad.head(3).tolist()})"))
    return problems
