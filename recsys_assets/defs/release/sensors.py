"""``release_promotion_sensor``: promotes a new candidate release whose gate passed.

Its cursor is the newest release number it has looked at. Each tick reads the release records newer than the
cursor: a candidate whose gate passed (and newer than the serving release) gets a ``promote_release_job`` run
(run key ``promote-release-<n>``, so it is requested once); when several arrived, the newest supersedes the
others. Candidates whose gate failed are named in the skip reason with why, so the UI shows it, and are never
promoted (a person may still run the promotion job with ``force: true``).
"""

import dagster as dg

from recsys_assets.defs.release.jobs import promote_release_job
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.release import records


def promotion_request(store, cursor: int) -> tuple[dg.RunRequest | None, int, str]:
    """``(run request or None, new cursor, reason)`` for the records newer than ``cursor``."""
    state = records.served_state(store)
    serving = state.release if state else 0
    new = [r for r in records.records(store).values() if r.release > cursor]
    if not new:
        return None, cursor, f"no release newer than {cursor} (release {serving or '-'} serves)"
    cursor = max(r.release for r in new)
    failed = [f"release {r.release}: {'; '.join(r.reasons) or r.status}" for r in new if r.status == "gate_failed"]
    passing = [r for r in new if r.status == "candidate" and r.gate_passed and r.release > serving]
    if not passing:
        why = "; ".join(failed) if failed else "no candidate whose gate passed"
        return None, cursor, f"not promoting ({why}); release {serving or '-'} keeps serving"
    target = passing[-1].release
    request = dg.RunRequest(run_key=f"promote-release-{target}",
                            run_config={"ops": {"served_release": {"config": {"release": target}}}},
                            tags={"recsys/release": str(target), "recsys/replaces": str(serving)})
    return request, cursor, ""


@dg.sensor(job=promote_release_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Promotes the newest candidate release whose gate passed")
def release_promotion_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStoreResource):
    cursor = int(context.cursor or 0)
    request, cursor, reason = promotion_request(artifacts.store(), cursor)
    if request is None:
        return dg.SensorResult(skip_reason=reason, cursor=str(cursor))
    return dg.SensorResult(run_requests=[request], cursor=str(cursor))
