"""``unroll_features``: repeats the request's user and context features once per candidate, for the ranker.

Inputs: the five transformed user features and five context features (each [1], workflow names) and
``item_ids`` INT64 [-1] (only its length is used). Outputs: the same ten features as ``unrolled_<name>`` [-1],
each of the candidates' length, dtypes kept (the ranker scores N rows of user x context x item).
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.executor import Stage
from recsys_assets.serving.stages.onnx_models import CONTEXT_FEATURES, USER_FEATURES

PER_REQUEST = USER_FEATURES + CONTEXT_FEATURES


class UnrollFeatures(Stage):
    inputs = PER_REQUEST + ("item_ids",)
    outputs = tuple(f"unrolled_{name}" for name in PER_REQUEST)

    def __call__(self, item_ids, **features):
        n = len(np.asarray(item_ids))
        return {f"unrolled_{name}": np.repeat(np.asarray(value).reshape(-1)[:1], n)
                for name, value in features.items()}
