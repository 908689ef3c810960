"""A DLRM hyperparameter sweep judged by true expected clicks (issue 17, step 5), on ``model_quality``'s references.

Each setting trains in its own merlin-env process (``benchmarks/model_quality.py run --models dlrm``), is scored
like ``ranking_evaluation`` (the DLRM's top 10 of the released retrieval's 300 candidates, valued by the true
p(click) of the true user in the request's context; capture of the no-taste ceiling over popularity per split)
and by AUC; the table is sorted by the warm split's value. Results append to ``--log`` (JSON lines).

    .venv/bin/python benchmarks/model_quality.py prepare --artifacts artifacts --refs /tmp/quality/refs
    .venv/bin/python benchmarks/dlrm_sweep.py --artifacts artifacts --refs /tmp/quality/refs \\
        --log /tmp/quality/dlrm_sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One change from the defaults (ml.dlrm.DlrmParams) per row, and a second seed of the defaults for the noise.
SETTINGS = {
    "default": {},
    "seed-1": {"seed": 1},
    "epochs-3": {"epochs": 3},
    "epochs-4": {"epochs": 4},
    "lr-3e-3": {"learning_rate": 3e-3},
    "batch-256": {"batch_size": 256},
    "dim-32": {"embedding_dim": 32, "bottom_mlp": [128, 32]},
    "id-l2-1e-3": {"id_l2": 1e-3},
    "oov-0.3": {"oov_rate": 0.3},
    "dropout-0.2": {"dropout": 0.2},
    "top-256": {"top_mlp": [256, 128, 64]},
    "epochs-1-lr-3e-3": {"epochs": 1, "learning_rate": 3e-3},
    "lr-5e-4": {"learning_rate": 5e-4},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--refs", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SETTINGS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for name in names:
        proc = subprocess.run([str(ROOT / ".venv-merlin/bin/python"), str(ROOT / "benchmarks/model_quality.py"), "run",
                               "--artifacts", args.artifacts, "--refs", args.refs, "--models", "dlrm", "--tag", name,
                               "--dlrm", json.dumps(SETTINGS[name]), "--log", args.log],
                              env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1]))
        r = rows[-1]
        print(f"{name:12s} warm {r.get('dlrm/warm/value', float('nan')):.4f} (capture {r.get('dlrm/warm/capture')}) "
              f"new {r.get('dlrm/new/value', float('nan')):.4f} (capture {r.get('dlrm/new/capture')}) "
              f"AUC {r['model/all/auc']:.4f} train {r['train_seconds']}s", flush=True)
    print("\nsetting       warm value  warm capture  new value  new capture  AUC")
    for r in sorted(rows, key=lambda r: -r.get("dlrm/warm/value", 0)):
        print(f"{r['tag']:12s}  {r.get('dlrm/warm/value', float('nan')):.4f}      {r.get('dlrm/warm/capture')}"
              f"         {r.get('dlrm/new/value', float('nan')):.4f}     {r.get('dlrm/new/capture')}"
              f"        {r['model/all/auc']:.4f}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
