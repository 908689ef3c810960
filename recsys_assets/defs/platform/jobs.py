"""A job that checks the merlin env through the Pipes runner."""

import dagster as dg

from recsys_assets.defs.platform.assets import merlin_environment

platform_job = dg.define_asset_job(
    "platform_job",
    selection=dg.AssetSelection.assets(merlin_environment),
    description="Checks the merlin env through the Pipes runner.",
    tags={"recsys/merlin": "true"},
)
