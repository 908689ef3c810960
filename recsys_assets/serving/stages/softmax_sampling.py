"""``softmax_sampling``: the final order: the greedy top K, or a score-weighted sample in diversity mode.

Inputs: ``scores`` FP32 [-1] (the ranker's click probabilities), ``item_index`` INT64 [-1] (NVTabular item rows)
and ``item_ids`` INT64 [-1] (raw ids), row-aligned; ``top_k`` INT64 [1]; ``diversity`` BOOL [1]. Outputs
``selected_index``, ``selected_ids`` INT64 [-1] and ``selected_scores`` FP32 [-1], at most ``top_k`` rows.

- greedy (``diversity`` false): the ``top_k`` highest scores, descending (ties: the earlier candidate first).
- diversity: ``top_k`` items drawn without replacement from the ``RANKING_TOPK`` best, with probability
  proportional to ``softmax(logit(score) / DIVERSITY_TEMPERATURE)``, i.e. to the odds p / (1 - p) raised to
  1 / T, by the Gumbel-top-k trick (equivalent to drawing one at a time). The default T = 0.5 (odds squared)
  keeps the high scorers in most lists while the tail still gets shown; T = 1 flattens towards uniform over the
  pool, small T tends to greedy. Returned in draw order, so lists vary between requests.

Seedable: ``SAMPLING_SEED`` >= 0 makes each request's draw a function of the seed and the request's scores
(the same request gets the same list, which is what tests and demos need); -1 draws fresh randomness.
"""

from __future__ import annotations

import zlib

import numpy as np

from recsys_assets.serving.common import scalar
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext


def greedy(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, best first; ties keep candidate order."""
    order = np.argsort(-scores, kind="stable")
    return order[:k]


def sample(scores: np.ndarray, k: int, pool: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``k`` positions drawn without replacement among the ``pool`` best, weights softmax(logit(s) / T)."""
    best = greedy(scores, pool)
    p = np.clip(scores[best].astype(np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p) - np.log1p(-p)
    keys = logits / temperature + rng.gumbel(size=len(best))
    return best[np.argsort(-keys, kind="stable")[:k]]


class SoftmaxSampling(Stage):
    inputs = ("scores", "item_index", "item_ids", "top_k", "diversity")
    outputs = ("selected_index", "selected_ids", "selected_scores")

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.pool = ctx.param_int("RANKING_TOPK", 100)
        self.temperature = ctx.param_float("DIVERSITY_TEMPERATURE", 0.5)
        self.seed = ctx.param_int("SAMPLING_SEED", -1)
        if self.pool < 1 or self.temperature <= 0:
            raise StageConfigError(f"RANKING_TOPK={self.pool} must be >= 1 and DIVERSITY_TEMPERATURE="
                                   f"{self.temperature} > 0")

    def rng(self, scores: np.ndarray) -> np.random.Generator:
        if self.seed < 0:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(scores).tobytes())])

    def __call__(self, scores, item_index, item_ids, top_k, diversity):
        scores = np.asarray(scores, dtype=np.float32)
        k = min(int(scalar(top_k, "top_k")), len(scores))
        if bool(scalar(diversity, "diversity")) and k > 0:
            chosen = sample(scores, k, max(self.pool, k), self.temperature, self.rng(scores))
        else:
            chosen = greedy(scores, k)
        return {"selected_index": np.asarray(item_index, dtype=np.int64)[chosen],
                "selected_ids": np.asarray(item_ids, dtype=np.int64)[chosen], "selected_scores": scores[chosen]}
