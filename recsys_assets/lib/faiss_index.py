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

Device (``RECSYS_FAISS_DEVICE``: ``auto`` default, ``cpu``, ``gpu``; :func:`resolve_device`, read when asked)
- ``auto`` uses the GPU when the installed faiss is a GPU build and sees one, else the CPU; ``gpu`` without a
  usable GPU is a :class:`~recsys_assets.lib.settings.SettingsError` naming the variable.
- :func:`build` on the GPU trains and fills ``flat`` and ``ivf`` indexes through ``index_cpu_to_gpu`` and
  brings them back with ``index_gpu_to_cpu``: the returned (and saved) index is a CPU index of the same
  classes and file format as a CPU build, so serving and :func:`load` never see a GPU index. ``hnsw`` has no
  FAISS GPU implementation and is built on the CPU; ``BuiltIndex.device`` / ``params["device"]`` say where
  it was built. GPU k-means does not reproduce CPU k-means bit for bit: a GPU-built ``ivf`` has other
  centroids.
- :func:`for_search` puts a loaded index on the GPU for batch search (:class:`GpuSearchIndex`). The classic
  GPU indexes ignore ``IDSelector`` search parameters (faiss issues #3114, #3924), so a search restricted to
  ``allowed_ids`` over-fetches on the GPU by the number of excluded ids and filters the result (the same
  top-k as the selector, flat and IVF alike), or runs on the CPU copy when that depth exceeds
  :data:`GPU_MAX_K`.
- No GPU was available where this module was written and tested (faiss-cpu): the unit tests cover the device
  choice and run the GPU code path with a CPU index standing in for the GPU copy; it has not run on a GPU.

``faiss`` is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from recsys_assets.lib.settings import SettingsError

KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_ITEMS = 100_000
ENV_DEVICE = "RECSYS_FAISS_DEVICE"
DEVICES = ("auto", "cpu", "gpu")
GPU_KINDS = ("flat", "ivf")  # kinds with a FAISS GPU implementation; hnsw builds and searches on the CPU
GPU_MAX_K = 2048  # classic FAISS GPU indexes: at most 2048 neighbours (and 2048 probed cells) a query


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


def device_setting(environ: Mapping[str, str] | None = None) -> str:
    """``RECSYS_FAISS_DEVICE`` as one of :data:`DEVICES` (unset or empty: ``auto``); read when called."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_DEVICE, "")
    device = raw.strip().lower() or "auto"
    if device not in DEVICES:
        raise SettingsError(f"{ENV_DEVICE}={raw!r}: expected one of {', '.join(DEVICES)}")
    return device


def gpu_available() -> bool:
    """Whether the installed faiss is a GPU build (``StandardGpuResources``) and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(device: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``cpu`` or ``gpu`` for ``device`` (None: the ``RECSYS_FAISS_DEVICE`` setting); ``auto`` takes the GPU
    when :func:`gpu_available`; ``gpu`` without one raises a SettingsError that names the setting."""
    if device is None:
        requested = device_setting(environ)
    else:
        requested = device.strip().lower()
        if requested not in DEVICES:
            raise SettingsError(f"unknown FAISS device {device!r}: expected one of {', '.join(DEVICES)} "
                                f"(the {ENV_DEVICE} setting)")
    if requested == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if requested == "auto":
        return "cpu"
    import faiss

    why = ("the installed faiss is a CPU-only build (faiss-cpu)" if not hasattr(faiss, "StandardGpuResources")
           else "faiss sees no GPU (faiss.get_num_gpus() == 0)")
    raise SettingsError(f"{ENV_DEVICE}=gpu but {why}: run where faiss-gpu and an NVIDIA GPU are installed, "
                        f"or set {ENV_DEVICE}=auto (the GPU when there is one) or cpu")


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    # one per process: each StandardGpuResources reserves its own scratch memory on the GPU
    import faiss

    return faiss.StandardGpuResources()


def _to_gpu(index):
    """A copy of ``index`` on GPU 0 (a pod sees only the GPUs it requested, numbered from 0)."""
    import faiss

    return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)


def _from_gpu(index):
    """A CPU copy of a GPU ``index``, of exactly the classes :func:`load` returns (``IndexFlatIP``, not the
    ``IndexFlat`` the GPU cloner makes): the round trip through FAISS's own serialization guarantees it."""
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(faiss.index_gpu_to_cpu(index)))


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
    index: object  # always a CPU index, whatever the device
    kind: str
    params: dict
    n_items: int
    dim: int
    build_seconds: float
    device: str = "cpu"  # where it was trained and filled: ``cpu``, or ``gpu`` for flat / ivf on a GPU


def _as_matrix(vectors) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (items, dim) matrix of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("item vectors hold NaN or inf: re-materialize item_embeddings")
    return x


def build(vectors, ids: Sequence[int], params: IndexParams | None = None,
          device: str | None = None) -> BuiltIndex:
    """An inner-product index over ``vectors`` (row r has raw id ``ids[r]``), trained and filled on ``device``
    (None: the ``RECSYS_FAISS_DEVICE`` setting, :func:`resolve_device`); a CPU index either way."""
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
    chosen = resolve_device(device)
    on_gpu = chosen == "gpu" and kind in GPU_KINDS
    t0 = time.perf_counter()
    used = {"kind": kind, "device": "gpu" if on_gpu else "cpu"}
    if chosen == "gpu" and not on_gpu:
        used["device_note"] = f"{kind} has no FAISS GPU implementation: built on the CPU"
    sample = None
    if kind == "flat":
        inner = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = params.nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(params.seed)
        sample = x if n <= params.train_sample else x[rng.choice(n, params.train_sample, replace=False)]
        inner.cp.seed = params.seed
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
    # On the GPU the IndexIDMap wrapper stays on the host (FAISS's cloner moves only the wrapped index)
    target = _to_gpu(index) if on_gpu else index
    if sample is not None:
        if on_gpu:
            _seed_gpu_kmeans(target, params.seed)
        target.train(sample)
    target.add_with_ids(x, ids)
    if on_gpu:
        index = _from_gpu(target)
        if kind == "ivf":
            _inner(index).nprobe = used["nprobe"]
    return BuiltIndex(index=index, kind=kind, params=used, n_items=n, dim=d,
                      build_seconds=time.perf_counter() - t0, device=used["device"])


def _seed_gpu_kmeans(index, seed: int) -> None:
    # not every FAISS version's GPU cloner copies the clustering parameters (the k-means seed) of an IVF index
    import faiss

    gpu_ivf = faiss.downcast_index(index.index)
    if hasattr(gpu_ivf, "cp"):
        gpu_ivf.cp.seed = seed


def _inner(index):
    import faiss

    index = _cpu(index)
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


@dataclasses.dataclass
class GpuSearchIndex:
    """A loaded index with a GPU copy for batch search (:func:`for_search`); ``cpu`` is the index itself.

    Everything other than :func:`search` (:func:`describe`, :func:`id_map`, :func:`save`) uses ``cpu``."""

    cpu: object
    gpu: object
    ids: np.ndarray  # the raw ids the index holds: the excluded count of a filtered search


def _cpu(index):
    return index.cpu if isinstance(index, GpuSearchIndex) else index


def for_search(index, device: str | None = None):
    """The loaded ``index`` ready for batch search on ``device`` (None: the ``RECSYS_FAISS_DEVICE`` setting):
    a :class:`GpuSearchIndex` for a flat or IVF index on the GPU; ``index`` itself on the CPU and for HNSW.

    Worth it for many queries at once (evaluation batches); one query at a time is faster on the CPU."""
    import faiss

    if isinstance(index, GpuSearchIndex) or resolve_device(device) != "gpu":
        return index
    if isinstance(_inner(index), faiss.IndexHNSW):  # no GPU implementation
        return index
    return GpuSearchIndex(cpu=index, gpu=_to_gpu(index), ids=id_map(index))


def search(index, queries, k: int, allowed_ids: Sequence[int] | None = None) -> Neighbours:
    """The ``k`` best items per query by inner product, optionally among ``allowed_ids`` only."""
    q = _as_matrix(np.atleast_2d(queries))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(index, GpuSearchIndex):
        found = _search_gpu(index, q, int(k), allowed_ids)
        if found is not None:
            return found
        index = index.cpu
    params, _sel = _search_params(index, allowed_ids, k)  # keep the selector alive during the search
    scores, ids = index.search(q, int(k), params=params) if params is not None else index.search(q, int(k))
    return _neighbours(scores, ids)


def _search_gpu(index: GpuSearchIndex, q: np.ndarray, k: int, allowed_ids) -> Neighbours | None:
    """The search on the GPU copy, or None when it must run on the CPU (deeper than :data:`GPU_MAX_K`).

    A filter cannot go to the GPU as an IDSelector (GPU indexes ignore it), so the GPU returns the best
    ``k + excluded`` items and the excluded ones are dropped: at most ``excluded`` of them can rank above the
    k-th allowed item, so this is the selector's top-k (same probed cells for IVF)."""
    if allowed_ids is None:
        depth, allowed = k, None
    else:
        allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
        depth = k + int(len(index.ids) - np.isin(index.ids, allowed).sum())
    depth = min(depth, len(index.ids))
    if depth > GPU_MAX_K:
        return None
    scores, ids = index.gpu.search(q, max(depth, 1))
    if allowed is None:
        return _neighbours(scores, ids)
    keep = np.isin(ids, allowed) & (ids >= 0)
    return Neighbours(ids=[ids[r][keep[r]][:k] for r in range(len(ids))],
                      scores=[scores[r][keep[r]][:k] for r in range(len(ids))])


def _neighbours(scores: np.ndarray, ids: np.ndarray) -> Neighbours:
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

    faiss.write_index(_cpu(index), str(Path(path)))


def load(path):
    import faiss

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FAISS index {path} not found: materialize faiss_index first")
    return faiss.read_index(str(path))


def describe(index) -> dict:
    """Kind and search parameters of a loaded index (for metadata and for serving's logs)."""
    import faiss

    index = _cpu(index)
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

    return faiss.vector_to_array(_cpu(index).id_map).astype(np.int64)
