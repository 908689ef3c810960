"""The daily refresh: what a new day changes beyond the models, as partitioned assets of the daily run.

Run for a day ``d`` (``daily_job``, requested by ``new_day_sensor`` or the daily schedule, run key = partition key):

1. ``served_list_evaluation``: the day's requests (each user who clicked: device and time of their first visit)
   replayed through the RUNNING ensemble with diversity off and on, scored against what those users clicked that
   day, beside the oracle and popularity (``lib.served_evaluation``). It runs first on purpose: the refresh below
   writes the day's end-of-day ``top_category`` online, which would leak the day's clicks into the replay.
   Without a running server it records that (a failed, non-blocking check) and the refresh goes on.
2. ``daily_online_features``: the users table grown by the day's cohort (locally from the generator, the stand-in
   for a registration feed), the three Feast offline sources rewritten, and the day's window materialized into
   the online store (``lib.daily.materialize_window``: new users, items that become available, the end-of-day
   top_category); the new users and items are read back through Feast (blocking checks), then the item-feature
   refresh signal is bumped so every Triton replica re-reads its item cache without a restart.
3. ``daily_popularity_tables``: click counts over a sliding window (default the last 7 days) published as a new
   version with one atomic switch (``lib.popularity``); a backfill of an older day never replaces newer tables.
4. ``daily_item_content``: the day's new items have content embeddings that are the saved PCA's projection of
   their encoder vectors (projected, never fitted); rows the multimodal table lacks are projected and added.
5. ``daily_retrieval_index``: the trained FAISS index (or yesterday's grown one) with the candidate-tower vectors
   of the items available by the day that it lacks, added with ``add_with_ids``: nothing else is rebuilt.
   ``lib.daily.served_index`` tells a release build which index to package.

All of them are idempotent per partition: re-running a day rewrites the same files and keys.
"""

import base64
import datetime as dt
import json
import time
import warnings
from typing import List

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import markdown_table
from recsys_assets.defs.daily.resources import ServedEnsemble
from recsys_assets.defs.feature_store import tables as t
from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest.assets import items, raw_interactions, users
from recsys_assets.defs.partitions import START_DATE, TRAIN_DAYS, daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import daily, dataset, digests, paths
from recsys_assets.lib import embeddings as emb
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib import popularity as pop
from recsys_assets.lib import served_evaluation as se
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore
from recsys_assets.lib.settings import partition_key
from recsys_assets.serving.stages.feast_item_lookup import SIGNAL_KEY

GROUP = "daily"
DAILY_TAGS = {"recsys/daily": "true"}
# Feast's file registry is rewritten by apply/materialize: one such step at a time across runs.
FEAST_POOL = "feast"
USER_FEATURES = "user_features"
ITEM_FEATURES = ["item_features:price", "item_features:category_l1", "item_features:category_l2",
                 "item_features:item_gender"]
# Transient faults (Valkey restarting, Feast's registry busy) are retried; a wrong input fails its check instead.
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _check(name: str, passed: bool, description: str, severity=dg.AssetCheckSeverity.ERROR,
           **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=bool(passed), severity=severity, description=description,
                               metadata={"description": description, **metadata})


def _specs(asset: str, *names: str, blocking: bool = True) -> list:
    return [dg.AssetCheckSpec(n, asset=asset, blocking=blocking) for n in names]


def _keys(days) -> list:
    return [partition_key(d, START_DATE) for d in days]


def _png(store: ArtifactStore, rel: str) -> dg.MetadataValue:
    data = store.read_bytes(rel)
    return dg.MetadataValue.md(f"![{rel}](data:image/png;base64,{base64.b64encode(data).decode()})")


def _window_dep(days_before: int) -> dg.AssetDep:
    """raw_interactions of the ``days_before`` days before the partition and the partition's own day; the window
    is clipped at day 00 (``allow_nonexistent_upstream_partitions``, a beta flag of Dagster 1.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        mapping = dg.TimeWindowPartitionMapping(start_offset=-days_before, end_offset=0,
                                                allow_nonexistent_upstream_partitions=True)
    return dg.AssetDep(raw_interactions, partition_mapping=mapping)


# -- 1. the list as served ----------------------------------------------------------------------------------------
class ServedListEvaluationConfig(dg.Config):
    requests_per_split: int = 200
    """Requests replayed per split (warm, new, anonymous); each goes once per diversity mode."""
    top_k: int = se.K
    diversity_modes: List[bool] = [False, True]
    popularity_days: int = daily.DEFAULT_WINDOW_DAYS
    """The popularity baseline counts the clicks of this many days before the evaluated day."""
    require_server: bool = False
    """True: no running ensemble fails the asset; False: recorded as a failed, non-blocking check."""
    oracle: bool = True
    """Score the generator's oracle beside the served list (off in production: real users have no ground truth)."""
    seed: int = 0


SERVED_CHECKS = ("replayed", "no_failed_requests", "served_beats_popularity")


@dg.asset(group_name=GROUP, kinds={"triton", "pandas"}, partitions_def=daily_partitions,
          deps=[items, users, _window_dep(daily.DEFAULT_WINDOW_DAYS)],
          check_specs=_specs("served_list_evaluation", *SERVED_CHECKS, blocking=False))
def served_list_evaluation(context: dg.AssetExecutionContext, config: ServedListEvaluationConfig,
                           artifacts: ArtifactStoreResource, world: WorldResource,
                           served_ensemble: ServedEnsemble) -> dg.MaterializeResult:
    """The day's requests replayed through the running ensemble: recall@k, NDCG@k, coverage and category
    diversity for warm, new and anonymous users, diversity off and on, beside the oracle and popularity.

    Files: ``evaluation/served/day_XX.parquet`` (the table), ``.json`` (the gate record: request fingerprint and
    every number), ``.png``. The release gate calls ``lib.served_evaluation.evaluate_day`` the same way.
    """
    day = partition_day(context)
    store = artifacts.store()
    known, known_from = se.known_users(store, max(TRAIN_DAYS))
    client = served_ensemble.client()
    try:
        if not client.is_ready():
            reason = (f"no ready ensemble at {served_ensemble.url}: start Triton (make serve, or materialize "
                      "triton_deployment) and re-run this partition")
            if config.require_server:
                raise dg.Failure(reason)
            context.log.warning(reason)
            skipped = "not evaluated: no running ensemble"
            return dg.MaterializeResult(
                metadata={"evaluated": False, "reason": reason, "url": served_ensemble.url},
                check_results=[_check("replayed", False, reason, dg.AssetCheckSeverity.WARN)]
                + [_check(n, False, skipped, dg.AssetCheckSeverity.WARN) for n in SERVED_CHECKS[1:]])

        def recommend(user_id: int, device: int, timestamp: int, diversity: bool):
            ids, _ = client.recommend(user_id, device_type=device, timestamp=timestamp, top_k=config.top_k,
                                      diversity=diversity)
            return ids

        result = se.evaluate_day(store, world.world() if config.oracle else None, recommend, day, known,
                                 per_split=config.requests_per_split,
                                 popularity_days=config.popularity_days, k=config.top_k,
                                 diversity_modes=tuple(config.diversity_modes), seed=config.seed)
    finally:
        client.close()

    table = result.table
    record = result.record()
    failures = {m: list(f.values())[:5] for m, f in result.lists.failures.items() if f}
    store.write_parquet(paths.served_evaluation(day, "parquet"), table)
    store.write_bytes(paths.served_evaluation(day, "json"), json.dumps(
        {**record, "known_users": known_from, "popularity_window": result.popularity_window,
         "failures": failures, "url": served_ensemble.url}, indent=1).encode())
    with store.writing(paths.served_evaluation(day, "png")) as tmp:
        se.plot(table, tmp, title=f"day {day:02d} ({partition_key(day, START_DATE)}): lists as served, "
                                  f"{len(result.requests)} requests")
    gate = result.gate()
    k = config.top_k
    n_failed = sum(len(f) for f in result.lists.failures.values())
    calls = sum(len(v) for v in result.lists.latency_ms.values())
    latency = np.concatenate(list(result.lists.latency_ms.values())) if calls else np.zeros(0)
    served_all = {name: se.metric(table, "served", "all", name) for name in (f"recall@{k}", f"ndcg@{k}")}
    return dg.MaterializeResult(
        metadata={
            "evaluated": True,
            "day": day,
            "requests": len(result.requests),
            "requests_by_split": dg.MetadataValue.json(result.requests["split"].value_counts().to_dict()),
            "served_calls": calls,
            "failed_calls": n_failed,
            "p50_ms": float(np.percentile(latency, 50)) if calls else 0.0,
            **{f"served/all/{n}": float(v) for n, v in served_all.items()},
            **{f"{m}/all/coverage": se.metric(table, m, "all", "coverage") for m in se.METHODS
               if m in set(table["method"])},
            **{f"{m}/all/diversity": se.metric(table, m, "all", "diversity") for m in se.METHODS
               if m in set(table["method"])},
            "known_users": known_from,
            "popularity_window": f"days {result.popularity_window}",
            "fingerprint": result.fingerprint,
            "seconds": round(result.seconds, 2),
            "url": served_ensemble.url,
            "table": markdown_table(table.drop(columns=["mean_length"])),
            "plot": _png(store, paths.served_evaluation(day, "png")),
            "path": store.uri(paths.served_evaluation(day, "parquet")),
        },
        check_results=[
            _check("replayed", True, f"{len(result.requests)} requests replayed through {served_ensemble.url}",
                   dg.AssetCheckSeverity.WARN),
            _check("no_failed_requests", n_failed == 0,
                   f"{n_failed} of {calls} requests failed: {failures}" if n_failed else
                   f"all {calls} requests answered", dg.AssetCheckSeverity.WARN),
            *[_check(o.name, o.passed, o.description, dg.AssetCheckSeverity.WARN, **o.metadata)
              for o in gate if o.name == "served_beats_popularity"],
        ],
    )


# -- 2. users, top_category and new items into the online store --------------------------------------------------
class DailyOnlineFeaturesConfig(dg.Config):
    verify_batch: int = 5000
    """Entities per ``get_online_features`` call when the day's users and items are read back."""
    grow_users: bool = True
    """Add the day's cohort to ``raw/users.parquet`` when it is missing (locally: from the generator)."""


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
    grown = dataset.write_users(store, world.world(), day)
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
          check_specs=_specs("daily_online_features", *ONLINE_CHECKS))
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
        description = (f"user_top_category partitions {_keys(missing)} (days {missing}) are missing; the history "
                       f"must hold days 00..{day:02d}: materialize them first (a backfill runs them in order)")
        return dg.MaterializeResult(metadata={"missing_days": str(missing)}, check_results=[
            _check("top_category_days", False, description),
            *[_check(n, False, "not evaluated: the top_category history is incomplete") for n in ONLINE_CHECKS[1:]]])
    # Every snapshot present, contiguous from day 00: a later day's rows must not vanish when an older one re-runs.
    last = max(d for d in range(len(present)) if present[d] == d)
    snapshots = {d: store.read_parquet(paths.user_top_category(d)) for d in range(last + 1)}
    catalogue = store.read_parquet(paths.ITEMS)
    tables = {"users": t.users_table(raw_users), "user_top_category": t.top_category_history(raw_users, snapshots),
              "items": t.items_table(catalogue, START_DATE)}
    for name, rel in (("users", paths.FEAST_USERS), ("user_top_category", paths.FEAST_USER_TOP_CATEGORY),
                      ("items", paths.FEAST_ITEMS)):
        store.write_parquet(rel, tables[name])

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
            _check("top_category_days", True, f"user_top_category days 00..{last:02d} present"),
            _check("new_users_online", not wrong_users and not no_top,
                   "; ".join(filter(None, [
                       f"{len(wrong_users)} new users read back without their age/gender (first: {wrong_users[:5]})"
                       if wrong_users else "",
                       f"{len(no_top)} of the day's clickers have no top_category online (first: {no_top[:5]})"
                       if no_top else ""])) or
                   f"all {len(new_users)} new users of day {day:02d} read back with age and gender through Feast"),
            _check("new_items_online", not wrong_items,
                   f"{len(wrong_items)} newly available items read back wrong or empty (first: {wrong_items[:5]})"
                   if wrong_items else f"all {len(new_items)} items available from day {day:02d} read back"),
        ],
    )


# -- 3. popularity over a sliding window -------------------------------------------------------------------------
class DailyPopularityConfig(dg.Config):
    window_days: int = daily.DEFAULT_WINDOW_DAYS
    """Days counted, ending with the partition's day (the dependency declares the default 7)."""
    keep_versions: int = 2
    force: bool = False
    """Publish even when the published tables' window ends after this day (rolls popularity back)."""


@dg.asset(group_name=GROUP, kinds={"valkey"}, partitions_def=daily_partitions, retry_policy=RETRY,
          deps=[items, _window_dep(daily.DEFAULT_WINDOW_DAYS - 1), served_list_evaluation],
          check_specs=_specs("daily_popularity_tables", "window_complete", "read_back"))
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
            frames.append(store.read_parquet(paths.raw_interactions(d), columns=["item_id", "click"]))
        except ArtifactNotFound:
            missing.append(d)
    if missing:
        description = (f"raw_interactions partitions {_keys(missing)} (days {missing}) of the window "
                       f"{window[0]:02d}-{window[-1]:02d} are missing: materialize them first")
        return dg.MaterializeResult(metadata={"missing_days": str(missing)}, check_results=[
            _check("window_complete", False, description),
            _check("read_back", False, "not evaluated: the window is incomplete")])
    clicks = pd.concat(frames, ignore_index=True)
    tables = pop.build_tables(clicks.loc[clicks["click"] == 1, "item_id"].to_numpy(), catalogue, window)

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
            _check("window_complete", True, f"raw_interactions days {window[0]:02d}-{window[-1]:02d} present"),
            _check("read_back", got == expected,
                   "the published global table reads back in the computed order" if got == expected else
                   f"Valkey order differs from the computed one (first 5: {got[:5]} vs {expected[:5]})"),
        ],
    )


# -- 4. content embeddings of new items ---------------------------------------------------------------------------
CONTENT_CHECKS = ("rows_present", "projected_with_saved_pca")


@dg.asset(group_name=GROUP, kinds={"numpy"}, partitions_def=daily_partitions,
          deps=[items, "item_multimodal_embeddings"], check_specs=_specs("daily_item_content", *CONTENT_CHECKS))
def daily_item_content(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """The items available from this day have image and text PCA embeddings, projected with the saved PCAs.

    The embedding assets encode every catalogue item through their content-hash cache (a grown catalogue encodes
    only its new items) and fit the PCA on day-0 items only. Here, for the day's new items: their multimodal
    rows must equal the saved PCA applied to their encoder vectors (so they were projected, not fitted); rows
    the multimodal table lacks while the encoder tables have them are projected now and written. Items without
    encoder vectors fail ``rows_present``: materialize the embedding assets (cache: only the new items encode).
    """
    day = partition_day(context)
    store = artifacts.store()
    catalogue = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"]).sort_values("item_id")
    new = catalogue.loc[catalogue["available_from_day"] == day, "item_id"].to_numpy(np.int64)
    available = catalogue.loc[catalogue["available_from_day"] <= day, "item_id"].to_numpy(np.int64)
    needed = [paths.CLIP_EMBEDDINGS, paths.TEXT_EMBEDDINGS, paths.MULTIMODAL_EMBEDDINGS,
              paths.embedding_pca("clip"), paths.embedding_pca("text")]
    absent = [rel for rel in needed if not store.exists(rel)]
    if absent:
        description = (f"{absent} missing: materialize item_clip_embeddings, item_text_embeddings and "
                       "item_multimodal_embeddings first")
        return dg.MaterializeResult(metadata={"missing": str(absent)}, check_results=[
            _check("rows_present", False, description),
            _check("projected_with_saved_pca", False, "not evaluated: embeddings missing")])
    raw = {"clip": np.load(store.local_path(paths.CLIP_EMBEDDINGS)),
           "text": np.load(store.local_path(paths.TEXT_EMBEDDINGS))}
    pcas = {k: emb.Pca.load(store.local_path(paths.embedding_pca(k))) for k in raw}
    table = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS))
    encoded = min(len(raw["clip"]), len(raw["text"]))
    no_vectors = available[available >= encoded]
    if len(no_vectors):
        description = (f"{len(no_vectors)} available items have no encoder vectors (first: {no_vectors[:5].tolist()}):"
                       " materialize item_clip_embeddings, item_text_embeddings and item_multimodal_embeddings "
                       "(their cache encodes only the new items; the saved PCA is reused, not refitted)")
        return dg.MaterializeResult(metadata={"items_without_vectors": len(no_vectors)}, check_results=[
            _check("rows_present", False, description),
            _check("projected_with_saved_pca", False, "not evaluated: encoder vectors missing")])

    def project(ids: np.ndarray) -> np.ndarray:
        return np.hstack([pcas["clip"].transform(raw["clip"][ids]), pcas["text"].transform(raw["text"][ids])])

    added = 0
    if len(table) < encoded:  # the encoders saw a grown catalogue the multimodal table has not caught up with
        grow = np.arange(len(table), encoded, dtype=np.int64)
        table = np.vstack([table, project(grow).astype(table.dtype)])
        with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, table)
        added = len(grow)
    expected = project(new) if len(new) else np.zeros((0, table.shape[1]), np.float32)
    worst = float(np.abs(table[new] - expected).max()) if len(new) else 0.0
    fit_through = {k: p.meta.get("fit_through_day") for k, p in pcas.items()}
    fitted_on_new = [k for k, d in fit_through.items() if d is not None and d >= day and len(new)]
    ok = worst < 1e-4 and not fitted_on_new
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "new_items": len(new),
            "new_item_ids": str(new[:20].tolist()),
            "available_items": len(available),
            "rows_added": added,
            "max_abs_diff_vs_saved_pca": worst,
            "pca_fit_through_day": dg.MetadataValue.json(fit_through),
            "pca_fit_items": dg.MetadataValue.json({k: p.meta.get("fit_items") for k, p in pcas.items()}),
            "path": store.uri(paths.MULTIMODAL_EMBEDDINGS),
        },
        check_results=[
            _check("rows_present", True, f"all {len(available)} items available by day {day:02d} have content rows"
                                         + (f" ({added} projected now)" if added else "")),
            _check("projected_with_saved_pca", ok,
                   f"the {len(new)} new items' rows equal the saved PCAs' projection (max |diff| {worst:.1e}); the "
                   f"PCAs were fitted on items available by day {fit_through}" if ok else
                   f"new items' rows differ from the saved PCA projection by {worst:.1e} or the PCA was fitted on "
                   f"days including {day:02d} ({fitted_on_new}): re-materialize item_multimodal_embeddings with "
                   "refit_pca off"),
        ],
    )


# -- 5. new items into the retrieval index ------------------------------------------------------------------------
class DailyRetrievalIndexConfig(dg.Config):
    probe_k: int = 300
    """A new item counts as retrievable when a search with its own vector finds it among this many."""


INDEX_CHECKS = ("new_items_retrievable", "existing_items_kept")


def _variants(store: ArtifactStore) -> list:
    return sorted(p.rsplit("/", 1)[1][: -len(".faiss")] for p in store.list(paths.FAISS_INDEX)
                  if p.endswith(".faiss"))


@dg.asset(group_name=GROUP, kinds={"faiss"}, partitions_def=daily_partitions,
          deps=[items, "item_embeddings", "faiss_index", daily_item_content],
          check_specs=_specs("daily_retrieval_index", *INDEX_CHECKS))
def daily_retrieval_index(context: dg.AssetExecutionContext, config: DailyRetrievalIndexConfig,
                          artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """Each variant's index grown by the items available by the day that it lacks (``add_with_ids``).

    Starts from yesterday's grown index (``index/daily/<variant>.faiss``) when that grew the trained index that
    exists now, else from the trained one (a full retrain restarts the growth). The new items' vectors are rows
    of ``index/item_embeddings/<variant>.npy`` (the frozen candidate tower over the whole catalogue, cold items
    included). Nothing already indexed is rebuilt or moved.
    """
    day = partition_day(context)
    store = artifacts.store()
    variants = _variants(store)
    if not variants:
        raise dg.Failure(f"no trained index under {store.uri(paths.FAISS_INDEX)}: materialize faiss_index first")
    catalogue = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"]).sort_values("item_id")
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    rows, problems, retrievable = [], [], []
    for variant in variants:
        t0 = time.perf_counter()
        trained = store.local_path(paths.faiss_index(variant))
        base_digest = digests.file_sha256(trained)
        source = daily.served_index(store, variant)
        index = fx.load(store.local_path(source))
        before = fx.id_map(index)
        todo = daily.items_to_index(before, available_from, day)
        vectors_rel = paths.item_embeddings(variant)
        if len(todo):
            if not store.exists(vectors_rel):
                raise dg.Failure(f"{store.uri(vectors_rel)} is missing: materialize item_embeddings (the frozen "
                                 "candidate tower over the catalogue) first")
            vectors = np.load(store.local_path(vectors_rel), mmap_mode="r")
            if len(vectors) <= int(todo.max()):
                raise dg.Failure(f"{store.uri(vectors_rel)} has {len(vectors)} rows but item {int(todo.max())} is "
                                 "available: materialize item_embeddings for the grown catalogue (the candidate "
                                 "tower is frozen, so existing vectors do not change)")
            growth = daily.extend_index(index, np.asarray(vectors[todo]), todo)
        else:
            growth = daily.extend_index(index, np.zeros((0, index.d), np.float32), [])
        with store.writing(paths.daily_index(variant)) as tmp:
            fx.save(index, tmp)
        manifest = {"variant": variant, "day": day, "base": paths.faiss_index(variant), "base_digest": base_digest,
                    "grown_from": source, "added": growth.added.tolist(), "items": growth.after,
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        store.write_bytes(daily.daily_index_manifest(variant), json.dumps(manifest, indent=1).encode())
        seconds = time.perf_counter() - t0

        after = fx.id_map(index)
        if not np.isin(before, after).all() or growth.after != growth.before + len(growth.added):
            problems.append(f"{variant}: items held before are missing after growing, or the count is off")
        if len(growth.added):
            vectors = np.load(store.local_path(vectors_rel), mmap_mode="r")
            found = fx.search(index, np.asarray(vectors[growth.added]), min(config.probe_k, growth.after))
            lost = [int(i) for i, row in zip(growth.added, found.ids) if i not in set(row.tolist())]
            if lost:
                problems.append(f"{variant}: new items {lost[:5]} are not found by a search with their own vector "
                                f"in the top {config.probe_k}")
            retrievable.append(len(growth.added) - len(lost))
        unindexed = daily.items_to_index(after, available_from, day)
        if len(unindexed):
            problems.append(f"{variant}: {len(unindexed)} available items still not indexed ({unindexed[:5]})")
        rows.append({"variant": variant, "grown from": source, "before": growth.before, "added": len(growth.added),
                     "after": growth.after, "seconds": round(seconds, 3)})
    added_total = sum(r["added"] for r in rows)
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "variants": ", ".join(variants),
            "items_added": added_total,
            "rebuilt": False,
            "indexes": markdown_table(pd.DataFrame(rows)),
            "path": store.uri(paths.DAILY_INDEX),
        },
        check_results=[
            _check("new_items_retrievable", not [p for p in problems if "not found" in p or "not indexed" in p],
                   "; ".join(p for p in problems if "not found" in p or "not indexed" in p) or
                   f"{added_total} new items added; each is found by a search with its own vector; every item "
                   f"available by day {day:02d} is indexed"),
            _check("existing_items_kept", not [p for p in problems if "before" in p],
                   "; ".join(p for p in problems if "before" in p) or
                   "every item indexed before is still indexed; nothing was rebuilt"),
        ],
    )
