"""Transform jobs. Both carry the ``recsys/merlin`` run tag, so the instance runs one merlin-env job at a time."""

import dagster as dg

from recsys_assets.defs.partitions import daily_partitions
from recsys_assets.defs.transforms import assets as transforms

MERLIN_RUN_TAGS = {"recsys/merlin": "true"}

workflows_job = dg.define_asset_job(
    "workflows_job",
    selection=dg.AssetSelection.assets(transforms.nvt_workflows, transforms.serving_transforms),
    description="Fit the NVTabular workflows on the masked train days and compile the serving transforms.",
    tags=MERLIN_RUN_TAGS,
)
daily_transforms_job = dg.define_asset_job(
    "daily_transforms_job",
    selection=dg.AssetSelection.assets(transforms.masked_interactions, transforms.transformed_interactions),
    partitions_def=daily_partitions,
    description="One day: join + mask (train days) and the full NVTabular workflow (needs nvt_workflows).",
    tags=MERLIN_RUN_TAGS,
)
masking_job = dg.define_asset_job(
    "masking_job",
    selection=dg.AssetSelection.assets(transforms.masked_interactions),
    partitions_def=daily_partitions,
    description="One day of masked_interactions (pipeline env only): backfill the train days before workflows_job.",
)
