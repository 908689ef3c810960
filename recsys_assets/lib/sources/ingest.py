"""A source folder -> the artifact store, in the generator's layout (what the ingest assets will call).

* :func:`ingest_catalogue`: ``raw/items.parquet``, ``raw/item_descriptions.parquet``, ``raw/item_images/`` (when
  the source has images), the item id map and ``raw/quarantine/items.parquet``.
* :func:`ingest_day`: ``raw/interactions/day_XX.parquet``, ``raw/quarantine/day_XX.parquet``,
  ``raw/unknown_items/day_XX.parquet``, ``raw/quarantine/undated.parquet`` and the grown user id map. Every file
  is replaced whole (an empty quarantine too), so a re-run of a day leaves no stale rows. There is no truth table:
  own data has no true click probabilities, so only the logged measures apply to it.
* :func:`ingest_users`: ``raw/users.parquet`` for every mapped user (run after the days that add users) and
  ``raw/quarantine/users.parquet``.

The id maps are read, grown and written back by these calls; two ingests of the same source must not run at once
(:func:`~recsys_assets.lib.sources.id_maps.save_id_map` refuses the second writer rather than renumber).
"""

from __future__ import annotations

import datetime as dt

from recsys_assets.lib import paths
from recsys_assets.lib.sources.catalogue import (Catalogue, read_items, read_user_attributes, users_table,
                                                 write_item_images)
from recsys_assets.lib.sources.events import NEGATIVES_PER_CLICK, Day, Events, day_interactions, read_events
from recsys_assets.lib.sources.files import SourceError, SourceFolder
from recsys_assets.lib.sources.id_maps import load_id_map, save_id_map
from recsys_assets.lib.sources.report import QUARANTINE_COLUMNS, SourceReport


def configured_source(settings) -> SourceFolder | None:
    """The source folder ``RECSYS_SOURCE`` names (``lib.settings.Settings.source``); None for the generator."""
    return None if settings.uses_generator else SourceFolder(settings.source)


def ingest_catalogue(source: SourceFolder, store, start_date: dt.date, day: int = 0, images: bool = True) -> Catalogue:
    """Normalise and publish the catalogue; new items first seen on ``day``. ``images=False`` leaves the images
    to :func:`ingest_images` (the ``item_images`` asset)."""
    previous = None
    if store.exists(paths.ITEMS) and store.exists(paths.ITEM_DESCRIPTIONS):
        previous = (store.read_parquet(paths.ITEMS), store.read_parquet(paths.ITEM_DESCRIPTIONS))
    catalogue = read_items(source, load_id_map(store, paths.ITEM_ID_MAP, "item"), start_date, day, previous)
    save_id_map(store, paths.ITEM_ID_MAP, catalogue.id_map)
    store.write_parquet(paths.ITEMS, catalogue.items)
    store.write_parquet(paths.ITEM_DESCRIPTIONS, catalogue.descriptions)
    store.write_parquet(paths.ITEMS_QUARANTINE, catalogue.quarantine[list(QUARANTINE_COLUMNS)])
    if images and catalogue.images:
        write_item_images(source, store, catalogue)
    return catalogue


def ingest_images(source: SourceFolder, store, start_date: dt.date, day: int = 0) -> Catalogue:
    """Publish the items' images (``raw/item_images/``) after :func:`ingest_catalogue`; the catalogue is read
    again with the stored item map, which it does not change (the same file gives the same ids). Without an
    ``image`` column nothing is written, and stale images of an earlier catalogue are removed, so no item keeps
    an image the source no longer gives (``has_images`` false in the report)."""
    if not store.exists(paths.ITEM_ID_MAP):
        raise SourceError(f"no item id map under {store.root}: ingest the catalogue (the items asset) before the "
                          "images")
    previous = (store.read_parquet(paths.ITEMS), store.read_parquet(paths.ITEM_DESCRIPTIONS))
    catalogue = read_items(source, load_id_map(store, paths.ITEM_ID_MAP, "item"), start_date, day, previous)
    if catalogue.images:
        write_item_images(source, store, catalogue)
    elif store.exists(paths.ITEM_IMAGES):
        store.delete(paths.ITEM_IMAGES)
    return catalogue


def ingest_day(source: SourceFolder, store, day: int, start_date: dt.date, seed: int,
               negatives_per_click: int = NEGATIVES_PER_CLICK, events: Events | None = None) -> Day:
    """Normalise and publish day ``day``'s interactions; needs the catalogue (:func:`ingest_catalogue`) first.

    Every event file is read (late events may sit in any of them); a backfill of several days in one process can
    pass the ``events`` of one :func:`~recsys_assets.lib.sources.events.read_events` to each day instead.
    """
    if not store.exists(paths.ITEM_ID_MAP) or not store.exists(paths.ITEMS):
        raise SourceError(f"day {day}: no item id map or items table under {store.root}: ingest the catalogue "
                          "(the items asset) before the days")
    item_map = load_id_map(store, paths.ITEM_ID_MAP, "item")
    items = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"])
    if events is None:
        events = read_events(source, start_date)
    result = day_interactions(events, day, load_id_map(store, paths.USER_ID_MAP, "user"), item_map,
                              items.sort_values("item_id")["available_from_day"].to_numpy(), seed,
                              negatives_per_click)
    save_id_map(store, paths.USER_ID_MAP, result.user_map)
    store.write_parquet(paths.raw_interactions(day), result.interactions)
    store.write_parquet(paths.quarantine(day), result.quarantine)
    store.write_parquet(paths.unknown_item_events(day), result.unknown_items)
    store.write_parquet(paths.UNDATED_QUARANTINE, events.quarantine[events.quarantine["day"] == -1]
                        .reset_index(drop=True))
    return result


def ingest_users(source: SourceFolder, store, start_date: dt.date) -> SourceReport:
    """Publish the users table: the users file's users (mapped in file order, first seen on day 0 unless their
    ``signup_date`` says otherwise) and every user the events added."""
    attributes, quarantine, report = read_user_attributes(source, start_date)
    user_map = load_id_map(store, paths.USER_ID_MAP, "user")
    if attributes is not None:
        user_map = user_map.extended(attributes["source_id"].tolist(), 0)
        save_id_map(store, paths.USER_ID_MAP, user_map)
    table = users_table(user_map, attributes, start_date)
    store.write_parquet(paths.USERS, table)
    store.write_parquet(paths.USERS_QUARANTINE, quarantine)
    report.rows_out = len(table)
    return report
