import dagster as dg
import numpy as np

from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.top_category import (
    CATEGORIES,
    CLICK_WEIGHT,
    HALF_LIFE_DAYS,
    IMPRESSION_WEIGHT,
    INTEREST_WEIGHTS,
    category_codes,
    rank_interests,
    top_category_of_window,
)


def _ingest(resources, days):
    dg.materialize([ingest.items], resources=resources)
    for d in days:
        dg.materialize([ingest.raw_interactions], resources=resources, partition_key=f"2026-01-0{d + 1}")


def test_top_category_is_point_in_time_and_never_sees_its_own_click(resources):
    _ingest(resources, [0, 1])
    result = dg.materialize([user_top_category], resources=resources, partition_key="2026-01-02")
    assert result.success
    store = ArtifactStore(resources["artifacts"].root)
    rows = store.read_parquet(paths.top_category(1))
    raw = store.read_parquet(paths.raw_interactions(1))
    assert (rows["interaction_id"].to_numpy() == raw["interaction_id"].to_numpy()).all()
    # recompute a sample of rows with the serving-side definition
    items = store.read_parquet(paths.ITEMS)
    cat = category_codes(items["category_l1"])
    hist = __import__("pandas").concat([store.read_parquet(paths.raw_interactions(d)) for d in (0, 1)])
    clicks = hist[hist["click"] == 1]
    for k in np.random.default_rng(0).choice(len(raw), 60, replace=False):
        u, t = int(raw["user_id"].iloc[k]), int(raw["timestamp"].iloc[k])
        h = [(int(ts), int(cat[i])) for ts, i in clicks[clicks["user_id"] == u][["timestamp", "item_id"]].to_numpy()]
        assert rows["top_category"].iloc[k] == top_category_of_window(h, t)
        # interests: the user's categories by decayed weight of every earlier impression (clicks weigh more)
        earlier = hist[(hist["user_id"] == u) & (hist["timestamp"] < t)]
        weight = ((IMPRESSION_WEIGHT + CLICK_WEIGHT * earlier["click"].to_numpy())
                  * 2.0 ** ((earlier["timestamp"].to_numpy() - t) / (HALF_LIFE_DAYS * 86_400)))
        totals = __import__("pandas").Series(weight).groupby(cat[earlier["item_id"].to_numpy()]).sum()
        want = sorted(totals.index, key=lambda c: (-totals[c], c))[:3]
        assert rows[list(INTERESTS)].iloc[k].tolist() == want + [-1] * (3 - len(want))
    snapshot = store.read_parquet(paths.user_top_category(1))
    assert snapshot["user_id"].is_unique and set(snapshot["user_id"]) == set(hist["user_id"])
    clickers = snapshot["user_id"].isin(clicks["user_id"])
    assert (snapshot.loc[clickers, "top_category"] >= 0).all() and (snapshot.loc[~clickers, "top_category"] == -1).all()
    assert (snapshot["interest_1"] >= 0).all()  # everyone in the logs was shown something
    # the weights the interests rank (what the click path adds to): per category, as of the end of the day
    weights = np.stack(snapshot[INTEREST_WEIGHTS].to_numpy())
    assert weights.shape == (len(snapshot), len(CATEGORIES)) and weights.dtype == np.float32
    np.testing.assert_array_equal(rank_interests(weights), snapshot[list(INTERESTS)].to_numpy())
    u, at = int(snapshot["user_id"].iloc[0]), int(snapshot["event_timestamp"].iloc[0].timestamp())
    earlier = hist[hist["user_id"] == u]
    weight = ((IMPRESSION_WEIGHT + CLICK_WEIGHT * earlier["click"].to_numpy())
              * 2.0 ** ((earlier["timestamp"].to_numpy() - at) / (HALF_LIFE_DAYS * 86_400)))
    want = np.bincount(cat[earlier["item_id"].to_numpy()], weights=weight, minlength=len(CATEGORIES))
    np.testing.assert_allclose(weights[0], want, rtol=1e-6)
    meta = result.asset_materializations_for_node("user_top_category")[0].metadata
    assert 0 < meta["share_with_top_category"].value < 1


def test_missing_history_fails_the_blocking_check_naming_the_partition(resources):
    _ingest(resources, [1])  # day 00 missing
    result = dg.materialize([user_top_category], resources=resources, partition_key="2026-01-02",
                            raise_on_error=False)
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    assert "2026-01-01" in evaluation.metadata["description"].value


def test_a_day_from_the_state_two_days_back_equals_the_day_from_every_earlier_day(resources):
    """Days 00..03 in order: days 02 and 03 start from the history state of days 00 and 01 and read two raw days;
    the same day 03 computed again from every raw day (the states removed) writes the same codes and weights. A
    state whose raw days were rewritten since is not used."""
    import pandas as pd

    _ingest(resources, [0, 1, 2, 3])
    results = [dg.materialize([user_top_category], resources=resources, partition_key=f"2026-01-0{d + 1}")
               for d in range(4)]
    store = ArtifactStore(resources["artifacts"].root)
    meta = results[3].asset_materializations_for_node("user_top_category")[0].metadata
    assert meta["days_read"].value == "02..03 + the state of day 01"
    incremental = {rel: store.read_parquet(rel) for rel in (paths.top_category(3), paths.user_top_category(3))}
    for d in range(4):
        store.delete(paths.history_state(d))
    again = dg.materialize([user_top_category], resources=resources, partition_key="2026-01-04")
    assert again.asset_materializations_for_node("user_top_category")[0].metadata["days_read"].value == "00..03"
    for rel, frame in incremental.items():
        whole = store.read_parquet(rel)
        if INTEREST_WEIGHTS in frame:
            np.testing.assert_allclose(np.stack(frame.pop(INTEREST_WEIGHTS)), np.stack(whole.pop(INTEREST_WEIGHTS)),
                                       rtol=1e-6)
        pd.testing.assert_frame_equal(frame, whole)
    # a raw day rewritten after the state was written: the state no longer applies, every day is read again
    for d in (0, 1):
        assert dg.materialize([user_top_category], resources=resources, partition_key=f"2026-01-0{d + 1}").success
    day0 = store.read_parquet(paths.raw_interactions(0))
    store.write_parquet(paths.raw_interactions(0), day0.iloc[:-10])
    rewritten = dg.materialize([user_top_category], resources=resources, partition_key="2026-01-04")
    meta = rewritten.asset_materializations_for_node("user_top_category")[0].metadata
    assert meta["days_read"].value == "00..03"
    assert meta["state_unused"].value == "raw day 00 was rewritten after the state of day 01"
    # a raw day the state does not stand for is still required: day 02 missing fails day 03's check
    store.delete(paths.raw_interactions(2))
    failed = dg.materialize([user_top_category], resources=resources, partition_key="2026-01-04",
                            raise_on_error=False)
    evaluation = failed.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "2026-01-03" in evaluation.metadata["description"].value
