"""Joining a day's interactions with user, item and ``top_category`` features, and the cold-start masking.

Contract (DESIGN.md, Contracts):

* :func:`join_day` gives every raw row its features. A user missing from the user table (arrived after its
  ``through_day``) or the anonymous id -1 gets the cold-start defaults serving uses for an unknown user: the
  training mean age and gender -1; the history codes come from the point-in-time feature rows as computed.
* :func:`mask_day` simulates cold start on training days: in ``user_rate`` of the rows, ``user_id``, ``gender``
  and the history codes (``top_category``, ``interest_1..3``) become -1 *together* and ``age`` becomes the
  training mean age (exactly what serving
  gives an unknown user); independently, in ``device_rate`` of the rows ``device_type`` becomes -1. The rows are
  an exact-size random subset drawn from a generator seeded by ``(seed, day)``, so a day is masked identically
  on every run, and the choice is recorded in the ``masked_user`` / ``masked_device`` columns.
* :func:`training_mean_age` is the mean age of the users registered by the last training day: a property of
  the training window alone, so it is the same for every partition and for the fitted workflows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_assets.lib.feature_spec import MASKED_SCHEMA, SENTINEL, USER_HISTORY, encode_gender

RAW_COLUMNS = ("interaction_id", "user_id", "item_id", "timestamp", "device_type", "click")
USER_COLUMNS = ("user_id", "age", "gender", "signup_day")
ITEM_COLUMNS = ("item_id", "category_l1", "category_l2", "item_gender", "price")
TOP_CATEGORY_COLUMNS = ("interaction_id", *USER_HISTORY)  # the point-in-time history rows of a day


class JoinError(ValueError):
    """The inputs of a day cannot be joined (misaligned rows, ids missing from the catalogue)."""


# Own data may know no user's age (no users file, or no age column: ``lib.sources``). Every user then gets this
# one value, which carries no information (after normalization every age is 0, and all fall in one bucket).
NO_KNOWN_AGE = 0.0


def training_mean_age(users, last_train_day: int) -> float:
    """Mean known age of the users who signed up by ``last_train_day`` (the cold-start default age); unknown
    ages (NaN, own data) do not count, and with none known it is :data:`NO_KNOWN_AGE`."""
    registered = users[users["signup_day"] <= last_train_day]
    if registered.empty:
        raise ValueError(f"no users signed up by day {last_train_day}: cannot compute the training mean age")
    known = registered["age"].astype("float64").dropna()
    return float(known.mean()) if len(known) else NO_KNOWN_AGE


def join_day(raw, users, items, top_category, mean_age: float):
    """The day's rows with their user, item and ``top_category`` features (columns of ``MASKED_SCHEMA``).

    ``top_category`` must be row-aligned with ``raw`` (same ``interaction_id`` order); every ``item_id`` must be
    in ``items``. The mask flags are False; :func:`mask_day` sets them.
    """
    import pandas as pd

    if len(top_category) != len(raw) or not np.array_equal(
        top_category["interaction_id"].to_numpy(), raw["interaction_id"].to_numpy()
    ):
        raise JoinError("top_category rows are not aligned with the raw interactions (interaction_id differs): "
                        "re-materialize user_top_category for this partition")
    item_table = items.set_index("item_id")
    unknown_items = np.setdiff1d(raw["item_id"].unique(), item_table.index.to_numpy())
    if len(unknown_items):
        raise JoinError(f"item_id values {unknown_items[:5].tolist()} are not in the catalogue: re-materialize items")
    item_rows = item_table.reindex(raw["item_id"].to_numpy())
    user_table = users.set_index("user_id")
    user_rows = user_table.reindex(raw["user_id"].to_numpy())
    known = user_rows["age"].notna().to_numpy()
    out = pd.DataFrame({
        "interaction_id": raw["interaction_id"].to_numpy(np.int64),
        "user_id": raw["user_id"].to_numpy(np.int64),
        "item_id": raw["item_id"].to_numpy(np.int64),
        "timestamp": raw["timestamp"].to_numpy(np.int64),
        "device_type": raw["device_type"].to_numpy(np.int64),
        "click": raw["click"].to_numpy(np.int64),
        "age": np.where(known, user_rows["age"].to_numpy(np.float64, na_value=np.nan), mean_age),
        "gender": np.asarray(encode_gender(user_rows["gender"].tolist()), dtype=np.int64),
        **{name: top_category[name].to_numpy(np.int64) for name in USER_HISTORY},
        "category_l1": item_rows["category_l1"].to_numpy(object),
        "category_l2": item_rows["category_l2"].to_numpy(object),
        "item_gender": item_rows["item_gender"].to_numpy(object),
        "price": item_rows["price"].to_numpy(np.float64),
        "masked_user": np.zeros(len(raw), dtype=bool),
        "masked_device": np.zeros(len(raw), dtype=bool),
    })
    return out[list(MASKED_SCHEMA)]


@dataclasses.dataclass(frozen=True)
class MaskStats:
    rows: int
    masked_users: int
    masked_devices: int
    masked_both: int

    @property
    def user_rate(self) -> float:
        return self.masked_users / self.rows if self.rows else 0.0

    @property
    def device_rate(self) -> float:
        return self.masked_devices / self.rows if self.rows else 0.0


def mask_rows(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly ``round(rate * n)`` True entries at random positions."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mask rate {rate} outside [0, 1]")
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(rate * n), replace=False)] = True
    return mask


def day_rng(seed: int, day: int) -> np.random.Generator:
    """The masking generator of one day: independent of every other day and of the generator's streams."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(day), 0x6D61736B]))  # "mask"


def mask_day(joined, seed: int, day: int, mean_age: float, user_rate: float = 0.05, device_rate: float = 0.05):
    """Apply the cold-start masking to a joined day; returns ``(masked copy, MaskStats)``."""
    rng = day_rng(seed, day)
    n = len(joined)
    users = mask_rows(n, user_rate, rng)
    devices = mask_rows(n, device_rate, rng)
    out = joined.copy()
    out.loc[users, ["user_id", "gender", *USER_HISTORY]] = SENTINEL
    out.loc[users, "age"] = mean_age
    out.loc[devices, "device_type"] = SENTINEL
    out["masked_user"] = users
    out["masked_device"] = devices
    return out, MaskStats(rows=n, masked_users=int(users.sum()), masked_devices=int(devices.sum()),
                          masked_both=int((users & devices).sum()))
