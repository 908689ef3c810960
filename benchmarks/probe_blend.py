"""Probe (issue 17): do the DLRM and the reference heuristic make different mistakes? Re-ranks
``ranking_evaluation``'s requests (the released retrieval's 300 candidates) by the DLRM's scores, by the heuristic's
(``lib.policy_value.heuristic_scores``: the user's category mix x the category's click lift on the request's device
and 6-hour band x log popularity), and by blends ``logit(DLRM) + beta x log(heuristic)``; prints the true expected
clicks@10 per split. An analysis: the blend is not served.

    .venv/bin/python benchmarks/model_quality.py prepare --artifacts <root> --refs /tmp/quality/refs
    .venv-merlin/bin/python benchmarks/probe_share_feature.py --artifacts <root> --refs /tmp/quality/refs \\
        --out /tmp/quality/refs_share --without --scores /tmp/quality/dlrm_scores.npy
    .venv/bin/python benchmarks/probe_blend.py --artifacts <root> --refs /tmp/quality/refs \\
        --scores /tmp/quality/dlrm_scores.npy

beta is chosen on the same requests it is valued on (one parameter): read the best row as an upper estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import paths  # noqa: E402
from recsys_assets.lib.artifacts import ArtifactStore  # noqa: E402

RERANK_REQUESTS, RERANK_SEED, TOP = 2000, 0, 10
BETAS = (0.25, 0.5, 1.0, 2.0, 4.0)


def main(argv=None) -> int:
    from recsys_assets.defs.resources import WorldResource
    from recsys_assets.lib import policy_value, served_evaluation

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--refs", required=True)
    ap.add_argument("--scores", required=True, help="the DLRM's re-rank scores (probe_share_feature.py --scores)")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--scale", default="demo")
    args = ap.parse_args(argv)
    store = ArtifactStore(args.artifacts)
    world = WorldResource(seed=args.seed, scale=args.scale).world()
    requests = store.read_parquet(f"{paths.RETRIEVAL_EVALUATION}/requests.parquet")
    n = min(RERANK_REQUESTS, len(requests))
    picked = requests.iloc[np.sort(np.random.default_rng(RERANK_SEED).choice(len(requests), n, replace=False))]
    picked = picked.reset_index(drop=True)
    rerank = np.load(Path(args.refs) / "rerank.npz")
    candidates, p, split = rerank["candidates"], rerank["p"], rerank["split"]
    dlrm = np.load(args.scores)
    valid = candidates >= 0
    days = picked["day"].to_numpy(np.int64)
    history = served_evaluation.logged_days(store, range(max(0, int(days.min()) - 7), int(days.max())))
    heuristic = np.take_along_axis(
        policy_value.heuristic_scores(history, picked, days, world.item_category, len(world.categories)),
        np.maximum(candidates, 0), axis=1)
    refs = json.loads((Path(args.refs) / "rerank_refs.json").read_text())
    # What serving already has: the context part (lift x log popularity, the history without users) times a mix
    # made of the user's three interest codes alone (ranked weights 3:2:1, a floor for the other categories).
    from recsys_assets.lib import top_category

    context = np.take_along_axis(
        policy_value.heuristic_scores(history.assign(user_id=-1), picked, days, world.item_category,
                                      len(world.categories)), np.maximum(candidates, 0), axis=1)
    events = history[["user_id", "timestamp", "item_id", "click"]]
    interests = top_category.point_in_time_interests(
        events["user_id"], events["timestamp"], world.item_category[events["item_id"].to_numpy()], events["click"],
        picked["user_id"], picked["timestamp"])
    mix = np.full((n, len(world.categories)), 1e-3)
    for k, weight in enumerate((3.0, 2.0, 1.0)):
        has = interests[:, k] >= 0
        mix[np.flatnonzero(has), interests[has, k]] += weight / 6.0
    from_interests = context * np.take_along_axis(mix, world.item_category[np.maximum(candidates, 0)], axis=1)

    def value(score) -> dict:
        top = np.argsort(-np.where(valid, score, -np.inf), axis=1, kind="stable")[:, :TOP]
        v = np.take_along_axis(np.where(valid, p, 0.0), top, axis=1).mean(axis=1)
        out = {}
        for s in ("warm", "new"):
            floor, ceiling = refs[f"popularity/{s}/value"], refs[f"oracle_no_taste/{s}/value"]
            mean = float(v[split == s].mean())
            out[s] = (mean, (mean - floor) / (ceiling - floor))
        return out

    logit = np.log(np.clip(dlrm, 1e-6, 1.0)) - np.log(np.clip(1.0 - dlrm, 1e-6, 1.0))
    rows = [("DLRM", value(dlrm)), ("heuristic (of the same 300)", value(heuristic))]
    rows += [(f"logit(DLRM) + {b:g} x log(heuristic)", value(logit + b * np.log(np.maximum(heuristic, 1e-9))))
             for b in BETAS]
    rows += [("heuristic from the 3 interest codes", value(from_interests))]
    rows += [(f"logit(DLRM) + {b:g} x log(heuristic from the interest codes)",
              value(logit + b * np.log(np.maximum(from_interests, 1e-9)))) for b in BETAS]
    rows += [(f"logit(DLRM) + {b:g} x log(context part alone)", value(logit + b * np.log(np.maximum(context, 1e-9))))
             for b in (0.5, 1.0)]
    print("| ranking of the 300 candidates | warm value | warm capture | new value | new capture |\n|---|---|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v['warm'][0]:.4f} | {v['warm'][1]:.3f} | {v['new'][0]:.4f} | {v['new'][1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
