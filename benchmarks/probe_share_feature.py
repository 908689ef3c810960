"""Probe (issue 17): would the DLRM gain from the user's share of recency-weighted activity in the candidate's
category, the heuristic's main term? An analysis, not a servable feature: the DLRM is trained in memory with that
share as one extra continuous input (computed point in time, as ``lib.top_category.point_in_time_interests`` ranks
categories), then valued on ``ranking_evaluation``'s re-rank requests like ``model_quality.py run --models dlrm``.

    .venv/bin/python benchmarks/model_quality.py prepare --artifacts <root> --refs /tmp/quality/refs
    .venv-merlin/bin/python benchmarks/probe_share_feature.py --artifacts <root> --refs /tmp/quality/refs \\
        --out /tmp/quality/refs_share [--without]     # --without: the same run without the share (the baseline)

Writes a copy of the references with the share added (``--out``) and appends the result to ``--log``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import model_quality as mq  # noqa: E402
from recsys_assets.lib import paths, top_category as tc  # noqa: E402
from recsys_assets.lib.artifacts import ArtifactStore  # noqa: E402

RERANK_REQUESTS, RERANK_SEED = 2000, 0  # RankingEvaluationConfig's (dagster is not in the merlin env)


def category_weights(events: pd.DataFrame, category: np.ndarray, query_user, query_ts) -> np.ndarray:
    """Each query's recency-weighted activity per category, strictly before its time: (queries, categories)."""
    eu, et = events["user_id"].to_numpy(np.int64), events["timestamp"].to_numpy(np.int64)
    ec, ek = category[events["item_id"].to_numpy()], events["click"].to_numpy(np.int64)
    qu, qt = np.asarray(query_user, np.int64), np.asarray(query_ts, np.int64)
    order = np.lexsort((et, eu))
    eu, et, ec, ek = eu[order], et[order], ec[order], ek[order]
    idx = np.searchsorted((eu << 32) | et, (qu << 32) | qt, side="left") - 1
    has = (idx >= 0) & (eu[np.maximum(idx, 0)] == qu) & (qu >= 0)
    idx = np.maximum(idx, 0)
    first = np.r_[0, np.flatnonzero(np.diff(eu)) + 1]
    start_of = np.repeat(first, np.diff(np.r_[first, len(eu)]))
    weight = (tc.IMPRESSION_WEIGHT + tc.CLICK_WEIGHT * ek) * np.exp2((et - et.max()) / (tc.HALF_LIFE_DAYS * 86400.0))
    out = np.zeros((len(qu), int(category.max()) + 1))
    for c in range(out.shape[1]):
        cum = np.cumsum(np.where(ec == c, weight, 0.0))
        before = np.where(start_of > 0, cum[np.maximum(start_of - 1, 0)], 0.0)
        out[:, c] = np.where(has, cum[idx] - before[idx], 0.0)
    out[out < 1e-12 * weight.sum()] = 0.0
    return out


def share(weights: np.ndarray, category: np.ndarray) -> np.ndarray:
    """The share of each row's activity in ``category`` (per row, or per row and column); 0 without history."""
    total = weights.sum(axis=1, keepdims=True)
    picked = np.take_along_axis(weights, category.reshape(len(weights), -1), axis=1)
    return np.where(total > 0, picked / np.maximum(total, 1e-12), 0.0).astype(np.float32).reshape(category.shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--refs", required=True, help="what model_quality.py prepare wrote")
    ap.add_argument("--out", required=True, help="the references with the share added")
    ap.add_argument("--without", action="store_true", help="train without the share (the baseline)")
    ap.add_argument("--log", default="", help="append the result as a JSON line to this file")
    ap.add_argument("--scores", default="", help="save the DLRM's re-rank scores (requests x 300, .npy) here")
    args = ap.parse_args(argv)
    store, refs, out = ArtifactStore(args.artifacts), Path(args.refs), Path(args.out)
    items = store.read_parquet(paths.ITEMS).sort_values("item_id")
    category = tc.category_codes(items["category_l1"].to_numpy())
    meta = json.loads((refs / "meta.json").read_text())
    days = sorted(set(meta["train_days"]) | set(meta["validation_days"]))
    events = pd.concat([store.read_parquet(paths.raw_interactions(d)) for d in days], ignore_index=True)

    # Training and validation rows as the models see them: a masked row's user has no history.
    rows = pd.concat([store.read_parquet(paths.masked_interactions(d),
                                         columns=["interaction_id", "user_id", "timestamp", "item_id"])
                      for d in days], ignore_index=True)
    row_share = share(category_weights(events, category, rows["user_id"], rows["timestamp"]),
                      category[rows["item_id"].to_numpy()])
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(refs, out)
    hidden = pd.read_parquet(refs / "hidden.parquet").merge(
        pd.DataFrame({"interaction_id": rows["interaction_id"].to_numpy(), "hidden_share": row_share}),
        on="interaction_id", how="left").fillna({"hidden_share": 0.0})
    hidden.to_parquet(out / "hidden.parquet")

    # The re-rank requests (ranking_evaluation's sample) and each candidate's share.
    requests = store.read_parquet(f"{paths.RETRIEVAL_EVALUATION}/requests.parquet")
    n = min(RERANK_REQUESTS, len(requests))
    picked = requests.iloc[np.sort(np.random.default_rng(RERANK_SEED).choice(len(requests), n, replace=False))]
    rerank = dict(np.load(refs / "rerank.npz"))
    candidates = rerank["candidates"]
    weights = category_weights(events, category, picked["user_id"], picked["timestamp"])
    candidate_share = share(weights, category[np.maximum(candidates, 0)])

    from recsys_assets.ml import model_inputs as mi

    predict = mi.predict_batches
    valid = candidates >= 0

    def predict_with_share(model, feed, *a, **k):  # the re-rank feed: add each candidate's share
        if not args.without and "hidden_share" not in feed and len(feed.get("item_id", ())) == int(valid.sum()):
            feed = {**feed, "hidden_share": candidate_share[valid]}
        out = predict(model, feed, *a, **k)
        if args.scores and len(feed.get("item_id", ())) == int(valid.sum()):
            scores = np.full(candidates.shape, -np.inf, np.float32)
            scores[valid] = np.asarray(out).reshape(-1)
            np.save(args.scores, scores)
        return out

    mi.predict_batches = predict_with_share
    rerank_values = mq._rerank

    def _rerank(model, refs_dir, table):  # model_quality feeds DLRM_FEATURES from its own arrays: ours added above
        features = mi.DLRM_FEATURES
        mi.DLRM_FEATURES = tuple(f for f in features if f != "hidden_share")
        try:
            return rerank_values(model, refs_dir, table)
        finally:
            mi.DLRM_FEATURES = features

    mq._rerank = _rerank
    mq.HIDDEN = (*mq.HIDDEN, "share")
    run = ["run", "--artifacts", args.artifacts, "--refs", str(out), "--models", "dlrm",
           "--tag", "without share" if args.without else "with share"]
    if not args.without:
        run += ["--hidden", "share"]
    if args.log:
        run += ["--log", args.log]
    return mq.main(run)


if __name__ == "__main__":
    sys.exit(main())
