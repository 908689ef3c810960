"""``make demo``: build everything on the embedded defaults, layer by layer, and show what it produced.

    python -m recsys_assets.demo

Runs ``full_build_job`` layer by layer (``defs.platform.jobs.BUILD_LAYERS``): each layer is one run of the job's
assets in that layer (one per partition for a layer of days). Then real recommendations and a click through the
API, and the daily loop as production runs it: day 14 arrives, ``new_day_sensor`` requests its ``daily_job`` run
(refresh, replay of the served list, fine-tune judged by its gate), and ``release_promotion_sensor`` switches the
release when the gate passed. Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default
``artifacts/dagster_home``), so ``make dev`` afterwards shows them, with their metadata and checks, in the UI; each
carries the label of the workspace's code location (:func:`run_tags`), so the UI lists it under its job as it does a
run it launched itself. A
failed run or a failed ERROR check stops the demo with what went wrong; a failed WARN check (a fine-tune its gate
rejects, say) is an outcome and is printed.
"""

import functools
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from recsys_assets.defs.partitions import BACKFILL_DAYS, DEMO_DAY, START_DATE, TRAIN_DAYS
from recsys_assets.defs.platform.jobs import BUILD_LAYERS, FULL_BUILD_JOB
from recsys_assets.lib.settings import Settings, partition_key

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = PROJECT_ROOT / "workspace.yaml"


@functools.cache
def code_location(workspace: Path = WORKSPACE) -> str:
    """The name of the code location ``workspace.yaml`` loads (what ``make dev``'s UI calls it)."""
    import yaml

    entries = yaml.safe_load(workspace.read_text())["load_from"]
    names = [target.get("location_name") for entry in entries for target in entry.values()]
    if len(names) != 1 or not names[0]:
        raise ValueError(f"{workspace}: expected one code location with a location_name, found {names}")
    return names[0]


def run_tags(location: str | None = None) -> dict[str, str]:
    """Tags that file an in-process run under its job in the UI: the repository label a run the webserver or the
    daemon launches carries (``<repository>@<code location>``; Dagster filters a job's runs by it)."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG  # Dagster's own tag; no public name for it

    return {REPOSITORY_LABEL_TAG: f"{SINGLETON_REPOSITORY_NAME}@{location or code_location()}"}


def _instance(settings: Settings) -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(settings.artifacts).resolve() / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def run_job(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, assets=None, ops: dict | None = None,
            **kwargs) -> dg.ExecuteInProcessResult:
    """One in-process run of ``job`` (of its ``assets`` only, when given; ``ops``: config of those assets, e.g. a
    shorter training for a test); a failed run or ERROR check ends the demo, a failed WARN check is printed."""
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
             **({"ops": ops} if ops else {})}
    selection = [dg.AssetKey(a) for a in assets] if assets else None
    kwargs["tags"] = {**run_tags(), **(kwargs.get("tags") or {})}
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False,
                                                          run_config=quiet, asset_selection=selection, **kwargs)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    failed_checks = [e for e in failed if e.severity == dg.AssetCheckSeverity.ERROR]
    for check in failed:
        if check not in failed_checks:
            print(f"[demo]   warning: {check.asset_key.to_user_string()}.{check.check_name}: "
                  f"{_first_line(check.metadata.get('description'))}")
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


def _first_line(value, limit: int = 160) -> str:
    text = str(getattr(value, "value", value) or "").strip().splitlines()
    return (text[0][:limit] + ("..." if len(text[0]) > limit else "")) if text else ""


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata values of ``asset``'s materialization in ``result`` ({} when it did not materialize)."""
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def _summary(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        meta = mat.metadata
        figures = [f"{k}={meta[k].value:.3f}" if isinstance(meta[k].value, float) else f"{k}={meta[k].value}"
                   for k in ("rows", "ctr", "images", "items", "seconds") if k in meta]
        parts.append(f"{mat.asset_key.to_user_string()}" + (f" ({', '.join(figures)})" if figures else ""))
    return "; ".join(dict.fromkeys(parts))  # a run over many partitions materializes each: say it once


def _single_run(defs: dg.Definitions, assets) -> bool:
    """Whether every asset of a layer backfills many partitions in one run (``BackfillPolicy.single_run``)."""
    policies = [defs.resolve_assets_def(name).backfill_policy for name in assets]
    return all(p is not None and p.max_partitions_per_run is None for p in policies)  # None: no limit, one run


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """The tags of a run over the partitions ``first``..``last`` (what a single-run backfill's run carries)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


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
        elif _single_run(defs, layer.assets):  # one run over the days, as an asset backfill launches it
            result = run_job(defs, job, instance, layer.assets, tags=partition_range_tags(
                partition_key(layer.days.start, START_DATE), partition_key(layer.days.stop - 1, START_DATE)))
            print(f"[demo] {layer.name:<24} {time.perf_counter() - t0:6.1f} s  days {layer.days.start:02d}-"
                  f"{layer.days.stop - 1:02d} in one run: {_summary(result)}")
        else:
            for day in layer.days:
                result = run_job(defs, job, instance, layer.assets, partition_key=partition_key(day, START_DATE))
            print(f"[demo] {layer.name:<24} {time.perf_counter() - t0:6.1f} s  days {layer.days.start:02d}-"
                  f"{layer.days.stop - 1:02d}; last: {_summary(result)}")
        timings[layer.name] = time.perf_counter() - t0
    return timings


def _print_list(title: str, body: dict, mark: set[int] = frozenset()) -> None:
    # the score is the order's (the DLRM's click probability blended with the ordering prior): for a visitor the
    # prior knows little of, it can be far below 0.001, so three significant digits, not three decimals
    print(f"\n  {title}  ({body['triton_ms']:.1f} ms in Triton; score: the DLRM blended with the ordering prior)")
    for rank, item in enumerate(body["items"], 1):
        flag = "  <- new" if item["item_id"] in mark else ""
        print(f"   {rank:>2}. {item['score']:9.3g}  {str(item['item_id']):>12}  {item.get('name', '?')[:40]:<40} "
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
    user, new_user = demo_users(settings)
    with _api() as api:
        def get(user, device, k=8):
            return _recommendations(api, user, device, timestamp, k)

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
        click = r.json()
        print(f"\n  user {user} clicks {clicked['name']!r}: top_category {click.get('top_category_before_name')} -> "
              f"{click.get('top_category_after_name')}, interests now {click.get('interests_after_names')}; "
              f"the item is {'gone from' if gone else 'STILL IN'} the next list")
        _print_list(f"known user {user} on mobile, after the click", after,
                    mark={i["item_id"] for i in after["items"]} - before_ids)
        api.delete(f"/users/{user}/seen")  # leave the demo user as it was


def _recommendations(api, user, device: int, timestamp: int, k: int = 8) -> dict:
    """One list from the running Triton through the API's code path (``api``: an in-process client)."""
    r = api.get("/recommendations", params={"user_id": user, "device_type": device, "timestamp": timestamp, "k": k})
    if r.status_code != 200:
        raise SystemExit(f"demo: /recommendations answered {r.status_code}: {r.text}")
    return r.json()


def _api():
    from fastapi.testclient import TestClient

    from recsys_assets.api.app import create_app
    from recsys_assets.api.config import ApiConfig

    return TestClient(create_app(ApiConfig.from_environ(os.environ)))


def _number(meta: dict, key: str) -> str:
    value = meta.get(key)
    return f"{value:.4f}" if isinstance(value, float) else "-"


def daily_loop(defs: dg.Definitions, instance: dg.DagsterInstance, settings: Settings, timestamp: int) -> None:
    """Day 14 arrives and runs as in production: ``new_day_sensor`` (the generator's day is over on the wall clock)
    requests ``daily_job`` for it, the run refreshes the day and fine-tunes the served models into a candidate
    release judged by its gate, and ``release_promotion_sensor`` promotes the candidate if the gate passed. Prints
    what happened and the demo user's list before and after."""
    from recsys_assets.defs.ingest.resources import NewDaySource
    from recsys_assets.defs.ingest.sensors import new_day_sensor
    from recsys_assets.defs.release.sensors import release_promotion_sensor
    from recsys_assets.release import records

    artifacts = defs.resources["artifacts"]
    store = artifacts.store()
    user, _ = demo_users(settings)
    with _api() as api:
        before = _recommendations(api, user, 1, timestamp)
    served_before = records.served_state(store).release
    t0 = time.perf_counter()
    source = NewDaySource(mode="generator", seconds_per_day=0, first_day=DEMO_DAY, last_day=DEMO_DAY)
    tick = new_day_sensor(dg.build_sensor_context(instance=instance, resources={
        "artifacts": artifacts, "new_day_source": source}))
    if not tick.run_requests:
        raise SystemExit(f"demo: new_day_sensor requested no run: {tick.skip_reason}")
    request = tick.run_requests[0]
    result = run_job(defs, "daily_job", instance, partition_key=request.partition_key, tags=request.tags)
    replay, tuned = _metadata(result, "served_list_evaluation"), _metadata(result, "finetuned_models")
    print(f"[demo] {'day ' + str(DEMO_DAY) + ' (daily_job)':<24} {time.perf_counter() - t0:6.1f} s  new_day_sensor "
          f"requested {request.partition_key}; served list replayed: true expected clicks "
          f"{_number(replay, 'true_expected_clicks/served/users')} (popularity "
          f"{_number(replay, 'true_expected_clicks/popularity/users')})")
    if "release" in tuned:
        print(f"[demo] {'':<24} {'':>8}  fine-tuned candidate release {tuned['release']} ({tuned['status']}): "
              f"true expected clicks candidate {_number(tuned, 'true_expected_clicks/candidate/users')}, served "
              f"release {served_before} {_number(tuned, 'true_expected_clicks/served/users')}, popularity "
              f"{_number(tuned, 'true_expected_clicks/popularity/users')}")
    else:
        print(f"[demo] {'':<24} {'':>8}  no candidate: {tuned.get('skipped') or tuned.get('candidate', '?')}")
    t0 = time.perf_counter()
    tick = release_promotion_sensor(dg.build_sensor_context(instance=instance, cursor=str(served_before),
                                                            resources={"artifacts": artifacts}))
    if tick.run_requests:
        promotion = tick.run_requests[0]
        run_job(defs, "promote_release_job", instance, ops=promotion.run_config["ops"], tags=promotion.tags)
        what = f"promoted release {records.served_state(store).release} (release {served_before} served before)"
    else:
        what = _first_line(tick.skip_reason.skip_message if tick.skip_reason else "", 300)
    print(f"[demo] {'promotion':<24} {time.perf_counter() - t0:6.1f} s  release_promotion_sensor: {what}")
    served_after = records.served_state(store).release
    if served_after == served_before:
        print(f"[demo] {'':<24} {'':>8}  release {served_before} keeps serving: user {user}'s list is unchanged")
        return
    with _api() as api:
        after = _recommendations(api, user, 1, timestamp)
    _print_list(f"known user {user} on mobile before day {DEMO_DAY} (release {served_before})", before)
    _print_list(f"... and after it (release {served_after})", after,
                mark={i["item_id"] for i in after["items"]} - {i["item_id"] for i in before["items"]})


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


def quiet_definitions(settings: Settings) -> tuple[dg.Definitions, Path]:
    """The definitions the demo runs, with the console kept to the demo's lines (:func:`quiet_console`) and the
    merlin subprocesses' output in ``<artifacts>/logs/merlin/<step>.log``; returns them and the log folder."""
    from recsys_assets.definitions import build_definitions

    logs = Path(settings.artifacts).resolve() / "logs"
    quiet_console(logs)
    return build_definitions(settings, merlin_log_dir=str(logs / "merlin")), logs


def main() -> int:
    settings = Settings.from_env()
    instance = _instance(settings)
    defs, logs = quiet_definitions(settings)
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
        midday = int(World(start_date=START_DATE).day_start_ts(DEMO_DAY)) + 13 * 3600
        show_recommendations(settings, midday)
        if settings.uses_generator:
            print(f"\n[demo] the daily loop: day {DEMO_DAY} arrives")
            daily_loop(defs, instance, settings, midday + 86_400)
        else:
            print(f"\n[demo] the daily loop runs when the shop's day {DEMO_DAY} lands (docs/own-data.md)")
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
