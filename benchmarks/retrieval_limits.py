"""What limits retrieval recall@300 at this data size: rankings that know more (or less) than the model (pipeline env).

Scores, on the requests ``benchmarks/model_quality.py prepare`` wrote (``--refs``), the same recall@k as
``retrieval_evaluation`` for rankings built from the generator's terms:

* ``oracle``: the true p(click) (what the evaluation calls the oracle), and the same without the hidden taste term;
* ``exposure x click``: p(shown in the session | user) x p(click): what "an item the session clicked" measures,
  with the old system's impression policy (40 % by hidden popularity, 35 % persona categories, 25 % uniform);
  without taste; and with the persona replaced by the user's train-window impressions per category (the
  observable impression log, the most a model of the user can learn about the persona); the exposure alone;
* ``popularity x top_category``: train-window clicks, boosted for the request's ``top_category`` (observable).

    .venv/bin/python benchmarks/retrieval_limits.py --artifacts artifacts --refs /tmp/quality/refs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import evaluation as ev  # noqa: E402
from recsys_assets.lib import generator as gen  # noqa: E402
from recsys_assets.lib import paths  # noqa: E402
from recsys_assets.lib.artifacts import ArtifactStore  # noqa: E402

K = 300


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--refs", required=True)
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--scale", default="demo")
    args = ap.parse_args(argv)
    store = ArtifactStore(args.artifacts)
    refs = Path(args.refs)
    meta = json.loads((refs / "meta.json").read_text())
    data = np.load(refs / "retrieval.npz")
    requests = pd.read_parquet(refs / "requests.parquet")
    requests["relevant"] = [np.asarray(r, np.int64) for r in requests["relevant"]]
    requests["cold_relevant"] = [np.asarray(r, np.int64) for r in requests["cold_relevant"]]
    world = gen.World(seed=args.seed, scale=args.scale)
    n_items = len(data["available_from"])
    days = data["days"]
    allowed = ev.available_mask(data["available_from"], days)
    users, devices = requests["user_id"].to_numpy(np.int64), requests["device_type"].to_numpy(np.int64)
    stamps = requests["timestamp"].to_numpy(np.int64)
    items = np.arange(n_items)[None, :]
    parts = world.logit_components(users[:, None], items, devices[:, None], stamps[:, None])
    logit = gen.BASE_LOGIT + sum(parts.values())
    no_taste = logit - parts["taste"]

    # the impression policy of the day (generator.generate_day), per request: popular / persona / explore
    cat = world.item_category
    n_cat = len(world.categories)
    w_pop = np.where(allowed, np.exp(world.pop_z)[None, :], 0.0)
    p_popular = w_pop / w_pop.sum(axis=1, keepdims=True)
    p_explore = allowed / allowed.sum(axis=1, keepdims=True)
    per_cat = np.stack([np.bincount(cat[allowed[r]], minlength=n_cat) for r in range(len(days))])
    pop = world._population(int(days.max()))
    aff = np.stack([world.affinity({k: v[[u]] for k, v in pop.items()}, d)[0] for u, d in zip(users, days)])

    def exposure(affinity):
        p_persona = affinity[:, cat] / np.maximum(per_cat[:, cat], 1) * allowed
        return 0.40 * p_popular + 0.35 * p_persona + 0.25 * p_explore

    # the persona as the impression log shows it: the user's train-window impressions per category
    shown = np.zeros((len(pop["age"]), n_cat))
    clicks = np.zeros(n_items)
    for d in meta["train_days"]:
        raw = store.read_parquet(paths.raw_interactions(d), columns=["user_id", "item_id", "click"])
        np.add.at(shown, (raw["user_id"].to_numpy(), cat[raw["item_id"].to_numpy()]), 1.0)
        clicks += np.bincount(raw["item_id"].to_numpy()[raw["click"].to_numpy() == 1], minlength=n_items)
    base = shown.sum(axis=0) / shown.sum()
    logged = shown[users]  # impressions per category (popular and explore included)
    share = (logged + 2.0 * base) / (logged.sum(axis=1, keepdims=True) + 2.0)
    # popular + explore impressions are spread like the catalogue/popularity; the excess over that is persona
    est_aff = np.clip(share - base[None, :] * 0.65, 1e-3, None)
    est_aff /= est_aff.sum(axis=1, keepdims=True)
    est_logit = no_taste - parts["persona"] + gen.W_PERSONA * est_aff[:, cat]

    def sig(x):
        return 1.0 / (1.0 + np.exp(-x))

    vocab_top = _top_category_codes(store, requests)
    scores = {
        "oracle": sig(logit), "oracle - taste": sig(no_taste),
        "exposure x click": exposure(aff) * sig(logit),
        "exposure x click - taste": exposure(aff) * sig(no_taste),
        "exposure x click - taste, persona from impression log": exposure(est_aff) * sig(est_logit),
        "exposure alone (the old policy)": exposure(aff),
        "exposure alone, persona from impression log": exposure(est_aff),
        "popularity": np.broadcast_to(np.log1p(clicks)[None, :], allowed.shape),
        "popularity x top_category": np.log1p(clicks)[None, :] + 1.0 * (cat[None, :] == vocab_top[:, None]),
    }
    rankings = {name: ev.top_k(s, allowed, K) for name, s in scores.items()}
    table = ev.retrieval_table(rankings, requests)
    print("| ranking | warm recall@100 | warm recall@300 | new recall@300 |\n|---|---|---|---|")
    for name in scores:
        print(f"| {name} | {ev.metric(table, name, 'warm', 'recall@100'):.4f} | "
              f"{ev.metric(table, name, 'warm', 'recall@300'):.4f} | "
              f"{ev.metric(table, name, 'new', 'recall@300'):.4f} |")
    return 0


def _top_category_codes(store: ArtifactStore, requests) -> np.ndarray:
    """The raw top_category code (-1: none) of each request's first impression."""
    import pandas as pd

    frames = [store.read_parquet(paths.top_category(int(d)), columns=["user_id", "timestamp", "top_category"])
              for d in np.unique(requests["day"])]
    top = pd.concat(frames).drop_duplicates(["user_id", "timestamp"])
    j = requests[["user_id", "timestamp"]].merge(top, on=["user_id", "timestamp"], how="left")
    return j["top_category"].fillna(-1).to_numpy(np.int64)


if __name__ == "__main__":
    sys.exit(main())
