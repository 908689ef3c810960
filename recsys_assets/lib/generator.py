"""A deterministic synthetic interaction generator with a known click model (the ground truth).

It stands in for the AWS Retail Demo Store interaction generator, of which no public copy of the data exists.
Everything is a pure function of ``(seed, scale)`` and the day index, and days are generated one at a time, so
any day (a Dagster partition) can be produced on demand, in any order, and re-produced bit-identically.

The world
- Items: the 2,465 catalogue products (:mod:`recsys_assets.lib.catalogue`). A hidden popularity ``pop_z`` and a
  latent taste vector per item. ~6% of the items are held back and become available on a later day
  (``available_from_day``); nothing is shown, or may be recommended, before that day.
- Users arrive in daily cohorts: day 0 brings the initial population, each later day ``new_users_per_day``
  more (ids 0..N-1 in arrival order). Public attributes: age (truncated normal 18-100, mean 32, sd 15) and
  gender. Hidden: a persona of 3 categories weighted 0.6/0.25/0.15, an activity level, device habits, a latent
  taste vector, and for ~15% of users a slow drift of interest towards a new category.
- Context: each session has a device (0 desktop, 1 mobile, 2 tablet) and a timestamp drawn from an hourly
  traffic profile (desktop peaks in working hours, mobile in the evening) with weekday effects.

The click model: ``p(click | user, item, context) = sigmoid(logit)``, with logit the sum of
persona affinity + gender match + context(category, device, hour, weekday) + item popularity
+ price-vs-age + latent taste + a base rate. :meth:`World.click_probability` evaluates it for any rows, so
evaluation can rank items by the true probability (the oracle). The truth is written to a side table and
never to the files models train on.

Impressions are what an earlier system showed: a mix of popular items, items of the user's persona categories
and random exploration, recorded in ``impression_source``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cached_property

import numpy as np

from recsys_assets.lib.settings import SECONDS_PER_DAY, day_of_timestamp, day_start, start_epoch
PERSONA_WEIGHTS = np.array([0.6, 0.25, 0.15])
IMPRESSION_SOURCES = ("popular", "persona", "explore")
SOURCE_MIX = np.array([0.40, 0.35, 0.25])
TASTE_DIM = 8

# Click-model weights. Calibrated (tests/lib/test_generator.py, README "Data") so that impressions have a
# CTR of 5-10%, the oracle AUC is 0.75-0.85, popularity alone is >= 0.08 AUC below the oracle, context alone
# is clearly above 0.5 and the persona is the strongest single signal.
W_PERSONA = 3.4
W_GENDER_MATCH = 0.35
W_GENDER_MISMATCH = -1.1
W_POPULARITY = 0.45
W_PRICE_AGE = 0.25
W_TASTE = 0.5
BASE_LOGIT = -4.05


@dataclasses.dataclass(frozen=True)
class ScaleProfile:
    name: str
    initial_users: int
    new_users_per_day: int
    impressions_per_day: int
    mean_session_length: float = 10.0


SCALES: dict[str, ScaleProfile] = {
    # tiny: unit tests and the CI pipeline run; demo: the laptop default; seed: the original system's size.
    "tiny": ScaleProfile("tiny", initial_users=600, new_users_per_day=20, impressions_per_day=3_000),
    "demo": ScaleProfile("demo", initial_users=4_000, new_users_per_day=100, impressions_per_day=20_000),
    "seed": ScaleProfile("seed", initial_users=240_000, new_users_per_day=4_300, impressions_per_day=930_000),
}

# Context effects on category affinity (logit units). Devices: which categories people browse on which screen.
_DEVICE_AFFINITY = {
    0: {"electronics": 0.6, "furniture": 0.5, "tools": 0.5, "instruments": 0.4, "books": 0.2,
        "jewelry": -0.4, "beauty": -0.5, "apparel": -0.3, "footwear": -0.3},
    1: {"apparel": 0.5, "footwear": 0.5, "jewelry": 0.5, "beauty": 0.6, "accessories": 0.4, "food service": 0.5,
        "salty snacks": 0.4, "cold dispensed": 0.4, "hot dispensed": 0.4,
        "furniture": -0.6, "electronics": -0.3, "tools": -0.5, "instruments": -0.4},
    2: {"books": 0.6, "homedecor": 0.5, "floral": 0.4, "housewares": 0.4, "seasonal": 0.3, "groceries": 0.3,
        "tools": -0.4, "footwear": -0.3, "electronics": -0.2},
}
# Hour-of-day (UTC) bumps: (centre hour, width in hours, {category: effect at the centre}).
_HOUR_BUMPS = [
    (8, 3.0, {"groceries": 0.5, "housewares": 0.4, "hot dispensed": 0.6, "cold dispensed": -0.3}),
    (13, 3.0, {"electronics": 0.4, "tools": 0.3, "books": 0.3, "food service": 0.5, "salty snacks": 0.3}),
    (20, 3.0, {"apparel": 0.4, "jewelry": 0.5, "beauty": 0.4, "seasonal": 0.4, "floral": 0.3, "homedecor": 0.3}),
    (2, 2.5, {"instruments": 0.5, "electronics": 0.3, "outdoors": 0.3, "groceries": -0.5, "housewares": -0.3}),
]
_WEEKEND = {"outdoors": 0.5, "seasonal": 0.4, "floral": 0.4, "instruments": 0.3, "food service": 0.3,
            "books": -0.2, "tools": -0.3, "electronics": -0.2}
_WEEKDAY_TRAFFIC = np.array([0.95, 0.95, 1.0, 1.0, 1.05, 1.15, 1.1])  # Mon..Sun

# Hourly traffic profile per device (relative weights, UTC hour 0..23).
_HOURLY = {
    0: np.array([1, 1, 1, 1, 1, 2, 3, 5, 7, 9, 10, 10, 9, 10, 10, 9, 8, 7, 5, 4, 3, 2, 2, 1], float),
    1: np.array([3, 2, 1, 1, 1, 1, 2, 4, 5, 5, 5, 5, 6, 6, 5, 5, 5, 6, 8, 10, 11, 11, 9, 6], float),
    2: np.array([1, 1, 1, 1, 1, 1, 2, 4, 5, 5, 4, 4, 4, 4, 4, 4, 5, 6, 8, 9, 9, 7, 4, 2], float),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _truncated_normal(rng: np.random.Generator, n: int, mean: float, sd: float, lo: float, hi: float):
    out = rng.normal(mean, sd, size=n)
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = rng.normal(mean, sd, size=int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out


@dataclasses.dataclass
class Cohort:
    """Users arriving on one day (hidden and public attributes, aligned arrays)."""

    day: int
    first_id: int
    age: np.ndarray          # int16
    gender: np.ndarray       # int8: 0 F, 1 M
    persona: np.ndarray      # (n, 3) category indices
    activity: np.ndarray     # expected sessions per day
    device_probs: np.ndarray  # (n, 3)
    taste: np.ndarray        # (n, TASTE_DIM)
    drift_cat: np.ndarray    # category index, -1 for users who do not drift
    drift_start: np.ndarray  # day the drift begins
    drift_days: np.ndarray   # days until the drift is complete

    @property
    def size(self) -> int:
        return len(self.age)


class World:
    """The generator's hidden world for one ``(seed, scale)``: catalogue, user cohorts and the click model."""

    def __init__(self, seed: int = 20260101, scale: str | ScaleProfile = "demo",
                 start_date: dt.date = dt.date(2026, 1, 1)):
        self.seed = int(seed)
        self.profile = SCALES[scale] if isinstance(scale, str) else scale
        self.start_date = start_date
        self._cohorts: dict[int, Cohort] = {}

    # -- randomness: one independent stream per purpose and day, so days can be made in any order ---------------
    def _rng(self, *purpose: object) -> np.random.Generator:
        words = [self.seed] + [abs(hash_str(str(p))) for p in purpose]
        return np.random.default_rng(np.random.SeedSequence(words))

    # -- items ------------------------------------------------------------------------------------------------------
    @cached_property
    def items(self):
        """The catalogue plus ``available_from_day`` (public) and the hidden item latents (columns ``_*``)."""
        from recsys_assets.lib.catalogue import load_catalogue

        df = load_catalogue()
        rng = self._rng("items")
        n = len(df)
        held = rng.random(n) < 0.06
        df["available_from_day"] = np.where(held, rng.integers(3, 14, size=n), 0).astype("int16")
        self._pop_z = rng.normal(0.0, 1.0, size=n)
        self._item_taste = rng.normal(0.0, 1.0 / np.sqrt(TASTE_DIM), size=(n, TASTE_DIM))
        log_price = np.log1p(df["price"].to_numpy())
        self._price_z = (log_price - log_price.mean()) / log_price.std()
        return df

    @cached_property
    def categories(self) -> list[str]:
        return sorted(self.items["category_l1"].unique())

    @cached_property
    def item_category(self) -> np.ndarray:
        index = {c: k for k, c in enumerate(self.categories)}
        return self.items["category_l1"].map(index).to_numpy(np.int64)

    @cached_property
    def item_gender(self) -> np.ndarray:
        """Item gender affinity as -1 (none), 0 (F), 1 (M)."""
        return self.items["item_gender"].map({"U": -1, "F": 0, "M": 1}).to_numpy(np.int8)

    @cached_property
    def item_available_from(self) -> np.ndarray:
        return self.items["available_from_day"].to_numpy(np.int64)

    @property
    def pop_z(self) -> np.ndarray:
        self.items  # noqa: B018 (materialises the latents)
        return self._pop_z

    @cached_property
    def context_table(self) -> np.ndarray:
        """Logit shift per (category, device, hour, weekday): shape (C, 3, 24, 7)."""
        cats = self.categories
        table = np.zeros((len(cats), 3, 24, 7))
        hours = np.arange(24)
        for ci, cat in enumerate(cats):
            for dev, effects in _DEVICE_AFFINITY.items():
                table[ci, dev] += effects.get(cat, 0.0)
            for centre, width, effects in _HOUR_BUMPS:
                if cat in effects:
                    dist = np.minimum(np.abs(hours - centre), 24 - np.abs(hours - centre))
                    table[ci, :, :, :] += (effects[cat] * np.exp(-0.5 * (dist / width) ** 2))[None, :, None]
            table[ci, :, :, 5:] += _WEEKEND.get(cat, 0.0)
        return table

    # -- users ------------------------------------------------------------------------------------------------------
    def cohort_size(self, day: int) -> int:
        if day == 0:
            return self.profile.initial_users
        rng = self._rng("cohort-size", day)
        return int(rng.poisson(self.profile.new_users_per_day))

    def cohort(self, day: int) -> Cohort:
        if day in self._cohorts:
            return self._cohorts[day]
        first_id = sum(self.cohort_size(d) for d in range(day))
        n = self.cohort_size(day)
        rng = self._rng("cohort", day)
        n_cat = len(self.categories)
        # Persona categories drawn without replacement, bigger categories more often (tiny ones rarely).
        sizes = np.bincount(self.item_category, minlength=n_cat).astype(float)
        cat_p = sizes**0.75 / (sizes**0.75).sum()
        keys = rng.random((n, n_cat)) ** (1.0 / cat_p)  # Efraimidis-Spirakis weighted sampling
        persona = np.argsort(-keys, axis=1)[:, :3]
        drifts = rng.random(n) < 0.15
        drift_cat = np.where(drifts, np.argsort(-keys, axis=1)[:, 3], -1)
        # Activity: lognormal, scaled so the expected impressions per day meet the profile.
        users_expected = self.profile.initial_users + self.profile.new_users_per_day * 7
        sessions_per_user = self.profile.impressions_per_day / self.profile.mean_session_length / users_expected
        activity = rng.lognormal(0.0, 0.8, size=n) * sessions_per_user / np.exp(0.8**2 / 2)
        habit = rng.dirichlet([1.2, 1.6, 0.5], size=n)
        cohort = Cohort(
            day=day,
            first_id=first_id,
            age=np.rint(_truncated_normal(rng, n, 32, 15, 18, 100)).astype(np.int16),
            gender=(rng.random(n) < 0.5).astype(np.int8),
            persona=persona,
            activity=activity,
            device_probs=habit,
            taste=rng.normal(0.0, 1.0 / np.sqrt(TASTE_DIM), size=(n, TASTE_DIM)),
            drift_cat=drift_cat,
            drift_start=rng.integers(1, 12, size=n) + day,
            drift_days=rng.integers(3, 8, size=n),
        )
        self._cohorts[day] = cohort
        return cohort

    def _population(self, through_day: int) -> dict[str, np.ndarray]:
        """All users who arrived on days 0..through_day, attributes concatenated (index == user_id)."""
        cohorts = [self.cohort(d) for d in range(through_day + 1)]
        fields = [f.name for f in dataclasses.fields(Cohort) if f.name not in ("day", "first_id")]
        pop = {f: np.concatenate([getattr(c, f) for c in cohorts]) for f in fields}
        pop["signup_day"] = np.concatenate([np.full(c.size, c.day, np.int16) for c in cohorts])
        return pop

    def users(self, through_day: int):
        """The public user table of everyone who arrived by ``through_day`` (what models may see)."""
        import pandas as pd

        pop = self._population(through_day)
        n = len(pop["age"])
        day_start = self.day_start_ts(pop["signup_day"].astype(np.int64))
        return pd.DataFrame(
            {
                "user_id": np.arange(n, dtype=np.int64),
                "age": pop["age"].astype(np.int64),
                "gender": np.where(pop["gender"] == 1, "M", "F"),
                "signup_day": pop["signup_day"].astype(np.int64),
                "signup_timestamp": day_start,
            }
        )

    def users_truth(self, through_day: int):
        """Hidden user attributes, for evaluation and the README's calibration only."""
        import pandas as pd

        pop = self._population(through_day)
        cats = np.array(self.categories)
        return pd.DataFrame(
            {
                "user_id": np.arange(len(pop["age"]), dtype=np.int64),
                "persona_1": cats[pop["persona"][:, 0]],
                "persona_2": cats[pop["persona"][:, 1]],
                "persona_3": cats[pop["persona"][:, 2]],
                "activity": pop["activity"],
                "drift_category": np.where(pop["drift_cat"] >= 0, cats[np.maximum(pop["drift_cat"], 0)], ""),
                "drift_start_day": pop["drift_start"].astype(np.int64),
            }
        )

    def affinity(self, pop: dict[str, np.ndarray], day: int | np.ndarray) -> np.ndarray:
        """Persona weight of every category for each user on ``day``: shape (n_users, n_categories).

        Drifting users move 0.6 of their weight to their drift category over ``drift_days`` days.
        """
        n = len(pop["age"])
        aff = np.zeros((n, len(self.categories)))
        rows = np.arange(n)
        for k in range(3):
            aff[rows, pop["persona"][:, k]] += PERSONA_WEIGHTS[k]
        progress = np.clip((np.asarray(day) - pop["drift_start"]) / pop["drift_days"], 0.0, 1.0)
        progress = np.where(pop["drift_cat"] >= 0, progress, 0.0)
        drifting = progress > 0
        if drifting.any():
            aff[drifting] *= (1.0 - 0.6 * progress[drifting])[:, None]
            aff[rows[drifting], pop["drift_cat"][drifting]] += 0.6 * progress[drifting]
        return aff

    # -- time ---------------------------------------------------------------------------------------------------------
    def day_start_ts(self, day):
        return day_start(np.asarray(day, dtype=np.int64), start_epoch(self.start_date))

    def weekday(self, day: int) -> int:
        return (self.start_date + dt.timedelta(days=int(day))).weekday()

    def day_of_ts(self, timestamp) -> np.ndarray:
        return day_of_timestamp(np.asarray(timestamp, dtype=np.int64), start_epoch(self.start_date))

    # -- the click model ----------------------------------------------------------------------------------------------
    def logit_components(self, user_ids, item_ids, device, timestamp) -> dict[str, np.ndarray]:
        """The click model's logit, term by term, for aligned (broadcastable) arrays of rows.

        ``user_ids`` must be known users; ``device`` in {0, 1, 2}; ``timestamp`` Unix seconds (UTC).
        """
        user_ids, item_ids, device, timestamp = np.broadcast_arrays(
            np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64),
            np.asarray(device, np.int64), np.asarray(timestamp, np.int64))
        self.items  # noqa: B018
        day = self.day_of_ts(timestamp)
        through = int(max(day.max(initial=0), 0))
        pop = self._population(through)
        if user_ids.size and (user_ids.min() < 0 or user_ids.max() >= len(pop["age"])):
            raise ValueError(f"user ids must be in 0..{len(pop['age']) - 1} by day {through}")
        cat = self.item_category[item_ids]
        hour = (timestamp % SECONDS_PER_DAY) // 3600
        weekday = (day + self.start_date.weekday()) % 7
        # Persona affinity of each row's user to its item's category on that row's day.
        persona_w = np.zeros(user_ids.shape)
        for k in range(3):
            persona_w += np.where(pop["persona"][user_ids, k] == cat, PERSONA_WEIGHTS[k], 0.0)
        progress = np.clip((day - pop["drift_start"][user_ids]) / pop["drift_days"][user_ids], 0.0, 1.0)
        progress = np.where(pop["drift_cat"][user_ids] >= 0, progress, 0.0)
        persona_w = persona_w * (1.0 - 0.6 * progress) + np.where(pop["drift_cat"][user_ids] == cat, 0.6 * progress, 0)
        ig = self.item_gender[item_ids]
        ug = pop["gender"][user_ids]
        gender = np.where(ig < 0, 0.0, np.where(ig == ug, W_GENDER_MATCH, W_GENDER_MISMATCH))
        age_z = (pop["age"][user_ids] - 40.0) / 15.0
        return {
            "persona": W_PERSONA * persona_w,
            "gender": gender,
            "context": self.context_table[cat, device, hour, weekday],
            "popularity": W_POPULARITY * self._pop_z[item_ids],
            "price_age": W_PRICE_AGE * self._price_z[item_ids] * age_z,
            "taste": W_TASTE * np.einsum("...k,...k->...", pop["taste"][user_ids], self._item_taste[item_ids])
            * np.sqrt(TASTE_DIM),
        }

    def click_probability(self, user_ids, item_ids, device, timestamp) -> np.ndarray:
        """The true p(click | user, item, context) for aligned rows (the oracle's score)."""
        parts = self.logit_components(user_ids, item_ids, device, timestamp)
        return _sigmoid(BASE_LOGIT + sum(parts.values()))

    # -- one day of impressions ----------------------------------------------------------------------------------------
    def generate_day(self, day: int):
        """``(interactions, truth)`` DataFrames for one day; row ``k`` of both is the same impression."""
        import pandas as pd

        if day < 0:
            raise ValueError(f"day must be >= 0, got {day}")
        items = self.items
        rng = self._rng("day", day)
        pop = self._population(day)
        n_users = len(pop["age"])
        weekday = self.weekday(day)

        # Sessions: Poisson per user by activity and weekday; a new user always visits on the day they arrive.
        lam = pop["activity"] * _WEEKDAY_TRAFFIC[weekday]
        n_sessions = rng.poisson(lam)
        if day > 0:  # day 0's cohort is the existing population, not newcomers
            n_sessions = np.where(pop["signup_day"] == day, np.maximum(n_sessions, 1), n_sessions)
        s_user = np.repeat(np.arange(n_users), n_sessions)
        n_s = len(s_user)
        # Device from the user's habits; hour from that device's traffic profile.
        u = rng.random(n_s)
        s_device = (u[:, None] > np.cumsum(pop["device_probs"][s_user], axis=1)[:, :2]).sum(axis=1)
        s_hour = np.empty(n_s, np.int64)
        for dev, profile in _HOURLY.items():
            mask = s_device == dev
            s_hour[mask] = rng.choice(24, size=int(mask.sum()), p=profile / profile.sum())
        s_ts = self.day_start_ts(day) + s_hour * 3600 + rng.integers(0, 3600 - 120, size=n_s)
        s_len = 1 + rng.poisson(self.profile.mean_session_length - 1, size=n_s)

        # Impressions.
        i_session = np.repeat(np.arange(n_s), s_len)
        n_i = len(i_session)
        i_user = s_user[i_session]
        position = np.arange(n_i) - np.repeat(np.cumsum(s_len) - s_len, s_len)
        source = rng.choice(len(IMPRESSION_SOURCES), size=n_i, p=SOURCE_MIX)
        available = np.flatnonzero(self.item_available_from <= day)
        item = np.empty(n_i, np.int64)
        # popular: proportional to the hidden popularity
        m = source == 0
        w = np.exp(self._pop_z[available])
        item[m] = available[np.searchsorted(np.cumsum(w) / w.sum(), rng.random(int(m.sum())), side="right")
                            .clip(max=len(available) - 1)]
        # persona: a category by the user's current persona weights, then an available item of it
        m = source == 1
        aff = self.affinity({k: v[i_user[m]] for k, v in pop.items()}, day)
        cat = (rng.random(int(m.sum()))[:, None] > np.cumsum(aff, axis=1)[:, :-1]).sum(axis=1)
        avail_cat = self.item_category[available]
        order = np.argsort(avail_cat, kind="stable")
        counts = np.bincount(avail_cat, minlength=len(self.categories))
        starts = np.cumsum(counts) - counts
        pick = starts[cat] + np.floor(rng.random(len(cat)) * counts[cat]).astype(np.int64)
        empty = counts[cat] == 0
        pick[empty] = rng.integers(0, len(available), size=int(empty.sum()))
        item[m] = np.where(empty, available[pick.clip(max=len(available) - 1)], available[order[pick.clip(max=len(available) - 1)]])
        # explore: uniform over what is available
        m = source == 2
        item[m] = available[rng.integers(0, len(available), size=int(m.sum()))]

        device = s_device[i_session]
        # Seconds between impressions of a session; a session that would run past midnight starts earlier.
        gap = np.where(position == 0, 0, rng.integers(5, 40, size=n_i))
        offset = np.cumsum(gap) - np.repeat(np.cumsum(gap)[np.cumsum(s_len) - s_len], s_len)
        duration = offset[np.cumsum(s_len) - 1]
        s_ts = np.minimum(s_ts, self.day_start_ts(day + 1) - 1 - duration)
        ts = s_ts[i_session] + offset
        p = self.click_probability(i_user, item, device, ts)
        click = (rng.random(n_i) < p).astype(np.int8)

        interaction_id = np.int64(day) * 1_000_000_000 + np.arange(n_i, dtype=np.int64)
        session_id = np.int64(day) * 1_000_000_000 + i_session.astype(np.int64)
        interactions = pd.DataFrame(
            {
                "interaction_id": interaction_id,
                "session_id": session_id,
                "user_id": i_user.astype(np.int64),
                "item_id": item,
                "timestamp": ts.astype(np.int64),
                "device_type": device.astype(np.int64),
                "position": position.astype(np.int64),
                "impression_source": pd.Categorical.from_codes(source, IMPRESSION_SOURCES),
                "click": click.astype(np.int64),
            }
        )
        interactions["impression_source"] = interactions["impression_source"].astype(str)
        truth = pd.DataFrame({"interaction_id": interaction_id, "p_click": p.astype(np.float64)})
        assert (items["available_from_day"].to_numpy()[item] <= day).all()
        return interactions, truth


def hash_str(text: str) -> int:
    """A stable (process-independent) 63-bit hash; Python's ``hash`` is salted per process."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
