"""The job the live-events sensor launches: land one day of clicks (``live_interactions``)."""

import dagster as dg

from recsys_assets.defs.events.assets import live_interactions
from recsys_assets.defs.partitions import daily_partitions

live_interactions_job = dg.define_asset_job(
    "live_interactions_job", selection=[live_interactions], partitions_def=daily_partitions,
    description="Land the click stream's events of one day into live/interactions/day_XX.parquet",
)
