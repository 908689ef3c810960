"""``make demo``: build everything on the embedded defaults, layer by layer, and show what it produced.

Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default ``artifacts/dagster_home``), so
``make dev`` afterwards shows them, with their metadata and checks, in the UI. Each step is one job run
(per partition for daily jobs); a failed run or a failed check stops the demo with what went wrong.
"""

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS, START_DATE, TRAIN_DAYS
from recsys_assets.lib.settings import Settings, partition_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Step:
    job: str
    days: range | None = None  # None: an unpartitioned job
    what: str = ""


PLAN = (
    Step("platform_job", what="merlin env reachable through Pipes"),
    Step("catalogue_job", what="catalogue, descriptions, product images, users"),
    Step("daily_data_job", BACKFILL_DAYS, "raw interactions, top_category, masking"),
    Step("workflows_job", what="NVTabular workflows fit on the train days, compiled serving transforms"),
    Step("daily_transformed_job", BACKFILL_DAYS, "transformed interactions"),
    Step("embeddings_job", what="CLIP + Sentence-BERT item embeddings, PCA 64"),
    Step("feature_store_job", what="Feast offline/online features in Valkey, popularity tables"),
)


def _instance(settings: Settings) -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(settings.artifacts).resolve() / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def run_job(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
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


def _summary(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        meta = mat.metadata
        figures = [f"{k}={meta[k].value:.3f}" if isinstance(meta[k].value, float) else f"{k}={meta[k].value}"
                   for k in ("rows", "ctr", "images", "items", "seconds") if k in meta]
        parts.append(f"{mat.asset_key.to_user_string()}" + (f" ({', '.join(figures)})" if figures else ""))
    return "; ".join(parts)


def run_plan(defs: dg.Definitions, instance: dg.DagsterInstance, plan=PLAN) -> dict[str, float]:
    timings: dict[str, float] = {}
    for step in plan:
        t0 = time.perf_counter()
        if step.days is None:
            result = run_job(defs, step.job, instance)
            print(f"[demo] {step.job:<24} {time.perf_counter() - t0:6.1f} s  {_summary(result)}")
        else:
            for day in step.days:
                result = run_job(defs, step.job, instance, partition_key=partition_key(day, START_DATE))
            print(f"[demo] {step.job:<24} {time.perf_counter() - t0:6.1f} s  days {step.days.start:02d}-"
                  f"{step.days.stop - 1:02d}; last: {_summary(result)}")
        timings[step.job] = time.perf_counter() - t0
    return timings


def main() -> int:
    settings = Settings.from_env()
    instance = _instance(settings)
    from recsys_assets.definitions import defs

    t0 = time.perf_counter()
    print(f"[demo] artifacts: {settings.artifacts}  scale: {settings.scale}  instance: {os.environ['DAGSTER_HOME']}")
    print(f"[demo] days {BACKFILL_DAYS.start:02d}-{BACKFILL_DAYS.stop - 1:02d} from {START_DATE}; "
          f"train days {TRAIN_DAYS.start:02d}-{TRAIN_DAYS.stop - 1:02d}")
    run_plan(defs, instance)
    print(f"\n[demo] pipeline built in {time.perf_counter() - t0:.1f} s")
    print("[demo] browse the runs, metadata and checks with: make dev  (http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
