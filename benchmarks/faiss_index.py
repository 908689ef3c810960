"""How the retrieval index's cost grows with the catalogue: build time, query latency and recall vs exact.

Sizes: the real catalogue (2,465 items; the trained item vectors when ``--artifacts`` holds them, else
synthetic ones), 1 M and optionally 10 M synthetic 64-d vectors (a clustered mixture, so approximate indexes
meet realistic structure). Kinds: exact ``flat``, ``ivf`` and ``hnsw`` (``lib.faiss_index``); the ``auto`` choice
of the asset is marked. Latency: one query at a time, k = 300 (what serving asks), median and p95 over
``--queries`` queries, with ``--threads`` OpenMP threads (default 1, as one serving instance would use). Recall:
share of the exact top-300 each index returns. Builds use every core (``--build-threads``).

    .venv/bin/python benchmarks/faiss_index.py                       # 2,465 and 1 M
    .venv/bin/python benchmarks/faiss_index.py --sizes 10000000 --kinds flat,ivf --nlist 4096 --queries 50
    .venv/bin/python benchmarks/faiss_index.py --artifacts artifacts  # the trained item vectors at 2,465

Prints one table row per (size, kind) and, with ``--json``, writes the rows to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import faiss_index as fx

K = 300


def synthetic(n: int, dim: int = 64, clusters: int = 1000, seed: int = 0, chunk: int = 1_000_000) -> np.ndarray:
    """``n`` vectors around ``clusters`` random centres (float32), generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        out[s:s + m] = centres[rng.integers(0, clusters, m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
    return out


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1_000_000) -> np.ndarray:
    """Row indices of the exact top-k inner products (brute force in chunks)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(vectors), chunk):
        scores = queries @ vectors[s:s + chunk].T
        idx = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + s], axis=1)
        keep = np.argpartition(-cand_s, min(k, cand_s.shape[1]) - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i


def run(vectors: np.ndarray, kind: str, queries: np.ndarray, truth: np.ndarray, params: fx.IndexParams,
        threads: int = 1, build_threads: int = 0) -> dict:
    import os

    import faiss

    ids = np.arange(len(vectors), dtype=np.int64)
    faiss.omp_set_num_threads(build_threads or os.cpu_count() or 1)
    built = fx.build(vectors, ids, fx.IndexParams(**{**params.__dict__, "kind": kind}))
    faiss.omp_set_num_threads(threads)
    latencies = []
    found = []
    for q in queries:
        t0 = time.perf_counter()
        res = fx.search(built.index, q[None, :], K)
        latencies.append(time.perf_counter() - t0)
        found.append(res.ids[0])
    recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))
    lat = np.array(latencies) * 1e3
    return {"items": len(vectors), "kind": kind, "auto": fx.choose_kind(len(vectors)) == kind,
            "build_s": round(built.build_seconds, 3), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p95_ms": round(float(np.percentile(lat, 95)), 3), f"recall@{K}_vs_exact": round(recall, 4),
            **{k: v for k, v in built.params.items() if k != "kind"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2465,1000000", help="comma-separated catalogue sizes")
    ap.add_argument("--kinds", default="flat,ivf,hnsw", help="index kinds to measure")
    ap.add_argument("--queries", type=int, default=200, help="single queries timed per index")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells (0: about 4 sqrt(items), as the asset)")
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--hnsw-max", type=int, default=2_000_000, help="skip HNSW above this size (build time)")
    ap.add_argument("--artifacts", default="", help="artifact root: use index/item_embeddings/<variant>.npy at 2,465")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--threads", type=int, default=1,
                    help="FAISS OpenMP threads (1: a single query gains nothing from more, and on a busy machine "
                         "OpenMP barriers turn microseconds into milliseconds)")
    ap.add_argument("--build-threads", type=int, default=0, help="OpenMP threads for building (0: all cores)")
    args = ap.parse_args(argv)

    rows = []
    params = fx.IndexParams(nprobe=args.nprobe, nlist=args.nlist, ef_search=args.ef_search)
    rng = np.random.default_rng(1)
    for n in [int(s) for s in args.sizes.split(",")]:
        source = "synthetic"
        vectors = None
        if args.artifacts and n == 2465:
            for variant in ("plain", "context"):
                p = Path(args.artifacts) / "index" / "item_embeddings" / f"{variant}.npy"
                if p.exists():
                    vectors, source = np.load(p).astype(np.float32), f"trained ({variant})"
                    break
        if vectors is None:
            vectors = synthetic(n)
        queries = vectors[rng.choice(len(vectors), args.queries, replace=False)] + \
            0.1 * rng.normal(size=(args.queries, vectors.shape[1])).astype(np.float32)
        t0 = time.perf_counter()
        truth = exact_top_k(vectors, queries, K)
        print(f"# {n:,} items ({source}), exact ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
        for kind in args.kinds.split(","):
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"  skip hnsw at {n:,} (> --hnsw-max {args.hnsw_max:,})", flush=True)
                continue
            row = {"source": source, **run(vectors, kind, queries, truth, params, args.threads, args.build_threads)}
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
        del vectors

    keys = ["items", "kind", "auto", "build_s", "p50_ms", "p95_ms", f"recall@{K}_vs_exact", "source"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
