"""A source's ``items`` (and optional ``users``) table -> the project's ``items``, ``item_descriptions`` and
``users`` tables (the layout of :mod:`recsys_assets.lib.dataset`, the schemas of :mod:`recsys_assets.lib.validation`).

Items
  * required columns ``item_id`` (text), ``title``, ``description``, ``price`` and the category: ``category``, a
    path such as ``home/kitchen`` (the first part is ``category_l1``, the second ``category_l2``, deeper parts are
    ignored; a path of one part is its own ``category_l2``), or ``category_l1`` / ``category_l2`` columns;
  * optional ``image`` (a path relative to the source folder), ``gender`` (M / F, also male / female / men /
    women; anything else or nothing -> ``U``, the catalogue's "no gender affinity"), ``available_from`` (an ISO
    date or date-time; the item is recommendable from that UTC day, day 0 when earlier or empty).
  * Item ids come from the append-only item map in file order. An item that an earlier catalogue had and this one
    lacks (or now quarantines) keeps its id and its earlier row, so the table stays ``0..M-1`` (the embedding
    matrices are keyed by row = item id).
  * Rows without an id, price or category, with a price that is not a non-negative number, an unreadable
    ``available_from`` or a repeated ``item_id`` (the first one wins) are quarantined with the reason.

Users (optional table): ``user_id`` (text); optional ``age`` (years), ``gender``, ``signup_date``. The users
table lists every mapped user (those of the users file and those first seen in events), with ``age`` NaN and
gender ``U`` where unknown (the transforms give them the cold-start defaults) and ``signup_day`` from
``signup_date`` or else the day the id first appeared.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from recsys_assets.lib.catalogue import dominant_colour
from recsys_assets.lib.dataset import ITEM_COLUMNS
from recsys_assets.lib.settings import day_start, start_epoch
from recsys_assets.lib.sources.files import SourceError, SourceFolder
from recsys_assets.lib.sources.id_maps import IdMap
from recsys_assets.lib.sources.report import Quarantine, SourceReport

ITEM_REQUIRED = {"item_id": "the item's id (text)", "title": "the product name",
                 "description": "the product text (may be empty)", "price": "a non-negative number"}
ITEM_OPTIONAL = ("category", "category_l1", "category_l2", "image", "gender", "available_from")
USER_OPTIONAL = ("age", "gender", "signup_date")
NO_GENDER = "U"  # the catalogue's sentinel for "no gender affinity"; also a user of unknown gender
GENDER_WORDS = {"m": "M", "male": "M", "man": "M", "men": "M", "f": "F", "female": "F", "woman": "F", "women": "F"}
DESCRIPTION_COLUMNS = ["item_id", "name", "description", "colour"]


@dataclasses.dataclass
class Catalogue:
    items: object              # DataFrame, ``lib.dataset.ITEM_COLUMNS``, item_id 0..M-1
    descriptions: object       # DataFrame: item_id, name, description, colour
    images: dict               # item_id -> image path relative to the source (items with an image only)
    id_map: IdMap
    quarantine: object         # DataFrame, ``report.QUARANTINE_COLUMNS``
    report: SourceReport


def gender_code(values) -> list[str]:
    """M / F from the words a shop may use; anything else (empty, unisex, numbers) -> ``U``."""
    return [GENDER_WORDS.get(str(v).strip().lower(), NO_GENDER) if v is not None else NO_GENDER for v in values]


def _text(frame, column: str):
    """A column as stripped text, missing values as ``""`` (parquet columns may be numbers or nulls)."""
    return frame[column].astype(object).where(frame[column].notna(), "").astype(str).str.strip()


def _check_columns(frame, where: str, required: dict, optional, report: SourceReport) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SourceError(f"{where}: missing required column{'s' if len(missing) > 1 else ''} "
                          + ", ".join(f"{c!r} ({required[c]})" for c in missing)
                          + f"; the file has {list(frame.columns)}")
    ignored = sorted(set(frame.columns) - set(required) - set(optional))
    if ignored:
        report.note(f"{where}: ignored columns {ignored} (not in the source contract)")


def read_items(source: SourceFolder, id_map: IdMap, start_date: dt.date, day: int = 0, previous=None) -> Catalogue:
    """Read and normalise the source's ``items`` table; ``id_map`` is extended by new item ids (first seen on
    ``day``). ``previous`` is the earlier ``(items, descriptions)`` pair, needed once an item leaves the file."""
    import pandas as pd

    name = source.table("items")
    where = source.uri(name)
    raw, bad_lines = source.read(name)
    report = SourceReport("items", rows_read=len(raw) + len(bad_lines))
    quarantine = Quarantine(report)
    quarantine.add_lines(where, bad_lines)
    _check_columns(raw, where, ITEM_REQUIRED, ITEM_OPTIONAL, report)
    if "category" not in raw.columns and "category_l1" not in raw.columns:
        raise SourceError(f"{where}: missing required column 'category' (a path such as home/kitchen) or "
                          f"'category_l1' (with an optional 'category_l2'); the file has {list(raw.columns)}")

    item_id = _text(raw, "item_id")
    if "category" in raw.columns:
        parts = _text(raw, "category").str.split("/")
        l1 = parts.str[0].fillna("").str.strip()
        l2 = parts.str[1].fillna("").str.strip()
        category_column = "category"
        if (parts.str.len() > 2).any():
            report.note(f"{where}: column 'category' has paths deeper than two levels; the parts after the second "
                        "are ignored")
    else:
        l1 = _text(raw, "category_l1")
        l2 = _text(raw, "category_l2") if "category_l2" in raw.columns else pd.Series("", index=raw.index)
        category_column = "category_l1"
    l2 = l2.where(l2 != "", l1)  # a category of one level is its own style
    price = pd.to_numeric(raw["price"], errors="coerce")
    if "available_from" in raw.columns:
        text = _text(raw, "available_from")
        stamp = pd.to_datetime(text.where(text != ""), errors="coerce", utc=True, format="ISO8601")
        available = ((stamp.dt.floor("D").dt.tz_localize(None) - pd.Timestamp(start_date)).dt.days
                     .clip(lower=0).fillna(0).astype("int16"))
        bad_available = (text != "") & stamp.isna()
    else:
        available = pd.Series(0, index=raw.index, dtype="int16")
        bad_available = pd.Series(False, index=raw.index)

    keep = pd.Series(True, index=raw.index)
    for mask, column, reason in [
        (item_id == "", "item_id", "missing value"),
        (l1 == "", category_column, "missing value"),
        (price.isna() | (price < 0), "price", "not a non-negative number"),
        (bad_available, "available_from", "not an ISO date"),
    ]:
        hit = mask & keep
        quarantine.add(where, raw.index[hit], column, reason, raw)
        keep &= ~hit
    repeated = item_id.duplicated() & keep
    quarantine.add(where, raw.index[repeated], "item_id", "duplicate item_id (the first row is kept)", raw)
    keep &= ~repeated

    known_before = len(id_map)
    id_map = id_map.extended(item_id[keep].tolist(), day)
    ids = id_map.to_int(item_id[keep].tolist())
    title = _text(raw, "title")[keep]
    description = _text(raw, "description")[keep]
    items = pd.DataFrame({
        "item_id": ids, "item_uuid": item_id[keep].to_numpy(object), "name": title.to_numpy(object),
        "category_l1": l1[keep].to_numpy(object), "category_l2": l2[keep].to_numpy(object),
        "price": price[keep].to_numpy(np.float64),
        "item_gender": gender_code(raw["gender"][keep]) if "gender" in raw.columns else NO_GENDER,
        "available_from_day": available[keep].to_numpy(np.int16),
    })[ITEM_COLUMNS]
    descriptions = pd.DataFrame({
        "item_id": ids, "name": title.to_numpy(object), "description": description.to_numpy(object),
        "colour": [dominant_colour(f"{t} {d}") for t, d in zip(title, description)],
    })
    items, descriptions = _keep_earlier_items(items, descriptions, id_map, previous, where, report)

    images: dict[int, str] = {}
    if "image" in raw.columns:
        paths = _text(raw, "image")[keep]
        images = {int(k): p for k, p in zip(ids, paths) if p}
    report.flags["has_images"] = bool(images)
    report.counts["items_without_image"] = len(items) - len(images)
    if not images:
        report.note("no item images: no image embeddings; the models use the text embeddings only")
    report.counts["new_item_ids"] = len(id_map) - known_before
    report.rows_out = len(items)
    return Catalogue(items, descriptions, images, id_map, quarantine.frame(), report)


def _keep_earlier_items(items, descriptions, id_map: IdMap, previous, where: str, report: SourceReport):
    """Add the rows of mapped items that this catalogue lacks from the earlier tables (ids never go away)."""
    import pandas as pd

    gone = np.setdiff1d(np.arange(len(id_map)), items["item_id"].to_numpy())
    if len(gone):
        if previous is None or not np.isin(gone, previous[0]["item_id"].to_numpy()).all():
            examples = id_map.to_source(gone[:5])
            raise SourceError(f"{where}: {len(gone)} items mapped earlier are missing (e.g. {examples}) and no "
                              "earlier items table holds them: item ids are never removed; keep their rows (an "
                              "item no longer sold can stay with a far-future available_from)")
        earlier_items, earlier_descriptions = previous
        items = pd.concat([items, earlier_items[earlier_items["item_id"].isin(gone)][ITEM_COLUMNS]])
        descriptions = pd.concat([descriptions, earlier_descriptions[earlier_descriptions["item_id"].isin(gone)]
                                  [DESCRIPTION_COLUMNS]])
        report.counts["items_kept_from_earlier_catalogue"] = len(gone)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    descriptions = descriptions.sort_values("item_id", kind="stable").reset_index(drop=True)
    items["item_id"] = items["item_id"].astype("int64")
    items["available_from_day"] = items["available_from_day"].astype("int16")
    descriptions["item_id"] = descriptions["item_id"].astype("int64")
    return items, descriptions


def write_item_images(source: SourceFolder, store, catalogue: Catalogue) -> int:
    """Copy the items' images into ``raw/item_images/<item_id>.jpg`` (JPEG, RGB), the layout the image embeddings
    read; an image that is missing or unreadable is counted in the report (``images_unreadable``) and noted."""
    from PIL import Image, UnidentifiedImageError

    from recsys_assets.lib import paths

    written, failed = 0, []
    with store.writing(paths.ITEM_IMAGES) as folder:
        folder.mkdir(parents=True)
        for item_id, rel in sorted(catalogue.images.items()):
            try:
                with source.open(rel) as handle, Image.open(handle) as image:
                    image.convert("RGB").save(folder / f"{item_id}.jpg", format="JPEG", quality=90)
                written += 1
            except (OSError, UnidentifiedImageError):
                failed.append(rel)
    catalogue.report.counts["images_written"] = written
    if failed:
        catalogue.report.counts["images_unreadable"] = len(failed)
        catalogue.report.note(f"{len(failed)} images missing or unreadable under {source.location}, e.g. "
                              f"{failed[:3]}: those items have no image embedding")
    return written


def read_user_attributes(source: SourceFolder, start_date: dt.date):
    """The optional ``users`` table as ``(attributes, quarantine, report)``: attributes ``source_id``, ``age``
    (float, NaN unknown), ``gender`` (M / F / U), ``signup_day`` (-1 unknown); ``attributes`` is None when the
    source has no users table."""
    import pandas as pd

    report = SourceReport("users")
    name = source.table("users", required=False)
    if name is None:
        report.flags["has_users_table"] = False
        report.note("no users table: users are the ids first seen in events, with unknown age and gender")
        return None, Quarantine(report).frame(), report
    where = source.uri(name)
    raw, bad_lines = source.read(name)
    report.rows_read = len(raw) + len(bad_lines)
    report.flags["has_users_table"] = True
    quarantine = Quarantine(report)
    quarantine.add_lines(where, bad_lines)
    _check_columns(raw, where, {"user_id": "the user's id (text)"}, USER_OPTIONAL, report)
    user_id = _text(raw, "user_id")
    keep = (user_id != "") & ~user_id.duplicated()
    quarantine.add(where, raw.index[user_id == ""], "user_id", "missing value", raw)
    quarantine.add(where, raw.index[(user_id != "") & user_id.duplicated()], "user_id",
                   "duplicate user_id (the first row is kept)", raw)
    age = pd.to_numeric(raw["age"], errors="coerce") if "age" in raw.columns else pd.Series(np.nan, index=raw.index)
    if "age" in raw.columns:
        report.counts["users_age_unreadable"] = int((age.isna() & (_text(raw, "age") != "") & keep).sum())
    if "signup_date" in raw.columns:
        stamp = pd.to_datetime(_text(raw, "signup_date").replace("", None), errors="coerce", utc=True,
                               format="ISO8601")
        signup = ((stamp.dt.floor("D").dt.tz_localize(None) - pd.Timestamp(start_date)).dt.days
                  .clip(lower=0).fillna(-1).astype("int64"))
    else:
        signup = pd.Series(-1, index=raw.index, dtype="int64")
    attributes = pd.DataFrame({
        "source_id": user_id[keep].to_numpy(object), "age": age[keep].to_numpy(np.float64),
        "gender": gender_code(raw["gender"][keep]) if "gender" in raw.columns else NO_GENDER,
        "signup_day": signup[keep].to_numpy(np.int64),
    })
    report.rows_out = len(attributes)
    return attributes, quarantine.frame(), report


def users_table(user_map: IdMap, attributes, start_date: dt.date):
    """Every mapped user: ``user_id``, ``age`` (float64, NaN unknown), ``gender`` (M / F / U), ``signup_day`` and
    ``signup_timestamp`` (the start of that day, UTC)."""
    import pandas as pd

    out = pd.DataFrame({"source_id": pd.Series(user_map.source_ids, dtype=object),
                        "user_id": np.arange(len(user_map), dtype=np.int64),
                        "first_day": np.asarray(user_map.first_days, dtype=np.int64)})
    if attributes is not None:
        out = out.merge(attributes, on="source_id", how="left")
    else:
        out = out.assign(age=np.nan, gender=NO_GENDER, signup_day=-1)
    out["gender"] = out["gender"].fillna(NO_GENDER)
    signup = out["signup_day"].fillna(-1).astype("int64")
    out["signup_day"] = np.where(signup >= 0, signup, out["first_day"]).astype("int64")
    out["age"] = out["age"].astype("float64")
    out["signup_timestamp"] = np.asarray([day_start(d, start_epoch(start_date)) for d in out["signup_day"]],
                                         dtype=np.int64)
    return out[["user_id", "age", "gender", "signup_day", "signup_timestamp"]]
