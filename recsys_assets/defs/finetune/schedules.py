"""The daily schedule of the newest day and the weekly full retrain.

``daily_finetune_schedule`` (02:00 UTC) requests the day's run, ``daily_job`` (``defs/daily``: ingest ->
top_category -> masking -> transform -> the daily refresh -> ``finetuned_models``), for the newest complete daily
partition. It does not have a job of its own: the new-day sensor requests the same job, so a day's refresh and
fine-tune are one run whoever asks. **One run per partition**: both use the partition key as run key and, before
requesting, look for a run of the partition (``defs.daily.runs.day_run``), because a run key alone only dedupes
within one schedule or sensor. Whichever comes first runs the day; the other skips and says which run has it. A
failed or cancelled run does not count (the other trigger may give the day its second chance). Days before
``FineTuneConfig.first_day`` are training days: the run refreshes them and ``finetuned_models`` says "not
applicable".

``weekly_retrain_schedule`` (Sunday 03:00 UTC) runs ``full_retrain_job`` with its default config: the NVTabular
workflows refit on the sliding window (the 9 days before the 3 newest train, the 3 newest validate), the window
transformed, both towers, DLRM and FAISS index trained on it, and one candidate release of it all (new
vocabularies included), promoted by the same sensor and gate as a fine-tune.
"""

import dagster as dg

from recsys_assets.defs.daily.jobs import daily_job
from recsys_assets.defs.daily.runs import day_run
from recsys_assets.defs.finetune.jobs import full_retrain_job
from recsys_assets.defs.partitions import daily_partitions


@dg.schedule(job=daily_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="The newest day's run (ingest -> transform -> refresh -> fine-tune), once per partition")
def daily_finetune_schedule(context: dg.ScheduleEvaluationContext):
    keys = daily_partitions.get_partition_keys(current_time=context.scheduled_execution_time)
    if not keys:
        return dg.SkipReason("no complete daily partition yet")
    key = keys[-1]
    existing = day_run(context.instance, key)
    if existing is not None:
        return dg.SkipReason(f"partition {key} already has run {existing.run_id} of {existing.job_name} "
                             f"({existing.status.value}): one run per partition")
    return dg.RunRequest(run_key=key, partition_key=key, tags={"recsys/requested_by": "daily_finetune_schedule"})


@dg.schedule(job=full_retrain_job, cron_schedule="0 3 * * 0", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly full retrain: workflows refit on a sliding window, new towers, ranker and FAISS index "
                         "as one gated candidate release")
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    date = context.scheduled_execution_time.date().isoformat()
    return dg.RunRequest(run_key=f"weekly-retrain-{date}", tags={"recsys/requested_by": "weekly_retrain_schedule"})
