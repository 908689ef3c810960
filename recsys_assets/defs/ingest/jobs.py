"""``daily_job``: the whole run of one new day, whoever requests it (``new_day_sensor``, ``daily_schedule``, a
backfill of any day range).

The day's raw interactions and point-in-time top_category, its masking and transform, the list as served
(replayed before the refresh changes anything), the daily variants of each domain (online features and
popularity, new items' content embeddings, new items in the retrieval index) and the fine-tuned candidate release:
one run, so the refresh and the fine-tune of a day can never be split between two triggers. Assets of the day
that do not depend on each other run side by side; a failed fine-tune does not stop the refresh, nor the other
way round.

Both triggers use the partition key as run key and skip a partition that already has a day run
(``defs.ingest.runs.daily_run_exists``). Tags: ``recsys/daily`` (``dagster.yaml`` lets one such run go at a time,
so two days never refresh the online store, the popularity tables or the grown index at once), ``recsys/merlin``
(the transform and fine-tune steps start the merlin env) and ``dagster/max_runtime`` (run monitoring cancels a
run that hangs past it).
"""

import dagster as dg

from recsys_assets.defs.partitions import daily_partitions
from recsys_assets.defs.transforms.assets import MERLIN_TAGS

DAILY_JOB = "daily_job"
DAILY_TAGS = {"recsys/daily": "true"}
MAX_RUNTIME_S = 5400  # refresh ~1 min and fine-tune minutes at demo scale; the instance's cap is 2 h
# The daily variants of the domains, in the order the day needs them (served_list_evaluation first: the refresh
# writes the day's end-of-day state online, which would leak the day's clicks into the replay).
REFRESH_ASSETS = ("served_list_evaluation", "daily_online_features", "daily_popularity_tables",
                  "daily_item_content", "daily_retrieval_index")
REFRESH_SELECTION = dg.AssetSelection.assets("raw_interactions", "user_top_category", *REFRESH_ASSETS)
DAILY_SELECTION = REFRESH_SELECTION | dg.AssetSelection.assets("masked_interactions", "transformed_interactions",
                                                               "finetuned_models")

daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=DAILY_SELECTION,
    partitions_def=daily_partitions,
    tags={**DAILY_TAGS, **MERLIN_TAGS, "dagster/max_runtime": str(MAX_RUNTIME_S)},
    description="One new day: raw interactions, top_category, masking and transform, the list as served "
                "(replayed), the daily refresh (online features, popularity window, new items' content and "
                "retrieval index) and the fine-tuned candidate release.",
)
