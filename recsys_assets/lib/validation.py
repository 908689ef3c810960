"""Data checks shared by the ingest assets and anything else that reads raw files (pure pandas/numpy).

Each check returns a :class:`CheckOutcome`; a failed one says which file and which column, and why.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_assets.lib.feature_spec import DEVICES

INTERACTION_SCHEMA = {
    "interaction_id": "int64", "session_id": "int64", "user_id": "int64", "item_id": "int64",
    "timestamp": "int64", "device_type": "int64", "position": "int64", "impression_source": "object",
    "click": "int64",
}
ITEM_SCHEMA = {
    "item_id": "int64", "item_uuid": "object", "name": "object", "category_l1": "object", "category_l2": "object",
    "price": "float64", "item_gender": "object", "available_from_day": "int16",
}
USER_SCHEMA = {"user_id": "int64", "age": "int64", "gender": "object", "signup_day": "int64",
               "signup_timestamp": "int64"}
# Own data (``lib.sources``) may not know a user's age: NaN, so the column is float.
OWN_USER_SCHEMA = {**USER_SCHEMA, "age": "float64"}
VALID_DEVICES = tuple(DEVICES)


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict = dataclasses.field(default_factory=dict)


def check_schema(df, schema: dict[str, str], where: str) -> CheckOutcome:
    problems = []
    for column, dtype in schema.items():
        if column not in df.columns:
            problems.append(f"missing column {column!r} (expected {dtype})")
        elif str(df[column].dtype) != dtype and not (dtype == "object" and str(df[column].dtype) in ("string", "str")):
            problems.append(f"column {column!r} has dtype {df[column].dtype}, expected {dtype}")
    extra = sorted(set(df.columns) - set(schema))
    if extra:
        problems.append(f"unexpected columns {extra}")
    return CheckOutcome("schema", not problems,
                        f"{where}: " + ("; ".join(problems) if problems else "schema as expected"))


def check_non_empty(df, where: str) -> CheckOutcome:
    return CheckOutcome("non_empty", len(df) > 0, f"{where}: {len(df)} rows" + ("" if len(df) else ", expected > 0"),
                        {"rows": len(df)})


def check_unique(df, key: str, where: str) -> CheckOutcome:
    if key not in df.columns:
        return CheckOutcome("unique_keys", False, f"{where}: key column {key!r} missing")
    dupes = int(df[key].duplicated().sum())
    return CheckOutcome("unique_keys", dupes == 0, f"{where}: {dupes} duplicate values in column {key!r}",
                        {"duplicates": dupes})


def check_interaction_ranges(df, where: str, n_users: int, available_from_day: np.ndarray, day: int,
                             unknown_allowed: bool = False) -> CheckOutcome:
    """user ids in 0..n_users-1, item ids in the catalogue and available on ``day``, valid devices and labels.

    ``unknown_allowed``: user id -1 (anonymous) and device -1 (unknown) are valid too; a shop's own logs have
    them (``lib.sources``), the generator never writes them.
    """
    problems = []
    lowest = -1 if unknown_allowed else 0
    devices = VALID_DEVICES + ((-1,) if unknown_allowed else ())
    if not set(INTERACTION_SCHEMA).issubset(df.columns):
        return CheckOutcome("id_ranges", False, f"{where}: cannot check ranges, columns missing")
    users = df["user_id"].to_numpy()
    if len(users) and (users.min() < lowest or users.max() >= n_users):
        problems.append(f"column 'user_id' outside {lowest}..{n_users - 1} (min {users.min()}, max {users.max()})")
    items = df["item_id"].to_numpy()
    n_items = len(available_from_day)
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        problems.append(f"column 'item_id' outside 0..{n_items - 1} (min {items.min()}, max {items.max()})")
    else:
        early = int((available_from_day[items] > day).sum())
        if early:
            problems.append(f"column 'item_id': {early} impressions of items not yet available on day {day}")
    bad_dev = int((~df["device_type"].isin(devices)).sum())
    if bad_dev:
        problems.append(f"column 'device_type': {bad_dev} values outside {devices}")
    bad_click = int((~df["click"].isin((0, 1))).sum())
    if bad_click:
        problems.append(f"column 'click': {bad_click} values other than 0/1")
    return CheckOutcome("id_ranges", not problems,
                        f"{where}: " + ("; ".join(problems) if problems else "ids, devices and labels in range"))
