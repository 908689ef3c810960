"""``weekly_retrain_schedule`` (Sunday 03:00 UTC): ``full_retrain_job`` with its default config.

The NVTabular workflows refit on the sliding window (the 9 days before the 3 newest train, the 3 newest validate),
the window transformed, both towers, DLRM and FAISS index trained on it, the evaluation gates, and one candidate
release of it all (new vocabularies included), promoted by the same sensor and gate as a fine-tune.
"""

import dagster as dg

from recsys_assets.defs.training.jobs import full_retrain_job


@dg.schedule(job=full_retrain_job, cron_schedule="0 3 * * 0", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly full retrain: workflows refit on a sliding window, new towers, ranker and "
                         "FAISS index as one gated candidate release")
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    date = context.scheduled_execution_time.date().isoformat()
    return dg.RunRequest(run_key=f"weekly-retrain-{date}", tags={"recsys/requested_by": "weekly_retrain_schedule"})
