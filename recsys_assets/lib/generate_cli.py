"""``recsys-generate``: write the synthetic catalogue, users and any range of days to a folder (or s3:// root).

    recsys-generate --out data/ --scale demo --days 0-13
    recsys-generate --out data/ --scale seed --days 5 --no-images
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from recsys_assets.lib.generator import SCALES


def parse_days(text: str) -> range:
    """``"0-13"`` -> range(0, 14); ``"5"`` -> range(5, 6)."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
        else:
            lo = hi = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--days {text!r}: expected N or N-M, e.g. 0-13") from exc
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"--days {text!r}: expected 0 <= N <= M")
    return range(lo, hi + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="artifact root: a folder or s3://bucket/prefix")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--days", type=parse_days, default=parse_days("0-13"), help="N or N-M (default 0-13)")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1))
    parser.add_argument("--no-images", action="store_true", help="skip rendering the product images")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from recsys_assets.lib import dataset
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.lib.generator import World

    store = ArtifactStore(args.out)
    world = World(seed=args.seed, scale=args.scale, start_date=args.start_date)
    t0 = time.perf_counter()
    dataset.write_items(store, world)
    dataset.write_descriptions(store, world)
    if not args.no_images:
        dataset.write_images(store, world, progress=lambda it: tqdm(it, total=len(world.items), desc="images"))
    users = dataset.write_users(store, world, through_day=args.days.stop - 1)
    rows = clicks = 0
    for day in tqdm(args.days, desc="days", unit="day"):
        interactions, _ = dataset.write_day(store, world, day)
        rows += len(interactions)
        clicks += int(interactions["click"].sum())
    took = time.perf_counter() - t0
    print(f"{store.root}: {len(world.items)} items, {len(users)} users, {rows} impressions over "
          f"{len(args.days)} days (CTR {clicks / max(rows, 1):.3f}) in {took:.1f} s ({rows / took:,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
