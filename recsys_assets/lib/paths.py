"""The artifact layout: one place that names every path under the artifact root (local folder or S3 prefix)."""

from __future__ import annotations

from recsys_assets.lib.settings import day_name

ITEMS = "raw/items.parquet"
ITEM_DESCRIPTIONS = "raw/item_descriptions.parquet"
ITEM_IMAGES = "raw/item_images"
USERS = "raw/users.parquet"
USERS_TRUTH = "truth/users.parquet"
MERLIN_ENV_REPORT = "platform/merlin_env.json"


def raw_interactions(day: int) -> str:
    return f"raw/interactions/{day_name(day)}.parquet"


def interactions_truth(day: int) -> str:
    """The generator's true click probabilities, row-aligned with ``raw_interactions(day)``: evaluation only."""
    return f"truth/interactions/{day_name(day)}.parquet"


def item_image(item_id: int) -> str:
    return f"{ITEM_IMAGES}/{int(item_id)}.jpg"
