"""Writing the generator's world to the artifact store in the layout of :mod:`recsys_assets.lib.paths`.

Shared by the ingest assets and the ``recsys-generate`` command, so both produce the same files.
"""

from __future__ import annotations

from typing import Callable, Iterable

from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.catalogue import render_item_image
from recsys_assets.lib.generator import World

ITEM_COLUMNS = ["item_id", "item_uuid", "name", "category_l1", "category_l2", "price", "item_gender",
                "available_from_day"]


def items_table(world: World):
    return world.items[ITEM_COLUMNS].copy()


def descriptions_table(world: World):
    return world.items[["item_id", "name", "description", "colour"]].copy()


def write_items(store: ArtifactStore, world: World):
    df = items_table(world)
    store.write_parquet(paths.ITEMS, df)
    return df


def write_descriptions(store: ArtifactStore, world: World):
    df = descriptions_table(world)
    store.write_parquet(paths.ITEM_DESCRIPTIONS, df)
    return df


def write_images(store: ArtifactStore, world: World, progress: Callable[[Iterable], Iterable] = iter) -> int:
    """Render one JPEG per item into ``raw/item_images/<item_id>.jpg`` (the folder is published as a whole)."""
    items = world.items
    with store.writing(paths.ITEM_IMAGES) as folder:
        folder.mkdir(parents=True)
        for row in progress(items.itertuples(index=False)):
            img = render_item_image(row.category_l1, row.category_l2, row.colour)
            img.save(folder / f"{row.item_id}.jpg", format="JPEG", quality=90)
    return len(items)


def write_users(store: ArtifactStore, world: World, through_day: int):
    users = world.users(through_day)
    store.write_parquet(paths.USERS, users)
    store.write_parquet(paths.USERS_TRUTH, world.users_truth(through_day))
    return users


def write_day(store: ArtifactStore, world: World, day: int):
    """Generate day ``day`` and replace its interactions and its truth table (idempotent)."""
    interactions, truth = world.generate_day(day)
    publish_day(store, day, interactions, truth)
    return interactions, truth


def publish_day(store: ArtifactStore, day: int, interactions, truth) -> None:
    """Replace day ``day``'s interactions and truth table with these frames (each file published atomically)."""
    store.write_parquet(paths.raw_interactions(day), interactions)
    store.write_parquet(paths.interactions_truth(day), truth)


def unpublish_day(store: ArtifactStore, day: int) -> list[str]:
    """Remove day ``day``'s interactions and truth table where they exist; returns the paths removed."""
    removed = [rel for rel in (paths.raw_interactions(day), paths.interactions_truth(day)) if store.exists(rel)]
    for rel in removed:
        store.delete(rel)
    return removed
