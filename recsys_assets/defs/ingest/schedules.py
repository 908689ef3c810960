"""``daily_schedule``: the newest complete day's ``daily_job`` run, at 02:00 UTC.

The new-day sensor requests the same job, so a day's refresh and fine-tune are one run whoever asks. **One run
per partition**: both use the partition key as run key and, before requesting, look for a run of the partition
(``defs.ingest.runs.day_run``), because a run key alone only dedupes within one schedule or sensor. Whichever
comes first runs the day; the other skips and says which run has it. A failed or cancelled run does not count
(the other trigger may give the day its second chance). Days before ``FineTuneConfig.first_day`` are training
days: the run refreshes them and ``finetuned_models`` says "not applicable".
"""

import dagster as dg

from recsys_assets.defs.ingest.jobs import daily_job
from recsys_assets.defs.ingest.runs import day_run
from recsys_assets.defs.partitions import daily_partitions


@dg.schedule(job=daily_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="The newest day's run (ingest -> transform -> refresh -> fine-tune), once per partition")
def daily_schedule(context: dg.ScheduleEvaluationContext):
    keys = daily_partitions.get_partition_keys(current_time=context.scheduled_execution_time)
    if not keys:
        return dg.SkipReason("no complete daily partition yet")
    key = keys[-1]
    existing = day_run(context.instance, key)
    if existing is not None:
        return dg.SkipReason(f"partition {key} already has run {existing.run_id} of {existing.job_name} "
                             f"({existing.status.value}): one run per partition")
    return dg.RunRequest(run_key=key, partition_key=key, tags={"recsys/requested_by": "daily_schedule"})
