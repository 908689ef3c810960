"""``make demo``: build everything on the embedded defaults, layer by layer, and show what it produced.

    python -m recsys_assets.demo

Runs ``full_build_job`` layer by layer (``defs.platform.jobs.BUILD_LAYERS``): each layer is one run of the job's
assets in that layer (one per partition for a layer of days). Runs are recorded in the Dagster instance at
``$DAGSTER_HOME`` (default ``artifacts/dagster_home``), so ``make dev`` afterwards shows them, with their metadata
and checks, in the UI. A failed run or a failed check stops the demo with what went wrong.
"""

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS, START_DATE, TRAIN_DAYS
from recsys_assets.defs.platform.jobs import BUILD_LAYERS, FULL_BUILD_JOB
from recsys_assets.lib.settings import Settings, partition_key

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _instance(settings: Settings) -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(settings.artifacts).resolve() / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def run_job(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, assets=None, ops: dict | None = None,
            **kwargs) -> dg.ExecuteInProcessResult:
    """One in-process run of ``job`` (of its ``assets`` only, when given; ``ops``: config of those assets, e.g. a
    shorter training for a test); a failed run or check ends the demo."""
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
             **({"ops": ops} if ops else {})}
    selection = [dg.AssetKey(a) for a in assets] if assets else None
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False,
                                                          run_config=quiet, asset_selection=selection, **kwargs)
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success or failed_checks:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        for check in failed_checks:
            print(f"check failed: {check.asset_key.to_user_string()}.{check.check_name}: "
                  f"{check.metadata.get('description')}", file=sys.stderr)
        raise SystemExit(f"demo: job {job} {kwargs.get('partition_key', '')} ({', '.join(assets or [])}) failed "
                         "(see above)")
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


def run_plan(defs: dg.Definitions, instance: dg.DagsterInstance, layers=BUILD_LAYERS,
             job: str = FULL_BUILD_JOB, ops: dict | None = None) -> dict[str, float]:
    """Every layer in order; ``ops`` (asset name -> op config) reaches the layers holding those assets."""
    timings: dict[str, float] = {}
    for layer in layers:
        t0 = time.perf_counter()
        if layer.days is None:
            result = run_job(defs, job, instance, layer.assets,
                             {k: v for k, v in (ops or {}).items() if k in layer.assets})
            print(f"[demo] {layer.name:<24} {time.perf_counter() - t0:6.1f} s  {_summary(result)}")
        else:
            for day in layer.days:
                result = run_job(defs, job, instance, layer.assets, partition_key=partition_key(day, START_DATE))
            print(f"[demo] {layer.name:<24} {time.perf_counter() - t0:6.1f} s  days {layer.days.start:02d}-"
                  f"{layer.days.stop - 1:02d}; last: {_summary(result)}")
        timings[layer.name] = time.perf_counter() - t0
    return timings


def _print_list(title: str, body: dict, mark: set[int] = frozenset()) -> None:
    print(f"\n  {title}  ({body['triton_ms']:.1f} ms in Triton)")
    for rank, item in enumerate(body["items"], 1):
        flag = "  <- new" if item["item_id"] in mark else ""
        print(f"   {rank:>2}. {item['score']:.3f}  {str(item['item_id']):>12}  {item.get('name', '?')[:40]:<40} "
              f"{item.get('category', '?')}/{item.get('style', '?')}{flag}")


def demo_users(settings: Settings) -> tuple:
    """The demo's known user (12) and a never-registered one, in the ids the API speaks: integers for the
    generator, the shop's own ids (through the user id map) for own data."""
    if settings.uses_generator:
        return 12, 10_000_000
    from recsys_assets.lib import paths
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.lib.sources.id_maps import load_id_map

    users = load_id_map(ArtifactStore(settings.artifacts), paths.USER_ID_MAP, "user")
    return users.to_source([min(12, len(users) - 1)])[0], "new-user-of-the-demo"


def show_recommendations(settings: Settings, timestamp: int) -> None:
    """Real recommendations from the running Triton through the API's own code path (in process)."""
    from fastapi.testclient import TestClient

    from recsys_assets.api.app import create_app
    from recsys_assets.api.config import ApiConfig

    config = ApiConfig.from_environ(os.environ)
    user, new_user = demo_users(settings)
    with TestClient(create_app(config)) as api:
        def get(user, device, k=8):
            r = api.get("/recommendations", params={"user_id": user, "device_type": device, "timestamp": timestamp,
                                                    "k": k})
            if r.status_code != 200:
                raise SystemExit(f"demo: /recommendations answered {r.status_code}: {r.text}")
            return r.json()

        known = get(user, 1)
        _print_list(f"known user {user} on mobile", known)
        # new_user: never registered, cold start from context
        _print_list(f"new user {new_user} on desktop", get(new_user, 0))
        _print_list(f"new user {new_user} on mobile", get(new_user, 1))
        clicked = known["items"][0]
        r = api.post("/events", json={"user_id": user, "item_id": clicked["item_id"], "device_type": 1,
                                      "timestamp": timestamp})
        if r.status_code not in (200, 201):
            raise SystemExit(f"demo: /events answered {r.status_code}: {r.text}")
        after = get(user, 1)
        before_ids = {i["item_id"] for i in known["items"]}
        gone = clicked["item_id"] not in {i["item_id"] for i in after["items"]}
        print(f"\n  user {user} clicks {clicked['name']!r}: top_category {r.json().get('top_category_before')} -> "
              f"{r.json().get('top_category_after')}; the item is {'gone from' if gone else 'STILL IN'} the next list")
        _print_list(f"known user {user} on mobile, after the click", after,
                    mark={i["item_id"] for i in after["items"]} - before_ids)
        api.delete(f"/users/{user}/seen")  # leave the demo user as it was


def quiet_console(log_dir: Path) -> None:
    """Libraries' log records and Python warnings go to ``<log_dir>/demo.log``, not the console; the demo's own
    lines and Dagster's warnings and errors (its console logger, at WARNING) stay on it."""
    import logging
    import warnings

    log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=log_dir / "demo.log", level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # every warning once per place, into the log file


def main() -> int:
    settings = Settings.from_env()
    instance = _instance(settings)
    logs = Path(settings.artifacts).resolve() / "logs"
    quiet_console(logs)
    from recsys_assets.definitions import build_definitions

    defs = build_definitions(settings, merlin_log_dir=str(logs / "merlin"))
    t0 = time.perf_counter()
    print(f"[demo] artifacts: {settings.artifacts}  scale: {settings.scale}  instance: {os.environ['DAGSTER_HOME']}")
    print(f"[demo] logs: {logs}/demo.log (libraries' messages and warnings), {logs}/merlin/<step>.log "
          "(TensorFlow, NVTabular, Merlin)")
    print(f"[demo] days {BACKFILL_DAYS.start:02d}-{BACKFILL_DAYS.stop - 1:02d} from {START_DATE}; "
          f"train days {TRAIN_DAYS.start:02d}-{TRAIN_DAYS.stop - 1:02d}")
    run_plan(defs, instance)
    print(f"\n[demo] pipeline built in {time.perf_counter() - t0:.1f} s")
    from recsys_assets.release import deploy
    from recsys_assets.lib.generator import World

    root = Path(settings.artifacts).resolve()
    try:
        # Midday of the first day after the backfill: every item available by then can be recommended.
        show_recommendations(settings, int(World(start_date=START_DATE).day_start_ts(BACKFILL_DAYS.stop)) + 13 * 3600)
    finally:
        deploy.stop_local(root)
        _stop_embedded_valkey(root)
    print("\n[demo] stopped Triton and Valkey. Keep Triton, the API and the storefront up with:  make serve")
    print("[demo]   storefront http://127.0.0.1:8080/store/   API docs http://127.0.0.1:8080/docs")
    print("[demo] browse the runs, metadata and checks with:  make dev  (http://127.0.0.1:3000)")
    return 0


def _stop_embedded_valkey(root: Path) -> None:
    if os.environ.get("RECSYS_VALKEY_URL"):
        return
    from recsys_assets.defs.feature_store.resources import valkey_port
    from recsys_assets.lib import paths
    from recsys_assets.lib.valkey_server import stop_embedded

    stop_embedded(root / paths.VALKEY_DATA, port=valkey_port())


if __name__ == "__main__":
    sys.exit(main())
