"""A source's ``events/`` files -> one day's interactions in the generator's layout (``lib.validation.
INTERACTION_SCHEMA``: int64 ids, Unix-second UTC timestamps, device codes, 0/1 click labels).

Columns (every file on its own; files may differ): ``user_id`` (text; empty = anonymous, id -1), ``item_id``
(text), ``timestamp`` (ISO 8601 with a UTC offset, or Unix seconds, or Unix milliseconds: numbers of 1e11 and
more are milliseconds; a parquet timestamp column with a time zone, or without one, which is taken as UTC and
noted), and either ``event`` (``impression`` or ``click``) or ``click`` (0/1: each row is an impression with its
label); optional ``device`` (desktop / mobile / tablet / other -> 0 / 1 / 2 / -1) and ``session_id`` (text).

Steps, none of which drops a row without counting it:
  1. Parse. A row without a usable timestamp, item id or event is quarantined with the file, row, column and
     reason; so is every line of a CSV that does not split into the header's fields. Unknown columns are ignored
     with a note; an unknown device name becomes -1 (unknown) and is counted.
  2. Duplicates (same user, item, timestamp, event, label, device and session) are removed and counted.
  3. Click labels. A click marks the latest impression of the same user, item and session at or before it (a click
     without a session id: within :data:`ATTRIBUTION_WINDOW_S`; anonymous rows match on the empty user id, so
     give them session ids), which becomes ``click=1``; a click with no such impression
     becomes an impression row with ``click=1`` (``impression_source`` ``click_only``); more clicks on one
     impression are counted (``repeat_clicks``). Labelling runs over all days before they are split, so an
     impression just before midnight keeps a click just after it.
  4. Days. Each row lands on the UTC date of its own timestamp (rows in a file of another day are routed to their
     day and counted as ``rows_of_other_days``); rows before ``RECSYS_START_DATE`` are quarantined.
  5. Ids. Events naming an item the catalogue lacks are kept aside (``lib.paths.unknown_item_events``) and
     counted; users get ids from the append-only user map in order of first appearance on the day.
  6. No impressions on a day (a click-only log): :func:`sample_negatives` adds ``negatives_per_click`` impressions
     with ``click=0`` per click (``impression_source`` ``sampled``), drawn uniformly from the items available that
     day, seeded by ``(seed, day)``, and the report's ``clicks_only`` flag is set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import numpy as np

from recsys_assets.lib.feature_spec import DEVICES, UNKNOWN_DEVICE
from recsys_assets.lib.settings import day_of_timestamp, start_epoch
from recsys_assets.lib.sources.files import SourceError, SourceFolder
from recsys_assets.lib.sources.id_maps import ANONYMOUS, IdMap
from recsys_assets.lib.sources.report import Quarantine, SourceReport
from recsys_assets.lib.validation import INTERACTION_SCHEMA

EVENT_REQUIRED = {"user_id": "text, empty for anonymous", "item_id": "text",
                  "timestamp": "ISO 8601 with offset, Unix seconds or Unix milliseconds"}
EVENT_OPTIONAL = ("event", "click", "device", "session_id")
EVENT_KINDS = ("impression", "click")
DEVICE_CODES = {name: code for code, name in DEVICES.items()} | {"other": UNKNOWN_DEVICE, "": UNKNOWN_DEVICE}
ATTRIBUTION_WINDOW_S = 30 * 60   # without session ids, a click belongs to an impression at most this much earlier
MILLISECONDS_FROM = 1e11         # 1e11 s is the year 5138, 1e11 ms is 1973: larger numbers are milliseconds
SESSION_STRIDE = 1_000_000_000   # ids of day d are d * stride + k, as the generator's (unique across days)
NEGATIVES_PER_CLICK = 4
SOURCE_LOGGED, SOURCE_CLICK_ONLY, SOURCE_SAMPLED = "logged", "click_only", "sampled"

_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
KEY = ["user", "item", "timestamp", "kind", "label", "device", "session"]


@dataclasses.dataclass
class Events:
    """Every parsed event of the source, labelled, with its ``day``; the quarantine of all days (``day`` -1 for
    rows without a usable timestamp or before day 00); and the report of reading them."""

    # DataFrame: file, row, user, item, timestamp, device, session, click, source, day
    rows: object
    quarantine: object    # DataFrame, report.QUARANTINE_COLUMNS
    report: SourceReport
    duplicates_by_day: dict


@dataclasses.dataclass
class Day:
    """One day's interactions and what was set aside from it."""

    interactions: object   # DataFrame, lib.validation.INTERACTION_SCHEMA
    quarantine: object     # the day's quarantined rows (report.QUARANTINE_COLUMNS)
    unknown_items: object  # events of the day naming items the catalogue lacks (source ids, as parsed)
    user_map: IdMap
    report: SourceReport


def parse_timestamps(values):
    """``(seconds, reasons)``: int64 Unix seconds (UTC) and, where a value is unusable, the reason ("" where fine).

    Accepts datetime columns (naive ones as UTC), numbers (seconds, or milliseconds from 1e11) and text: numbers,
    or ISO 8601 with ``Z`` or a ``+hh:mm`` offset (text without an offset is rejected, not guessed).
    """
    import pandas as pd

    n = len(values)
    seconds = np.zeros(n, dtype=np.int64)
    reasons = np.full(n, "", dtype=object)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamp = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        missing = stamp.isna().to_numpy()
        seconds[~missing] = _epoch_seconds(stamp[~missing])
        reasons[missing] = "missing value"
        return seconds, reasons
    if pd.api.types.is_numeric_dtype(values):
        number = values.to_numpy(np.float64)
        text = pd.Series(np.where(np.isnan(number), "", number.astype(str)), index=values.index)
    else:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    is_number = text.str.match(_NUMBER).to_numpy()
    number = pd.to_numeric(text.where(is_number), errors="coerce").to_numpy(np.float64)
    ms = np.abs(np.nan_to_num(number)) >= MILLISECONDS_FROM
    seconds[is_number] = np.floor(np.where(ms, number / 1000.0, number)[is_number]).astype(np.int64)
    is_iso = text.str.match(_ISO).to_numpy() & ~is_number
    has_offset = text.str.contains(_OFFSET).to_numpy()
    usable_iso = is_iso & has_offset
    if usable_iso.any():
        stamp = pd.to_datetime(text[usable_iso], format="ISO8601", utc=True, errors="coerce")
        bad = stamp.isna().to_numpy()
        parsed = np.flatnonzero(usable_iso)
        seconds[parsed[~bad]] = _epoch_seconds(stamp[~bad])
        reasons[parsed[bad]] = "unparseable timestamp"
    reasons[is_iso & ~has_offset] = "timestamp without a UTC offset (add Z or +hh:mm)"
    empty = (text == "").to_numpy()
    reasons[empty] = "missing value"
    reasons[~is_number & ~is_iso & ~empty] = "unparseable timestamp"
    return seconds, reasons


def _epoch_seconds(stamps) -> np.ndarray:
    """Unix seconds of UTC datetimes, whatever their unit (parquet keeps us or ms; int64 casts would not)."""
    import pandas as pd

    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _text(frame, column: str):
    return frame[column].astype(object).where(frame[column].notna(), "").astype(str).str.strip()


def _read_file(source: SourceFolder, name: str, start_date: dt.date, quarantine: Quarantine,
               report: SourceReport):
    """One events file -> parsed rows (the columns of :class:`Events` ``rows`` without labels and days)."""
    import pandas as pd

    where = source.uri(name)
    raw, bad_lines = source.read(name)
    report.rows_read += len(raw) + len(bad_lines)
    quarantine.add_lines(where, bad_lines)
    missing = [c for c in EVENT_REQUIRED if c not in raw.columns]
    if "event" not in raw.columns and "click" not in raw.columns:
        missing.append("event")
    if missing:
        expected = {**EVENT_REQUIRED, "event": "impression or click; or a 'click' column of 0/1"}
        raise SourceError(f"{where}: missing required column{'s' if len(missing) > 1 else ''} "
                          + ", ".join(f"{c!r} ({expected[c]})" for c in missing)
                          + f"; the file has {list(raw.columns)}")
    ignored = sorted(set(raw.columns) - set(EVENT_REQUIRED) - set(EVENT_OPTIONAL))
    if ignored:
        report.note(f"{where}: ignored columns {ignored} (not in the source contract)")
    if pd.api.types.is_datetime64_any_dtype(raw["timestamp"]) and raw["timestamp"].dt.tz is None:
        report.note(f"{where}: column 'timestamp' is a timestamp type without a time zone: taken as UTC")

    seconds, ts_reason = parse_timestamps(raw["timestamp"])
    day = np.where(ts_reason == "", day_of_timestamp(seconds, start_epoch(start_date)), -1)
    item = _text(raw, "item_id")
    if "event" in raw.columns:
        if "click" in raw.columns:
            report.note(f"{where}: column 'click' ignored: the 'event' column gives the labels")
        kind = _text(raw, "event").str.lower()
        bad_event = ~kind.isin(EVENT_KINDS)
        event_reason, event_column = "unknown event (expected impression or click)", "event"
        label = (kind == "click").astype("int64")
    else:
        flag = _text(raw, "click").str.lower().map({"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1})
        bad_event = flag.isna()
        event_reason, event_column = "click label is not 0 or 1", "click"
        kind = pd.Series("labelled", index=raw.index)
        label = flag.fillna(0).astype("int64")
    device_text = _text(raw, "device").str.lower() if "device" in raw.columns else pd.Series("", index=raw.index)
    device = device_text.map(DEVICE_CODES)
    unknown_device = device.isna()
    if unknown_device.any():
        report.counts["unknown_device_values"] += int(unknown_device.sum())
        report.note(f"{where}: column 'device' values {sorted(device_text[unknown_device].unique())[:5]} are not "
                    "desktop, mobile, tablet or other: taken as unknown (-1)")

    keep = pd.Series(True, index=raw.index)
    for mask, column, reason in [
        (pd.Series(ts_reason != "", index=raw.index), "timestamp", None),
        (item == "", "item_id", "missing value"),
        (bad_event, event_column, event_reason),
        (pd.Series(day < 0, index=raw.index) & (ts_reason == ""), "timestamp",
         f"before the start date {start_date.isoformat()} (day 00)"),
    ]:
        hit = mask & keep
        if reason is None:  # each timestamp row carries its own reason
            for text in sorted(set(ts_reason[hit.to_numpy()])):
                rows = raw.index[hit & (ts_reason == text)]
                quarantine.add(where, rows, column, text, raw, days=[-1] * len(rows))
        else:
            rows = raw.index[hit]
            quarantine.add(where, rows, column, reason, raw, days=np.maximum(day[hit.to_numpy()], -1))
        keep &= ~hit
    return pd.DataFrame({
        "file": name, "row": (raw.index[keep] + 1).to_numpy(np.int64),
        "user": _text(raw, "user_id")[keep].to_numpy(object), "item": item[keep].to_numpy(object),
        "timestamp": seconds[keep.to_numpy()], "kind": kind[keep].to_numpy(object),
        "label": label[keep].to_numpy(np.int64),
        "device": device.fillna(UNKNOWN_DEVICE)[keep].to_numpy(np.int64),
        "session": (_text(raw, "session_id")[keep] if "session_id" in raw.columns
                    else pd.Series("", index=raw.index)[keep]).to_numpy(object),
    })


def read_events(source: SourceFolder, start_date: dt.date) -> Events:
    """Parse, de-duplicate and label every file under ``events/`` (steps 1-3 of the module docstring)."""
    import pandas as pd

    report = SourceReport("events")
    quarantine = Quarantine(report)
    parts = [_read_file(source, name, start_date, quarantine, report) for name in source.event_files()]
    rows = pd.concat(parts, ignore_index=True)
    rows["day"] = day_of_timestamp(rows["timestamp"].to_numpy(), start_epoch(start_date))
    duplicated = rows.duplicated(KEY)
    duplicates_by_day = rows.loc[duplicated, "day"].value_counts().to_dict()
    report.counts["duplicate_events"] = int(duplicated.sum())
    rows = rows[~duplicated].reset_index(drop=True)
    rows = _label(rows, report)
    report.rows_out = len(rows)
    return Events(rows, quarantine.frame(), report, {int(k): int(v) for k, v in duplicates_by_day.items()})


def _label(rows, report: SourceReport):
    """Impression/click events -> impressions with click labels (step 3); ``labelled`` rows keep their label."""
    import pandas as pd

    labelled = rows[rows["kind"] == "labelled"].assign(click=lambda f: f["label"], source=SOURCE_LOGGED)
    impressions = rows[rows["kind"] == "impression"].assign(click=0, source=SOURCE_LOGGED)
    clicks = rows[rows["kind"] == "click"]
    report.counts["click_events"] = len(clicks)
    clicks_without_impression = clicks
    if len(clicks) and len(impressions):
        by = ["user", "item", "session"]
        left = clicks.reset_index().rename(columns={"index": "click_row"}).sort_values("timestamp", kind="stable")
        right = (impressions.reset_index().rename(columns={"index": "impression_row"})
                 .assign(impression_ts=lambda f: f["timestamp"])
                 [by + ["timestamp", "impression_ts", "impression_row"]].sort_values("timestamp", kind="stable"))
        matched = pd.merge_asof(left, right, on="timestamp", by=by, direction="backward")
        # Without a session id only a click soon after the impression counts (a day-old impression is another visit).
        window = np.where(matched["session"].to_numpy(object) != "", np.inf, ATTRIBUTION_WINDOW_S)
        ok = (matched["impression_row"].notna().to_numpy()
              & ((matched["timestamp"] - matched["impression_ts"]).to_numpy(np.float64, na_value=np.inf) <= window))
        hit_rows = matched.loc[ok, "impression_row"].astype("int64")
        impressions.loc[hit_rows.unique(), "click"] = 1
        report.counts["clicks_matched_to_impressions"] = int(hit_rows.nunique())
        report.counts["repeat_clicks"] = int(len(hit_rows) - hit_rows.nunique())
        clicks_without_impression = clicks.loc[matched.loc[~ok, "click_row"].to_numpy()]
    report.counts["clicks_without_impression"] = len(clicks_without_impression)
    orphans = clicks_without_impression.assign(click=1, source=SOURCE_CLICK_ONLY)
    out = pd.concat([labelled, impressions, orphans], ignore_index=True)
    return out.drop(columns=["kind", "label"]).sort_values(["timestamp", "file", "row"], kind="stable",
                                                           ignore_index=True)


def day_interactions(events: Events, day: int, user_map: IdMap, item_map: IdMap, available_from_day,
                     seed: int, negatives_per_click: int = NEGATIVES_PER_CLICK) -> Day:
    """Day ``day``'s interactions (steps 4-6 of the module docstring); ``user_map`` comes back extended."""
    import pandas as pd

    report = SourceReport(f"events day {day}", rows_read=events.report.rows_read)
    report.notes.extend(events.report.notes)
    # The labelling ran over the whole source; its totals are the source's (the day's own counts follow below).
    report.counts.update({f"source_{name}": n for name, n in events.report.counts.items()})
    rows = events.rows[events.rows["day"] == day]
    report.counts["rows_of_other_days"] = int(len(events.rows) - len(rows))
    report.counts["duplicate_events"] = events.duplicates_by_day.get(day, 0)
    report.counts["undated_rows_in_source"] = int((events.quarantine["day"] == -1).sum())
    quarantine = events.quarantine[events.quarantine["day"] == day].reset_index(drop=True)
    report.quarantined.update(quarantine["reason"].value_counts().to_dict())

    item_ids = item_map.to_int(rows["item"].tolist(), missing=-2)
    unknown = item_ids == -2
    unknown_items = rows[unknown].drop(columns=["day"]).reset_index(drop=True)
    report.counts["events_for_unknown_items"] = int(unknown.sum())
    if unknown.any():
        report.note(f"{int(unknown.sum())} events of day {day} name {rows.loc[unknown, 'item'].nunique()} items "
                    "the catalogue lacks (kept aside; they return when the catalogue has them and the day is re-run)")
    rows = rows[~unknown]
    item_ids = item_ids[~unknown]

    known_before = len(user_map)
    user_map = user_map.extended(rows["user"].tolist(), day)
    report.counts["new_user_ids"] = len(user_map) - known_before
    user_ids = user_map.to_int(rows["user"].tolist())
    report.counts["anonymous_rows"] = int((user_ids == ANONYMOUS).sum())
    frame = pd.DataFrame({
        "user_id": user_ids, "item_id": item_ids, "timestamp": rows["timestamp"].to_numpy(np.int64),
        "device_type": rows["device"].to_numpy(np.int64), "click": rows["click"].to_numpy(np.int64),
        "impression_source": rows["source"].to_numpy(object),
        "session": _session_keys(rows),
    })
    report.counts["clicks"] = int(frame["click"].sum())
    report.counts["clicks_without_impression"] = int((frame["impression_source"] == SOURCE_CLICK_ONLY).sum())
    has_impressions = bool((frame["impression_source"] == SOURCE_LOGGED).any())
    report.flags["clicks_only"] = len(frame) > 0 and not has_impressions
    if report.flags["clicks_only"] and negatives_per_click > 0:
        available = np.flatnonzero(np.asarray(available_from_day) <= day)
        negatives = sample_negatives(frame, available, negatives_per_click, seed, day)
        report.counts["sampled_negatives"] = len(negatives)
        report.note(f"day {day} has clicks but no impressions: {negatives_per_click} sampled negatives per click, "
                    "uniform over the items available that day")
        frame = pd.concat([frame, negatives], ignore_index=True)
    interactions = _finish(frame, day)
    report.rows_out = len(interactions)
    return Day(interactions, quarantine, unknown_items, user_map, report)


def _session_keys(rows) -> np.ndarray:
    """A text key per row: the source's session id, or without one the user (one visit per user and day); an
    anonymous row without a session is a visit of its own."""
    return np.array([f"session:{session}" if session else f"user:{user}" if user else f"row:{file}:{row}"
                     for session, user, file, row in zip(rows["session"], rows["user"], rows["file"], rows["row"])],
                    dtype=object)


def sample_negatives(clicks, candidate_items, per_click: int, seed: int, day: int):
    """``per_click`` impressions with ``click=0`` per click row of ``clicks`` (same user, session, device and
    time), items drawn uniformly from ``candidate_items`` without the clicked item, from a generator seeded by
    ``(seed, day)`` so a day is sampled identically on every run."""
    candidate_items = np.asarray(candidate_items, dtype=np.int64)
    if len(candidate_items) < 2:
        raise ValueError(f"day {day}: sampling negatives needs at least 2 available items, got {len(candidate_items)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(day), 0x6E6567]))  # "neg"
    positives = clicks[clicks["click"] == 1]
    repeated = positives.loc[positives.index.repeat(per_click)].reset_index(drop=True)
    clicked = repeated["item_id"].to_numpy(np.int64)
    # Draw from the candidates without the clicked item: an index into n-1 slots, skipping the clicked one's slot.
    slot = np.searchsorted(candidate_items, clicked)
    slot = np.where((slot < len(candidate_items)) & (candidate_items[np.minimum(slot, len(candidate_items) - 1)]
                                                     == clicked), slot, len(candidate_items))
    draw = rng.integers(0, len(candidate_items) - (slot < len(candidate_items)), size=len(repeated))
    draw = draw + (draw >= slot)
    return repeated.assign(item_id=candidate_items[draw], click=0, impression_source=SOURCE_SAMPLED)


def _finish(frame, day: int):
    """Sorted rows with int64 interaction and session ids (``day * 1e9 + k``) and positions within the session."""
    frame = frame.sort_values(["timestamp", "session", "click", "item_id"], kind="stable", ignore_index=True)
    first_seen = {key: k for k, key in enumerate(dict.fromkeys(frame["session"].tolist()))}
    frame["session_id"] = np.int64(day) * SESSION_STRIDE + frame["session"].map(first_seen).to_numpy(np.int64)
    frame["interaction_id"] = np.int64(day) * SESSION_STRIDE + np.arange(len(frame), dtype=np.int64)
    frame["position"] = frame.groupby("session_id").cumcount().astype("int64")
    out = frame[list(INTERACTION_SCHEMA)]
    return out.astype({c: t for c, t in INTERACTION_SCHEMA.items() if t != "object"})
