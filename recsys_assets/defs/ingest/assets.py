"""Ingest: the catalogue, users and one partition of raw interactions per day.
The synthetic generator or a shop's own folder (``RECSYS_SOURCE``, docs/own-data.md) produces the data:
``defs.ingest.sources.ingest_source`` says which, and both write the same files. Every asset writes through the
artifact store, so in production the same layout sits under an S3 prefix. Re-materializing a partition
replaces its file whole (idempotent). A day of interactions is checked before it is published: one that fails a
blocking check is not written, and an earlier file of that day is removed, so no later run of a downstream asset
can read it (the partition is missing, and says why, until it is re-materialized).
"""


import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check_specs, markdown_table, to_results
from recsys_assets.defs.ingest.sources import ID_MAP_POOL, ingest_source
from recsys_assets.defs.partitions import BACKFILL_DAYS, daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import dataset, paths
from recsys_assets.lib import validation as v

GROUP = "ingest"


@dg.asset(group_name=GROUP, kinds={"parquet"}, check_specs=check_specs("items"), pool=ID_MAP_POOL)
def items(artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """The catalogue: id, uuid, name, category_l1/l2, price, gender, first available day (the generator's 2,465
    Retail Demo Store products, or a shop's items with their id map and quarantine)."""
    store = artifacts.store()
    df, source_meta = ingest_source(world).items(store)
    where = store.uri(paths.ITEMS)
    outcomes = [
        v.check_schema(df, v.ITEM_SCHEMA, where),
        v.check_non_empty(df, where),
        v.CheckOutcome("id_ranges", bool((df["item_id"].to_numpy() == np.arange(len(df))).all()),
                       f"{where}: item ids are 0..{len(df) - 1} in catalogue order"),
        v.check_unique(df, "item_id", where),
    ]
    mix = (df.groupby("category_l1").agg(items=("item_id", "size"), styles=("category_l2", "nunique"),
                                         median_price=("price", "median"))
           .reset_index().sort_values("items", ascending=False))
    return dg.MaterializeResult(
        metadata={
            "rows": len(df),
            "categories": int(df["category_l1"].nunique()),
            "held_back_items": int((df["available_from_day"] > 0).sum()),
            "path": where,
            "category_mix": markdown_table(mix, ".2f"),
            **source_meta,
        },
        check_results=to_results(outcomes),
    )


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[items])
def item_descriptions(artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """Name, description text and the colour word of every item (input to the text and image embeddings)."""
    store = artifacts.store()
    df, source_meta = ingest_source(world).descriptions(store)
    lengths = df["description"].str.split().str.len()
    return dg.MaterializeResult(
        metadata={
            "rows": len(df),
            "mean_words": float(lengths.mean()),
            "items_with_colour_word": int((df["colour"] != "").sum()),
            "path": store.uri(paths.ITEM_DESCRIPTIONS),
            **source_meta,
        }
    )


@dg.asset(group_name=GROUP, kinds={"pillow"}, deps=[item_descriptions])
def item_images(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource,
                world: WorldResource) -> dg.MaterializeResult:
    """One JPEG per item with an image (``raw/item_images/<item_id>.jpg``): the generator renders category
    silhouette, style pattern and colour; own data copies the source's images. A source without images writes
    none (``has_images`` false): the image embeddings are then zero and the models use the text only."""
    store = artifacts.store()
    meta = ingest_source(world).images(store)
    context.log.info(f"{meta['images']} product images written")
    if meta["images"]:
        first = sorted(store.list(paths.ITEM_IMAGES))[0]
        meta.update({"bytes": store.size_bytes(paths.ITEM_IMAGES), "path": store.uri(paths.ITEM_IMAGES),
                     "example": dg.MetadataValue.path(store.uri(first))})
    return dg.MaterializeResult(metadata=meta)


class UsersConfig(dg.Config):
    through_day: int = BACKFILL_DAYS.stop - 1
    """Users are registered in daily cohorts; the table holds everyone who arrived by this day."""


@dg.asset(group_name=GROUP, kinds={"parquet"}, check_specs=check_specs("users"), pool=ID_MAP_POOL)
def users(config: UsersConfig, artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """Registered users (id, age, gender, signup day) of every cohort up to ``through_day``; own data: every user
    its users file and the ingested days named (age NaN and gender U where unknown), ``through_day`` unused.

    Users grow with days: ids are assigned in arrival order, so the table for a later ``through_day`` extends the
    earlier one without renumbering. Interactions of a day past ``through_day`` may name users this table does not
    list yet; the daily refresh re-materializes it (and serving treats such users as new, with cold-start defaults).
    """
    store = artifacts.store()
    source = ingest_source(world)
    df, source_meta = source.users(store, config.through_day)
    where = store.uri(paths.USERS)
    # Own data may not know a user's age or gender (NaN, U); the generator always does.
    known = df["age"].between(18, 100) | (df["age"].isna() & (not source.generated))
    genders = ["M", "F"] + ([] if source.generated else ["U"])
    # Own data without a users file has no users before its first day is ingested (raw_interactions adds them).
    waiting = not source.generated and df.empty
    outcomes = [
        v.check_schema(df, v.USER_SCHEMA if source.generated else v.OWN_USER_SCHEMA, where),
        v.CheckOutcome("non_empty", True, f"{where}: no users file and no day ingested yet; raw_interactions adds "
                                          "each day's users") if waiting else v.check_non_empty(df, where),
        v.CheckOutcome("id_ranges", bool((df["user_id"].to_numpy() == np.arange(len(df))).all())
                       and bool(known.all()) and bool(df["gender"].isin(genders).all()),
                       f"{where}: ids 0..{len(df) - 1} in arrival order, ages 18-100"
                       f"{'' if source.generated else ' or unknown'}, gender {'/'.join(genders)}"),
        v.check_unique(df, "user_id", where),
    ]
    cohorts = df.groupby("signup_day").size().rename("users").reset_index()
    return dg.MaterializeResult(
        metadata={
            "rows": len(df),
            "through_day": config.through_day,
            "mean_age": float(df["age"].mean()),
            "share_female": float((df["gender"] == "F").mean()),
            "path": where,
            "cohorts": markdown_table(cohorts),
            **source_meta,
        },
        check_results=to_results(outcomes),
    )


@dg.asset(group_name=GROUP, kinds={"parquet"}, partitions_def=daily_partitions, deps=[items, users],
          check_specs=check_specs("raw_interactions"), output_required=False, pool=ID_MAP_POOL)
def raw_interactions(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource, world: WorldResource):
    """One day of impressions with click labels (``raw/interactions/day_XX.parquet``).

    The generator's true click probabilities go to ``truth/interactions/day_XX.parquet`` beside it, for evaluation
    only; own data has no truth, and writes the day's quarantine and unknown-item events instead (their paths and
    the counts per reason are in the metadata). Re-materializing a day replaces its files. The checks run on the generated day before anything is
    written: when a blocking one fails, nothing is published (an earlier file of the day is removed) and only the
    failed checks are reported, with no materialization.
    """
    day = partition_day(context)
    store = artifacts.store()
    source = ingest_source(world)
    rows = source.day(store, day)
    df = rows.interactions
    where = store.uri(paths.raw_interactions(day))
    outcomes = [
        v.check_schema(df, v.INTERACTION_SCHEMA, where),
        v.check_non_empty(df, where),
        v.check_interaction_ranges(df, where, rows.n_users, rows.available_from_day, day,
                                   unknown_allowed=not source.generated),
        v.check_unique(df, "interaction_id", where),
    ]
    if not all(o.passed for o in outcomes):
        removed = dataset.unpublish_day(store, day)
        context.log.error(f"day {day:02d} failed its checks and was not published"
                          + (f"; removed the earlier files {removed}" if removed else "") + ": "
                          + "; ".join(o.description for o in outcomes if not o.passed))
        yield from to_results(outcomes)
        return
    rows.publish()
    if rows.users_rows is not None:  # own data: the users table grew with the day (lineage: a users materialization)
        context.log_event(dg.AssetMaterialization(
            asset_key="users", description=f"rewritten with the users first seen on day {day:02d}",
            metadata={"rows": rows.users_rows, "path": store.uri(paths.USERS)}))
    df = df.assign(category_l1=df["item_id"].map(rows.item_categories))
    mix = (df.groupby("category_l1").agg(impressions=("click", "size"), ctr=("click", "mean"))
           .reset_index().sort_values("impressions", ascending=False))
    by_device = df.groupby("device_type").agg(impressions=("click", "size"), ctr=("click", "mean")).reset_index()
    yield dg.MaterializeResult(
        metadata={
            "day": day,
            "rows": len(df),
            "clicks": int(df["click"].sum()),
            "ctr": float(df["click"].mean()) if len(df) else 0.0,
            "users": int(df["user_id"].nunique()),
            "items_shown": int(df["item_id"].nunique()),
            "cold_items_available": int(((rows.available_from_day > 0) & (rows.available_from_day <= day)).sum()),
            "path": where,
            "category_mix": markdown_table(mix),
            "ctr_by_device": markdown_table(by_device),
            **rows.metadata,
        },
        check_results=to_results(outcomes),
    )
