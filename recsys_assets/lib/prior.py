"""The ordering prior: what the logs say about a candidate for this user in this context, added to the DLRM's logit.

The final order ranks the retrieved candidates by ::

    score(item) = logit(p_DLRM(item)) + weight * prior(item)
    prior(item) = log mix[c] + log lift[c, device, band] + log log(2 + clicks[item])      (c: the item's category)

- ``mix``: the user's interest codes (``interest_1..3``, the feature store's recency-weighted categories) as
  shares weighted :data:`INTEREST_WEIGHTS`, plus :data:`MIX_FLOOR` for every category. A user without interests
  (cold, anonymous) has a flat mix: the term is then the same for every item and only context and popularity
  count.
- ``lift``: each category's click rate on each device and :data:`BAND_HOURS`-hour band of the day over the
  window, divided by the window's click rate, shrunk towards 1 with :data:`LIFT_PSEUDO_IMPRESSIONS` impressions.
- ``clicks``: the item's clicks over the window (what the popularity tables count); an item the table does not
  know (added after the table was built) counts as unclicked, in no category (mix floor, lift 1).

Why a prior at all: the DLRM is given the same signals as features, but trained on about three clicks per user it
under-uses them; the blend keeps the DLRM's item-level knowledge and adds what the logs say directly
(``benchmarks/probe_blend.py`` measured it; docs/measurements.md). The ``weight`` is chosen on the validation days
by true expected clicks (``ranking_evaluation``) and travels with the release (``PRIOR_WEIGHT`` of
``softmax_sampling``); 0 turns the blend off.

A :class:`Prior` is built with the popularity tables from the same window of impressions and published beside
them in Valkey (``lib.popularity``), so the daily popularity refresh moves both at once. Pure numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np

from recsys_assets.lib.feature_spec import DEVICES

BAND_HOURS = 6
INTEREST_WEIGHTS = (3.0, 2.0, 1.0)   # interest_1..3, as shares of their sum
MIX_FLOOR = 1e-3                     # every category keeps a little, so unseen categories rank by context
LIFT_PSEUDO_IMPRESSIONS = 50.0
N_DEVICES = len(DEVICES)
SECONDS_PER_HOUR = 3600


class PriorError(ValueError):
    """A prior table that cannot be built or read."""


def band_of(timestamps, band_hours: int = BAND_HOURS) -> np.ndarray:
    """The ``band_hours``-hour band (0 .. 24/band_hours - 1) of each timestamp's UTC hour."""
    return (np.asarray(timestamps, np.int64) % 86_400) // SECONDS_PER_HOUR // band_hours


def lift_table(category: np.ndarray, device: np.ndarray, timestamp: np.ndarray, click: np.ndarray,
               n_categories: int, band_hours: int = BAND_HOURS) -> np.ndarray:
    """(categories, devices, bands): each cell's shrunk click rate over the overall click rate (1 = no lift).

    Rows whose device is unknown (-1 in masked data) count towards the overall rate only.
    """
    if band_hours < 1 or 24 % band_hours:
        raise PriorError(f"band_hours={band_hours}: expected a divisor of 24 (1, 2, 3, 4, 6, 8, 12, 24)")
    n_bands = 24 // band_hours
    category = np.asarray(category, np.int64)
    device = np.asarray(device, np.int64)
    click = np.asarray(click, np.float64)
    seen = (device >= 0) & (device < N_DEVICES) & (category >= 0)
    cell = ((category * N_DEVICES + device) * n_bands + band_of(timestamp, band_hours))[seen]
    size = n_categories * N_DEVICES * n_bands
    clicks = np.bincount(cell, weights=click[seen], minlength=size)
    shown = np.bincount(cell, minlength=size)
    base = click.sum() / max(len(click), 1)
    rate = (clicks + LIFT_PSEUDO_IMPRESSIONS * base) / (shown + LIFT_PSEUDO_IMPRESSIONS)
    return (rate / max(base, 1e-9)).reshape(n_categories, N_DEVICES, n_bands)


def interest_mix(interests: np.ndarray, n_categories: int) -> np.ndarray:
    """(users, categories) mix from (users, 3) interest codes (-1: none)."""
    interests = np.asarray(interests, np.int64).reshape(-1, len(INTEREST_WEIGHTS))
    mix = np.full((len(interests), n_categories), MIX_FLOOR)
    has = (interests >= 0) & (interests < n_categories)
    users = np.broadcast_to(np.arange(len(interests))[:, None], interests.shape)
    shares = np.broadcast_to(np.asarray(INTEREST_WEIGHTS) / sum(INTEREST_WEIGHTS), interests.shape)
    np.add.at(mix, (users[has], interests[has]), shares[has])
    return mix


@dataclasses.dataclass(frozen=True)
class Prior:
    """The tables behind :func:`Prior.log_prior`: per item its clicks and category, per category the context lift."""

    clicks: np.ndarray         # (items,) clicks in the window, row = raw item id
    item_category: np.ndarray  # (items,) category codes (lib.top_category), row = raw item id
    lift: np.ndarray           # (categories, devices, bands)
    band_hours: int = BAND_HOURS

    @property
    def n_categories(self) -> int:
        return int(self.lift.shape[0])

    @functools.cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request-independent logs, computed once per table: the item's category and log log(2 + clicks)
        with one extra slot at the end for an unknown id, and log lift padded with a neutral (0) last category and
        last device, so -1 (unknown) indexes the neutral entries."""
        category = np.append(self.item_category, -1)
        log_pop = np.append(np.log(np.log(2.0 + self.clicks)), np.log(np.log(2.0)))
        log_lift = np.zeros((self.n_categories + 1, N_DEVICES + 1, self.lift.shape[2]))
        log_lift[:-1, :-1] = np.log(self.lift)
        return category, log_pop, log_lift

    def _rows(self, item_ids, n_requests: int) -> np.ndarray:
        """(requests, items) row numbers into :attr:`_tables` (-1: an id the table does not know)."""
        ids = np.broadcast_to(np.asarray(item_ids, np.int64), (n_requests, np.shape(item_ids)[-1]))
        return np.where((ids >= 0) & (ids < len(self.clicks)), ids, -1)

    def _context(self, rows: np.ndarray, device: np.ndarray, timestamp) -> np.ndarray:
        category, log_pop, log_lift = self._tables
        device = np.where((device >= 0) & (device < N_DEVICES), device, -1)
        band = band_of(np.asarray(timestamp, np.int64).reshape(-1), self.band_hours)
        return log_lift[category[rows], device[:, None], band[:, None]] + log_pop[rows]

    def context_log_prior(self, item_ids, device: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """(requests, items): the terms that need no user, log lift + log log(2 + clicks) (what an anonymous
        visitor's prior is, up to a constant)."""
        device = np.asarray(device, np.int64).reshape(-1)
        return self._context(self._rows(item_ids, len(device)), device, timestamp)

    def log_prior(self, item_ids, device: np.ndarray, timestamp: np.ndarray, interests: np.ndarray) -> np.ndarray:
        """(requests, items) prior of ``item_ids`` ((items,) shared, or (requests, items)) for each request's
        device, timestamp and (requests, 3) interest codes. Unknown ids and devices get the neutral terms."""
        device = np.asarray(device, np.int64).reshape(-1)
        rows = self._rows(item_ids, len(device))
        log_mix = np.full((len(device), self.n_categories + 1), np.log(MIX_FLOOR))  # last column: no category
        log_mix[:, :-1] = np.log(interest_mix(interests, self.n_categories))
        return np.take_along_axis(log_mix, self._tables[0][rows], axis=1) + self._context(rows, device, timestamp)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, clicks=self.clicks.astype(np.float32), item_category=self.item_category.astype(np.int32),
                 lift=self.lift.astype(np.float32), band_hours=np.array(self.band_hours))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Prior":
        try:
            with np.load(io.BytesIO(raw)) as data:
                prior = cls(clicks=data["clicks"].astype(np.float64), item_category=data["item_category"].astype(np.int64),
                            lift=data["lift"].astype(np.float64), band_hours=int(data["band_hours"]))
        except (OSError, ValueError, KeyError) as exc:
            raise PriorError(f"not a prior table: {exc}") from exc
        if prior.lift.ndim != 3 or prior.lift.shape[1] != N_DEVICES or prior.lift.shape[2] * prior.band_hours != 24 \
                or len(prior.clicks) != len(prior.item_category):
            raise PriorError(f"malformed prior table: lift {prior.lift.shape}, band_hours {prior.band_hours}, "
                             f"{len(prior.clicks)} clicks, {len(prior.item_category)} categories")
        return prior


def build(item_id: np.ndarray, device: np.ndarray, timestamp: np.ndarray, click: np.ndarray,
          item_category: np.ndarray, n_categories: int, band_hours: int = BAND_HOURS) -> Prior:
    """The prior of a window of impressions (``item_id``, ``device``, ``timestamp``, ``click`` per row);
    ``item_category``: the catalogue's category code per raw item id."""
    item_id = np.asarray(item_id, np.int64)
    item_category = np.asarray(item_category, np.int64)
    click = np.asarray(click, np.float64)
    if len(item_id) and (item_id.min() < 0 or item_id.max() >= len(item_category)):
        raise PriorError(f"impressions name item ids outside the catalogue 0..{len(item_category) - 1}")
    clicks = np.bincount(item_id, weights=click, minlength=len(item_category))
    lift = lift_table(item_category[item_id], device, timestamp, click, n_categories, band_hours)
    return Prior(clicks=clicks, item_category=item_category, lift=lift, band_hours=band_hours)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def blend(p: np.ndarray, log_prior: np.ndarray | None, weight: float) -> np.ndarray:
    """The ordering score: ``logit(p) + weight * log_prior`` (just the logit when there is no prior); a slot
    without a candidate (p = -inf) stays -inf."""
    p = np.asarray(p, np.float64)
    empty = ~np.isfinite(p)
    score = logit(np.where(empty, 0.5, p))
    if log_prior is not None and weight != 0:
        score = score + weight * log_prior
    return np.where(empty, -np.inf, score)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
