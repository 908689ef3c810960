"""The daily run: how long a new day's refresh takes, and what the list as served scores.

Part 1, a running release. The tiny serving artifacts (``recsys_assets.release.tiny``: real formats, the full
2,465-item catalogue, small random towers) on a real tritonserver with its own Valkey and Feast registry.

Part 2, the daily refresh at ``--scale`` (default demo), in a scratch artifact root with its own embedded Valkey:
set-up (not timed) is what the backfill and the training leave behind: catalogue, users through day 13, raw days
00-13 and their top_category, Feast offline + online features, popularity tables; plus stand-ins for the
trained artifacts that are not built here (item encoder vectors with a real PCA fitted on day-0 items, candidate
tower vectors and a trained FAISS index that knows the items available by day 08, as after a training on the
train days). Then ``daily_job`` runs for days ``--days`` (default 14 15) exactly as the sensor launches it, its
served-list evaluation replaying the day's requests through the tiny release of part 1; the time of every step
is read from the run's events.

Part 3, the list as served: ``--requests`` requests per split of the tiny world's day ``--eval-day`` replayed
through the tiny release, diversity off and on, beside the oracle and popularity (``lib.served_evaluation``).

    .venv/bin/python benchmarks/daily.py [--scale demo] [--days 14 15] [--requests 200] [--raw artifacts/raw]

``--raw`` copies an existing root's ``raw/`` (same scale and seed) instead of generating days 00-13.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

START = dt.date(2026, 1, 1)


def key(day: int) -> str:
    return (START + dt.timedelta(days=day)).isoformat()


def start_tiny_release(work: Path):
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
    from recsys_assets.release.repository import ServingDefaults, build_repository
    from recsys_assets.release.tiny import build_tiny_artifacts, publish_online_state, serving_environ

    tiny = build_tiny_artifacts(work / "tiny")
    valkey = EmbeddedValkey(work / "tiny-valkey", port=free_port()).start()
    environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "tiny-root")
    publish_online_state(tiny, environ)
    build_repository(work / "tiny-repo", tiny.trained, ServingDefaults(sampling_seed=5), tiny.start_date, release=1)
    server = TritonServer(work / "tiny-repo", env=environ, exit_timeout=2, workdir=work / "tiny-triton")
    t0 = time.perf_counter()
    server.start(models=["ensemble_model"], timeout=900)
    print(f"[release] tiny release on {server.http_url}: ready in {time.perf_counter() - t0:.1f} s")
    return tiny, valkey, server


def stand_ins(store, catalogue, seed: int = 0) -> None:
    """Encoder vectors + a real PCA, candidate vectors and a trained index of the items available by day 08."""
    from recsys_assets.lib import embeddings as emb
    from recsys_assets.lib import faiss_index as fx
    from recsys_assets.lib import paths

    rng = np.random.default_rng(seed)
    n = len(catalogue)
    day0 = (catalogue["available_from_day"] == 0).to_numpy()
    projected = []
    for kind, rel, width in (("clip", paths.CLIP_EMBEDDINGS, 128), ("text", paths.TEXT_EMBEDDINGS, 384)):
        x = rng.normal(size=(n, width)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with store.writing(rel) as tmp, open(tmp, "wb") as fh:
            np.save(fh, x)
        pca = emb.fit_pca(x[day0], 64, meta={"fit_through_day": 0, "fit_items": int(day0.sum())})
        with store.writing(paths.embedding_pca(kind)) as tmp:
            pca.save(tmp)
        projected.append(pca.transform(x))
    with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.hstack(projected).astype(np.float32))
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    with store.writing(paths.item_embeddings("context")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vectors)
    known = np.flatnonzero(catalogue["available_from_day"].to_numpy() <= 8)
    with store.writing(paths.faiss_index("context")) as tmp:
        fx.save(fx.build(vectors[known], known).index, tmp)


def set_up(root: Path, scale: str, valkey_port: int, tiny_url: str, raw: Path | None):
    import dagster as dg

    from recsys_assets.defs.ingest.resources import NewDaySource
    from recsys_assets.defs.release.resources import ServedEnsemble
    from recsys_assets.defs.feature_store.assets import offline_features, online_features, popularity_tables
    from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
    from recsys_assets.defs.features.assets import user_top_category
    from recsys_assets.defs.ingest import assets as ingest
    from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
    from recsys_assets.lib import paths

    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(scale=scale),
                 "valkey": ValkeyResource(url=f"redis://127.0.0.1:{valkey_port}"), "feast": FeastResource(),
                 "served_ensemble": ServedEnsemble(url=tiny_url), "new_day_source": NewDaySource()}
    t0 = time.perf_counter()
    store = resources["artifacts"].store()
    if raw is not None:
        shutil.copytree(raw, root / "raw", dirs_exist_ok=True)
        print(f"[setup] copied {raw}")
    else:
        assert dg.materialize([ingest.items, ingest.users], resources=resources).success
    for day in range(14):
        if raw is None:
            assert dg.materialize([ingest.raw_interactions], resources=resources, partition_key=key(day)).success
        assert dg.materialize([user_top_category], resources=resources, partition_key=key(day)).success
    assert dg.materialize([offline_features, online_features, popularity_tables], resources=resources).success
    stand_ins(store, store.read_parquet(paths.ITEMS))
    print(f"[setup] days 00-13, features online, popularity, stand-in embeddings and index: "
          f"{time.perf_counter() - t0:.0f} s")
    return resources


def step_seconds(instance, run_id: str) -> dict[str, float]:
    import dagster as dg

    started, took = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            took[event.step_key] = entry.timestamp - started[event.step_key]
    return took


def run_days(resources, days: list[int], requests: int) -> None:
    import dagster as dg

    from recsys_assets.definitions import build_definitions
    from recsys_assets.defs.ingest.jobs import REFRESH_SELECTION
    from recsys_assets.lib.settings import Settings

    # The project's own definitions, on this scratch root, its Valkey and the tiny release.
    defs = build_definitions(Settings(artifacts=resources["artifacts"].root, scale=resources["world"].scale,
                                      valkey_url=resources["valkey"].url, triton_url=resources["served_ensemble"].url))
    job = defs.resolve_job_def("daily_job")
    # The day run without its fine-tune steps (no trained models here): ingest, top_category, replay, refresh.
    selection = sorted(REFRESH_SELECTION.resolve(defs.resolve_asset_graph()))
    config = {"ops": {"served_list_evaluation": {"config": {"requests_per_split": requests}}}}
    for day in days:
        t0 = time.perf_counter()
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(partition_key=key(day), instance=instance, run_config=config,
                                            raise_on_error=False, asset_selection=selection)
            wall = time.perf_counter() - t0
            steps = step_seconds(instance, result.run_id)
        failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
        print(f"\n[daily] day {day:02d} ({key(day)}): {'ok' if result.success else 'FAILED'} in {wall:.1f} s "
              f"(refresh without the replay: {wall - steps.get('served_list_evaluation', 0):.1f} s)")
        for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
            print(f"  {step:<26} {seconds:7.2f} s")
        for e in failed:
            print(f"  check failed: {e.asset_key.to_user_string()}.{e.check_name}: {e.description}")
        for name in ("daily_online_features", "daily_popularity_tables", "daily_retrieval_index",
                     "served_list_evaluation"):
            mats = [m for m in result.asset_materializations_for_node(name) if m.asset_key.to_user_string() == name]
            if mats:
                m = {k: v.value for k, v in mats[0].metadata.items()}
                keep = {k: m[k] for k in ("new_users", "new_items", "seconds_apply", "seconds_materialize",
                                          "window", "version", "items_added", "requests", "served_calls",
                                          "p50_ms") if k in m}
                print(f"  {name}: {keep}")


def served_metrics(tiny, url: str, day: int, requests: int) -> None:
    from recsys_assets.lib import dataset
    from recsys_assets.lib import served_evaluation as se
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.lib.generator import World
    from recsys_assets.release.client import RecommendationClient

    root = Path(tempfile.mkdtemp(prefix="served-eval-"))
    store = ArtifactStore(root)
    world = World(seed=7, scale="tiny")
    dataset.write_items(store, world)
    dataset.write_users(store, world, day)
    for d in range(max(0, day - 7), day + 1):
        dataset.write_day(store, world, d)
    known = tiny.users["user_id"].to_numpy()
    with RecommendationClient(url) as client:
        result = se.evaluate_day(store, world, lambda u, d, t, div: client.recommend(u, d, t, 10, div)[0], day,
                                 known, per_split=requests)
    table = result.table
    calls = sum(len(v) for v in result.lists.latency_ms.values())
    latency = np.concatenate(list(result.lists.latency_ms.values()))
    print(f"\n[served] tiny release, tiny world day {day:02d}: {len(result.requests)} requests "
          f"({result.requests['split'].value_counts().to_dict()}), {calls} served calls in {result.seconds:.1f} s, "
          f"p50 {np.percentile(latency, 50):.1f} ms, failed {sum(len(f) for f in result.lists.failures.values())}")
    cols = ["method", "split", "requests", "recall@10", "ndcg@10", "coverage", "diversity", "categories_per_list"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--days", type=int, nargs="+", default=[14, 15])
    parser.add_argument("--requests", type=int, default=200, help="requests per split (served-list evaluation)")
    parser.add_argument("--eval-day", type=int, default=5)
    parser.add_argument("--raw", type=Path, default=None, help="copy raw/ of this root instead of generating")
    args = parser.parse_args()

    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port

    work = Path(tempfile.mkdtemp(prefix="daily-bench-"))
    tiny_valkey = server = valkey = None
    try:
        tiny, tiny_valkey, server = start_tiny_release(work)
        valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
        resources = set_up(work / "artifacts", args.scale, valkey.port, server.http_url, args.raw)
        run_days(resources, args.days, args.requests)
        served_metrics(tiny, server.http_url, args.eval_day, args.requests)
    finally:
        if server is not None:
            server.stop()
        for v in (valkey, tiny_valkey):
            if v is not None:
                v.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
