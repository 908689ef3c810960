"""``filter_seen_items``: drops the candidates a user has already interacted with (their Bloom filter in Valkey).

Inputs: ``user_id`` INT64 [1] (the request's raw id: a new user who clicked is filtered before the online store
knows them; -1 is never filtered), ``candidate_ids`` INT64 [-1] (retrieval order), ``timestamp`` INT64 [1],
``top_k`` INT64 [1]. Output: ``item_ids`` INT64 [-1]: the unseen candidates in retrieval order, at most
``RETRIEVAL_TOPK`` of them (what the ranker scores).

Anonymous requests (user -1) with ``CONTEXT_CANDIDATES`` n > 0 and a ``device_type`` (optional input) swap the last
n of those for the n available items the ordering prior ranks best in the request's device and time band without
a user (``lib.prior.Prior.context_log_prior``: the category's click lift there and the item's clicks): a
context-conditioned candidate source beside the query tower, which knows nothing of an anonymous visitor. Without
the prior (not published, Valkey away) the retrieval candidates stay, counted as ``prior_unavailable``.

When fewer than ``top_k`` survive, the list is filled from the popularity tables (``lib.popularity``, global
table, cached for ``POPULARITY_REFRESH_S``) with popular items that are available on the request's day, unseen
and not already candidates, so a heavy user never gets a short list.

The filter (:mod:`recsys_assets.serving.bloom`): ``BLOOM_CAPACITY`` items at ``BLOOM_ERROR_RATE``, TTL
``BLOOM_TTL_S`` (7 days) from the first click, ``BLOOM_MODE`` auto | portable | native. One ``GET`` of the
bitmap answers for all candidates (a second one only when the popular fill is needed).

Degradation: with Valkey unreachable the candidates pass through unfiltered (and the fill uses the last cached
popularity list), counted in ``recsys_degraded_requests_total{stage="filter_seen_items"}``; Valkey is tried again
after ``RETRY_AFTER_S`` and the filter resumes by itself.
"""

from __future__ import annotations

import time

import numpy as np

from recsys_assets.serving.bloom import BloomParams, SeenFilter
from recsys_assets.serving.common import AVAILABILITY_FILE, Availability, day_of, epoch_of, scalar
from recsys_assets.serving.executor import Stage, StageContext
from recsys_assets.serving.runtime import PublishedPrior, Runtime, ValkeyLink, ValkeyUnavailable

NEVER = 10**9  # a day late enough that every item counts as released (availability is checked locally)


class FilterSeenItems(Stage):
    inputs = ("user_id", "candidate_ids", "timestamp", "top_k")
    optional_inputs = ("device_type",)
    outputs = ("item_ids",)

    clock = staticmethod(time.monotonic)

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        runtime = Runtime.from_environ(ctx.environ)
        ctx.declare_degraded("valkey_unreachable", "popularity_unreachable")
        retry = ctx.param_float("RETRY_AFTER_S", 1.0)
        timeout = ctx.param_float("VALKEY_TIMEOUT_S", 0.25)
        self.seen_link = ValkeyLink(runtime, "seen", ctx.log, timeout_s=timeout, retry_after_s=retry)
        self.popularity_link = ValkeyLink(runtime, "popularity", ctx.log, timeout_s=timeout, retry_after_s=retry)
        self.filter = SeenFilter(self.seen_link.prefix, BloomParams(
            capacity=ctx.param_int("BLOOM_CAPACITY", 1000), error_rate=ctx.param_float("BLOOM_ERROR_RATE", 0.01),
            ttl_seconds=ctx.param_int("BLOOM_TTL_S", 7 * 24 * 3600)), mode=ctx.param("BLOOM_MODE", "auto"))
        self.topk = ctx.param_int("RETRIEVAL_TOPK", 300)
        self.popularity_size = ctx.param_int("POPULARITY_CACHE_SIZE", 300)
        self.popularity_refresh_s = ctx.param_float("POPULARITY_REFRESH_S", 60.0)
        self.start_epoch = epoch_of(ctx.param("START_DATE"))
        self.availability = Availability.load(ctx.artifact(AVAILABILITY_FILE))
        self._popular = np.zeros(0, np.int64)
        self._popular_at: float | None = None
        self.context_candidates = ctx.param_int("CONTEXT_CANDIDATES", 0)
        self.prior = PublishedPrior(self.popularity_link, ctx.log, refresh_s=self.popularity_refresh_s,
                                    clock=lambda: self.clock())
        if self.context_candidates > 0:
            ctx.declare_degraded("prior_unavailable")
        if not runtime.valkey_url:
            ctx.log.warning("RECSYS_VALKEY_URL is not set: seen items are not filtered and there is no popularity "
                            "fill (every request counts as degraded)")

    def popular(self) -> np.ndarray:
        """The most popular item ids (cached; the last good list while Valkey is away)."""
        now = self.clock()
        if self._popular_at is None or now - self._popular_at >= self.popularity_refresh_s:
            from recsys_assets.lib import popularity

            try:
                ids = self.popularity_link.run(lambda c: popularity.top_items(
                    c, self.popularity_link.prefix, self.popularity_size, NEVER))
                self._popular = np.asarray(ids, dtype=np.int64)
            except ValkeyUnavailable:
                self.ctx.degraded("popularity_unreachable")
            except popularity.PopularityNotPublished as exc:
                self.ctx.log.warning("no popularity fill: %s", exc)
            self._popular_at = now
        return self._popular

    def seen(self, user_id: int, ids: np.ndarray) -> np.ndarray:
        """Whether the user has seen each id; all False for anonymous users and while Valkey is away."""
        if user_id < 0 or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        try:
            return self.seen_link.run(lambda c: self.filter.contains(c, user_id, ids))
        except ValkeyUnavailable:
            self.ctx.degraded("valkey_unreachable")
            return np.zeros(len(ids), dtype=bool)

    def close(self) -> None:
        self.seen_link.close()
        self.popularity_link.close()

    def with_context_candidates(self, kept: np.ndarray, device: int, timestamp: int) -> np.ndarray:
        """``kept`` with its last ``CONTEXT_CANDIDATES`` replaced by the best available items of the context."""
        table = self.prior.get()
        if table is None:
            self.ctx.degraded("prior_unavailable")
            return kept
        n = min(self.context_candidates, self.topk)
        ids = np.arange(len(table.clicks), dtype=np.int64)
        ids = ids[self.availability.mask(ids, day_of(timestamp, self.start_epoch))]
        score = table.context_log_prior(ids, np.array([device]), np.array([timestamp]))[0]
        head = kept[:self.topk - n]
        best = ids[np.argsort(-score, kind="stable")]
        return np.concatenate([head, best[~np.isin(best, head)][:n]])

    def __call__(self, user_id, candidate_ids, timestamp, top_k, device_type=None):
        uid = int(scalar(user_id, "user_id"))
        k = int(scalar(top_k, "top_k"))
        candidates = np.asarray(candidate_ids, dtype=np.int64)
        kept = candidates[~self.seen(uid, candidates)][:self.topk]
        if uid < 0 and self.context_candidates > 0 and device_type is not None:
            kept = self.with_context_candidates(kept, int(scalar(device_type, "device_type")),
                                                int(scalar(timestamp, "timestamp")))
        if len(kept) < k:  # rare: a heavy user or a tiny catalogue; fill from the popular items
            day = day_of(int(scalar(timestamp, "timestamp")), self.start_epoch)
            popular = self.popular()
            popular = popular[self.availability.mask(popular, day) & ~np.isin(popular, kept)]
            _, first = np.unique(popular, return_index=True)
            popular = popular[np.sort(first)]
            fill = popular[~self.seen(uid, popular)][:k - len(kept)]
            kept = np.concatenate([kept, fill])
        return {"item_ids": kept}
