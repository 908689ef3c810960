"""``faiss_retrieval``: the query embedding's nearest items by inner product, as raw item ids.

Inputs: ``query_embedding`` FP32 [D], ``timestamp`` INT64 [1]. Output: ``candidate_ids`` INT64 [-1], best first.

The index (``<version>/index.faiss``) is keyed by raw item id (an ``IndexIDMap``, or positions mapped through
``<version>/index_ids.npy`` when present). It searches ``RETRIEVAL_TOPK + RETRIEVAL_MARGIN`` neighbours
(over-fetch), then drops FAISS's -1 padding (fewer vectors than asked, or an ANN probe that came back short)
and items not yet available on the request's day (``availability.npy`` + ``START_DATE``). The seen filter runs
next and cuts the list to ``RETRIEVAL_TOPK``; the margin is what it may remove without leaving the ranker short.
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.common import AVAILABILITY_FILE, Availability, day_of, epoch_of, scalar
from recsys_assets.serving.executor import BadRequest, Stage, StageConfigError, StageContext

INDEX_FILE = "index.faiss"
INDEX_IDS_FILE = "index_ids.npy"


class FaissRetrieval(Stage):
    inputs = ("query_embedding", "timestamp")
    outputs = ("candidate_ids",)

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        import faiss

        faiss.omp_set_num_threads(ctx.param_int("FAISS_THREADS", 1))
        self.index = faiss.read_index(str(ctx.artifact(INDEX_FILE)))
        ids_path = ctx.model_dir / INDEX_IDS_FILE if ctx.model_dir is not None else None
        self.position_ids = np.load(ids_path) if ids_path is not None and ids_path.exists() else None
        self.topk = ctx.param_int("RETRIEVAL_TOPK", 300)
        self.margin = ctx.param_int("RETRIEVAL_MARGIN", 100)
        if self.topk < 1 or self.margin < 0:
            raise StageConfigError(f"RETRIEVAL_TOPK={self.topk} must be >= 1 and RETRIEVAL_MARGIN={self.margin} >= 0")
        self.start_epoch = epoch_of(ctx.param("START_DATE"))
        self.availability = Availability.load(ctx.artifact(AVAILABILITY_FILE))
        # ANN indexes take their search breadth from parameters (exact indexes have none): IVF probes
        # FAISS_NPROBE lists; HNSW explores at least as many nodes as it must return.
        inner = faiss.downcast_index(self.index.index if hasattr(self.index, "index") else self.index)
        if hasattr(inner, "nprobe"):
            inner.nprobe = ctx.param_int("FAISS_NPROBE", 16)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(ctx.param_int("FAISS_EF_SEARCH", 512), self.topk + self.margin)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __call__(self, query_embedding, timestamp):
        query = np.asarray(query_embedding, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise StageConfigError(f"query embedding has {query.shape[1]} dims, the FAISS index {self.dim}: the query "
                                   "tower and the index come from different trainings; rebuild the repository")
        if not np.isfinite(query).all():
            raise BadRequest("the query embedding is not finite (the query tower produced NaN/inf)")
        k = min(self.topk + self.margin, int(self.index.ntotal))
        if k == 0:
            return {"candidate_ids": np.zeros(0, np.int64)}
        _, labels = self.index.search(np.ascontiguousarray(query), k)
        labels = labels[0]
        labels = labels[labels >= 0]  # FAISS pads with -1 when it has fewer than k results
        if self.position_ids is not None:
            labels = self.position_ids[labels]
        day = day_of(int(scalar(timestamp, "timestamp")), self.start_epoch)
        return {"candidate_ids": labels[self.availability.mask(labels, day)].astype(np.int64)}
