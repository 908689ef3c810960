"""Whether a day already has its day run, whoever launched it (the new-day sensor or the daily schedule).

Dagster's own run-key deduplication is per sensor or schedule: the same run key from a schedule and from a
sensor would start two runs. Both therefore use the partition key as run key AND ask :func:`daily_run_exists`
before requesting a day, so a partition runs once whichever of the two sees it first. A failed or cancelled run
does not count (the other trigger may give the day its second chance; the instance's run retries the first).
"""

import dagster as dg

from recsys_assets.defs.ingest.jobs import DAILY_JOB

PARTITION_TAG = "dagster/partition"
# Jobs that run a whole new day: daily_job is the only one (the new-day sensor and the daily schedule request it).
DAY_JOBS = (DAILY_JOB,)
NOT_COUNTED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def day_run(instance: dg.DagsterInstance, partition_key: str, jobs=DAY_JOBS):
    """The newest run of the partition in any of ``jobs`` that has not failed or been cancelled, or None."""
    for job in jobs:
        for record in instance.get_run_records(
                filters=dg.RunsFilter(job_name=job, tags={PARTITION_TAG: partition_key}), limit=5):
            if record.dagster_run.status not in NOT_COUNTED:
                return record.dagster_run
    return None


def daily_run_exists(instance: dg.DagsterInstance, partition_key: str, jobs=DAY_JOBS) -> bool:
    return day_run(instance, partition_key, jobs) is not None
