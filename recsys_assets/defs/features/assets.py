"""Features computed from interactions in the pipeline env: the point-in-time user history (``top_category`` and
``interest_1..3``, ``lib.top_category``)."""

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check_specs, markdown_table
from recsys_assets.defs.ingest.assets import items, raw_interactions
from recsys_assets.defs.partitions import START_DATE, daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactNotFound
from recsys_assets.lib.generator import SECONDS_PER_DAY
from recsys_assets.lib.settings import partition_key
from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.top_category import NONE, category_codes, category_vocabulary, history_codes

GROUP = "features"


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    partitions_def=daily_partitions,
    deps=[items, raw_interactions],
    check_specs=check_specs("user_top_category", ("history_complete",)),
    output_required=False,
)
def user_top_category(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource):
    """The user history codes (``top_category``, ``interest_1..3``) for every row of the day, point in time, plus
    each user's values at the end of the day.

    Reads the clicks of every day up to this one (the feature looks back over all earlier clicks), so days
    00..d-1 of ``raw_interactions`` must exist; a missing one fails the blocking check, naming the partition, and
    nothing is written or recorded as materialized.
    Writes ``features/top_category/day_XX.parquet`` (row-aligned with the raw day) and
    ``features/user_top_category/day_XX.parquet`` (the feature store's source; with the interest weights the
    click path adds to).
    """
    day = partition_day(context)
    store = artifacts.store()
    category_l1 = store.read_parquet(paths.ITEMS, columns=["category_l1"])["category_l1"]
    vocabulary = category_vocabulary(category_l1)
    category = category_codes(category_l1, vocabulary)
    missing, frames = [], []
    for d in range(day + 1):
        try:
            frames.append(store.read_parquet(paths.raw_interactions(d),
                                             columns=["interaction_id", "user_id", "timestamp", "item_id", "click"]))
        except ArtifactNotFound:
            missing.append(d)
    if missing:
        keys = [partition_key(d, START_DATE) for d in missing]
        description = (f"raw_interactions partitions {keys} (days {missing}) are missing; top_category of day {day} "
                       f"needs every earlier day's clicks: materialize them first (a backfill runs them in order)")
        yield dg.AssetCheckResult(check_name="history_complete", passed=False, description=description,
                                  metadata={"description": description, "missing_days": str(missing)})
        return
    history = pd.concat(frames, ignore_index=True)
    clicks = history[history["click"] == 1]
    today = frames[-1]
    rows = pd.DataFrame({"interaction_id": today["interaction_id"], "user_id": today["user_id"],
                         "timestamp": today["timestamp"],
                         **history_codes(history, category, today["user_id"], today["timestamp"])})
    pit = rows["top_category"].to_numpy()
    store.write_parquet(paths.top_category(day), rows)

    # Each user's values at the end of the day, for users with any impression so far (-1 where none applies).
    end_of_day = int(today["timestamp"].max() // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY if len(today) else 0
    seen = np.unique(history["user_id"].to_numpy())
    seen = seen[seen >= 0]
    at_end = np.full(len(seen), end_of_day)
    snapshot = pd.DataFrame({"user_id": seen, **history_codes(history, category, seen, at_end, with_weights=True),
                             "event_timestamp": pd.to_datetime(at_end, unit="s", utc=True)})
    store.write_parquet(paths.user_top_category(day), snapshot)

    dist = pd.Series(pit[pit != NONE]).map(dict(enumerate(vocabulary))).value_counts(normalize=True)
    table = dist.head(8).rename("share").reset_index().rename(columns={"index": "top_category"})
    yield dg.MaterializeResult(
        metadata={
            "day": day,
            "rows": len(rows),
            "share_with_top_category": float((pit != NONE).mean()) if len(pit) else 0.0,
            "share_with_interest_1": float((rows[INTERESTS[0]] != NONE).mean()) if len(rows) else 0.0,
            "users_with_value": len(snapshot),
            "history_clicks": len(clicks),
            "path": store.uri(paths.top_category(day)),
            "distribution": markdown_table(table),
        },
        check_results=[dg.AssetCheckResult(check_name="history_complete", passed=True,
                                            description=f"days 00..{day:02d} of raw_interactions present")],
    )
