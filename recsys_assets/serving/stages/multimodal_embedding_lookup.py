"""``multimodal_embedding_lookup``: the candidates' content embeddings, by raw item id.

Input ``item_ids`` INT64 [-1]. Outputs ``image_embedding`` and ``text_embedding`` FP32 [-1, d], row-aligned.

The matrix (``<version>/multimodal.npy``, from ``embeddings/multimodal.npy``: row r = item r, columns
[image PCA | text PCA], ``IMAGE_DIMS`` image columns) is keyed by raw id, so cold items, which share the OOV row
of every NVTabular table, still get their own content embeddings (DESIGN.md Contracts). An id outside the matrix
gets zeros.
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.executor import Stage, StageConfigError, StageContext

MATRIX_FILE = "multimodal.npy"


class MultimodalEmbeddingLookup(Stage):
    inputs = ("item_ids",)
    outputs = ("image_embedding", "text_embedding")

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        matrix = np.load(ctx.artifact(MATRIX_FILE), allow_pickle=False)
        self.image_dims = ctx.param_int("IMAGE_DIMS", 64)
        if matrix.ndim != 2 or not 0 < self.image_dims < matrix.shape[1]:
            raise StageConfigError(f"{MATRIX_FILE} has shape {matrix.shape}; IMAGE_DIMS={self.image_dims} must split "
                                   "its columns into [image | text]")
        # One extra zero row answers every id outside the matrix without a branch per request.
        self.matrix = np.vstack([matrix.astype(np.float32), np.zeros((1, matrix.shape[1]), np.float32)])
        self.n_items = matrix.shape[0]

    def __call__(self, item_ids):
        ids = np.asarray(item_ids, dtype=np.int64)
        rows = np.where((ids >= 0) & (ids < self.n_items), ids, self.n_items)
        block = self.matrix[rows]
        return {"image_embedding": block[:, :self.image_dims], "text_embedding": block[:, self.image_dims:]}
