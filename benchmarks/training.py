"""Training throughput of the Two-Tower and the DLRM on this CPU (runs in the merlin env).

Reads the transformed days and the multimodal table of an artifact root (run the pipeline first, e.g.
``make demo`` or materialize up to ``transformed_interactions``), trains each model with the asset defaults
(or ``--epochs``) and prints rows/s (median over epochs after the first, which includes graph tracing), seconds
per epoch and the validation numbers. Nothing is written to the artifact root.

    .venv-merlin/bin/python benchmarks/training.py --artifacts artifacts
    .venv-merlin/bin/python benchmarks/training.py --artifacts artifacts-seed --models dlrm --epochs 1 \
        --train-days 0,1,2 --validation-days 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore

TRAIN_DAYS, VALIDATION_DAYS = list(range(9)), [9, 10, 11]
# Overrides of the pipeline's hyperparameters: none. The defaults are the ml dataclasses' (ml.two_tower.TwoTowerParams,
# ml.dlrm.DlrmParams), which the assets' Dagster configs derive from, so a benchmark trains what the pipeline trains.
TWO_TOWER: dict = {}
DLRM: dict = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--models", default="two_tower,dlrm")
    ap.add_argument("--variants", default="plain,context")
    ap.add_argument("--epochs", type=int, default=0, help="override the default epochs")
    ap.add_argument("--train-days", default=",".join(map(str, TRAIN_DAYS)))
    ap.add_argument("--validation-days", default=",".join(map(str, VALIDATION_DAYS)))
    args = ap.parse_args(argv)
    train_days = [int(d) for d in args.train_days.split(",")]
    validation_days = [int(d) for d in args.validation_days.split(",")]

    from recsys_assets.ml import dlrm, two_tower
    from recsys_assets.ml import model_inputs as mi

    store = ArtifactStore(args.artifacts)
    train = [store.local_path(paths.transformed_interactions(d)) for d in train_days]
    valid = [store.local_path(paths.transformed_interactions(d)) for d in validation_days]
    n_items = len(store.read_parquet(paths.ITEMS, columns=["item_id"]))
    table = mi.load_multimodal(store.local_path(paths.MULTIMODAL_EMBEDDINGS), n_items)
    results = []
    if "two_tower" in args.models:
        for variant in args.variants.split(","):
            params = {**TWO_TOWER, "variant": variant, **({"epochs": args.epochs} if args.epochs else {})}
            t0 = time.perf_counter()
            _, report, _, _ = two_tower.train(train, valid, table, two_tower.TwoTowerParams.from_dict(params))
            results.append({"model": f"two_tower/{variant}", "rows": report["train_rows"],
                            "epochs": params["epochs"], "rows_per_second": report["rows_per_second"],
                            "epoch_seconds": report["epoch_seconds"], "first_epoch_seconds":
                            report["history"][0]["seconds"], "total_seconds": round(time.perf_counter() - t0, 1),
                            "validation_loss": report["validation"].get("loss")})
            print(json.dumps(results[-1]), flush=True)
    if "dlrm" in args.models:
        params = {**DLRM, **({"epochs": args.epochs} if args.epochs else {})}
        t0 = time.perf_counter()
        _, report, _, _ = dlrm.train(train, valid, table, dlrm.DlrmParams.from_dict(params))
        results.append({"model": "dlrm", "rows": report["train_rows"], "epochs": params["epochs"],
                        "rows_per_second": report["rows_per_second"], "epoch_seconds": report["epoch_seconds"],
                        "first_epoch_seconds": report["history"][0]["seconds"],
                        "total_seconds": round(time.perf_counter() - t0, 1),
                        "validation_auc": round(report["validation_auc"], 4)})
        print(json.dumps(results[-1]), flush=True)
    keys = ["model", "rows", "epochs", "rows_per_second", "epoch_seconds", "first_epoch_seconds", "total_seconds"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
