"""What the ordering prior costs a request: ``Prior.log_prior`` for one request's candidates (``lib/prior.py``), with
the default coefficients (interests, context, popularity) and with all six terms (the user's gender and age given),
on a demo-sized random table; both in one process, interleaved, so the ratio is comparable.

    .venv/bin/python benchmarks/prior.py [--candidates 300] [--repeat 3000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import prior  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3000)
    ap.add_argument("--items", type=int, default=2465)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n, rows = args.items, 100_000
    table = prior.build(rng.integers(0, n, rows), rng.integers(0, 3, rows), 1_767_225_600 + rng.integers(0, 86_400, rows),
                        (rng.random(rows) < 0.07).astype(int), rng.integers(0, 20, n), 20,
                        item_gender=rng.integers(-1, 2, n), price=rng.uniform(1, 1000, n),
                        user_age=rng.uniform(18, 80, 5000))
    ids = rng.choice(n, args.candidates, replace=False)
    request = (ids, np.array([1]), np.array([1_767_225_600 + 3600]), np.array([[3, 5, 7]]))
    cases = {"default coefficients": {},
             "six terms": {"coefficients": (3.5, 1.75, 3.25, 1, -2, 0.25), "gender": np.array([0]),
                           "age": np.array([40.0])}}
    times = {name: [] for name in cases}
    for _ in range(5):  # interleaved rounds
        for name, kwargs in cases.items():
            for _ in range(100):
                table.log_prior(*request, **kwargs)
            t0 = time.perf_counter()
            for _ in range(args.repeat // 5):
                table.log_prior(*request, **kwargs)
            times[name].append((time.perf_counter() - t0) / (args.repeat // 5) * 1e6)
    for name, values in times.items():
        print(f"{name:<22} {np.median(values):7.1f} us per request of {args.candidates} candidates "
              f"(median of {len(values)} rounds)")
    print(f"ratio six terms / default: {np.median(times['six terms']) / np.median(times['default coefficients']):.2f}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
