"""What limits ranking AUC at this data size: models given more (or less) than the DLRM sees (pipeline env).

On the validation days it scores, beside the generator's oracle:

* ``oracle - taste`` / ``oracle - taste - persona``: the true logit without the hidden latent-taste term (and
  without the persona term): what a model that knew every other term exactly would reach;
* gradient-boosted trees (scikit-learn ``HistGradientBoostingClassifier``) trained on the same train days with
  - ``observable``: the DLRM's non-id inputs (age, gender, top_category, item category/style/gender, price,
    device, hour, weekday) plus the item's train-window CTR (what an item-id embedding can learn);
  - ``+ user history``: the user's train-window impressions and clicks in the item's category and overall
    (what a user-id embedding can learn about the persona from ~33 impressions; leave-one-out on train rows);
  - ``+ true persona``: the generator's hidden persona weight of the item's category (a ceiling for the above);
  - ``+ true persona + taste``: the hidden taste term too (should approach the oracle).

    .venv/bin/python benchmarks/ranking_limits.py --artifacts artifacts [--train-days 0,...,8]

Nothing is written to the artifact root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import paths  # noqa: E402
from recsys_assets.lib.artifacts import ArtifactStore  # noqa: E402
from recsys_assets.lib.generator import BASE_LOGIT, World  # noqa: E402
from recsys_assets.lib.metrics import auc  # noqa: E402


def _days(store: ArtifactStore, world: World, days) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    users = store.read_parquet(paths.USERS).set_index("user_id")
    items = store.read_parquet(paths.ITEMS).sort_values("item_id").reset_index(drop=True)
    frames = []
    for d in days:
        raw = store.read_parquet(paths.raw_interactions(d))
        top = store.read_parquet(paths.top_category(d), columns=["interaction_id", "top_category"])
        raw = raw.merge(top, on="interaction_id", how="left")
        truth = store.read_parquet(paths.interactions_truth(d))
        raw = raw.merge(truth, on="interaction_id", how="left")
        parts = world.logit_components(raw["user_id"], raw["item_id"], raw["device_type"], raw["timestamp"])
        for k, v in parts.items():
            raw[f"true_{k}"] = v
        raw["day"] = d
        frames.append(raw)
    df = pd.concat(frames, ignore_index=True)
    df["age"] = users["age"].reindex(df["user_id"]).to_numpy()
    df["gender"] = (users["gender"].reindex(df["user_id"]).to_numpy() == "M").astype(int)
    cats = world.categories
    df["category"] = world.item_category[df["item_id"].to_numpy()]
    df["style"] = pd.factorize(items["category_l2"])[0][df["item_id"].to_numpy()]
    df["item_gender"] = world.item_gender[df["item_id"].to_numpy()]
    df["price"] = np.log1p(items["price"].to_numpy())[df["item_id"].to_numpy()]
    df["hour"] = (df["timestamp"] % 86_400) // 3600
    df["weekday"] = (df["day"] + world.start_date.weekday()) % 7
    df["top_match"] = (df["top_category"] == df["category"]).astype(int)
    assert len(cats) == 20
    return df


def _history(train, rows, leave_one_out: bool):
    """User x category (and user) impression/click counts over ``train``, for ``rows``."""
    out = {}
    for name, keys in (("uc", ["user_id", "category"]), ("u", ["user_id"])):
        g = train.groupby(keys)["click"].agg(["sum", "count"])
        j = rows[keys].merge(g, left_on=keys, right_index=True, how="left").fillna(0.0)
        s, n = j["sum"].to_numpy(), j["count"].to_numpy()
        if leave_one_out:
            s, n = s - rows["click"].to_numpy(), n - 1
        out[f"{name}_clicks"], out[f"{name}_shown"] = s, n
    return out


def main(argv=None) -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--scale", default="demo")
    ap.add_argument("--train-days", default=",".join(map(str, range(9))))
    ap.add_argument("--validation-days", default="9,10,11")
    args = ap.parse_args(argv)
    train_days = [int(d) for d in args.train_days.split(",")]
    valid_days = [int(d) for d in args.validation_days.split(",")]
    store = ArtifactStore(args.artifacts)
    world = World(seed=args.seed, scale=args.scale)
    train, valid = _days(store, world, train_days), _days(store, world, valid_days)
    y = valid["click"].to_numpy()
    rows = [("oracle", auc(y, valid["p_click"].to_numpy()))]
    logit = BASE_LOGIT + sum(valid[c] for c in valid.columns if c.startswith("true_"))
    rows.append(("oracle - taste", auc(y, (logit - valid["true_taste"]).to_numpy())))
    rows.append(("oracle - taste - persona", auc(y, (logit - valid["true_taste"] - valid["true_persona"]).to_numpy())))

    # item CTR over the train window (leave-one-out on train rows): what an item-id embedding can learn
    g = train.groupby("item_id")["click"].agg(["sum", "count"])
    prior, strength = train["click"].mean(), 20.0
    for df, loo in ((train, True), (valid, False)):
        j = g.reindex(df["item_id"]).fillna(0.0)
        s = j["sum"].to_numpy() - (df["click"].to_numpy() if loo else 0)
        n = j["count"].to_numpy() - (1 if loo else 0)
        df["item_ctr"] = (s + strength * prior) / (n + strength)
        for k, v in _history(train, df, loo).items():
            df[k] = v
        df["uc_rate"] = (df["uc_clicks"] + 1.0 * prior) / (df["uc_shown"] + 1.0)
        df["u_rate"] = (df["u_clicks"] + 2.0 * prior) / (df["u_shown"] + 2.0)
    observable = ["age", "gender", "top_category", "top_match", "category", "style", "item_gender", "price",
                  "device_type", "hour", "weekday", "item_ctr"]
    history = ["uc_clicks", "uc_shown", "u_clicks", "u_shown", "uc_rate", "u_rate"]
    categorical = {"top_category", "category", "device_type", "item_gender"}
    sets = [("GBDT observable", observable), ("GBDT + user history", observable + history),
            ("GBDT + true persona", observable + history + ["true_persona"]),
            ("GBDT + true persona + taste", observable + history + ["true_persona", "true_taste"])]
    for name, cols in sets:
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=31,
                                               categorical_features=[c in categorical for c in cols],
                                               early_stopping=True, validation_fraction=0.1, random_state=0)
        model.fit(train[cols].to_numpy(np.float64), train["click"].to_numpy())
        p = model.predict_proba(valid[cols].to_numpy(np.float64))[:, 1]
        rows.append((name, auc(y, p)))
        print(f"{name}: {rows[-1][1]:.4f} ({time.perf_counter() - t0:.0f}s, {model.n_iter_} trees)", flush=True)
    warm = valid["u_shown"].to_numpy() > 0
    print(f"\ntrain rows {len(train)}, validation rows {len(valid)} ({warm.mean():.0%} of them of users seen in "
          f"training), train impressions per user {len(train) / train['user_id'].nunique():.1f}, clicks per user "
          f"{train['click'].sum() / train['user_id'].nunique():.2f}")
    print("\n| reference | validation AUC |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
