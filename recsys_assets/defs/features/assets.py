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
from recsys_assets.lib.digests import file_sha256
from recsys_assets.lib.settings import day_start, partition_key, start_epoch
from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.top_category import NONE, HistoryState, category_codes, category_vocabulary, history_codes

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

    The codes look back over the whole history. Day d starts from the history summed up at the end of day d-2
    (``features/history_state/day_XX.npz``, which each day writes) and reads only days d-1 and d of
    ``raw_interactions``, so a day costs the same on day 300 as on day 3; without a state that applies (the first
    days, a catalogue whose categories changed, or an earlier raw day rewritten since: the state keeps each day's
    digest) it reads every day from 00. A missing day it needs fails the blocking
    check, naming the partition, and nothing is written or recorded as materialized.
    Writes ``features/top_category/day_XX.parquet`` (row-aligned with the raw day),
    ``features/user_top_category/day_XX.parquet`` (the feature store's source; with the interest weights the
    click path adds to) and the day's history state.
    """
    day = partition_day(context)
    store = artifacts.store()
    category_l1 = store.read_parquet(paths.ITEMS, columns=["category_l1"])["category_l1"]
    vocabulary = category_vocabulary(category_l1)
    category = category_codes(category_l1, vocabulary)
    state, unused = _earlier_state(store, day - 2, vocabulary)
    first = 0 if state is None else day - 1
    missing, frames = [], []
    for d in range(first, day + 1):
        try:
            frames.append(store.read_parquet(paths.raw_interactions(d),
                                             columns=["interaction_id", "user_id", "timestamp", "item_id", "click"]))
        except ArtifactNotFound:
            missing.append(d)
    if missing:
        keys = [partition_key(d, START_DATE) for d in missing]
        description = (f"raw_interactions partitions {keys} (days {missing}) are missing; top_category of day {day} "
                       f"needs the clicks of days {first:02d}..{day:02d}: materialize them first (a backfill runs "
                       "them in order)")
        yield dg.AssetCheckResult(check_name="history_complete", passed=False, description=description,
                                  metadata={"description": description, "missing_days": str(missing)})
        return
    history = pd.concat(frames, ignore_index=True)
    today = frames[-1]
    rows = pd.DataFrame({"interaction_id": today["interaction_id"], "user_id": today["user_id"],
                         "timestamp": today["timestamp"],
                         **history_codes(history, category, today["user_id"], today["timestamp"], state=state)})
    pit = rows["top_category"].to_numpy()
    store.write_parquet(paths.top_category(day), rows)

    # Each user's values at the end of the day, for users with any impression so far (-1 where none applies).
    end_of_day = day_start(day + 1, start_epoch(START_DATE))
    summed = HistoryState.of(history, category, end_of_day, state, vocabulary,
                             sources=tuple(_digest(store, d) for d in range(first, day + 1)))
    at_end = np.full(len(summed.user), end_of_day)
    snapshot = pd.DataFrame({"user_id": summed.user,
                             **history_codes(history, category, summed.user, at_end, with_weights=True, state=state,
                                             weights=summed.weights),
                             "event_timestamp": pd.to_datetime(at_end, unit="s", utc=True)})
    store.write_parquet(paths.user_top_category(day), snapshot)
    store.write_bytes(paths.history_state(day), summed.to_bytes())

    dist = pd.Series(pit[pit != NONE]).map(dict(enumerate(vocabulary))).value_counts(normalize=True)
    table = dist.head(8).rename("share").reset_index().rename(columns={"index": "top_category"})
    yield dg.MaterializeResult(
        metadata={
            "day": day,
            "rows": len(rows),
            "share_with_top_category": float((pit != NONE).mean()) if len(pit) else 0.0,
            "share_with_interest_1": float((rows[INTERESTS[0]] != NONE).mean()) if len(rows) else 0.0,
            "users_with_value": len(snapshot),
            "history_clicks": int(summed.clicks.sum()),
            "days_read": f"{first:02d}..{day:02d}" + ("" if state is None else f" + the state of day {day - 2:02d}"),
            **({"state_unused": unused} if unused else {}),
            "path": store.uri(paths.top_category(day)),
            "distribution": markdown_table(table),
        },
        check_results=[dg.AssetCheckResult(check_name="history_complete", passed=True,
                                            description=f"days {first:02d}..{day:02d} of raw_interactions present"
                                            + ("" if state is None else f", the history state of day {day - 2:02d}"))],
    )


def _digest(store, day: int) -> str:
    return file_sha256(store.local_path(paths.raw_interactions(day)))


def _earlier_state(store, day: int, vocabulary: tuple[str, ...]) -> tuple[HistoryState | None, str]:
    """The history state of ``day`` when it exists and applies: it codes the catalogue's categories and sums up
    days 00..``day`` as they are now. Else None, and why (empty when there is no state to use)."""
    if day < 0 or not store.exists(paths.history_state(day)):
        return None, ""
    state = HistoryState.from_bytes(store.read_bytes(paths.history_state(day)))
    if state.vocabulary != tuple(vocabulary):
        return None, f"the state of day {day:02d} codes other categories"
    if len(state.sources) != day + 1:
        return None, f"the state of day {day:02d} does not record the days it sums up"
    for d, digest in enumerate(state.sources):
        if not store.exists(paths.raw_interactions(d)):
            return None, f"raw day {d:02d} is missing"
        if _digest(store, d) != digest:
            return None, f"raw day {d:02d} was rewritten after the state of day {day:02d}"
    return state, ""
