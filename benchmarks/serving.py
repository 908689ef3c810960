"""Serving latency and throughput: both serving layouts through a real tritonserver, against the in-process floor.

    .venv/bin/python benchmarks/serving.py [--artifacts DIR] [--seconds 20] [--concurrency 1 4 8] [--grpc]
        [--seed-concurrency 1] [--seed-seconds S] [--rounds 3] [--in-process-requests 1000]

What it measures, in one run on one machine (client included, as a caller of the service sees it):

1. **through the server**: requests (retrieval 300 / ranking 100, top 10, a mix of known, new and anonymous users
   on random devices and hours) from 1, 4 and 8 concurrent clients (threads, one connection each): p50/p95/p99
   latency and requests/s, and the server's CPU time per request (tritonserver and its python stubs, from
   /proc: unlike latency, barely moved by other work on a shared machine); then Triton's own per-model breakdown from its statistics API (queue, input, compute,
   output per request, averaged over the run).
   Both layouts of the same release (``serving.graph``), each on its own server over a copy of the repository:
   the 14-model ``ensemble`` ("standard" in the tables) and the ``executor`` (one python model running every
   stage in process, ``--executor-instances``, default the serving default; ``--no-executor`` skips it).
2. **seed-faithful configuration** (``serving.seed_faithful``): a copy of the same repository whose item features
   come from Feast's ``get_online_features`` on every request (users through the SDK too) and whose three
   transforms run the saved NVTabular workflows per request (``Workflow.transform`` on the request's rows) inside
   the merlin env, through the python backend's ``EXECUTION_ENV_PATH``; same request mix, at ``--seed-concurrency``
   (default 1), with its own per-model breakdown. Then, every server up, ``--rounds`` interleaved concurrency-1
   windows (each layout 3 s, seed-faithful 6 s), so the p50 ratios (target >= 20x) are taken under the same
   background load; the ratio of the level runs is printed too.
3. **in-process floor**: the same stages, configs and artifacts called directly in this process
   (``release.pipeline.InProcessPipeline``), same request mix: what the work costs without IPC and scheduling.
4. **Feast SDK per request** (the seed's item path, in part): ``get_online_features`` for one user and for the
   300 candidates, timed alone, next to the in-memory item cache the ensemble uses.

Artifacts: ``--artifacts DIR`` uses the live repository under that artifact root
(``serving/triton_repository``, with its Feast registry, Valkey (``RECSYS_VALKEY_URL``, else the root's embedded
one) and the saved workflows ``transforms/workflows``: run ``make demo`` first) as it is on disk: the release it
serves (the ensemble runs the release's aliases ``<model>_v<n>``), or a plain build; without it the benchmark builds the tiny artifacts (``release.tiny``: real formats, the
full 2,465-item catalogue, small models) with their own Valkey and Feast registry in a temporary folder, and fits
real NVTabular workflows on the tiny world in the merlin env (``seed_faithful.fit_tiny_workflows``) whose compiled
form the standard repository serves, so both configurations run the same fitted workflows. Numbers only: nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.release.triton_server import TritonServer  # noqa: E402
from recsys_assets.release.client import RecommendationClient  # noqa: E402

DAY0 = 1767225600


def percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def request_mix(users: list[int], n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(user_id, device_type, timestamp): 60% known users, 20% new ids, 20% anonymous; random device and hour."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        user = rng.choice(users) if r < 0.6 else (10**6 + rng.randrange(10**5) if r < 0.8 else -1)
        out.append((user, rng.choice([0, 1, 2]), DAY0 + 10 * 86400 + rng.randrange(86400)))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every live descendant (the server and its stubs)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu.get(p, 0.0) for p in tree)


def load_test(url: str, protocol: str, concurrency: int, seconds: float, mix: list, keep_samples: bool = False,
              offset: int = 0, server_pid: int | None = None) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        with RecommendationClient(url, protocol) as client:
            j = offset + i
            while time.perf_counter() < stop_at:
                user, device, ts = mix[j % len(mix)]
                t0 = time.perf_counter()
                try:
                    ids, _ = client.recommend(user, device, ts)
                    if len(ids) != 10:
                        errors[i] += 1
                except Exception:
                    errors[i] += 1
                latencies[i].append(time.perf_counter() - t0)
                j += concurrency

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    cpu0 = tree_cpu_s(server_pid) if server_pid else None
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for lat in latencies for x in lat]
    out = {"concurrency": concurrency, **percentiles(flat), "rps": len(flat) / elapsed, "errors": sum(errors)}
    if cpu0 is not None and flat:
        # What a request costs the server in CPU, whatever else runs on the machine (latency is not).
        out["server_cpu_ms"] = (tree_cpu_s(server_pid) - cpu0) / len(flat) * 1e3
    if keep_samples:
        out["samples"] = flat
    return out


def model_breakdown(before: dict, after: dict) -> list[dict]:
    """Per model: requests and average µs per request in queue / input / compute / output, from two snapshots."""
    def index(stats):
        return {(m["name"], m["version"]): m for m in stats.get("model_stats", [])}

    rows = []
    b_idx = index(before)
    for key, m in index(after).items():
        b = b_idx.get(key)
        count = int(m["inference_count"]) - (int(b["inference_count"]) if b else 0)
        if count <= 0:
            continue

        def per_request(phase):
            ns = int(m["inference_stats"][phase]["ns"]) - (int(b["inference_stats"][phase]["ns"]) if b else 0)
            return ns / count / 1e3

        rows.append({"model": key[0], "requests": count, "queue_us": per_request("queue"),
                     "input_us": per_request("compute_input"), "infer_us": per_request("compute_infer"),
                     "output_us": per_request("compute_output"), "success_us": per_request("success")})
    return sorted(rows, key=lambda r: -r["success_us"])


def setup_tiny(work: Path, instance_counts: dict):
    """Tiny artifacts (with fitted NVTabular workflows) + Valkey + Feast + popularity + a built repository;
    returns (repository, environ, users, stop, workflows directory)."""
    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
    from recsys_assets.release.repository import ServingDefaults, build_repository
    from recsys_assets.release.seed_faithful import fit_tiny_workflows
    from recsys_assets.release.tiny import build_tiny_artifacts, publish_online_state, serving_environ

    tiny, workflows = fit_tiny_workflows(build_tiny_artifacts(work / "tiny"), work / "nvt")
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "artifacts")
    publish_online_state(tiny, environ)
    build_repository(work / "repo", tiny.trained, ServingDefaults(instance_counts=instance_counts), tiny.start_date,
                     release=1)
    return work / "repo", environ, tiny.users["user_id"].tolist(), valkey.stop, workflows


def setup_artifacts(root: Path):
    import pandas as pd

    from recsys_assets.lib import paths
    from recsys_assets.release.deploy import local_environ

    repository = root / paths.TRITON_REPOSITORY
    if not (repository / "ensemble_model" / "config.pbtxt").exists():
        raise SystemExit(f"no repository at {repository}: materialize triton_model_repository (make demo)")
    environ, valkey = local_environ(root)
    users = pd.read_parquet(root / paths.USERS, columns=["user_id"])["user_id"].tolist()
    return (repository, environ, users, (valkey.stop if valkey is not None and valkey.owned else (lambda: None)),
            root / paths.NVT_WORKFLOWS)


def start_server(repository: Path, environ: dict, workdir: Path) -> tuple[TritonServer, float]:
    server = TritonServer(repository, env=environ, exit_timeout=2, workdir=workdir)
    t0 = time.perf_counter()
    server.start(models=["ensemble_model"], timeout=900)
    return server, time.perf_counter() - t0


def levels_run(server: TritonServer, protocol: str, levels: list[int], seconds: float, mix: list) -> dict:
    """Warm up, load-test each concurrency level, read Triton's per-model breakdown over those levels."""
    url = server.http_url if protocol == "http" else server.grpc_url
    load_test(url, protocol, 1, min(3.0, seconds), mix)  # warm-up: first requests pay lazy imports and caches
    before = server.statistics()
    rows = [load_test(url, protocol, c, seconds, mix, server_pid=server.pid) for c in levels]
    return {"server": rows, "models": model_breakdown(before, server.statistics())}


def interleaved_c1(urls: dict, protocol: str, rounds: int, seconds: dict, mix: list) -> dict:
    """Concurrency 1 on each server in turn, ``rounds`` times, same requests: p50s under the same background load
    (this machine is shared, so load drifts between the level runs)."""
    samples: dict = {name: [] for name in urls}
    for r in range(rounds):
        for name, url in urls.items():
            samples[name] += load_test(url, protocol, 1, seconds[name], mix, keep_samples=True,
                                       offset=r * 997)["samples"]
    return {name: percentiles(v) for name, v in samples.items()}


def layout_twin(repository: Path, layout: str, work: Path, instances: int) -> Path:
    """A copy of ``repository`` serving the same graph (same model versions and artifacts) in ``layout``."""
    import shutil

    from recsys_assets.release.repository import convert_layout

    target = work / f"repo-{layout}"
    # symlinks=True: alias version folders link (relatively) into the copy's model folders
    shutil.copytree(repository, target, symlinks=True, ignore=shutil.ignore_patterns(".tmp-*", ".staging*"))
    convert_layout(target, layout, instances)
    return target


def make_seed_faithful_repository(repository: Path, workflows: Path, environ: dict, work: Path):
    """The same repository rewritten to the seed's per-request Feast + NVTabular paths; (path, environ, info)."""
    from recsys_assets.release import seed_faithful

    t0 = time.perf_counter()
    merlin = seed_faithful.make_seed_faithful(repository, work / "repo-seed", workflows)
    info = {"build_s": time.perf_counter() - t0, "merlin_env": str(merlin.path), "merlin_python": merlin.python,
            "own_stub": merlin.stub is not None}
    return work / "repo-seed", seed_faithful.server_environ(environ, merlin), info


def feast_sdk_per_request(environ: dict, users: list[int], repeats: int = 50) -> dict:
    from recsys_assets.serving.runtime import Runtime

    store = Runtime.from_environ(environ).feature_store()
    service = store.get_feature_service("user_features")
    items = list(range(300))
    refs = ["item_features:price", "item_features:category_l1", "item_features:category_l2",
            "item_features:item_gender"]
    user_s, item_s = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        store.get_online_features(features=service, entity_rows=[{"user_id": users[i % len(users)]}]).to_dict()
        t1 = time.perf_counter()
        store.get_online_features(features=refs, entity_rows={"item_id": items}).to_dict()
        t2 = time.perf_counter()
        user_s.append(t1 - t0)
        item_s.append(t2 - t1)
    return {"user": percentiles(user_s), "items_300": percentiles(item_s)}


def in_process(repository: Path, environ: dict, mix: list, n: int) -> dict:
    from recsys_assets.release.pipeline import InProcessPipeline

    with InProcessPipeline(repository, environ=environ) as pipeline:
        for user, device, ts in mix[:50]:
            pipeline(user, device, ts)
        pipeline.timings.clear()
        samples = []
        cpu0 = time.process_time()
        for user, device, ts in mix[:n]:
            t0 = time.perf_counter()
            pipeline(user, device, ts)
            samples.append(time.perf_counter() - t0)
        cpu_ms = (time.process_time() - cpu0) / n * 1e3
        stages = {m: statistics.median(v) * 1e6 for m, v in pipeline.timings.items()}
        item_cache = pipeline.stage("feast_item_lookup")
        t0 = time.perf_counter()
        for _ in range(1000):
            item_cache(item_ids=np.arange(300))
        cache_us = (time.perf_counter() - t0) / 1000 * 1e6
    return {**percentiles(samples), "cpu_ms": cpu_ms, "stages_us": stages, "item_cache_300_us": cache_us}


def print_levels(rows: list[dict]) -> None:
    print("| concurrency | p50 ms | p95 ms | p99 ms | requests/s | requests | errors | server CPU ms/request |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['server_cpu_ms']:.1f}" if "server_cpu_ms" in r else "-"
        print(f"| {r['concurrency']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | {r['n']} | "
              f"{r['errors']} | {cpu} |")


def print_breakdown(models: list[dict]) -> None:
    print("| model | requests | queue | input | compute | output | total |\n|---|---|---|---|---|---|---|")
    for m in models:
        print(f"| {m['model']} | {m['requests']} | {m['queue_us']:.0f} | {m['input_us']:.0f} | {m['infer_us']:.0f} "
              f"| {m['output_us']:.0f} | {m['success_us']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", default=None, help="a demo artifact root with a built repository")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--grpc", action="store_true", help="gRPC instead of HTTP")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--instances", nargs="*", default=[], metavar="MODEL=N",
                        help="tiny artifacts: instance count overrides, e.g. feast_user_lookup=2")
    parser.add_argument("--seed-concurrency", type=int, nargs="*", default=[1],
                        help="concurrency levels of the seed-faithful configuration (none: skip it)")
    parser.add_argument("--seed-seconds", type=float, default=None,
                        help="duration of each seed-faithful level (default: --seconds)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved concurrency-1 rounds, standard then seed-faithful (0: skip)")
    parser.add_argument("--in-process-requests", type=int, default=1000,
                        help="requests timed through the in-process floor (after 50 warm-up requests)")
    parser.add_argument("--executor-instances", type=int, default=None,
                        help="instances of the executor layout's model (default: the serving default)")
    parser.add_argument("--no-executor", action="store_true", help="skip the executor layout")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    t0 = time.perf_counter()
    if args.artifacts:
        repository, environ, users, stop_valkey, workflows = setup_artifacts(Path(args.artifacts).resolve())
        from recsys_assets.release.repository import served_release_of

        release = served_release_of(repository)
        source = f"artifacts {args.artifacts} ({'plain build' if release is None else f'release {release}'})"
    else:
        counts = {k: int(v) for k, v in (item.split("=") for item in args.instances)}
        repository, environ, users, stop_valkey, workflows = setup_tiny(work, counts)
        source = "tiny artifacts (release.tiny: full catalogue, small models)"
    print(f"# serving benchmark: {source}; setup {time.perf_counter() - t0:.0f} s", flush=True)
    protocol = "grpc" if args.grpc else "http"
    mix = request_mix(users, 5000)
    results: dict = {"source": source, "protocol": protocol, "cpu_count": os.cpu_count()}
    servers: list[TritonServer] = []
    from recsys_assets.release.repository import ServingDefaults

    instances = args.executor_instances or ServingDefaults.executor_instances
    try:
        # The same release in both layouts: the 14-model ensemble ("standard") and the executor.
        ensemble_repo = layout_twin(repository, "ensemble", work, instances)
        server, results["load_s"] = start_server(ensemble_repo, environ, work / "triton")
        servers.append(server)
        results.update(levels_run(server, protocol, args.concurrency, args.seconds, mix))
        executor_server = None
        if not args.no_executor:
            executor_repo = layout_twin(repository, "executor", work, instances)
            executor_server, load_s = start_server(executor_repo, environ, work / "triton-executor")
            servers.append(executor_server)
            results["executor"] = {"instances": instances, "load_s": load_s,
                                   **levels_run(executor_server, protocol, args.concurrency, args.seconds, mix)}
        if args.seed_concurrency:
            seed_repo, seed_env, info = make_seed_faithful_repository(ensemble_repo, workflows, environ, work)
            seed_server, info["load_s"] = start_server(seed_repo, seed_env, work / "triton-seed")
            servers.append(seed_server)
            results["seed_faithful"] = {**info, **levels_run(seed_server, protocol, args.seed_concurrency,
                                                             args.seed_seconds or args.seconds, mix)}
            if args.rounds > 0:
                pairs = [("standard", server), ("executor", executor_server), ("seed_faithful", seed_server)]
                urls = {name: (s.http_url if protocol == "http" else s.grpc_url) for name, s in pairs if s}
                results["interleaved_c1"] = interleaved_c1(
                    urls, protocol, args.rounds, {"standard": 3.0, "executor": 3.0, "seed_faithful": 6.0}, mix)
        for s in servers:
            s.stop()
        servers = []
        results["in_process"] = in_process(repository, environ, mix, args.in_process_requests)
        results["feast_sdk"] = feast_sdk_per_request(environ, users)
    finally:
        for s in servers:
            s.stop()
        stop_valkey()
        shutil.rmtree(work, ignore_errors=True)  # the layouts' repository copies and the servers' logs

    print(f"\nthrough tritonserver, ensemble layout ({protocol}, client on the same {os.cpu_count()} cores; "
          f"models loaded in {results['load_s']:.0f} s):")
    print_levels(results["server"])
    print("\nTriton per-model time, µs per request (statistics API, all concurrency levels):")
    print_breakdown(results["models"])
    ex = results.get("executor")
    if ex:
        print(f"\nthrough tritonserver, executor layout ({ex['instances']} instances of one python model running "
              f"every stage; loaded in {ex['load_s']:.0f} s):")
        print_levels(ex["server"])
        print_breakdown(ex["models"])
    sf = results.get("seed_faithful")
    if sf:
        print(f"\nseed-faithful configuration (Feast get_online_features per request for items and users; "
              f"NVTabular Workflow.transform per request in {sf['merlin_env']} (Python {sf['merlin_python']}) "
              f"via EXECUTION_ENV_PATH; models loaded in {sf['load_s']:.0f} s):")
        print_levels(sf["server"])
        print("\nseed-faithful Triton per-model time, µs per request:")
        print_breakdown(sf["models"])
    ip = results["in_process"]
    print(f"\nin-process floor (same stages, one process, sequential): p50 {ip['p50']:.2f} ms, "
          f"p95 {ip['p95']:.2f} ms, p99 {ip['p99']:.2f} ms, CPU {ip['cpu_ms']:.2f} ms per request (this process, "
          "Valkey's side not counted)")
    print("| stage | median µs |\n|---|---|")
    for stage, us in ip["stages_us"].items():
        print(f"| {stage} | {us:.0f} |")
    p50_c1 = next((r["p50"] for r in results["server"] if r["concurrency"] == 1), None)
    rps_c4 = next((r["rps"] for r in results["server"] if r["concurrency"] == 4), None)
    print("\n| target | measured | met |\n|---|---|---|")
    if p50_c1:
        print(f"| p50 <= 10 ms at concurrency 1 | {p50_c1:.2f} ms | {'yes' if p50_c1 <= 10 else 'no'} |")
    if rps_c4:
        print(f"| >= 150 requests/s at concurrency 4 | {rps_c4:.0f} | {'yes' if rps_c4 >= 150 else 'no'} |")
    seed_c1 = next((r["p50"] for r in (sf or {}).get("server", []) if r["concurrency"] == 1), None)
    if p50_c1 and seed_c1:
        ratio = seed_c1 / p50_c1
        results["seed_faithful_ratio_c1"] = ratio
        print(f"| >= 20x lower p50 than seed-faithful (c=1 level runs) | {seed_c1:.1f} / {p50_c1:.2f} ms = "
              f"{ratio:.1f}x | {'yes' if ratio >= 20 else 'no'} |")
    pair = results.get("interleaved_c1")
    if pair:
        for name in ("standard", "executor"):
            if name not in pair:
                continue
            a, b = pair[name], pair["seed_faithful"]
            ratio = b["p50"] / a["p50"]
            results[f"seed_faithful_ratio_interleaved_{name}"] = ratio
            print(f"| {name}: >= 20x lower p50 than seed-faithful (c=1, {args.rounds} interleaved rounds, "
                  f"n={a['n']}/{b['n']}) | {b['p50']:.1f} / {a['p50']:.2f} ms = {ratio:.1f}x | "
                  f"{'yes' if ratio >= 20 else 'no'} |")
    if p50_c1:
        floor = p50_c1 / ip["p50"]
        print(f"| <= 4x the in-process floor (c=1) | {p50_c1:.2f} / {ip['p50']:.2f} ms = {floor:.1f}x | "
              f"{'yes' if floor <= 4 else 'no'} |")
    if ex:
        ex_c1 = next((r["p50"] for r in ex["server"] if r["concurrency"] == 1), None)
        ex_c4 = next((r["rps"] for r in ex["server"] if r["concurrency"] == 4), None)
        if ex_c1:
            floor = ex_c1 / ip["p50"]
            print(f"| executor: p50 <= 3 ms at concurrency 1 | {ex_c1:.2f} ms | {'yes' if ex_c1 <= 3 else 'no'} |")
            print(f"| executor: <= 1.5x the in-process floor (c=1) | {ex_c1:.2f} / {ip['p50']:.2f} ms = "
                  f"{floor:.1f}x | {'yes' if floor <= 1.5 else 'no'} |")
            if seed_c1:
                print(f"| executor: >= 20x lower p50 than seed-faithful (c=1 level runs) | {seed_c1:.1f} / "
                      f"{ex_c1:.2f} ms = {seed_c1 / ex_c1:.1f}x | {'yes' if seed_c1 / ex_c1 >= 20 else 'no'} |")
        if ex_c4:
            print(f"| executor: >= 500 requests/s at concurrency 4 | {ex_c4:.0f} | {'yes' if ex_c4 >= 500 else 'no'} |")
    fs = results["feast_sdk"]
    print(f"item features for 300 candidates: in-memory cache {ip['item_cache_300_us']:.0f} µs; Feast SDK per "
          f"request p50 {fs['items_300']['p50']:.1f} ms (user: {fs['user']['p50']:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
