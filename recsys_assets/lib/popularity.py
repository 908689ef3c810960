"""Popularity tables: the cold-start and fallback candidate source, as sorted sets in Valkey.

Popularity is the number of clicks an item got over the training window (days 00-08), globally and within
each ``category_l1`` and ``category_l2``. Every catalogue item is in its tables, clicked or not, so a
category's list can always be filled.

Scores are ``clicks + (n_items - item_id) / (n_items + 1)``: the integer part is the click count, the
fraction (always in (0, 1)) breaks ties towards the lower item id, so the order is fully defined and the
same in Valkey and in :func:`ranking` (Valkey would otherwise order equal scores by member bytes).

Layout in the popularity key space (``KeySpace``: db 3 and prefix ``recsys:pop:``, or db 0 on a cluster)::

    <prefix>current                 the published version (an integer, as text)
    <prefix>seq                     the version counter (INCR)
    <prefix>v<N>:global             ZSET item_id -> score
    <prefix>v<N>:l1:<category_l1>   ZSET item_id -> score, one per category
    <prefix>v<N>:l2:<category_l2>   ZSET item_id -> score, one per style
    <prefix>v<N>:available          ZSET item_id -> available_from_day
    <prefix>v<N>:meta               HASH created_at, window, clicks, items, keys (JSON list)
    <prefix>v<N>:prior              STRING the window's ordering prior (lib.prior.Prior.to_bytes), when built

Publishing writes a whole new version, then switches ``current`` with one SET: a reader sees the old tables
or the new ones, never a mix (no MULTI needed, so it works the same on a cluster). Versions older than the
previous one are then deleted, so a reader that resolved ``current`` just before the switch still finds its keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recsys_assets.lib.prior import Prior


class PopularityNotPublished(LookupError):
    """No popularity tables in Valkey yet (or the asked category has none)."""


@dataclasses.dataclass(frozen=True)
class PopularityTables:
    """One row per catalogue item: its clicks in the window and its tie-broken score."""

    items: pd.DataFrame  # item_id, category_l1, category_l2, available_from_day, clicks, score
    window: tuple[int, ...]
    prior: Prior | None = None  # the ordering prior of the same window (lib.prior), published beside the tables

    @property
    def clicks(self) -> int:
        return int(self.items["clicks"].sum())


def tie_broken_scores(clicks: np.ndarray, item_ids: np.ndarray, n_items: int) -> np.ndarray:
    clicks = np.asarray(clicks, dtype=np.float64)
    ids = np.asarray(item_ids, dtype=np.float64)
    return clicks + (n_items - ids) / (n_items + 1)


def build_tables(clicked_item_ids: np.ndarray, items: pd.DataFrame, window: Sequence[int]) -> PopularityTables:
    """Click counts per item from the item ids of the window's clicks (one entry per click).

    ``items``: the catalogue (item_id 0..n-1, category_l1, category_l2, available_from_day).
    """
    required = {"item_id", "category_l1", "category_l2", "available_from_day"}
    missing = required - set(items.columns)
    if missing:
        raise ValueError(f"items table lacks columns {sorted(missing)}: expected {sorted(required)}")
    n = len(items)
    ids = items["item_id"].to_numpy(np.int64)
    if not (ids == np.arange(n)).all():
        raise ValueError("items must hold item ids 0..n-1 in order (the catalogue order)")
    clicked = np.asarray(clicked_item_ids, dtype=np.int64)
    if len(clicked) and (clicked.min() < 0 or clicked.max() >= n):
        bad = clicked[(clicked < 0) | (clicked >= n)][:5].tolist()
        raise ValueError(f"clicks name item ids {bad} outside the catalogue 0..{n - 1}")
    counts = np.bincount(clicked, minlength=n)
    table = items[["item_id", "category_l1", "category_l2", "available_from_day"]].copy()
    table["available_from_day"] = table["available_from_day"].astype(np.int64)
    table["clicks"] = counts.astype(np.int64)
    table["score"] = tie_broken_scores(counts, ids, n)
    return PopularityTables(items=table.reset_index(drop=True), window=tuple(int(d) for d in window))


WINDOW_COLUMNS = ["item_id", "click", "device_type", "timestamp"]


def window_prior(impressions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None = None) -> "Prior":
    """The ordering prior of a window's impressions (:data:`WINDOW_COLUMNS`) over the catalogue ``items``
    (category, gender, price); ``users`` (their ``age``), when given, standardises a request's age."""
    from recsys_assets.lib import prior, top_category
    from recsys_assets.lib.feature_spec import encode_gender

    ordered = items.sort_values("item_id")
    vocabulary = top_category.category_vocabulary(items["category_l1"])
    codes = top_category.category_codes(ordered["category_l1"], vocabulary)
    return prior.build(impressions["item_id"].to_numpy(), impressions["device_type"].to_numpy(),
                       impressions["timestamp"].to_numpy(), impressions["click"].to_numpy(), codes, len(vocabulary),
                       item_gender=encode_gender(ordered["item_gender"]), price=ordered["price"].to_numpy(),
                       user_age=None if users is None else users["age"].to_numpy(np.float64))


def registered_users(store) -> pd.DataFrame | None:
    """The registered users' ages (``raw/users.parquet``), what :func:`window_prior` standardises a request's age
    with; None where the store has no users table."""
    from recsys_assets.lib import paths

    return store.read_parquet(paths.USERS, columns=["age"]) if store.exists(paths.USERS) else None


def build_window(impressions: pd.DataFrame, items: pd.DataFrame, window: Sequence[int],
                 users: pd.DataFrame | None = None) -> PopularityTables:
    """The tables and the ordering prior of a window's impressions (:data:`WINDOW_COLUMNS`)."""
    clicked = impressions.loc[impressions["click"].to_numpy() == 1, "item_id"].to_numpy()
    return dataclasses.replace(build_tables(clicked, items, window), prior=window_prior(impressions, items, users))


def ranking(tables: PopularityTables, day: int | None = None, category_l1: str | None = None,
            category_l2: str | None = None) -> list[int]:
    """Item ids by descending popularity, as Valkey returns them (the reference for tests and checks)."""
    df = tables.items
    if category_l1 is not None:
        df = df[df["category_l1"] == category_l1]
    if category_l2 is not None:
        df = df[df["category_l2"] == category_l2]
    if day is not None:
        df = df[df["available_from_day"] <= day]
    return df.sort_values("score", ascending=False)["item_id"].astype(int).tolist()


# -- Valkey -----------------------------------------------------------------------------------------------------
def _table_keys(prefix: str, version: int, tables: PopularityTables) -> dict[str, pd.DataFrame]:
    df = tables.items
    keys = {f"{prefix}v{version}:global": df}
    for name, part in df.groupby("category_l1", sort=True):
        keys[f"{prefix}v{version}:l1:{name}"] = part
    for name, part in df.groupby("category_l2", sort=True):
        keys[f"{prefix}v{version}:l2:{name}"] = part
    return keys


def publish(client, prefix: str, tables: PopularityTables, created_at: dt.datetime | None = None,
            keep: int = 2) -> int:
    """Write ``tables`` as a new version, switch ``current`` to it, drop versions older than the ``keep`` newest.

    ``client``: a valkey (or cluster) client on the popularity database. Returns the new version number.
    """
    created_at = created_at or dt.datetime.now(dt.timezone.utc)
    version = int(client.incr(f"{prefix}seq"))
    keys = _table_keys(prefix, version, tables)
    avail_key = f"{prefix}v{version}:available"
    meta_key = f"{prefix}v{version}:meta"
    prior_key = f"{prefix}v{version}:prior"
    df = tables.items
    pipe = client.pipeline(transaction=False)
    # The meta hash goes first: it lists every key of the version, so even a publish that dies half-way
    # leaves behind only keys a later publish can find and drop.
    pipe.delete(meta_key)
    pipe.hset(meta_key, mapping={
        "created_at": created_at.isoformat(),
        "window": json.dumps(list(tables.window)),
        "clicks": tables.clicks,
        "items": len(df),
        "keys": json.dumps(sorted([*keys, avail_key, meta_key, *([prior_key] if tables.prior is not None else [])])),
    })
    for key, part in keys.items():
        pipe.delete(key)
        pipe.zadd(key, dict(zip(part["item_id"].astype(str), part["score"].astype(float))))
    pipe.delete(avail_key)
    pipe.zadd(avail_key, dict(zip(df["item_id"].astype(str), df["available_from_day"].astype(float))))
    if tables.prior is not None:
        pipe.set(prior_key, tables.prior.to_bytes())
    pipe.execute()
    client.set(f"{prefix}current", version)  # the switch: one atomic SET
    _drop_versions_before(client, prefix, version - keep + 1)
    return version


def _drop_versions_before(client, prefix: str, oldest_kept: int) -> None:
    for old in range(oldest_kept - 1, 0, -1):
        meta_key = f"{prefix}v{old}:meta"
        raw = client.hget(meta_key, "keys")
        if raw is None:
            continue  # already dropped, or a publish that died before writing its meta
        for key in json.loads(raw):
            client.delete(key)  # one key per call: cluster-mode keys may sit in different slots


def current_version(client, prefix: str) -> int:
    raw = client.get(f"{prefix}current")
    if raw is None:
        raise PopularityNotPublished(f"no popularity tables under {prefix!r}: materialize popularity_tables")
    return int(raw)


def read_prior(client, prefix: str, version: int | None = None) -> Prior:
    """The ordering prior published with the current (or the given) version."""
    from recsys_assets.lib.prior import Prior

    version = current_version(client, prefix) if version is None else version
    raw = client.get(f"{prefix}v{version}:prior")
    if raw is None:
        raise PopularityNotPublished(f"popularity version {version} under {prefix!r} has no ordering prior: "
                                     "re-materialize popularity_tables (or the day's daily_popularity_tables)")
    return Prior.from_bytes(raw)


def metadata(client, prefix: str, version: int | None = None) -> dict:
    version = current_version(client, prefix) if version is None else version
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in client.hgetall(f"{prefix}v{version}:meta").items()}
    return {"version": version, "created_at": raw.get("created_at"), "window": json.loads(raw.get("window", "[]")),
            "clicks": int(raw.get("clicks", 0)), "items": int(raw.get("items", 0))}


def top_items(client, prefix: str, n: int, day: int, category_l1: str | None = None,
              category_l2: str | None = None, version: int | None = None) -> list[int]:
    """The ``n`` most popular raw item ids available on ``day`` (``available_from_day <= day``).

    Globally, or within one ``category_l1`` or ``category_l2`` (not both). An unknown category raises
    :class:`PopularityNotPublished` rather than returning nothing silently.
    """
    if category_l1 is not None and category_l2 is not None:
        raise ValueError("pass category_l1 or category_l2, not both")
    if n <= 0:
        return []
    version = current_version(client, prefix) if version is None else version
    if category_l1 is not None:
        key = f"{prefix}v{version}:l1:{category_l1}"
    elif category_l2 is not None:
        key = f"{prefix}v{version}:l2:{category_l2}"
    else:
        key = f"{prefix}v{version}:global"
    avail_key = f"{prefix}v{version}:available"
    out: list[int] = []
    start, chunk = 0, max(2 * n, 64)  # over-fetch: a few not-yet-available items are skipped
    while len(out) < n:
        members = client.zrevrange(key, start, start + chunk - 1)
        if not members:
            if start == 0 and not client.exists(key):
                raise PopularityNotPublished(f"no popularity table {key!r} (version {version}): unknown category?")
            break
        available = client.zmscore(avail_key, members)
        out.extend(int(m) for m, a in zip(members, available) if a is not None and a <= day)
        start += chunk
    return out[:n]
