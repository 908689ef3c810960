"""Feature transforms: the compiled numpy transforms against NVTabular, and NVTabular fit/transform per day.

Runs in the merlin env (it needs NVTabular)::

    .venv-merlin/bin/python benchmarks/transforms.py [--scale demo] [--seed-day] [--reps 300] [--out DIR]

1. Builds the masked training days 00-08 and validation day 09 of a fresh world (generator -> point-in-time
   top_category -> join -> cold-start masking, the same library code the assets run), writes them as parquet.
2. Fits the user/item/context workflows on the train days and transforms one train day and the validation day
   with the full workflow (Dask partitions), each in its own process: seconds, rows/s, peak RSS.
3. Compiles the workflows and times one request's transforms, 1 user + 1 context + 300 items, over ``--reps``
   repetitions: NVTabular's own ``Workflow.transform`` on pandas frames (what the seed's per-request
   NVTabular models did, minus Triton) against ``CompiledTransforms`` here (numpy 1.23) and in the pipeline env
   (numpy 1.26, when ``.venv`` exists): p50/p95.
4. ``--seed-day``: one day at ``seed`` scale (about 1 M rows), fit and transform, rows/s and peak RSS.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_DAYS, VALIDATION_DAY = range(9), 9
ITEMS_PER_REQUEST = 300


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_days(scale: str, days, out: Path, history_days=None) -> dict:
    """Masked (train) / joined (other) days as parquet, as the masked_interactions asset writes them."""
    import pandas as pd

    from recsys_assets.lib import masking
    from recsys_assets.lib.generator import World
    from recsys_assets.lib.top_category import category_codes, history_codes

    out.mkdir(parents=True, exist_ok=True)
    world = World(seed=20260101, scale=scale)
    users = world.users(max(days))
    items = world.items[["item_id", "category_l1", "category_l2", "item_gender", "price"]]
    mean_age = masking.training_mean_age(users, TRAIN_DAYS[-1])
    category = category_codes(items["category_l1"])
    shown, files, rows = [], {}, 0
    for day in (history_days if history_days is not None else days):
        raw, _ = world.generate_day(day)
        shown.append(raw[["user_id", "timestamp", "item_id", "click"]])
        if day not in days:
            continue
        codes = history_codes(pd.concat(shown, ignore_index=True), category, raw["user_id"], raw["timestamp"])
        joined = masking.join_day(raw, users, items, pd.DataFrame({"interaction_id": raw["interaction_id"], **codes}),
                                  mean_age)
        table = masking.mask_day(joined, 20260101, day, mean_age)[0] if day in TRAIN_DAYS else joined
        files[day] = out / f"day_{day:02d}.parquet"
        table.to_parquet(files[day], index=False, row_group_size=250_000)
        rows += len(table)
    return {"files": {d: str(f) for d, f in files.items()}, "mean_age": mean_age, "rows": rows}


def phase_fit(files, out_dir, mean_age, part_size) -> dict:
    t0 = time.perf_counter()
    import nvtabular  # noqa: F401  (the merlin stack's import cost, reported apart)

    from recsys_assets.ml.nvt_workflows import fit_workflows

    t1 = time.perf_counter()
    meta = fit_workflows(files, out_dir, mean_age, part_size)
    seconds = time.perf_counter() - t1
    fit = sum(meta["fit_seconds"].values())
    return {"rows": meta["rows"], "import_s": round(t1 - t0, 2), "fit_s": round(fit, 2),
            "fit_compose_save_s": round(seconds, 2), "rows_per_s_fit": round(meta["rows"] / fit),
            "rows_per_s_incl_save": round(meta["rows"] / seconds), "peak_rss_mb": round(_peak_mb())}


def phase_transform(workflow_dir, file, out_dir, part_size) -> dict:
    t0 = time.perf_counter()
    import nvtabular  # noqa: F401

    from recsys_assets.ml.nvt_transform import transform_day

    t1 = time.perf_counter()
    stats = transform_day(workflow_dir, file, out_dir, part_size)
    seconds = time.perf_counter() - t1  # includes loading the workflow and counting the output
    return {"rows": stats["rows"], "import_s": round(t1 - t0, 2), "transform_s": round(stats["seconds"], 2),
            "load_transform_write_s": round(seconds, 2), "rows_per_s": round(stats["rows"] / stats["seconds"]),
            "peak_rss_mb": round(_peak_mb())}


def in_process(fn, *args):
    """Run one phase in a fresh process, so its peak memory is its own."""
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def request_inputs(compiled_dir, n_items=ITEMS_PER_REQUEST, seed=0):
    """One request's raw inputs: a known user, a context and 300 catalogue items with their features."""
    import pandas as pd

    from recsys_assets.lib.feature_spec import USER_HISTORY
    from recsys_assets.lib.generator import World
    from recsys_assets.serving.transforms import read_description

    _, vocab = read_description(compiled_dir)
    rng = np.random.default_rng(seed)
    items = World(seed=20260101, scale="tiny").items
    ids = rng.choice(len(items), n_items, replace=False)
    user = pd.DataFrame({"user_id": np.array([int(vocab["user.user_id"][0][0])], np.int64), "age": [41.0],
                         "gender": np.array([1], np.int64),
                         **{name: np.array([3], np.int64) for name in USER_HISTORY}})
    context = pd.DataFrame({"device_type": np.array([1], np.int64), "timestamp": np.array([1767300000], np.int64)})
    item = pd.DataFrame({"item_id": ids.astype(np.int64),
                         "category_l1": items["category_l1"].to_numpy(object)[ids],
                         "category_l2": items["category_l2"].to_numpy(object)[ids],
                         "item_gender": items["item_gender"].to_numpy(object)[ids],
                         "price": items["price"].to_numpy(np.float64)[ids]})
    return user, context, item


def timed(fn, reps: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3  # ms


def latency(workflows_dir, compiled_dir, reps: int) -> dict:
    import nvtabular as nvt

    from recsys_assets.serving.transforms import CompiledTransforms

    user, context, item = request_inputs(compiled_dir)
    wfs = {g: nvt.Workflow.load(str(Path(workflows_dir) / g)) for g in ("user", "item", "context")}
    t = CompiledTransforms.load(compiled_dir)
    cols = {g: {c: df[c].to_numpy() for c in df.columns} for g, df in
            (("user", user), ("context", context), ("item", item))}

    def nvtabular_request():
        wfs["user"].transform(user)
        wfs["context"].transform(context)
        wfs["item"].transform(item)

    def compiled_request():
        t.transform("user", cols["user"])
        t.transform("context", cols["context"])
        t.transform("item", cols["item"])

    results = {"nvtabular": timed(nvtabular_request, max(reps // 3, 30)), "compiled": timed(compiled_request, reps)}
    for group, df in (("user", user), ("context", context), ("item", item)):
        results[f"compiled/{group}"] = timed(lambda g=group: t.transform(g, cols[g]), reps)
        results[f"nvtabular/{group}"] = timed(lambda g=group, d=df: wfs[g].transform(d), max(reps // 3, 30))
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)), "n": len(v)}
            for k, v in results.items()}


PIPELINE_SNIPPET = """
import json, sys, time, numpy as np, pandas as pd
from recsys_assets.serving.transforms import CompiledTransforms
t = CompiledTransforms.load(sys.argv[1]); reps = int(sys.argv[3])
frames = {g: pd.read_parquet(f"{sys.argv[2]}/{g}.parquet") for g in ("user", "context", "item")}
cols = {g: {c: df[c].to_numpy() for c in df.columns} for g, df in frames.items()}
def req():
    for g in ("user", "context", "item"):
        t.transform(g, cols[g])
for _ in range(10): req()
s = []
for _ in range(reps):
    t0 = time.perf_counter(); req(); s.append(time.perf_counter() - t0)
s = np.array(s) * 1e3
print(json.dumps({"p50_ms": float(np.percentile(s, 50)), "p95_ms": float(np.percentile(s, 95)), "n": reps,
                  "numpy": np.__version__}))
"""


def pipeline_env_latency(compiled_dir, work: Path, reps: int) -> dict | None:
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        return None
    user, context, item = request_inputs(compiled_dir)
    for name, df in (("user", user), ("context", context), ("item", item)):
        df.to_parquet(work / f"{name}.parquet", index=False)
    proc = subprocess.run([str(python), "-c", PIPELINE_SNIPPET, str(compiled_dir), str(work), str(reps)],
                          check=False, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--part-size", default="128MB")
    parser.add_argument("--seed-day", action="store_true", help="also fit+transform one seed-scale day")
    parser.add_argument("--out", help="keep the work files and write results.json here")
    args = parser.parse_args(argv)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-transforms-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"scale": args.scale}

    t0 = time.perf_counter()
    data = make_days(args.scale, [*TRAIN_DAYS, VALIDATION_DAY], work / "masked")
    report["prepare_seconds"] = time.perf_counter() - t0
    train_files = [data["files"][d] for d in TRAIN_DAYS]
    print(f"[{args.scale}] {data['rows']} rows over {len(data['files'])} days prepared in "
          f"{report['prepare_seconds']:.1f} s", flush=True)

    report["fit"] = in_process(phase_fit, train_files, str(work / "workflows"), data["mean_age"], args.part_size)
    print(f"[{args.scale}] fit on days 00-08: {report['fit']}", flush=True)
    for day in (TRAIN_DAYS[-1], VALIDATION_DAY):
        report[f"transform_day_{day:02d}"] = in_process(
            phase_transform, str(work / "workflows" / "full"), data["files"][day], str(work / f"out_{day:02d}"),
            args.part_size)
        print(f"[{args.scale}] transform day {day:02d}: {report[f'transform_day_{day:02d}']}", flush=True)

    from recsys_assets.ml.nvt_compile import compile_workflows

    compile_workflows(work / "workflows", work / "compiled")
    report["latency"] = latency(work / "workflows", work / "compiled", args.reps)
    report["latency_pipeline_env"] = pipeline_env_latency(work / "compiled", work, args.reps)

    if args.seed_day:
        t0 = time.perf_counter()
        seed = make_days("seed", [0], work / "seed_masked")
        report["seed_prepare_seconds"] = time.perf_counter() - t0
        report["seed_fit"] = in_process(phase_fit, [seed["files"][0]], str(work / "seed_workflows"),
                                        seed["mean_age"], args.part_size)
        report["seed_transform"] = in_process(phase_transform, str(work / "seed_workflows" / "full"),
                                              seed["files"][0], str(work / "seed_out"), args.part_size)
        print(f"[seed] one day, {seed['rows']} rows: fit {report['seed_fit']}; transform {report['seed_transform']}",
              flush=True)

    lat = report["latency"]
    print("\nper request (1 user + 1 context + 300 items), ms:")
    print(f"  {'path':<22} {'p50':>8} {'p95':>8}")
    for name in ("nvtabular", "compiled", "nvtabular/user", "nvtabular/context", "nvtabular/item",
                 "compiled/user", "compiled/context", "compiled/item"):
        print(f"  {name:<22} {lat[name]['p50_ms']:8.3f} {lat[name]['p95_ms']:8.3f}")
    if report["latency_pipeline_env"] and "p50_ms" in report["latency_pipeline_env"]:
        p = report["latency_pipeline_env"]
        print(f"  {'compiled (.venv)':<22} {p['p50_ms']:8.3f} {p['p95_ms']:8.3f}   numpy {p['numpy']}")
    print(f"  speed-up at p50: {lat['nvtabular']['p50_ms'] / lat['compiled']['p50_ms']:.0f}x")
    (work / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nresults: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
