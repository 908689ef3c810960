"""``unroll_features``: repeats the request's user and context features once per candidate, for the ranker.

Inputs: ``user_categorical`` / ``user_continuous`` and ``context_categorical`` / ``context_continuous`` (one row
each, :mod:`recsys_assets.serving.features`) and ``item_ids`` INT64 [-1] (only its length is used). Outputs:
``unrolled_categorical`` INT64 [N, .] (user then context columns) and ``unrolled_continuous`` FP32 [N, .], one row
per candidate (the ranker scores N rows of user x context x item).
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.executor import BadRequest, Stage
from recsys_assets.serving.features import CONTEXT, UNROLLED, USER


class UnrollFeatures(Stage):
    inputs = USER.tensors + CONTEXT.tensors + ("item_ids",)
    outputs = UNROLLED.tensors

    def __call__(self, item_ids, user_categorical, user_continuous, context_categorical, context_continuous):
        n = len(np.asarray(item_ids))
        out = {}
        for tensor, parts in ((UNROLLED.categorical_tensor, (user_categorical, context_categorical)),
                              (UNROLLED.continuous_tensor, (user_continuous, context_continuous))):
            if any(len(p) != 1 for p in parts):
                raise BadRequest(f"unroll_features takes one row of request features, got {[len(p) for p in parts]}")
            row = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
            out[tensor] = np.broadcast_to(row, (n, len(row)))
        return out
