"""The whole pipeline at a data scale through Dagster, stage by stage, with each stage's wall time and peak memory.

    .venv/bin/python benchmarks/seed_scale.py --artifacts /data/seed --json seed.json            # RECSYS_SCALE=seed
    .venv/bin/python benchmarks/seed_scale.py --scale demo --artifacts /tmp/demo --json demo.json
    .venv/bin/python benchmarks/seed_scale.py --plot demo.json seed.json --out stages.png

Runs what ``make demo`` runs, on the generator at ``--scale`` (``tiny``, ``demo`` or ``seed``: 240,000 users at
day 00, 4,300 new a day, 930,000 impressions a day): ``full_build_job`` layer by layer (generation, features,
transforms, embeddings, Feast, both models, index, the evaluation gates, the release and its local Triton), then one
day of daily operations as production runs it (``new_day_sensor`` -> ``daily_job``: refresh, replay, fine-tune, gate;
``release_promotion_sensor``), then ``benchmarks/serving.py`` on the release with every user online.

Memory is the resident set of every process the run owns, sampled twice a second: this process (Dagster runs in
process), its children (the merlin Pipes subprocesses, Valkey, Triton and its python-backend stubs, the serving
benchmark) and any process whose command line names the artifact root (a Valkey left running by an earlier run).
Per stage the JSON records the wall time, the peak of the sum and each kind's peak; at the end Valkey's memory, its
key count by kind, and the data's size. ``--from-layer`` resumes a run whose earlier layers are on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

STAGES_AFTER_BUILD = ("daily", "serving benchmark")
GIB = 1024 ** 3


def _kind(proc) -> str:
    """Which part of the stack a process is: merlin (the Pipes env), valkey, triton, benchmark or pipeline."""
    name, cmdline = proc.name(), " ".join(proc.cmdline())
    if "valkey" in name or "redis" in name:
        return "valkey"
    if name.startswith("tritonserver") or "triton_python_backend_stub" in cmdline:
        return "triton"
    if ".venv-merlin" in cmdline:
        return "merlin"
    if "benchmarks/serving.py" in cmdline:
        return "benchmark"
    return "pipeline"


class MemorySampler:
    """Samples the resident memory of every process the run owns (see the module's docstring) on a thread."""

    def __init__(self, root: Path, interval: float = 0.5):
        import psutil

        self._psutil = psutil
        self.root = str(root)
        self.interval = interval
        self.me = psutil.Process(os.getpid())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reset()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def _reset(self) -> None:
        self.peak_total = 0
        self.peak_by_kind: dict[str, int] = {}
        self.peak_processes = 0

    def _owned(self):
        procs = {self.me.pid: self.me}
        with contextlib.suppress(self._psutil.Error):
            procs.update({p.pid: p for p in self.me.children(recursive=True)})
        for p in self._psutil.process_iter(["cmdline"]):
            if p.pid not in procs and self.root in " ".join(p.info["cmdline"] or ()):
                procs[p.pid] = p
        return procs.values()

    def sample(self) -> None:
        total, by_kind, count = 0, {}, 0
        for proc in self._owned():
            try:
                rss, kind = proc.memory_info().rss, _kind(proc)
            except self._psutil.Error:  # gone between listing and reading
                continue
            total += rss
            by_kind[kind] = by_kind.get(kind, 0) + rss
            count += 1
        with self._lock:
            self.peak_total = max(self.peak_total, total)
            self.peak_processes = max(self.peak_processes, count)
            for kind, rss in by_kind.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> dict:
        """The peaks since the last ``take`` (then reset)."""
        self.sample()
        with self._lock:
            peaks = {"peak_rss_gib": round(self.peak_total / GIB, 3), "peak_processes": self.peak_processes,
                     "peak_rss_gib_by_kind": {k: round(v / GIB, 3) for k, v in sorted(self.peak_by_kind.items())}}
            self._reset()
        return peaks


class StageLog:
    """Each stage's wall time and memory peaks, written to the JSON after every stage (a crash keeps the rest)."""

    def __init__(self, sampler: MemorySampler, out: Path | None, header: dict):
        self.sampler, self.out = sampler, out
        self.report = {**header, "stages": []}

    @contextlib.contextmanager
    def stage(self, name: str, **extra):
        self.sampler.take()  # peaks start at this stage
        t0 = time.perf_counter()
        entry = {"stage": name, **extra}
        try:
            yield entry
        except BaseException as exc:
            entry["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            entry.update(self.sampler.take())
            entry["load_average"] = [round(x, 2) for x in os.getloadavg()]
            self.report["stages"].append(entry)
            print(f"[seed-scale] {name:<20} {entry['seconds']:8.1f} s  peak {entry['peak_rss_gib']:6.2f} GiB  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in entry["peak_rss_gib_by_kind"].items())
                  + (f"  FAILED: {entry['failed'][:200]}" if "failed" in entry else ""), flush=True)
            self.write()

    def write(self) -> None:
        stages = self.report["stages"]
        self.report["total_seconds"] = round(sum(s["seconds"] for s in stages), 1)
        self.report["build_seconds"] = round(sum(s["seconds"] for s in stages if s["stage"] not in
                                                 STAGES_AFTER_BUILD), 1)
        self.report["peak_rss_gib"] = max((s["peak_rss_gib"] for s in stages), default=0.0)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.report, indent=2) + "\n")


def names_of(layers) -> list[str]:
    return [a for layer in layers for a in layer.assets]


def data_size(root: Path) -> dict:
    """Rows of the generated world: users, items and logged impressions and clicks per day."""
    import pyarrow.parquet as pq

    from recsys_assets.lib import paths

    size = {}
    for name, path in (("users", paths.USERS), ("items", paths.ITEMS)):
        if (root / path).exists():
            size[name] = pq.ParquetFile(root / path).metadata.num_rows
    days = sorted((root / paths.raw_interactions(0)).parent.glob("day_*.parquet"))
    rows = clicks = 0
    for day in days:
        table = pq.read_table(day, columns=["click"])
        rows += table.num_rows
        clicks += int(table.column("click").to_numpy().sum())
    size.update(interaction_days=len(days), impressions=rows, clicks=clicks)
    return size


def _key_kind(key: bytes) -> str:
    """Feast's rows (a serialized entity key: by its join key) or the project's own keys (the prefix before ':')."""
    for join_key in (b"user_id", b"item_id"):
        if join_key in key[:40]:
            return f"feast {join_key.decode()}"
    return key.split(b":", 1)[0].decode(errors="replace")[:40]


def valkey_memory(port: int, sample_per_kind: int = 500) -> dict:
    """Valkey's memory, its keys by kind and each kind's estimated bytes (MEMORY USAGE of a sample x the count)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60)
    info = client.info("memory")
    counts: dict[str, int] = {}
    sampled: dict[str, list[int]] = {}
    for key in client.scan_iter(count=10_000):
        kind = _key_kind(key)
        counts[kind] = counts.get(kind, 0) + 1
        if len(sampled.setdefault(kind, [])) < sample_per_kind:
            sampled[kind].append(client.memory_usage(key, samples=0) or 0)
    kinds = {kind: {"keys": n, "estimated_gib": round(n * sum(sampled[kind]) / len(sampled[kind]) / GIB, 4)}
             for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"used_memory_gib": round(info["used_memory"] / GIB, 3),
            "used_memory_peak_gib": round(info["used_memory_peak"] / GIB, 3),
            "used_memory_rss_gib": round(info["used_memory_rss"] / GIB, 3), "keys": client.dbsize(), "kinds": kinds}


def run(args) -> int:
    root = Path(args.artifacts).resolve()
    os.environ.update({"RECSYS_SCALE": args.scale, "RECSYS_ARTIFACTS": str(root), "RECSYS_LAST_DAY": "demo"})
    os.environ.setdefault("DAGSTER_HOME", str(root / "dagster_home"))
    import psutil

    from recsys_assets import demo
    from recsys_assets.defs.feature_store.resources import valkey_port
    from recsys_assets.defs.partitions import DEMO_DAY, START_DATE
    from recsys_assets.defs.platform.jobs import BUILD_LAYERS
    from recsys_assets.lib.generator import SCALES, World
    from recsys_assets.lib.settings import Settings
    from recsys_assets.release import deploy

    settings = Settings.from_env()
    names = [layer.name for layer in BUILD_LAYERS]
    if args.from_layer and args.from_layer not in names:
        raise SystemExit(f"--from-layer {args.from_layer!r}: expected one of {', '.join(names)}")
    start = names.index(args.from_layer) if args.from_layer else 0
    unknown = sorted(set(args.skip) - set(names_of(BUILD_LAYERS)))
    if unknown:
        raise SystemExit(f"--skip {unknown}: not assets of the build layers ({', '.join(names_of(BUILD_LAYERS))})")
    ops = json.loads(Path(args.ops).read_text()) if args.ops else None
    instance = demo._instance(settings)
    defs, logs = demo.quiet_definitions(settings)
    sampler = MemorySampler(root).start()
    out = Path(args.json).resolve() if args.json else None
    log = StageLog(sampler, out, {
        "scale": args.scale, "profile": vars(SCALES[args.scale]), "artifacts": str(root), "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1), "from_layer": args.from_layer, "skip": args.skip,
        "ops": ops, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"[seed-scale] scale {args.scale}: {vars(SCALES[args.scale])}; artifacts {root}; logs {logs}", flush=True)
    try:
        for layer in BUILD_LAYERS[start:]:
            skipped = [a for a in layer.assets if a in args.skip]
            layer = dataclasses.replace(layer, assets=tuple(a for a in layer.assets if a not in args.skip))
            with log.stage(layer.name, assets=list(layer.assets), skipped=skipped):
                demo.run_plan(defs, instance, layers=(layer,), ops=ops)
            if layer.name == "days":
                log.report["data"] = data_size(root)
                log.write()
                print(f"[seed-scale] data: {log.report['data']}", flush=True)
        midday = int(World(start_date=START_DATE).day_start_ts(DEMO_DAY)) + 13 * 3600
        with log.stage("daily", day=DEMO_DAY):  # needs the release layer's Triton: resume from "release" at least
            demo.daily_loop(defs, instance, settings, midday + 86_400)
        log.report["valkey"] = valkey_memory(valkey_port())
        log.write()
        print(f"[seed-scale] valkey: {log.report['valkey']}", flush=True)
        deploy.stop_local(root)  # the benchmark starts its own servers
        if args.serving_seconds > 0:
            with log.stage("serving benchmark") as entry:
                results = out.with_suffix(".serving.json") if out else root / "serving.json"
                cmd = [sys.executable, str(PROJECT_ROOT / "benchmarks" / "serving.py"), "--artifacts", str(root),
                       "--seconds", str(args.serving_seconds), "--concurrency", *map(str, args.concurrency),
                       "--rounds", "0", "--json", str(results)]
                cmd += (["--seed-concurrency", "1", "--seed-seconds", str(args.seed_faithful_seconds)]
                        if args.seed_faithful_seconds > 0 else ["--seed-concurrency"])
                if args.in_process_requests:
                    cmd += ["--in-process-requests", str(args.in_process_requests)]
                subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)
                entry["results"] = json.loads(results.read_text())
    finally:
        deploy.stop_local(root)
        demo._stop_embedded_valkey(root)
        sampler.stop()
        log.write()
    print(f"[seed-scale] build {log.report['build_seconds']:.0f} s, everything {log.report['total_seconds']:.0f} s, "
          f"peak {log.report['peak_rss_gib']:.2f} GiB" + (f"; {out}" if out else ""), flush=True)
    return 0


def plot(reports: list[Path], out: Path) -> None:
    """Each stage's wall time, one bar per report (a log axis: the scales differ by ~50x), peak memory beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    loaded = [json.loads(p.read_text()) for p in reports]
    stages = list(dict.fromkeys(s["stage"] for r in loaded for s in r["stages"]))
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 0.55 * len(stages) + 1.5), sharey=True)
    height = 0.8 / len(loaded)
    for i, report in enumerate(loaded):
        by_stage = {s["stage"]: s for s in report["stages"]}
        y = np.arange(len(stages)) + i * height
        label = f"{report['scale']} ({report.get('data', {}).get('impressions', '?'):,} impressions)" \
            if isinstance(report.get("data", {}).get("impressions"), int) else report["scale"]
        seconds = [by_stage[s]["seconds"] if s in by_stage else 0 for s in stages]
        ax_time.barh(y, seconds, height, label=label)
        ax_mem.barh(y, [by_stage[s]["peak_rss_gib"] if s in by_stage else 0 for s in stages], height)
        for yy, sec, stage in zip(y, seconds, stages):
            if sec:
                stopped = " (stopped)" if "failed" in by_stage[stage] else ""
                ax_time.text(sec, yy, f" {sec:.0f} s{stopped}", va="center", fontsize=7)
    ax_time.set_xscale("log")
    ax_time.set_yticks(np.arange(len(stages)) + 0.4 - height / 2, stages)
    ax_time.invert_yaxis()
    ax_time.set_xlabel("wall time (s, log)")
    ax_mem.set_xlabel("peak resident memory of the run's processes (GiB)")
    ax_time.legend(loc="lower right", fontsize=8)
    fig.suptitle("Pipeline stages by data scale (2 cores)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"[seed-scale] plot: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="seed", choices=("tiny", "demo", "seed"))
    parser.add_argument("--artifacts", help="the artifact root (a new folder; or an earlier run's with --from-layer)")
    parser.add_argument("--json", help="write the stages, data size and Valkey memory here (after every stage)")
    parser.add_argument("--from-layer", help="skip the build layers before this one (their artifacts on disk)")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="assets of the resumed layers not to run again (materialized by the earlier run)")
    parser.add_argument("--ops", help="a JSON file of op config by asset (e.g. shorter trainings for a test)")
    parser.add_argument("--serving-seconds", type=float, default=10.0,
                        help="duration of each serving concurrency level (0: skip the serving benchmark)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seed-faithful-seconds", type=float, default=0.0,
                        help="also serve the release in the seed-faithful configuration at concurrency 1 for this "
                             "long (0: skip it; at the seed's scale it takes minutes to load)")
    parser.add_argument("--in-process-requests", type=int, default=0,
                        help="requests through the in-process floor (0: the serving benchmark's default)")
    parser.add_argument("--plot", nargs="+", type=Path, help="plot these reports instead of running")
    parser.add_argument("--out", type=Path, default=Path("seed_scale.png"), help="the plot's file")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.out)
        return 0
    if not args.artifacts:
        parser.error("--artifacts is required to run")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
