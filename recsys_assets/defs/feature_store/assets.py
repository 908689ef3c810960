"""Feature store: the offline feature tables, Feast's online store in Valkey, and the popularity tables.

- ``offline_features``: parquet sources with event timestamps under ``feature_store/offline/`` (users,
  user_top_category history, items; see ``tables.py``) for the Feast repository in ``feature_repo/``.
- ``online_features``: ``feast apply`` and ``feast materialize`` of that repository into the online store
  (Valkey db 0), then every user id and item id read back through Feast's own ``get_online_features``.
- ``popularity_tables``: click counts of the training window, globally and per category_l1 / category_l2, as
  versioned sorted sets in Valkey db 3 (``lib.popularity``): the cold-start and fallback candidate source.

A feature table that misses ids or holds nulls or out-of-domain values, a missing or empty partition: a failed
blocking check that names the table and column or the partition, so nothing downstream runs on it.
"""

import re
import time
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.feature_store import tables as t
from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest.assets import items, raw_interactions, users
from recsys_assets.defs.partitions import START_DATE, TRAIN_DAYS, partition_keys
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import masking, paths
from recsys_assets.lib import popularity as pop
from recsys_assets.lib.artifacts import ArtifactNotFound
from recsys_assets.lib.top_category import category_vocabulary

GROUP = "feature_store"
USER_FEATURE_SERVICE = "user_features"
ITEM_FEATURES = ["item_features:price", "item_features:category_l1", "item_features:category_l2",
                 "item_features:item_gender"]
_DAY_FILE = re.compile(r"day_(\d+)\.parquet$")


# -- offline ----------------------------------------------------------------------------------------------------
class OfflineFeaturesConfig(dg.Config):
    through_day: Optional[int] = None
    """Take the user_top_category snapshots of days 00..through_day; default: every day materialized so far."""


OFFLINE_CHECKS = ("top_category_days", "covers_all_ids", "feature_values")


@dg.asset(group_name=GROUP, kinds={"parquet", "feast"}, deps=[users, items, user_top_category],
          check_specs=check_specs("offline_features", OFFLINE_CHECKS), output_required=False)
def offline_features(context: dg.AssetExecutionContext, config: OfflineFeaturesConfig,
                     artifacts: ArtifactStoreResource):
    """Feast's offline sources: users (age, gender), the user_top_category history, items; event timestamps in UTC.

    Needs ``user_top_category`` for days 00..d without gaps (a missing partition fails ``top_category_days``,
    naming it, and nothing is written or recorded as materialized). Every user of ``raw/users.parquet`` and every
    catalogue item must have a row in its tables.
    """
    store = artifacts.store()
    folder = paths.user_top_category(0).rsplit("/", 1)[0]
    present = sorted(int(m.group(1)) for p in store.list(folder) if (m := _DAY_FILE.search(p)))
    last = config.through_day if config.through_day is not None else (present[-1] if present else None)
    missing = [] if last is None else sorted(set(range(last + 1)) - set(present))
    if last is None or missing:
        description = (
            f"user_top_category partitions {partition_keys(missing)} (days {missing}) are missing; the history "
            f"needs days 00..{last:02d}: materialize them first" if missing else
            "no user_top_category partition is materialized: materialize at least day 00 (2026-01-01 by default)")
        yield check("top_category_days", False, description, missing_days=str(missing))
        for name in OFFLINE_CHECKS[1:]:
            yield check(name, False, "not evaluated: the top_category history is incomplete")
        return
    days = list(range(last + 1))
    raw_users = store.read_parquet(paths.USERS)
    raw_items = store.read_parquet(paths.ITEMS)
    snapshots = {d: store.read_parquet(paths.user_top_category(d)) for d in days}

    out = t.offline_tables(raw_users, raw_items, snapshots, masking.training_mean_age(raw_users, TRAIN_DAYS[-1]),
                           START_DATE)
    for name, df in out.items():
        store.write_parquet(paths.FEAST_TABLES[name], df)

    coverage = t.coverage_problems(out, raw_users["user_id"].to_numpy(), raw_items["item_id"].to_numpy())
    vocabulary = category_vocabulary(raw_items["category_l1"])
    values = t.value_problems(out, vocabulary)
    latest = out["user_top_category"].groupby("user_id")["top_category"].last()
    dist = (latest[latest >= 0].map(dict(enumerate(vocabulary))).value_counts().head(8)
            .rename("users").rename_axis("top_category").reset_index())
    extra_users = np.setdiff1d(out["user_top_category"]["user_id"].unique(), raw_users["user_id"].to_numpy())
    checks = [
        check("top_category_days", True, f"user_top_category days 00..{last:02d} present", days=len(days)),
        check("covers_all_ids", not coverage,
                "; ".join(map(str, coverage)) or "every user and item id has a row in its tables"),
        check("feature_values", not values,
                "; ".join(map(str, values)) or "no nulls; every value inside its domain"),
    ]
    yield dg.MaterializeResult(
        metadata={
            "top_category_days": f"00..{last:02d}",
            "users": len(out["users"]),
            "user_top_category_rows": len(out["user_top_category"]),
            "user_interests_rows": len(out["user_interests"]),
            "users_with_top_category": int((latest >= 0).sum()),
            "users_not_in_users_table": len(extra_users),
            "items": len(out["items"]),
            "paths": dg.MetadataValue.md("\n".join(f"- `{store.uri(p)}`" for p in paths.FEAST_TABLES.values())),
            "latest_top_category": markdown_table(dist),
        },
        check_results=checks,
    )


# -- online -----------------------------------------------------------------------------------------------------
class OnlineFeaturesConfig(dg.Config):
    verify_batch: int = 5000
    """Entities per ``get_online_features`` call when every id is read back after materializing."""


def _missing_online(fs, features, entity: str, ids: np.ndarray, batch: int) -> dict[str, list[int]]:
    """Ids whose features come back null, per feature, read through Feast's own API."""
    missing: dict[str, list[int]] = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        rows = fs.get_online_features(features=features, entity_rows={entity: chunk.tolist()}).to_dict()
        for name, values in rows.items():
            if name == entity:
                continue
            nulls = [int(i) for i, v in zip(chunk, values) if v is None]
            if nulls:
                missing.setdefault(name, []).extend(nulls)
    return missing


@dg.asset(group_name=GROUP, kinds={"feast", "valkey"}, deps=[offline_features],
          check_specs=check_specs("online_features", ("online_coverage",)))
def online_features(context: dg.AssetExecutionContext, config: OnlineFeaturesConfig,
                    artifacts: ArtifactStoreResource, valkey: ValkeyResource,
                    feast: FeastResource) -> dg.MaterializeResult:
    """``feast apply`` + ``feast materialize`` into the Valkey online store; every id then read back through Feast.

    The registry goes to ``<artifact root>/feature_store/registry.db``; the online store is the Valkey of the
    ``valkey`` resource (db 0, or db 0 of a cluster). Re-running overwrites the same keys (idempotent); values
    pushed in real time with a newer event time than the batch rows are kept (Feast compares event times).
    """
    store = artifacts.store()
    user_ids = store.read_parquet(paths.FEAST_USERS, columns=["user_id"])["user_id"].to_numpy()
    item_ids = store.read_parquet(paths.FEAST_ITEMS, columns=["item_id"])["item_id"].to_numpy()
    stamps = pd.concat([store.read_parquet(p, columns=["event_timestamp"])["event_timestamp"]
                        for p in paths.FEAST_TABLES.values()])
    start, end = stamps.min(), stamps.max() + pd.Timedelta(seconds=1)

    repo = feast.repo(store, valkey)
    context.log.info(f"feast repository {repo!r}; online store {valkey.describe()}")
    t1 = time.perf_counter()
    seconds_apply, seconds_materialize = repo.cli(["apply"], ["materialize", start.isoformat(), end.isoformat()])
    t2 = time.perf_counter()
    fs = repo.store()
    missing = _missing_online(fs, fs.get_feature_service(USER_FEATURE_SERVICE), "user_id",
                              np.unique(user_ids), config.verify_batch)
    missing.update(_missing_online(fs, ITEM_FEATURES, "item_id", np.unique(item_ids), config.verify_batch))
    t3 = time.perf_counter()

    sample = fs.get_online_features(features=fs.get_feature_service(USER_FEATURE_SERVICE),
                                    entity_rows={"user_id": user_ids[:5].tolist()}).to_df()
    problems = [f"{name}: {len(ids)} ids have no online value (first: {ids[:5]})" for name, ids in missing.items()]
    coverage = check("online_coverage", not problems,
                     "; ".join(problems) or f"all {len(user_ids)} users and {len(item_ids)} items read back online")
    return dg.MaterializeResult(
        metadata={
            "users": len(user_ids),
            "items": len(item_ids),
            "rows": len(user_ids) + len(item_ids),
            "seconds_apply": round(seconds_apply, 2),
            "seconds_materialize": round(seconds_materialize, 2),
            "seconds_verify": round(t3 - t2, 2),
            "seconds_total": round(t3 - t1, 2),
            "materialize_window": f"{start.isoformat()} .. {end.isoformat()}",
            "online_store": valkey.describe(),
            "registry": repo.registry,
            # what a server needs in its environment to read these features through feature_repo/ (password hidden)
            "serving_environment": dg.MetadataValue.md("\n".join(
                f"- `{k}={re.sub(r'password=[^,]*', 'password=***', v)}`"
                for k, v in repo.environ().items() if k.startswith("RECSYS_FEAST_"))),
            "sample_users": markdown_table(sample),
        },
        check_results=[coverage],
    )


# -- popularity -------------------------------------------------------------------------------------------------
class PopularityConfig(dg.Config):
    days: list[int] = list(TRAIN_DAYS)
    """The window whose clicks are counted (default: the training days 00-08)."""
    keep_versions: int = 2
    """Versions kept in Valkey: the current one and the one before, for readers in the middle of a switch."""


@dg.asset(
    group_name=GROUP,
    kinds={"valkey"},
    deps=[items, users, dg.AssetDep(raw_interactions, partition_mapping=dg.SpecificPartitionsPartitionMapping(
        partition_keys(TRAIN_DAYS)))],
    check_specs=check_specs("popularity_tables", ("window_complete", "read_back")),
    output_required=False,
)
def popularity_tables(context: dg.AssetExecutionContext, config: PopularityConfig, artifacts: ArtifactStoreResource,
                      valkey: ValkeyResource):
    """Click-count popularity of the window, global and per category_l1 / category_l2, in Valkey (db 3).

    Written as a new version, then switched to with one SET (``lib.popularity``); read it with
    ``popularity.top_items(client, prefix, n, day, category_l1=..., category_l2=...)``, which skips items not
    yet available on ``day``. A missing or empty day of the window fails ``window_complete``, naming it, and
    nothing is published or recorded as materialized.
    """
    store = artifacts.store()
    catalogue = store.read_parquet(paths.ITEMS)
    frames, missing, empty = [], [], []
    for d in config.days:
        try:
            df = store.read_parquet(paths.raw_interactions(d), columns=pop.WINDOW_COLUMNS)
        except ArtifactNotFound:
            missing.append(d)
            continue
        if df.empty:
            empty.append(d)
        frames.append(df)
    if missing or empty or not config.days:
        description = "; ".join(filter(None, [
            f"raw_interactions partitions {partition_keys(missing)} (days {missing}) are missing" if missing else "",
            f"raw_interactions partitions {partition_keys(empty)} (days {empty}) are empty" if empty else "",
            "the window holds no days" if not config.days else "",
        ])) + ": materialize them before popularity_tables"
        yield check("window_complete", False, description, missing_days=str(missing), empty_days=str(empty))
        yield check("read_back", False, "not evaluated: the window is incomplete")
        return
    clicks = pd.concat(frames, ignore_index=True)
    tables = pop.build_window(clicks, catalogue, config.days, pop.registered_users(store))

    space = valkey.layout().popularity
    t0 = time.perf_counter()
    client = valkey.client("popularity")
    try:
        version = pop.publish(client, space.prefix, tables, keep=config.keep_versions)
        seconds = time.perf_counter() - t0
        day = max(config.days)
        mismatches = []
        for label, kwargs in [("global", {})] + [(f"category_l1={c}", {"category_l1": c})
                                                for c in sorted(catalogue["category_l1"].unique())]:
            got = pop.top_items(client, space.prefix, 50, day, **kwargs)
            if got != pop.ranking(tables, day=day, **kwargs)[:50]:
                mismatches.append(label)
    finally:
        client.close()

    top = tables.items.merge(catalogue[["item_id", "name"]], on="item_id")
    top = top.sort_values("score", ascending=False).head(10)[["item_id", "name", "category_l1", "clicks"]]
    yield dg.MaterializeResult(
        metadata={
            "version": version,
            "window": f"days {min(config.days):02d}-{max(config.days):02d}",
            "clicks": tables.clicks,
            "items_clicked": int((tables.items["clicks"] > 0).sum()),
            "items_not_yet_available": int((tables.items["available_from_day"] > day).sum()),
            "tables": 1 + catalogue["category_l1"].nunique() + catalogue["category_l2"].nunique(),
            "valkey": f"{valkey.describe()} db {space.db} prefix {space.prefix!r}",
            "seconds_publish": round(seconds, 3),
            "top_10": markdown_table(top),
        },
        check_results=[
            check("window_complete", True, f"raw_interactions days {config.days} present and non-empty"),
            check("read_back", not mismatches,
                    f"Valkey order differs from the computed one for {mismatches}" if mismatches
                    else "the global and every category_l1 table read back in the computed order"),
        ],
    )
