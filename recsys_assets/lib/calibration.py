"""How learnable the generated data is: the numbers the README's "Data" section and the generator tests check.

- ``ctr``: click rate of impressions (target 5-10%).
- ``oracle_auc``: AUC of the true click probability (target 0.75-0.85).
- ``popularity_auc``: AUC of per-item click counts learned on the earlier days, scored on the later ones
  (target: at least 0.08 below the oracle).
- ``context_auc``: AUC of the CTR per (category, device, 4-hour block, weekend) learned on the earlier days,
  i.e. what an anonymous request's context alone can tell (target: clearly above 0.5).
- ``signal_auc_<term>``: AUC of each term of the true logit alone (the persona must be the strongest).
"""

from __future__ import annotations

import numpy as np

from recsys_assets.lib.generator import World
from recsys_assets.lib.metrics import auc


def calibration_report(world: World, days: range, split_day: int) -> dict[str, float]:
    import pandas as pd

    frames = [world.generate_day(d) for d in days]
    df = pd.concat([f[0] for f in frames], ignore_index=True)
    df["p_click"] = np.concatenate([f[1]["p_click"].to_numpy() for f in frames])
    df["category"] = world.item_category[df["item_id"].to_numpy()]
    df["hour_block"] = (df["timestamp"] % 86_400) // 3600 // 4
    df["weekend"] = (world.day_of_ts(df["timestamp"]) + world.start_date.weekday()) % 7 >= 5
    train = df[df["timestamp"] < world.day_start_ts(split_day)]
    test = df[df["timestamp"] >= world.day_start_ts(split_day)]
    if train.empty or test.empty:
        raise ValueError(f"split_day {split_day} must fall strictly inside days {days.start}..{days.stop - 1}")

    report = {
        "rows": float(len(df)),
        "ctr": float(df["click"].mean()),
        "oracle_auc": auc(test["click"], test["p_click"]),
    }
    clicks = train.groupby("item_id")["click"].sum()
    report["popularity_auc"] = auc(test["click"], test["item_id"].map(clicks).fillna(0.0))
    keys = ["category", "device_type", "hour_block", "weekend"]
    ctx = train.groupby(keys)["click"].mean().rename("ctx").reset_index()
    scored = test.merge(ctx, on=keys, how="left")
    report["context_auc"] = auc(scored["click"], scored["ctx"].fillna(train["click"].mean()))
    parts = world.logit_components(test["user_id"], test["item_id"], test["device_type"], test["timestamp"])
    for name, values in parts.items():
        report[f"signal_auc_{name}"] = auc(test["click"], values)
    return report
