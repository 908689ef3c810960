"""``make demo``: materialize the pipeline on the embedded defaults and print what it produced.

Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default ``artifacts/dagster_home``), so
``make dev`` afterwards shows them, with their metadata and checks, in the UI.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS, START_DATE
from recsys_assets.lib.settings import Settings, partition_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _instance(settings: Settings) -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(settings.artifacts).resolve() / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def _run(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False,
                                                          run_config=quiet, **kwargs)
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success or failed_checks:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        for check in failed_checks:
            print(f"check failed: {check.asset_key.to_user_string()}.{check.check_name}: "
                  f"{check.metadata.get('description')}", file=sys.stderr)
        raise SystemExit(f"demo: job {job} {kwargs.get('partition_key', '')} failed (see above)")
    return result


def main() -> int:
    settings = Settings.from_env()
    instance = _instance(settings)
    from recsys_assets.definitions import defs

    t0 = time.perf_counter()
    print(f"[demo] artifacts: {settings.artifacts}  scale: {settings.scale}  instance: {os.environ['DAGSTER_HOME']}")
    _run(defs, "platform_job", instance)
    _run(defs, "catalogue_job", instance)
    rows = []
    for day in BACKFILL_DAYS:
        key = partition_key(day, START_DATE)
        result = _run(defs, "daily_ingest_job", instance, partition_key=key)
        meta = result.asset_materializations_for_node("raw_interactions")[0].metadata
        rows.append((day, key, meta["rows"].value, meta["ctr"].value, meta["users"].value, meta["new_users"].value))
        print(f"[demo] day {day:02d} ({key}): {meta['rows'].value:>7} impressions, CTR {meta['ctr'].value:.3f}")

    print("\n day  partition    impressions    CTR   users  new users")
    for day, key, n, ctr, users, new in rows:
        print(f"  {day:02d}  {key}  {n:>11}  {ctr:.3f}  {users:>6}  {new:>9}")
    total = sum(r[2] for r in rows)
    print(f"\n[demo] {total} impressions over {len(rows)} days in {time.perf_counter() - t0:.1f} s")
    print("[demo] browse the runs, metadata and checks with: make dev  (http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
