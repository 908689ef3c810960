"""The feature store's daily variant: a new day's users, items and top_category online, and popularity.

Run for a day ``d`` in ``daily_job`` (after ``served_list_evaluation``, which must replay the day before the
refresh writes the day's end-of-day state online):

- ``daily_online_features``: the users table grown by the day's cohort (locally from the generator, the stand-in
  for a registration feed), the three Feast offline sources rewritten, and the day's window materialized into
  the online store (``lib.daily.materialize_window``: new users, items that become available, the end-of-day
  top_category); the new users and items are read back through Feast (blocking checks), then the item-feature
  refresh signal is bumped so every Triton replica re-reads its item cache without a restart.
- ``daily_popularity_tables``: click counts over a sliding window (default the last 7 days) published as a new
  version with one atomic switch (``lib.popularity``); a backfill of an older day never replaces newer tables.

Both are idempotent per partition: re-running a day rewrites the same files and keys.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.feature_store import tables as t
from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest.assets import items, raw_interactions, users
from recsys_assets.defs.ingest.sources import ingest_source
from recsys_assets.defs.partitions import (
    START_DATE,
    TRAIN_DAYS,
    daily_partitions,
    partition_day,
    partition_keys,
    window_dep,
)
from recsys_assets.defs.release.evaluation import served_list_evaluation
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import daily, masking, paths
from recsys_assets.lib import popularity as pop
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore
from recsys_assets.serving.stages.feast_item_lookup import SIGNAL_KEY


GROUP = "feature_store"
# Feast's file registry is rewritten by apply/materialize: one such step at a time across runs.
FEAST_POOL = "feast"
USER_FEATURES = "user_features"
ITEM_FEATURES = ["item_features:price", "item_features:category_l1", "item_features:category_l2",
                 "item_features:item_gender"]
# Transient faults (Valkey restarting, Feast's registry busy) are retried; a wrong input fails its check instead.
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

# -- users, top_category and new items into the online store --------------------------------------------------
class DailyOnlineFeaturesConfig(dg.Config):
    verify_batch: int = 5000
    """Entities per ``get_online_features`` call when the day's users and items are read back."""
    grow_users: bool = True
    """Add the day's cohort to ``raw/users.parquet`` when it is missing (from the generator, or own data's id map)."""


ONLINE_CHECKS = ("top_category_days", "new_users_online", "new_items_online")


def _grow_users(context, store: ArtifactStore, world: WorldResource, day: int, enabled: bool) -> pd.DataFrame:
    """``raw/users.parquet`` covering every cohort through ``day`` (ids never renumber, so growing is safe)."""
    try:
        current = store.read_parquet(paths.USERS)
    except ArtifactNotFound:
        raise dg.Failure(f"{store.uri(paths.USERS)} is missing: materialize the users asset first") from None
    have = int(current["signup_day"].max()) if len(current) else -1
    if have >= day or not enabled:
        return current
    grown, _ = ingest_source(world).users(store, day)  # the generator's cohorts, or own data's mapped users
    context.log.info(f"users table grown from day {have:02d} to day {day:02d}: {len(grown) - len(current)} new")
    # The users asset's file changed: record it as a materialization of that asset, so lineage stays true.
    context.log_event(dg.AssetMaterialization(
        asset_key="users", description=f"grown by the daily refresh of day {day:02d}",
        metadata={"rows": len(grown), "through_day": day, "path": store.uri(paths.USERS)}))
    return grown


def _online_rows(fs, features, entity: str, ids: np.ndarray, batch: int) -> pd.DataFrame:
    frames = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        frames.append(pd.DataFrame(fs.get_online_features(
            features=features, entity_rows={entity: chunk.tolist()}).to_dict()))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({entity: []})


@dg.asset(group_name=GROUP, kinds={"feast", "valkey"}, partitions_def=daily_partitions, pool=FEAST_POOL,
          deps=[users, items, user_top_category, served_list_evaluation], retry_policy=RETRY,
          check_specs=check_specs("daily_online_features", ONLINE_CHECKS))
def daily_online_features(context: dg.AssetExecutionContext, config: DailyOnlineFeaturesConfig,
                          artifacts: ArtifactStoreResource, world: WorldResource, valkey: ValkeyResource,
                          feast: FeastResource) -> dg.MaterializeResult:
    """The day's new users (age, gender), end-of-day top_category and newly available items, online.

    Rewrites the Feast offline sources (users, the top_category history through the newest snapshot, items),
    then ``feast apply`` and ``feast materialize`` of the day's window only; the day's new users and items are
    read back through Feast's ``get_online_features`` (blocking checks). Finally ``INCR``s the item-feature
    refresh signal, which every ``feast_item_lookup`` instance polls.
    """
    day = partition_day(context)
    store = artifacts.store()
    raw_users = _grow_users(context, store, world, day, config.grow_users)
    folder = paths.user_top_category(0).rsplit("/", 1)[0]
    present = sorted(int(p.rsplit("day_", 1)[1].split(".")[0]) for p in store.list(folder) if p.endswith(".parquet"))
    missing = sorted(set(range(day + 1)) - set(present))
    if missing:
        description = (f"user_top_category partitions {partition_keys(missing)} (days {missing}) are missing; the history "
                       f"must hold days 00..{day:02d}: materialize them first (a backfill runs them in order)")
        return dg.MaterializeResult(metadata={"missing_days": str(missing)}, check_results=[
            check("top_category_days", False, description),
            *[check(n, False, "not evaluated: the top_category history is incomplete") for n in ONLINE_CHECKS[1:]]])
    # Every snapshot present, contiguous from day 00: a later day's rows must not vanish when an older one re-runs.
    last = max(d for d in range(len(present)) if present[d] == d)
    snapshots = {d: store.read_parquet(paths.user_top_category(d)) for d in range(last + 1)}
    catalogue = store.read_parquet(paths.ITEMS)
    mean_age = masking.training_mean_age(raw_users, TRAIN_DAYS[-1])  # what an unknown age becomes (own data)
    tables = t.offline_tables(raw_users, catalogue, snapshots, mean_age, START_DATE)
    for name, df in tables.items():
        store.write_parquet(paths.FEAST_TABLES[name], df)

    start, end = daily.materialize_window(day, START_DATE)
    repo = feast.repo(store, valkey)
    t0 = time.perf_counter()
    seconds_apply, seconds_materialize = repo.cli(["apply"], ["materialize", start.isoformat(), end.isoformat()])
    t1 = time.perf_counter()

    fs = repo.store()
    new_users = raw_users.loc[raw_users["signup_day"] == day].set_index("user_id")
    got = _online_rows(fs, fs.get_feature_service(USER_FEATURES), "user_id", new_users.index.to_numpy(np.int64),
                       config.verify_batch).set_index("user_id")
    wrong_users = [int(u) for u in new_users.index if got.at[u, "age"] != int(new_users.at[u, "age"])
                   or got.at[u, "gender"] != new_users.at[u, "gender"]]
    snapshot = snapshots[day].set_index("user_id")["top_category"] if day in snapshots else pd.Series(dtype=int)
    clickers = got.index.intersection(snapshot.index)
    no_top = [int(u) for u in clickers if pd.isna(got.at[u, "top_category"])]

    new_items = catalogue.loc[catalogue["available_from_day"] == day].set_index("item_id")
    got_items = _online_rows(fs, ITEM_FEATURES, "item_id", new_items.index.to_numpy(np.int64),
                             config.verify_batch).set_index("item_id")
    wrong_items = [int(i) for i in new_items.index
                   if got_items.at[i, "category_l1"] != new_items.at[i, "category_l1"]
                   or got_items.at[i, "price"] is None
                   or abs(float(got_items.at[i, "price"]) - float(new_items.at[i, "price"])) > 1e-9]
    seconds_verify = time.perf_counter() - t1

    space = valkey.layout().popularity
    client = valkey.client("popularity")
    try:
        signal = int(client.incr(space.prefix + SIGNAL_KEY))
    finally:
        client.close()

    sample = got.reset_index().head(8)
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "new_users": len(new_users),
            "users": len(raw_users),
            "clickers_with_top_category": int(len(clickers) - len(no_top)),
            "new_items": len(new_items),
            "top_category_history_days": f"00..{last:02d}",
            "materialize_window": f"{start.isoformat()} .. {end.isoformat()}",
            "seconds_apply": round(seconds_apply, 2),
            "seconds_materialize": round(seconds_materialize, 2),
            "seconds_verify": round(seconds_verify, 2),
            "seconds_total": round(t1 - t0 + seconds_verify, 2),
            "item_cache_signal": signal,
            "online_store": valkey.describe(),
            "new_users_online": markdown_table(sample) if len(sample) else "no new users on this day",
        },
        check_results=[
            check("top_category_days", True, f"user_top_category days 00..{last:02d} present"),
            check("new_users_online", not wrong_users and not no_top,
                   "; ".join(filter(None, [
                       f"{len(wrong_users)} new users read back without their age/gender (first: {wrong_users[:5]})"
                       if wrong_users else "",
                       f"{len(no_top)} of the day's clickers have no top_category online (first: {no_top[:5]})"
                       if no_top else ""])) or
                   f"all {len(new_users)} new users of day {day:02d} read back with age and gender through Feast"),
            check("new_items_online", not wrong_items,
                   f"{len(wrong_items)} newly available items read back wrong or empty (first: {wrong_items[:5]})"
                   if wrong_items else f"all {len(new_items)} items available from day {day:02d} read back"),
        ],
    )


# -- popularity over a sliding window -------------------------------------------------------------------------
class DailyPopularityConfig(dg.Config):
    window_days: int = daily.DEFAULT_WINDOW_DAYS
    """Days counted, ending with the partition's day (the dependency declares the default 7)."""
    keep_versions: int = 2
    force: bool = False
    """Publish even when the published tables' window ends after this day (rolls popularity back)."""


@dg.asset(group_name=GROUP, kinds={"valkey"}, partitions_def=daily_partitions, retry_policy=RETRY,
          deps=[items, window_dep(raw_interactions, daily.DEFAULT_WINDOW_DAYS - 1), served_list_evaluation],
          check_specs=check_specs("daily_popularity_tables", ("window_complete", "read_back")))
def daily_popularity_tables(context: dg.AssetExecutionContext, config: DailyPopularityConfig,
                            artifacts: ArtifactStoreResource, valkey: ValkeyResource) -> dg.MaterializeResult:
    """Click-count popularity of the last ``window_days`` days, globally and per category, switched atomically."""
    day = partition_day(context)
    store = artifacts.store()
    window = daily.window_days(day, config.window_days)
    catalogue = store.read_parquet(paths.ITEMS)
    frames, missing = [], []
    for d in window:
        try:
            frames.append(store.read_parquet(paths.raw_interactions(d), columns=pop.WINDOW_COLUMNS))
        except ArtifactNotFound:
            missing.append(d)
    if missing:
        description = (f"raw_interactions partitions {partition_keys(missing)} (days {missing}) of the window "
                       f"{window[0]:02d}-{window[-1]:02d} are missing: materialize them first")
        return dg.MaterializeResult(metadata={"missing_days": str(missing)}, check_results=[
            check("window_complete", False, description),
            check("read_back", False, "not evaluated: the window is incomplete")])
    clicks = pd.concat(frames, ignore_index=True)
    tables = pop.build_window(clicks, catalogue, window, pop.registered_users(store))

    space = valkey.layout().popularity
    client = valkey.client("popularity")
    try:
        try:
            current = pop.metadata(client, space.prefix)
        except pop.PopularityNotPublished:
            current = None
        previous_top = pop.top_items(client, space.prefix, 50, day) if current else []
        publish = config.force or daily.publishable(current["window"] if current else None, day)
        t0 = time.perf_counter()
        version = pop.publish(client, space.prefix, tables, keep=config.keep_versions) if publish else None
        seconds = time.perf_counter() - t0
        expected = pop.ranking(tables, day=day)[:50]
        got = pop.top_items(client, space.prefix, 50, day, version=version) if publish else expected
    finally:
        client.close()
    if not publish:
        context.log.warning(f"popularity of window {window} not published: the current tables (version "
                            f"{current['version']}, window {current['window']}) end after day {day:02d}")
    top = tables.items.merge(catalogue[["item_id", "name"]], on="item_id")
    top = top[top["available_from_day"] <= day].sort_values("score", ascending=False).head(10)
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "window": f"days {window[0]:02d}-{window[-1]:02d}",
            "published": publish,
            "version": version if version is not None else -1,
            "replaced_version": current["version"] if current else -1,
            "replaced_window": str(current["window"]) if current else "none",
            "clicks": tables.clicks,
            "items_clicked": int((tables.items["clicks"] > 0).sum()),
            "top50_overlap_with_replaced": round(daily.window_overlap(expected, previous_top), 3)
            if previous_top else 0.0,
            "seconds_publish": round(seconds, 3),
            "valkey": f"{valkey.describe()} db {space.db} prefix {space.prefix!r}",
            "top_10": markdown_table(top[["item_id", "name", "category_l1", "clicks"]]),
        },
        check_results=[
            check("window_complete", True, f"raw_interactions days {window[0]:02d}-{window[-1]:02d} present"),
            check("read_back", got == expected,
                   "the published global table reads back in the computed order" if got == expected else
                   f"Valkey order differs from the computed one (first 5: {got[:5]} vs {expected[:5]})"),
        ],
    )
