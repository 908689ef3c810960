"""``daily_job``: the whole run of one new day, whoever requests it (the new-day sensor, the daily schedule).

The day's raw interactions and point-in-time top_category, the daily refresh of this stage (group ``daily``),
and the day's masking, transform and fine-tune (group ``finetune``, when that stage is present): one run, so the
refresh and the fine-tune of a day can never be split between two triggers. Assets of the day that do not depend
on each other run side by side; a failed fine-tune does not stop the refresh, nor the other way round.

Both triggers use the partition key as run key and skip a partition that already has a day run
(``defs.daily.runs.daily_run_exists``). Tags: ``recsys/daily`` (``dagster.yaml`` lets one such run go at a time,
so two days never refresh the online store, the popularity tables or the grown index at once), ``recsys/merlin``
(the transform and fine-tune steps start the merlin env) and ``dagster/max_runtime`` (run monitoring cancels a
run that hangs past it).
"""

import dagster as dg

from recsys_assets.defs.daily.assets import DAILY_TAGS, GROUP
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest.assets import raw_interactions
from recsys_assets.defs.partitions import daily_partitions
from recsys_assets.defs.transforms.assets import MERLIN_TAGS, masked_interactions, transformed_interactions

DAILY_JOB = "daily_job"
FINETUNE_GROUP = "finetune"  # defs/finetune: finetuned_models (an absent group selects nothing)
MAX_RUNTIME_S = 5400  # refresh ~1 min and fine-tune minutes at demo scale; the instance's cap is 2 h
DAILY_SELECTION = (dg.AssetSelection.assets(raw_interactions, user_top_category, masked_interactions,
                                            transformed_interactions)
                   | dg.AssetSelection.groups(GROUP, FINETUNE_GROUP))
REFRESH_SELECTION = dg.AssetSelection.assets(raw_interactions, user_top_category) | dg.AssetSelection.groups(GROUP)

daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=DAILY_SELECTION,
    partitions_def=daily_partitions,
    tags={**DAILY_TAGS, **MERLIN_TAGS, "dagster/max_runtime": str(MAX_RUNTIME_S)},
    description="One new day: raw interactions, top_category, the list as served (replayed), the daily refresh "
                "(online features, popularity window, new items' content and retrieval index) and the fine-tune.",
)
