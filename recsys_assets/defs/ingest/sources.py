"""Generator or own data: the one place the ingest assets learn where their rows come from.

:func:`ingest_source` turns the ``world`` resource into a :class:`GeneratedData` (the synthetic world) or an
:class:`OwnData` (a folder in the contract of ``lib.sources``, ``RECSYS_SOURCE``). Both write the same files
(``lib.paths``) and answer the same calls, so the assets do not branch on the source; what differs is said by
the data itself (``generated``: whether user ages and genders are always known and every row names a registered
user and device, which the checks then demand) and by the metadata each call returns (own data: the
``SourceReport`` of ``lib.sources``, counts per reason and the quarantine files).

Own data keeps append-only id maps (``raw/id_maps/``) that ``items``, ``users`` and ``raw_interactions`` grow;
those assets share the :data:`ID_MAP_POOL` concurrency pool (``dagster.yaml``: one step per pool), so two of them
never grow a map from the same old copy. Should it happen anyway (another instance, a pool limit raised),
``lib.sources.id_maps.save_id_map`` refuses the second writer and the step fails saying to re-run it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import dagster as dg
import numpy as np

from recsys_assets.defs.resources import WorldResource
from recsys_assets.lib import dataset, paths
from recsys_assets.lib.sources import ingest as own
from recsys_assets.lib.sources.files import SourceError, SourceFolder
from recsys_assets.lib.sources.id_maps import IdMapError

ID_MAP_POOL = "id_maps"


@dataclasses.dataclass
class DayRows:
    """One day as the source gives it, before it is published."""

    interactions: object            # DataFrame, lib.validation.INTERACTION_SCHEMA
    n_users: int                    # user ids of the day lie in 0..n_users-1 (-1 too where ``unknown_allowed``)
    available_from_day: np.ndarray  # per item id
    item_categories: object         # Series: category_l1 by item id (for the day's category mix)
    metadata: dict
    publish: object                 # () -> None: writes the day's files
    users_rows: int | None = None   # own data: the users table was rewritten with the day's new users (its rows)


class GeneratedData:
    """The synthetic world (``lib.generator``): items, images, users and days are generated on demand."""

    generated = True

    def __init__(self, world: WorldResource):
        self.world = world.world()

    def items(self, store):
        return dataset.write_items(store, self.world), {}

    def descriptions(self, store):
        return dataset.write_descriptions(store, self.world), {}

    def images(self, store) -> dict:
        n = dataset.write_images(store, self.world)
        return {"images": n, "has_images": True}

    def users(self, store, through_day: int):
        return dataset.write_users(store, self.world, through_day), {}

    def day(self, store, day: int) -> DayRows:
        df, truth = self.world.generate_day(day)
        n_users = sum(self.world.cohort_size(d) for d in range(day + 1))
        return DayRows(df, n_users, self.world.item_available_from, self.world.items["category_l1"],
                       {"new_users": int(self.world.cohort_size(day)) if day > 0 else 0,
                        "mean_true_p_click": float(truth["p_click"].mean())},
                       lambda: dataset.publish_day(store, day, df, truth))


class OwnData:
    """A shop's folder (``lib.sources``): the catalogue, users and events, normalised to the generator's layout."""

    generated = False

    def __init__(self, world: WorldResource):
        self.folder = SourceFolder(world.source)
        self.start_date = dt.date.fromisoformat(world.start_date)
        self.seed = world.seed

    def items(self, store):
        catalogue = self._call(own.ingest_catalogue, self.folder, store, self.start_date, images=False)
        return catalogue.items, {**catalogue.report.metadata(), **_paths(store, paths.ITEMS_QUARANTINE,
                                                                          paths.ITEM_ID_MAP)}

    def descriptions(self, store):
        # Written by ``items`` from the same read of the catalogue (one file, one pass of validation).
        return store.read_parquet(paths.ITEM_DESCRIPTIONS), {"written_by": "items (one read of the catalogue)"}

    def images(self, store) -> dict:
        catalogue = self._call(own.ingest_images, self.folder, store, self.start_date)
        report = catalogue.report
        meta = {"images": int(report.counts.get("images_written", 0)), "has_images": bool(catalogue.images),
                "images_unreadable": int(report.counts.get("images_unreadable", 0))}
        if not catalogue.images:
            meta["notes"] = ("the source has no images: no item has an image embedding (item_clip_embeddings "
                             "gives zero vectors), so the models use the text embeddings only")
        elif report.notes:
            meta["notes"] = "\n".join(report.notes)
        return meta

    def users(self, store, through_day: int):
        # Own users are every id the days mapped so far (plus the users file); ``through_day`` does not apply.
        report = self._call(own.ingest_users, self.folder, store, self.start_date)
        return store.read_parquet(paths.USERS), {**report.metadata(),
                                                  **_paths(store, paths.USERS_QUARANTINE, paths.USER_ID_MAP)}

    def day(self, store, day: int) -> DayRows:
        # ``ingest_day`` publishes as it goes; a day that then fails a blocking check is unpublished by the asset.
        # The users table is rewritten from the grown map at once: own users come from the events, and the days'
        # masking reads their rows (the generator's users asset knows its cohorts in advance).
        result = self._call(own.ingest_day, self.folder, store, day, self.start_date, self.seed)
        users = self._call(own.ingest_users, self.folder, store, self.start_date)
        items = (store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day", "category_l1"])
                 .sort_values("item_id").set_index("item_id"))
        meta = {**result.report.metadata(), "new_users": int(sum(d == day for d in result.user_map.first_days)),
                **_paths(store, paths.quarantine(day), paths.unknown_item_events(day), paths.UNDATED_QUARANTINE,
                         paths.USER_ID_MAP)}
        return DayRows(result.interactions, len(result.user_map), items["available_from_day"].to_numpy(),
                       items["category_l1"], meta, lambda: None, users_rows=users.rows_out)

    @staticmethod
    def _call(function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (SourceError, IdMapError) as exc:  # the message names the file and what to do
            raise dg.Failure(description=str(exc)) from exc


def _paths(store, *rels: str) -> dict:
    return {rel.rsplit("/", 2)[-2] + "/" + rel.rsplit("/", 1)[-1]: dg.MetadataValue.path(store.uri(rel))
            for rel in rels}


def ingest_source(world: WorldResource) -> GeneratedData | OwnData:
    """The data behind the ingest assets: the generator, or the folder ``world.source`` names."""
    return GeneratedData(world) if world.uses_generator else OwnData(world)
