"""The ordering prior: what the logs say about a candidate for this user in this context, added to the DLRM's logit.

The final order ranks the retrieved candidates by ::

    score(item) = logit(p_DLRM(item)) + weight * prior(item)
    prior(item) = sum_t coefficient[t] * term_t(item)                                     (t in :data:`TERMS`)

    interests        log mix[c]                        (c: the item's category)
    context          log lift[c, device, band]
    popularity       log log(2 + clicks[item])
    gender_match     1 where the item is for the user's gender (0 for unisex items or an unknown gender)
    gender_mismatch  1 where the item is for the other gender
    price_age        price_z[item] * age_z(user)      (standardised log price x standardised age)

With :data:`DEFAULT_COEFFICIENTS` (1, 1, 1, 0, 0, 0) the prior is the first three terms' sum, what the first
releases served.

- ``mix``: the user's interest codes (``interest_1..3``, the feature store's recency-weighted categories) as
  shares weighted :data:`INTEREST_WEIGHTS`, plus :data:`MIX_FLOOR` for every category. A user without interests
  (cold, anonymous) has a flat mix: the term is then the same for every item and only context and popularity
  count.
- ``lift``: each category's click rate on each device and :data:`BAND_HOURS`-hour band of the day over the
  window, divided by the window's click rate, shrunk towards 1 with :data:`LIFT_PSEUDO_IMPRESSIONS` impressions.
- ``clicks``: the item's clicks over the window (what the popularity tables count); an item the table does not
  know (added after the table was built) counts as unclicked, in no category (mix floor, lift 1).
- the gender and price x age crosses: the item's gender and log price (standardised over the catalogue) are in the
  table, the user's gender and age come with the request (``feast_user_lookup``), standardised with the users'
  mean and spread the table was built with. Without them (an anonymous visitor's unknown gender and mean age, a
  table built without user ages) those terms are 0.

Why a prior at all: the DLRM is given the same signals as features, but trained on about three clicks per user it
under-uses them; the blend keeps the DLRM's item-level knowledge and adds what the logs say directly
(``benchmarks/probe_blend.py`` measured it; docs/measurements.md). The ``weight`` and then the coefficients are
chosen on the validation days by true expected clicks (``ranking_evaluation``) and travel with the release
(``PRIOR_WEIGHT`` and ``PRIOR_COEFFICIENTS`` of ``softmax_sampling``); weight 0 turns the blend off.

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
_SHARES = np.asarray(INTEREST_WEIGHTS) / sum(INTEREST_WEIGHTS)
MIX_FLOOR = 1e-3                     # every category keeps a little, so unseen categories rank by context
LIFT_PSEUDO_IMPRESSIONS = 50.0
N_DEVICES = len(DEVICES)
SECONDS_PER_HOUR = 3600
TERMS = ("interests", "context", "popularity", "gender_match", "gender_mismatch", "price_age")
DEFAULT_COEFFICIENTS = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0)


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
    shares = np.broadcast_to(_SHARES, interests.shape)
    np.add.at(mix, (users[has], interests[has]), shares[has])
    return mix


def check_coefficients(coefficients) -> tuple[float, ...]:
    """``coefficients`` as a tuple of :data:`TERMS`' length, finite; a clear error otherwise."""
    try:
        values = tuple(float(c) for c in coefficients)
    except (TypeError, ValueError):
        raise PriorError(f"prior coefficients {coefficients!r}: expected {len(TERMS)} numbers for {TERMS}") from None
    if len(values) != len(TERMS) or not np.all(np.isfinite(values)):
        raise PriorError(f"prior coefficients {coefficients!r}: expected {len(TERMS)} finite numbers for {TERMS}")
    return values


@functools.lru_cache(maxsize=64)
def _checked(coefficients: tuple) -> tuple[float, ...]:
    """:func:`check_coefficients`, once per distinct tuple (serving passes the same one on every request)."""
    return check_coefficients(coefficients)


def parse_coefficients(text: str | None) -> tuple[float, ...]:
    """The ``PRIOR_COEFFICIENTS`` parameter (comma-separated, :data:`TERMS` order); empty: the defaults."""
    if text is None or not str(text).strip():
        return DEFAULT_COEFFICIENTS
    return check_coefficients(str(text).split(","))


def format_coefficients(coefficients) -> str:
    return ",".join(f"{c:g}" for c in check_coefficients(coefficients))


@dataclasses.dataclass(frozen=True)
class Prior:
    """The tables behind :func:`Prior.log_prior`: per item its clicks, category, gender and standardised log price,
    per category the context lift, and the users' age mean and spread."""

    clicks: np.ndarray         # (items,) clicks in the window, row = raw item id
    item_category: np.ndarray  # (items,) category codes (lib.top_category), row = raw item id
    lift: np.ndarray           # (categories, devices, bands)
    band_hours: int = BAND_HOURS
    item_gender: np.ndarray | None = None  # (items,) 0 F, 1 M (feature_spec.GENDER_CODES), -1 unisex / unknown
    price_z: np.ndarray | None = None      # (items,) standardised log price
    age_mean: float = 0.0
    age_std: float = 0.0                   # 0: no user ages, the price x age term is 0

    @property
    def n_categories(self) -> int:
        return int(self.lift.shape[0])

    @functools.cached_property
    def _tables(self) -> tuple[np.ndarray, ...]:
        """Per request-independent arrays, computed once per table, each with one extra slot at the end for an
        unknown id: the item's category, log log(2 + clicks), gender (-1) and price_z (0); and log lift padded with
        a neutral (0) last category and last device, so -1 (unknown) indexes the neutral entries."""
        n = len(self.clicks)
        category = np.append(self.item_category, -1)
        log_pop = np.append(np.log(np.log(2.0 + self.clicks)), np.log(np.log(2.0)))
        gender = np.append(self.item_gender if self.item_gender is not None else np.full(n, -1), -1)
        price = np.append(self.price_z if self.price_z is not None else np.zeros(n), 0.0)
        log_lift = np.zeros((self.n_categories + 1, N_DEVICES + 1, self.lift.shape[2]))
        log_lift[:-1, :-1] = np.log(self.lift)
        return category, log_pop, log_lift, gender.astype(np.int64), price.astype(np.float64)

    def _rows(self, item_ids, n_requests: int) -> np.ndarray:
        """(requests, items) row numbers into :attr:`_tables` (-1: an id the table does not know)."""
        ids = np.broadcast_to(np.asarray(item_ids, np.int64), (n_requests, np.shape(item_ids)[-1]))
        return np.where((ids >= 0) & (ids < len(self.clicks)), ids, -1)

    def _context(self, rows: np.ndarray, device: np.ndarray, timestamp) -> tuple[np.ndarray, np.ndarray]:
        category, log_pop, log_lift = self._tables[:3]
        device = np.where((device >= 0) & (device < N_DEVICES), device, -1)
        band = band_of(np.asarray(timestamp, np.int64).reshape(-1), self.band_hours)
        return log_lift[category[rows], device[:, None], band[:, None]], log_pop[rows]

    def context_log_prior(self, item_ids, device: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """(requests, items): the terms that need no user, log lift + log log(2 + clicks) (what an anonymous
        visitor's prior is, up to a constant, with the default coefficients)."""
        device = np.asarray(device, np.int64).reshape(-1)
        lift, pop = self._context(self._rows(item_ids, len(device)), device, timestamp)
        return lift + pop

    def _interests(self, rows: np.ndarray, interests: np.ndarray) -> np.ndarray:
        """log mix[c] of each candidate (:func:`interest_mix`, computed for the candidates' categories only)."""
        codes = np.asarray(interests, np.int64).reshape(len(rows), len(INTEREST_WEIGHTS))
        codes = np.where((codes >= 0) & (codes < self.n_categories), codes, -2)  # never an item's category
        hit = self._tables[0][rows][:, :, None] == codes[:, None, :]
        return np.log(MIX_FLOOR + hit @ _SHARES)

    def _gender(self, rows: np.ndarray, gender) -> tuple[np.ndarray, np.ndarray]:
        user = np.asarray(gender, np.int64).reshape(-1)[:, None]
        items = self._tables[3][rows]
        known = (user >= 0) & (items >= 0)
        return known & (items == user), known & (items != user)

    def _price_age(self, rows: np.ndarray, age) -> np.ndarray:
        age_z = (np.asarray(age, np.float64).reshape(-1) - self.age_mean) / self.age_std
        return self._tables[4][rows] * np.where(np.isfinite(age_z), age_z, 0.0)[:, None]

    def terms(self, item_ids, device: np.ndarray, timestamp: np.ndarray, interests: np.ndarray,
              gender: np.ndarray | None = None, age: np.ndarray | None = None) -> np.ndarray:
        """(requests, items, :data:`TERMS`) for ``item_ids`` ((items,) shared, or (requests, items)), each
        request's device, timestamp, (requests, 3) interest codes and, optionally, the user's gender code and age
        (None: unknown, those terms 0). Unknown ids and devices get the neutral terms."""
        device = np.asarray(device, np.int64).reshape(-1)
        rows = self._rows(item_ids, len(device))
        out = np.zeros((*rows.shape, len(TERMS)))
        out[..., 0] = self._interests(rows, interests)
        out[..., 1], out[..., 2] = self._context(rows, device, timestamp)
        if gender is not None:
            out[..., 3], out[..., 4] = self._gender(rows, gender)
        if age is not None and self.age_std > 0:
            out[..., 5] = self._price_age(rows, age)
        return out

    def log_prior(self, item_ids, device: np.ndarray, timestamp: np.ndarray, interests: np.ndarray,
                  coefficients=DEFAULT_COEFFICIENTS, gender: np.ndarray | None = None,
                  age: np.ndarray | None = None) -> np.ndarray:
        """(requests, items): :meth:`terms` weighted by ``coefficients`` (:data:`TERMS` order), computed term by
        term (a term with a zero coefficient, or without its user input, is skipped)."""
        c = _checked(tuple(coefficients))
        device = np.asarray(device, np.int64).reshape(-1)
        rows = self._rows(item_ids, len(device))
        lift, pop = self._context(rows, device, timestamp)
        total = c[1] * lift + c[2] * pop
        if c[0]:
            total += c[0] * self._interests(rows, interests)
        if gender is not None and (c[3] or c[4]) and (np.asarray(gender) >= 0).any():  # unknown: adds nothing
            match, mismatch = self._gender(rows, gender)
            total += c[3] * match + c[4] * mismatch
        if age is not None and self.age_std > 0 and c[5]:
            total += c[5] * self._price_age(rows, age)
        return total

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        extra = {}
        if self.item_gender is not None:
            extra["item_gender"] = self.item_gender.astype(np.int8)
        if self.price_z is not None:
            extra["price_z"] = self.price_z.astype(np.float32)
        np.savez(buffer, clicks=self.clicks.astype(np.float32), item_category=self.item_category.astype(np.int32),
                 lift=self.lift.astype(np.float32), band_hours=np.array(self.band_hours),
                 age=np.array([self.age_mean, self.age_std]), **extra)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Prior":
        """A table as :meth:`to_bytes` wrote it; one written before the gender and price arrays reads without them."""
        try:
            with np.load(io.BytesIO(raw)) as data:
                age = data["age"] if "age" in data.files else np.zeros(2)
                prior = cls(clicks=data["clicks"].astype(np.float64), item_category=data["item_category"].astype(np.int64),
                            lift=data["lift"].astype(np.float64), band_hours=int(data["band_hours"]),
                            item_gender=(data["item_gender"].astype(np.int64) if "item_gender" in data.files
                                         else None),
                            price_z=data["price_z"].astype(np.float64) if "price_z" in data.files else None,
                            age_mean=float(age[0]), age_std=float(age[1]))
        except (OSError, ValueError, KeyError) as exc:
            raise PriorError(f"not a prior table: {exc}") from exc
        n = len(prior.clicks)
        if prior.lift.ndim != 3 or prior.lift.shape[1] != N_DEVICES or prior.lift.shape[2] * prior.band_hours != 24 \
                or len(prior.item_category) != n or any(a is not None and len(a) != n
                                                         for a in (prior.item_gender, prior.price_z)):
            raise PriorError(f"malformed prior table: lift {prior.lift.shape}, band_hours {prior.band_hours}, "
                             f"{n} clicks, {len(prior.item_category)} categories")
        return prior


def build(item_id: np.ndarray, device: np.ndarray, timestamp: np.ndarray, click: np.ndarray,
          item_category: np.ndarray, n_categories: int, band_hours: int = BAND_HOURS,
          item_gender: np.ndarray | None = None, price: np.ndarray | None = None,
          user_age: np.ndarray | None = None) -> Prior:
    """The prior of a window of impressions (``item_id``, ``device``, ``timestamp``, ``click`` per row);
    ``item_category``, ``item_gender`` (codes) and ``price``: the catalogue's, per raw item id; ``user_age``: the
    registered users' ages (NaN: unknown), whose mean and spread standardise a request's age."""
    item_id = np.asarray(item_id, np.int64)
    item_category = np.asarray(item_category, np.int64)
    click = np.asarray(click, np.float64)
    if len(item_id) and (item_id.min() < 0 or item_id.max() >= len(item_category)):
        raise PriorError(f"impressions name item ids outside the catalogue 0..{len(item_category) - 1}")
    clicks = np.bincount(item_id, weights=click, minlength=len(item_category))
    lift = lift_table(item_category[item_id], device, timestamp, click, n_categories, band_hours)
    price_z = None
    if price is not None:
        log_price = np.log(np.maximum(np.asarray(price, np.float64), 1e-9))
        spread = log_price.std()
        price_z = (log_price - log_price.mean()) / spread if spread > 0 else np.zeros_like(log_price)
    ages = np.asarray(user_age if user_age is not None else [], np.float64)
    ages = ages[np.isfinite(ages)]
    return Prior(clicks=clicks, item_category=item_category, lift=lift, band_hours=band_hours,
                 item_gender=None if item_gender is None else np.asarray(item_gender, np.int64), price_z=price_z,
                 age_mean=float(ages.mean()) if len(ages) else 0.0, age_std=float(ages.std()) if len(ages) > 1 else 0.0)


def search_coefficients(value_of, start=DEFAULT_COEFFICIENTS, steps=(1.0, 0.5, 0.25), rounds: int = 3,
                        min_gain: float = 1e-5) -> tuple[tuple[float, ...], list[dict]]:
    """Coordinate ascent over the :data:`TERMS` coefficients: from ``start``, try each coefficient moved by each
    of ``+-steps`` and keep a move that raises ``value_of(coefficients)`` by more than ``min_gain``; ``rounds``
    passes (fewer when a pass keeps nothing). Returns the best coefficients and every kept move, in order."""
    best = check_coefficients(start)
    best_value = float(value_of(best))
    path = [{"round": 0, "term": "start", "coefficients": format_coefficients(best), "value": best_value}]
    for round_ in range(1, rounds + 1):
        moved = False
        for j, term in enumerate(TERMS):
            for step in (*steps, *(-s for s in steps)):
                trial = tuple(c + step if i == j else c for i, c in enumerate(best))
                value = float(value_of(trial))
                if value > best_value + min_gain:
                    best, best_value, moved = trial, value, True
                    path.append({"round": round_, "term": term, "coefficients": format_coefficients(best),
                                 "value": best_value})
                    break  # the next term from the new point
        if not moved:
            break
    return best, path


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
