"""Daily operations at demo scale, on a copy of a trained demo artifact root (never the root itself).

1. One new day as it runs in production: ``daily_job`` for ``--day`` (raw day, top_category, masking, transform,
   the list as served replayed through the running release, online features, popularity window, new items'
   content and index, the fine-tune), then the promotion of the fine-tuned candidate (``promote_release_job``;
   forced, and reported as such, when its gate failed). Wall time of the sequence and of every step (read from
   the runs' events). The jobs are the project's own definitions, executed in process on an ephemeral instance
   (steps run one after the other, so the total is the sum of the steps; the daemon's multiprocess executor can
   run independent steps side by side).
2. The list as served (``served_list_evaluation``, the asset of ``defs/daily``) on day ``--eval-day``, whose
   refresh has not run (no leak of its clicks): with the release that served before the fine-tune, after the
   fine-tuned release is promoted, and after the weekly retrain (``full_retrain_job`` with its default window)
   is promoted. Same requests each time (the fingerprint is printed).

    cp -a /tmp/demo-clone/artifacts /tmp/issue11-root
    .venv/bin/python benchmarks/daily_ops.py --root /tmp/issue11-root [--day 14] [--eval-day 15] [--requests 200]
        [--skip-retrain] [--json out.json]

Services: an embedded Valkey on a free port over the root's own AOF (its online store), and the root's
tritonserver on free ports, started by ``serving_job`` on a release of the root's trained models built by this
code (``triton_model_repository`` + ``triton_deployment``); both stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from daily import step_seconds  # noqa: E402 (the step durations of a run, read from its events)
START = dt.date(2026, 1, 1)


def key(day: int) -> str:
    return (START + dt.timedelta(days=day)).isoformat()


class Runner:
    def __init__(self, defs, instance) -> None:
        self.defs, self.instance, self.log = defs, instance, []

    def run(self, label: str, job: str, partition_key=None, run_config=None, assets=None) -> dict:
        selection = None
        if assets:
            import dagster as dg

            selection = [dg.AssetKey(a) for a in assets]
        t0 = time.perf_counter()
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=partition_key, run_config=run_config, raise_on_error=False,
            asset_selection=selection)
        wall = round(time.perf_counter() - t0, 1)
        steps = {k: round(v, 1) for k, v in step_seconds(self.instance, result.run_id).items()}
        failed = [f"{e.asset_key.to_user_string()}.{e.check_name}: {str(e.description)[:300]}"
                  for e in result.get_asset_check_evaluations() if not e.passed]
        errors = [e.message[:500] for e in result.all_events if e.is_failure]
        entry = {"label": label, "job": job, "partition": partition_key, "success": result.success, "wall_s": wall,
                 "steps_s": dict(sorted(steps.items(), key=lambda kv: -kv[1])), "failed_checks": failed,
                 "errors": errors[:3]}
        self.log.append(entry)
        print(f"\n[{label}] {job} {partition_key or ''}: {'ok' if result.success else 'FAILED'} in {wall} s",
              flush=True)
        for step, seconds in entry["steps_s"].items():
            print(f"  {step:<30} {seconds:8.1f} s", flush=True)
        for f in failed:
            print(f"  check failed: {f}", flush=True)
        for e in errors[:3]:
            print(f"  error: {e}", flush=True)
        entry["result"] = result
        return entry


def meta(result, asset: str) -> dict:
    mats = [m for m in result.asset_materializations_for_node(asset) if m.asset_key.path[-1] == asset]
    return {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()} if mats else {}


def served_table(store, day: int):
    from recsys_assets.lib import paths

    table = store.read_parquet(paths.served_evaluation(day, "parquet"))
    record = json.loads(store.read_bytes(paths.served_evaluation(day, "json")))
    return table, record


def promote(runner: Runner, store, release: int, label: str) -> dict:
    from recsys_assets.release import records

    record = records.record(store, release)
    force = record is not None and record.gate_passed is False
    entry = runner.run(f"{label}{' (forced: gate failed)' if force else ''}", "promote_release_job",
                       run_config={"ops": {"served_release": {"config": {"release": release, "force": force}}}})
    entry["forced"] = force
    entry["gate_reasons"] = record.reasons if record is not None else []
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--day", type=int, default=14)
    parser.add_argument("--eval-day", type=int, default=15)
    parser.add_argument("--requests", type=int, default=200, help="requests per split of the served-list replay")
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if str(root).startswith("/tmp/demo-clone"):
        raise SystemExit("refusing to write into /tmp/demo-clone: copy it first (cp -a ... /tmp/issue11-root)")

    import dagster as dg

    from recsys_assets.release.triton_server import free_port
    from recsys_assets.lib.valkey_server import EmbeddedValkey

    valkey = EmbeddedValkey(root / "valkey", port=free_port()).start()
    os.environ.update({
        "RECSYS_ARTIFACTS": str(root), "RECSYS_SCALE": "demo", "RECSYS_VALKEY_URL": f"redis://127.0.0.1:{valkey.port}",
        "RECSYS_TRITON_HTTP_PORT": str(free_port()), "RECSYS_TRITON_GRPC_PORT": str(free_port()),
        "RECSYS_TRITON_METRICS_PORT": str(free_port()), "HF_HUB_OFFLINE": "1"})
    from recsys_assets.definitions import build_definitions
    from recsys_assets.release import records
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.lib.settings import Settings
    from recsys_assets.release import deploy

    store = ArtifactStore(root)
    defs = build_definitions(Settings.from_env())
    report: dict = {"root": str(root), "day": args.day, "eval_day": args.eval_day, "runs": [], "served": {}}
    served_config = {"ops": {"served_list_evaluation": {"config": {"requests_per_split": args.requests}}}}

    def evaluate(label: str, runner: Runner) -> None:
        entry = runner.run(f"served list, {label}", "daily_job", partition_key=key(args.eval_day),
                           run_config=served_config, assets=["served_list_evaluation"])
        table, record = served_table(store, args.eval_day)
        state = records.served_state(store)
        report["served"][label] = {"release": state.release if state else None, "fingerprint": record["fingerprint"],
                                   "p50_ms": meta(entry["result"], "served_list_evaluation").get("p50_ms"),
                                   "table": table.drop(columns=["mean_length"], errors="ignore").to_dict("records")}
        cols = ["method", "split", "requests", "recall@10", "ndcg@10", "coverage", "diversity"]
        print(f"  release {state.release if state else '-'}, fingerprint {record['fingerprint']}", flush=True)
        print(table[[c for c in cols if c in table.columns]].to_string(index=False,
                                                                         float_format=lambda v: f"{v:.4f}"))

    try:
        with dg.instance_for_test() as instance:
            runner = Runner(defs, instance)
            # Not part of the day: the server the day finds running. The trained models of the root, released
            # for this code's serving stages (a root built by older code has older model configs), and deployed
            # through the release path (triton_deployment starts the server on it).
            # The root's online store as the backfill leaves it (a copied root's Valkey files need not hold it all).
            runner.run("offline + online features, popularity (setup)", "full_build_job",
                       assets=["offline_features", "online_features", "popularity_tables"])
            # the root's models were judged when they were built: the setup deploys them without re-running the gates
            runner.run("triton_model_repository + triton_deployment (setup)", "serving_job",
                       assets=["triton_model_repository", "triton_deployment"])
            state = records.served_state(store)
            serving = state.release
            runner.run(f"raw day {args.eval_day:02d} for the replay (setup)", "daily_job",
                       partition_key=key(args.eval_day), assets=["raw_interactions"])
            evaluate(f"release {serving} (before the fine-tune)", runner)

            # 1. the day, as one timed sequence: daily_job (refresh + fine-tune) then the promotion
            t0 = time.perf_counter()
            day_run = runner.run(f"daily_job day {args.day:02d}", "daily_job", partition_key=key(args.day),
                                 run_config=served_config)
            ft = meta(day_run["result"], "finetuned_models")
            candidate = ft.get("release")
            promotion = promote(runner, store, candidate, f"promote fine-tuned release {candidate}") \
                if candidate else None
            report["day_sequence"] = {
                "wall_s": round(time.perf_counter() - t0, 1), "daily_job_s": day_run["wall_s"],
                "promotion_s": promotion["wall_s"] if promotion else None,
                "promotion_forced": promotion["forced"] if promotion else None,
                "gate": {k: ft.get(k) for k in ft if k.startswith(("recall_at", "auc/"))},
                "finetune_phases": {k: v for k, v in ft.items() if k.startswith("phase_seconds/")},
                "finetune_release": candidate, "status": records.record(store, candidate).status if candidate else None}
            print(f"\n[day {args.day:02d} + promotion] {report['day_sequence']}", flush=True)
            evaluate(f"release {candidate} (after the fine-tune of day {args.day:02d})", runner)

            # 2. the weekly retrain (default window), promoted as a whole
            if not args.skip_retrain:
                retrain = runner.run("weekly retrain", "full_retrain_job")
                rr = meta(retrain["result"], "retrained_release")
                release = rr.get("release")
                report["retrain"] = {"wall_s": retrain["wall_s"], "release": release, "status": rr.get("status"),
                                     "trained_on": rr.get("trained_on"), "changed_models": rr.get("changed_models"),
                                     "gate": {k: v for k, v in rr.items() if k.startswith(("recall_at", "auc/"))}}
                if release:
                    promotion = promote(runner, store, release, f"promote retrained release {release}")
                    report["retrain"]["promotion_s"] = promotion["wall_s"]
                    report["retrain"]["promotion_forced"] = promotion["forced"]
                    evaluate(f"release {release} (after the weekly retrain)", runner)
            report["runs"] = [{k: v for k, v in e.items() if k != "result"} for e in runner.log]
    finally:
        deploy.stop_local(root)
        valkey.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1, default=str)[:20000])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
