"""The retrieval index: item vectors in a FAISS inner-product index keyed by RAW item id (pipeline env only).

Contract
- :func:`build` wraps the index in ``IndexIDMap``, so a search returns raw item ids, never row positions.
  Kinds: ``flat`` (exact ``IndexFlatIP``), ``ivf`` (``IndexIVFFlat``, ``nlist`` k-means cells, ``nprobe`` searched)
  and ``hnsw`` (``IndexHNSWFlat``, graph of ``hnsw_m`` links, ``ef_search`` candidates). ``auto`` picks by
  catalogue size (:func:`choose_kind`): exact up to :data:`EXACT_MAX_ITEMS` items (thousands of items: an exact
  scan costs microseconds), IVF beyond (millions).
- :func:`search` drops FAISS's ``-1`` padding (returned when fewer than ``k`` items qualify) and can restrict a
  search to allowed ids (items available that day) with an ``IDSelector``: the padding never leaves here.
- :func:`recall_vs_exact` measures an approximate index against exact search on the same vectors.
- The merlin env never imports FAISS (DESIGN.md): it writes the vectors as ``.npy``; this module reads them.

``faiss`` is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_ITEMS = 100_000


def choose_kind(n_items: int, kind: str = "auto") -> str:
    """``flat`` for up to :data:`EXACT_MAX_ITEMS` items, ``ivf`` above; an explicit kind is kept."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n_items <= EXACT_MAX_ITEMS else "ivf"


def default_nlist(n_items: int) -> int:
    """About 4 sqrt(n) cells, at least 1 and at most n / 39 (FAISS wants ~39 training points per centroid)."""
    return int(max(1, min(4 * np.sqrt(n_items), n_items // 39)))


@dataclasses.dataclass
class IndexParams:
    kind: str = "auto"
    nlist: int = 0          # ivf: 0 = default_nlist(n)
    nprobe: int = 32        # ivf: cells searched per query
    hnsw_m: int = 32        # hnsw: links per node
    ef_construction: int = 80
    ef_search: int = 128    # hnsw: candidate list size at query time (raised to k when k is larger)
    train_sample: int = 262_144  # ivf: vectors used to train the coarse quantizer
    seed: int = 0


@dataclasses.dataclass
class BuiltIndex:
    index: object
    kind: str
    params: dict
    n_items: int
    dim: int
    build_seconds: float


def _as_matrix(vectors) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (items, dim) matrix of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("item vectors hold NaN or inf: re-materialize item_embeddings")
    return x


def build(vectors, ids: Sequence[int], params: IndexParams | None = None) -> BuiltIndex:
    """An inner-product index over ``vectors`` (row r has raw id ``ids[r]``)."""
    import faiss

    params = params or IndexParams()
    x = _as_matrix(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (x.shape[0],):
        raise ValueError(f"{len(ids)} ids for {x.shape[0]} vectors")
    if (ids < 0).any():
        raise ValueError("item ids must be >= 0 (-1 is FAISS's padding)")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    n, d = x.shape
    kind = choose_kind(n, params.kind)
    t0 = time.perf_counter()
    used = {"kind": kind}
    if kind == "flat":
        inner = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = params.nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(params.seed)
        sample = x if n <= params.train_sample else x[rng.choice(n, params.train_sample, replace=False)]
        inner.cp.seed = params.seed
        inner.train(sample)
        inner.nprobe = min(params.nprobe, nlist)
        used.update(nlist=nlist, nprobe=inner.nprobe)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.ef_construction
        inner.hnsw.efSearch = params.ef_search
        used.update(hnsw_m=params.hnsw_m, ef_construction=params.ef_construction, ef_search=params.ef_search)
    else:  # pragma: no cover - choose_kind validated it
        raise AssertionError(kind)
    index = faiss.IndexIDMap(inner)
    index.add_with_ids(x, ids)
    return BuiltIndex(index=index, kind=kind, params=used, n_items=n, dim=d,
                      build_seconds=time.perf_counter() - t0)


def _inner(index):
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "index") else index


def _search_params(index, allowed_ids, k: int):
    import faiss

    inner = _inner(index)
    sel = None
    if allowed_ids is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe), sel
    if isinstance(inner, faiss.IndexHNSW):
        # the candidate list must hold at least k entries, or HNSW returns fewer good neighbours than asked
        return faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(inner.hnsw.efSearch), int(k))), sel
    return (faiss.SearchParameters(sel=sel) if sel is not None else None), sel


@dataclasses.dataclass
class Neighbours:
    """Per query: raw item ids (best first) and their scores, FAISS padding removed (rows may be shorter than k)."""

    ids: list
    scores: list

    def padded(self, k: int, fill: int = -1) -> np.ndarray:
        """The ids as a (queries, k) matrix, short rows filled with ``fill`` (for metrics that ignore it)."""
        out = np.full((len(self.ids), k), fill, dtype=np.int64)
        for r, row in enumerate(self.ids):
            out[r, :min(k, len(row))] = row[:k]
        return out


def search(index, queries, k: int, allowed_ids: Sequence[int] | None = None) -> Neighbours:
    """The ``k`` best items per query by inner product, optionally among ``allowed_ids`` only."""
    q = _as_matrix(np.atleast_2d(queries))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    params, _sel = _search_params(index, allowed_ids, k)  # keep the selector alive during the search
    scores, ids = index.search(q, int(k), params=params) if params is not None else index.search(q, int(k))
    keep = ids >= 0
    return Neighbours(ids=[ids[r][keep[r]] for r in range(len(ids))],
                      scores=[scores[r][keep[r]] for r in range(len(ids))])


def recall_vs_exact(built: BuiltIndex, vectors, ids, queries, k: int = 100) -> float:
    """Mean share of the exact top-k (brute-force inner product) that the index returns."""
    x = _as_matrix(vectors)
    ids = np.asarray(ids, dtype=np.int64)
    q = _as_matrix(np.atleast_2d(queries))
    k = min(k, len(ids))
    approx = search(built.index, q, k)
    scores = q @ x.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    exact = ids[part]
    hits = [len(np.intersect1d(a, e)) / k for a, e in zip(approx.ids, exact)]
    return float(np.mean(hits))


def save(index, path) -> None:
    import faiss

    faiss.write_index(index, str(Path(path)))


def load(path):
    import faiss

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FAISS index {path} not found: materialize faiss_index first")
    return faiss.read_index(str(path))


def describe(index) -> dict:
    """Kind and search parameters of a loaded index (for metadata and for serving's logs)."""
    import faiss

    inner = _inner(index)
    out = {"n_items": int(index.ntotal), "dim": int(index.d), "type": type(inner).__name__}
    if isinstance(inner, faiss.IndexIVF):
        out.update(nlist=int(inner.nlist), nprobe=int(inner.nprobe))
    if isinstance(inner, faiss.IndexHNSW):
        out.update(ef_search=int(inner.hnsw.efSearch))
    return out


def id_map(index) -> np.ndarray:
    """The raw ids held by an ``IndexIDMap`` (row order)."""
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)
