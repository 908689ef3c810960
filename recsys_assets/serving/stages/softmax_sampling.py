"""``softmax_sampling``: the final order: the greedy top K, or a score-weighted sample in diversity mode.

Inputs: ``scores`` FP32 [-1] (the ranker's click probabilities), ``item_index`` INT64 [-1] (NVTabular item rows)
and ``item_ids`` INT64 [-1] (raw ids), row-aligned; ``top_k`` INT64 [1]; ``diversity`` BOOL [1]; optional
``device_type``, ``timestamp``, ``interest_1..3`` INT64 [1] (the request's context and the user's interest codes,
for the prior), ``age`` FP64 [1] and ``gender`` INT64 [1] (the user's, for the prior's gender and price x age
terms; without them those terms are 0). Outputs ``selected_index``, ``selected_ids`` INT64 [-1] and ``selected_scores`` FP32 [-1], at most
``top_k`` rows.

The ordering score: with ``PRIOR_WEIGHT`` w > 0, each candidate's ``logit(p) + w * prior`` (``lib.prior``: the
user's interests, the category's click lift in this device and time band, the item's clicks, the user's gender
against the item's and the item's price against the user's age, weighted by ``PRIOR_COEFFICIENTS``), turned back
into (0, 1) by the sigmoid; ``selected_scores`` are those. The prior's table is published with the popularity tables in
Valkey and cached for ``POPULARITY_REFRESH_S``; without it (no Valkey, none published, or the request lacks its
inputs) the order is the DLRM's alone, counted in ``recsys_degraded_requests_total{stage="softmax_sampling",
reason="prior_unavailable"}``. w = 0: the DLRM's scores unchanged.

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

from recsys_assets.lib import prior
from recsys_assets.serving.common import scalar
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext
from recsys_assets.serving.runtime import PublishedPrior, Runtime, ValkeyLink

PRIOR_INPUTS = ("device_type", "timestamp", "interest_1", "interest_2", "interest_3")
USER_INPUTS = ("age", "gender")  # the prior's cross terms: 0 without them


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
    optional_inputs = (*PRIOR_INPUTS, *USER_INPUTS)
    outputs = ("selected_index", "selected_ids", "selected_scores")

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.pool = ctx.param_int("RANKING_TOPK", 100)
        self.temperature = ctx.param_float("DIVERSITY_TEMPERATURE", 0.5)
        self.seed = ctx.param_int("SAMPLING_SEED", -1)
        self.prior_weight = ctx.param_float("PRIOR_WEIGHT", 0.0)
        try:
            self.coefficients = prior.parse_coefficients(ctx.param("PRIOR_COEFFICIENTS", ""))
        except prior.PriorError as exc:
            raise StageConfigError(f"PRIOR_COEFFICIENTS: {exc}") from None
        if self.pool < 1 or self.temperature <= 0 or not self.prior_weight >= 0:
            raise StageConfigError(f"RANKING_TOPK={self.pool} must be >= 1, DIVERSITY_TEMPERATURE="
                                   f"{self.temperature} > 0 and PRIOR_WEIGHT={self.prior_weight} >= 0")
        # connects on the first read only: a release without the prior never talks to Valkey
        link = ValkeyLink(Runtime.from_environ(ctx.environ), "popularity", ctx.log,
                          timeout_s=ctx.param_float("VALKEY_TIMEOUT_S", 0.25),
                          retry_after_s=ctx.param_float("RETRY_AFTER_S", 1.0))
        self.prior = PublishedPrior(link, ctx.log, refresh_s=ctx.param_float("POPULARITY_REFRESH_S", 60.0))
        if self.prior_weight > 0:
            ctx.declare_degraded("prior_unavailable")

    def ordering_scores(self, scores: np.ndarray, item_ids: np.ndarray, context: dict) -> np.ndarray:
        """The scores the order follows: the DLRM's, blended with the prior when there is one."""
        if self.prior_weight == 0 or not len(scores):
            return scores
        table = self.prior.get() if all(context.get(name) is not None for name in PRIOR_INPUTS) else None
        if table is None:
            self.ctx.degraded("prior_unavailable")
            return scores
        value = {name: int(scalar(context[name], name)) for name in PRIOR_INPUTS}
        age, gender = context.get("age"), context.get("gender")
        log_prior = table.log_prior(item_ids, np.array([value["device_type"]]), np.array([value["timestamp"]]),
                                    np.array([[value[f"interest_{k}"] for k in (1, 2, 3)]]), self.coefficients,
                                    gender=None if gender is None else np.array([int(scalar(gender, "gender"))]),
                                    age=None if age is None else np.array([float(scalar(age, "age"))]))[0]
        return prior.sigmoid(prior.blend(scores, log_prior, self.prior_weight)).astype(np.float32)

    def close(self) -> None:
        self.prior.link.close()

    def rng(self, scores: np.ndarray) -> np.random.Generator:
        if self.seed < 0:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(scores).tobytes())])

    def __call__(self, scores, item_index, item_ids, top_k, diversity, **context):
        scores = self.ordering_scores(np.asarray(scores, dtype=np.float32), np.asarray(item_ids, np.int64), context)
        k = min(int(scalar(top_k, "top_k")), len(scores))
        if bool(scalar(diversity, "diversity")) and k > 0:
            chosen = sample(scores, k, max(self.pool, k), self.temperature, self.rng(scores))
        else:
            chosen = greedy(scores, k)
        return {"selected_index": np.asarray(item_index, dtype=np.int64)[chosen],
                "selected_ids": np.asarray(item_ids, dtype=np.int64)[chosen], "selected_scores": scores[chosen]}
