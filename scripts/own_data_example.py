#!/usr/bin/env python
"""Write an example of a shop's own data in the source contract (docs/own-data.md), for ``make demo SOURCE=``.

    .venv/bin/python scripts/own_data_example.py /tmp/shop-export --days 15
    make demo SOURCE=/tmp/shop-export RECSYS_START_DATE=2026-01-01

The catalogue and the behaviour come from the synthetic generator's world (``lib.generator``), so there is signal
to learn, but everything is exported the way a shop would export it: string SKUs (``SKU-00042``), a category path
(``apparel/shirts``), ISO 8601 timestamps with the users' own UTC offsets, impressions and clicks as separate
``event`` rows with session ids, some days as CSV and some as parquet parts (Unix milliseconds and a ``click``
0/1 column there), a few anonymous rows, and no images. ``--users`` adds a ``users.csv``; ``--items N`` keeps a
seeded sample of N items (and the events on them) for a smaller run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

DEVICES = {0: "desktop", 1: "mobile", 2: "tablet"}
OFFSETS_HOURS = (0, 1, 2, -5)  # each user's local UTC offset, as their events were logged
GENDERS = {"M": "men", "F": "women", "U": ""}


def sku(item_id) -> np.ndarray:
    return np.char.add("SKU-", np.char.zfill(np.asarray(item_id).astype(str), 5))


def user_key(user_id) -> np.ndarray:
    return np.char.add("cust-", np.asarray(user_id).astype(str))


def iso_with_offset(timestamps: np.ndarray, offsets_hours: np.ndarray) -> list[str]:
    out = []
    for ts, off in zip(timestamps.tolist(), offsets_hours.tolist()):
        zone = dt.timezone(dt.timedelta(hours=int(off)))
        out.append(dt.datetime.fromtimestamp(int(ts), zone).isoformat())
    return out


def items_frame(world, keep: np.ndarray) -> pd.DataFrame:
    items = world.items.iloc[keep]
    start = world.start_date
    return pd.DataFrame({
        "item_id": sku(items["item_id"].to_numpy()),
        "title": items["name"].to_numpy(),
        "description": items["description"].to_numpy(),
        "category": (items["category_l1"] + "/" + items["category_l2"]).to_numpy(),
        "price": items["price"].to_numpy(),
        "gender": items["item_gender"].map(GENDERS).to_numpy(),
        "available_from": [(start + dt.timedelta(days=int(d))).isoformat() if d > 0 else ""
                           for d in items["available_from_day"].to_numpy()],
    })


def day_events(world, day: int, kept_items: set[int], anonymous_share: float, rng) -> pd.DataFrame:
    """The generator's day as a shop's log: one ``impression`` row per impression, a ``click`` row a few seconds
    after each clicked one (same session), string ids, the user's UTC offset in the timestamp."""
    df, _ = world.generate_day(day)
    df = df[df["item_id"].isin(kept_items)].reset_index(drop=True)
    users = df["user_id"].to_numpy()
    anonymous = np.isin(df["session_id"].to_numpy(),
                        rng.choice(df["session_id"].unique(), int(anonymous_share * df["session_id"].nunique()),
                                   replace=False)) | (users < 0)
    out = pd.DataFrame({
        "user_id": np.where(anonymous, "", user_key(users)),
        "item_id": sku(df["item_id"].to_numpy()),
        "timestamp": df["timestamp"].to_numpy(np.int64),
        "device": df["device_type"].map(DEVICES).fillna("other").to_numpy(),
        "session_id": np.char.add(f"d{day}-s", df["session_id"].to_numpy().astype(str)),
        "click": df["click"].to_numpy(np.int64),
        "offset": np.asarray(OFFSETS_HOURS)[np.where(users >= 0, users, 0) % len(OFFSETS_HOURS)],
    })
    return out


def as_event_rows(events: pd.DataFrame, rng) -> pd.DataFrame:
    """CSV shape: ``event`` impression/click rows, ISO timestamps with offsets."""
    shown = events.assign(event="impression")
    clicked = events[events["click"] == 1].copy()
    clicked["timestamp"] = clicked["timestamp"] + rng.integers(2, 40, len(clicked))
    clicked["event"] = "click"
    rows = pd.concat([shown, clicked], ignore_index=True).sort_values("timestamp", kind="stable")
    rows["timestamp"] = iso_with_offset(rows["timestamp"].to_numpy(), rows["offset"].to_numpy())
    return rows[["user_id", "item_id", "timestamp", "event", "device", "session_id"]]


def as_labelled_rows(events: pd.DataFrame) -> pd.DataFrame:
    """Parquet shape: one row per impression with its ``click`` label, Unix milliseconds."""
    return pd.DataFrame({"user_id": events["user_id"], "item_id": events["item_id"],
                         "timestamp": events["timestamp"] * 1000, "click": events["click"],
                         "device": events["device"], "session_id": events["session_id"]})


def write_example(folder: Path, days: int = 15, seed: int = 7, scale: str = "tiny",
                  start_date: str = "2026-01-01", n_items: int | None = None, users: bool = False,
                  parquet_every: int = 3, anonymous_share: float = 0.05, first_day: int = 0) -> dict:
    """Write (or add days ``first_day..days-1`` to) the example folder; returns what it wrote."""
    from recsys_assets.lib.generator import World

    world = World(seed=seed, scale=scale, start_date=dt.date.fromisoformat(start_date))
    n_all = len(world.items)
    keep = np.arange(n_all) if not n_items or n_items >= n_all else np.sort(
        np.random.default_rng(seed).choice(n_all, n_items, replace=False))
    folder = Path(folder)
    (folder / "events").mkdir(parents=True, exist_ok=True)
    items = items_frame(world, keep)
    items.to_csv(folder / "items.csv", index=False)
    kept = set(world.items["item_id"].to_numpy()[keep].tolist())
    written = []
    for day in range(first_day, days):
        rng = np.random.default_rng([seed, day])
        events = day_events(world, day, kept, anonymous_share, rng)
        date = world.start_date + dt.timedelta(days=day)
        if parquet_every and day % parquet_every == parquet_every - 1:
            path = folder / "events" / f"part-{day:04d}.parquet"
            as_labelled_rows(events).to_parquet(path, index=False)
        else:
            path = folder / "events" / f"{date.isoformat()}.csv"
            as_event_rows(events, rng).to_csv(path, index=False)
        written.append(path.name)
    if users:
        table = world.users(days - 1)
        pd.DataFrame({"user_id": user_key(table["user_id"].to_numpy()), "age": table["age"],
                      "gender": table["gender"],
                      "signup_date": [(world.start_date + dt.timedelta(days=int(d))).isoformat()
                                      for d in table["signup_day"]]}).to_csv(folder / "users.csv", index=False)
    return {"items": len(items), "event_files": written, "first_date": start_date}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the example (created)")
    parser.add_argument("--days", type=int, default=15, help="days of events from the start date (default 15: "
                        "the 14 backfill days 00-13 and one more)")
    parser.add_argument("--start-date", default="2026-01-01", help="UTC date of the first day (RECSYS_START_DATE)")
    parser.add_argument("--scale", default="tiny", choices=("tiny", "demo"), help="the generator profile to "
                        "derive it from (tiny: about 2,400 impressions a day)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--items", type=int, default=None, help="keep a seeded sample of this many items")
    parser.add_argument("--users", action="store_true", help="also write users.csv (age, gender, signup_date)")
    args = parser.parse_args(argv)
    report = write_example(args.folder, args.days, args.seed, args.scale, args.start_date, args.items, args.users)
    print(f"wrote {args.folder}: {report['items']} items, {len(report['event_files'])} event files "
          f"({report['event_files'][0]} .. {report['event_files'][-1]}); run:\n"
          f"  make demo SOURCE={args.folder} RECSYS_START_DATE={args.start_date}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
