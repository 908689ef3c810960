"""Ingest jobs and the daily partition-aware schedule."""

import dagster as dg

from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.defs.partitions import daily_partitions

catalogue_job = dg.define_asset_job(
    "catalogue_job",
    selection=dg.AssetSelection.assets(ingest.items, ingest.item_descriptions, ingest.item_images, ingest.users),
    description="The unpartitioned ingest assets: catalogue, descriptions, images, users.",
)
daily_ingest_job = dg.define_asset_job(
    "daily_ingest_job",
    selection=dg.AssetSelection.assets(ingest.raw_interactions),
    partitions_def=daily_partitions,
    description="One day's raw interactions (a partition); backfill days 00-13 with it.",
)
daily_ingest_schedule = dg.build_schedule_from_partitioned_job(
    daily_ingest_job, hour_of_day=1, minute_of_hour=0, name="daily_ingest_schedule"
)
