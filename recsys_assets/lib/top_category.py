"""``top_category``: a user's short-term interest, computed point in time (DESIGN.md Contracts).

Definition, the same in training and serving: the dominant ``category_l1`` of the user's clicks in the 24 h
before the event; if there are none, the dominant category of all earlier clicks; if none, -1. Ties go to
the category clicked most recently. "Before" is strict: a row's own click never counts towards its own
feature, which is how this avoids the seed's leak (it computed the feature from the very days and clicks
it then trained on, so the label flowed into the feature).

Categories are int codes: positions in the catalogue's vocabulary, its distinct ``category_l1`` values sorted
(:func:`category_vocabulary` of the items table). For the generator that is :data:`CATEGORIES`, its fixed 20; a
shop's own catalogue (``lib.sources``) has its own. A category added to a catalogue later moves the codes after it,
so the models are retrained (not only fine-tuned) after such a change.
The serving side (the click path of the events API) keeps the same value up to date in the online store with
:func:`top_category_of_window`.

``interest_1..3`` (:data:`~recsys_assets.lib.feature_spec.INTERESTS`): a user's longer-term interests, the three
categories with the most recency-weighted activity strictly before the event. Every impression counts
:data:`IMPRESSION_WEIGHT`, a click :data:`CLICK_WEIGHT` more (what the user was shown says what the shop already
knows of them, what they clicked says more), each halved every :data:`HALF_LIFE_DAYS` days of age, so a drifting
interest takes over within weeks. Fewer than three categories with activity leave -1 in the rest; no history at
all is -1 everywhere (the cold-start value). Computed in batch (:func:`point_in_time_interests`) for every
training row and for the end-of-day snapshot the feature store serves; the snapshot also keeps the weights
(:data:`INTEREST_WEIGHTS`), so the click path adds each click to them (:func:`interests_after_clicks`) and pushes
the new interests as it does top_category.

A day's values need the history before it, which grows with every day; :class:`HistoryState` sums it up at an
instant (each user's click counts and last-click times per category, and the interest weights), so a day is
computed from the state two days back and the raw events since (:func:`history_codes` with ``state``), the same
values as from the whole history, at a cost that does not grow with the days.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from recsys_assets.lib.feature_spec import INTERESTS

WINDOW_SECONDS = 24 * 3600
NONE = -1
IMPRESSION_WEIGHT, CLICK_WEIGHT = 1.0, 4.0   # a clicked impression weighs 1 + 4 = 5 unclicked ones
HALF_LIFE_DAYS = 7.0
# The column (and online feature) holding each user's end-of-day weight per category, what interest_1..3 rank.
INTEREST_WEIGHTS = "interest_weights"

CATEGORIES = (
    "accessories", "apparel", "beauty", "books", "cold dispensed", "electronics", "floral", "food service",
    "footwear", "furniture", "groceries", "homedecor", "hot dispensed", "housewares", "instruments", "jewelry",
    "outdoors", "salty snacks", "seasonal", "tools",
)
CATEGORY_CODE = {c: i for i, c in enumerate(CATEGORIES)}


def category_vocabulary(category_l1) -> tuple[str, ...]:
    """The names of the category codes: the catalogue's distinct ``category_l1`` values, sorted (pass the items
    table's whole column). The generator's catalogue gives :data:`CATEGORIES`."""
    return tuple(sorted(set(np.asarray(category_l1, dtype=object).tolist())))


def category_codes(category_l1, vocabulary: tuple[str, ...] = CATEGORIES) -> np.ndarray:
    """Map category names to codes (positions in ``vocabulary``: :func:`category_vocabulary` of the items table);
    an unknown name is an error (it would silently become -1 otherwise)."""
    names = np.asarray(category_l1, dtype=object)
    code = CATEGORY_CODE if vocabulary is CATEGORIES else {c: i for i, c in enumerate(vocabulary)}
    unknown = sorted(set(names.tolist()) - set(code))
    if unknown:
        raise ValueError(f"unknown category_l1 values {unknown[:5]}: expected one of the catalogue's "
                         f"{len(vocabulary)} categories")
    return np.array([code[c] for c in names.tolist()], dtype=np.int64)


def _dominant(counts: np.ndarray, last_ts: np.ndarray) -> np.ndarray:
    """Row-wise argmax of counts, ties to the largest last-click time; -1 where a row has no counts."""
    best = counts.max(axis=1)
    tied = (counts == best[:, None]) & (counts > 0)
    score = np.where(tied, last_ts, np.iinfo(np.int64).min)
    out = score.argmax(axis=1).astype(np.int64)
    out[best == 0] = NONE
    return out


def point_in_time_top_category(clicks_user, clicks_ts, clicks_category, query_user, query_ts,
                               window: int = WINDOW_SECONDS, state: "HistoryState | None" = None) -> np.ndarray:
    """``top_category`` at each query (user, timestamp), from the clicks strictly before it.

    clicks_*: the click history (any order), categories as codes. query_*: the rows to compute for.
    ``state``: the history before ``state.at`` summed up; then ``clicks_*`` are the clicks from ``state.at`` on,
    and every query's window must start at or after ``state.at``.
    Vectorised: one sort of the clicks, cumulative per-user category counts, and binary searches for the
    last click before ``t`` and before ``t - window``.
    """
    cu = np.asarray(clicks_user, np.int64)
    ct = np.asarray(clicks_ts, np.int64)
    cc = np.asarray(clicks_category, np.int64)
    qu = np.asarray(query_user, np.int64)
    qt = np.asarray(query_ts, np.int64)
    out = np.full(len(qu), NONE, dtype=np.int64)
    base_counts, base_last = (None, None) if state is None else state.rows(qu, "clicks", "last_click")
    if state is not None and len(qt) and int(qt.min()) - window < state.at:
        raise ValueError(f"a query's {window} s window starts before the state's instant {state.at}: the state "
                         "has no clicks by time, so it cannot count a window")
    if len(qu) == 0:
        return out
    if len(cu) == 0:
        if base_counts is not None:
            return _dominant(base_counts, base_last)
        return out
    # codes are positions in the catalogue's vocabulary (any size)
    n_cat = max(int(cc.max()) + 1, 0 if state is None else state.n_categories)
    if ct.min() < 0 or qt.min() < 0 or max(ct.max(), qt.max()) >= 2**32:
        raise ValueError("timestamps must be Unix seconds in 0..2^32")

    order = np.lexsort((ct, cu))
    cu, ct, cc = cu[order], ct[order], cc[order]
    key = (cu << 32) | ct
    onehot = np.zeros((len(cu), n_cat), dtype=np.int64)
    onehot[np.arange(len(cu)), cc] = 1
    user_start = np.r_[0, np.flatnonzero(np.diff(cu)) + 1]
    # cumulative counts and last-click times per user (reset at each user's first click)
    cum = np.cumsum(onehot, axis=0)
    base = np.zeros_like(cum)
    base[user_start[1:]] = cum[user_start[1:] - 1]
    cum -= np.maximum.accumulate(base, axis=0)
    last = np.where(onehot == 1, ct[:, None], -1)
    seg = np.zeros(len(cu), dtype=np.int64)
    seg[user_start] = 1
    seg = np.cumsum(seg)
    # forward-fill last-click times within a user: shift by a large per-user offset so max never leaks across users
    offset = (seg * (2**33))[:, None]
    last = np.where(last >= 0, last + offset, 0)
    last = np.maximum.accumulate(last, axis=0) - offset
    last[last < 0] = -1

    # idx_t: last click of the same user strictly before t; idx_w: last click at or before t - window - 1
    # (i.e. strictly before the window start t - window).
    idx_t = np.searchsorted(key, (qu << 32) | qt, side="left") - 1
    idx_w = np.searchsorted(key, (qu << 32) | np.maximum(qt - window, 0), side="left") - 1
    has_t = (idx_t >= 0) & (cu[np.maximum(idx_t, 0)] == qu) & (qu >= 0)  # anonymous (-1) rows have no history
    has_w = (idx_w >= 0) & (cu[np.maximum(idx_w, 0)] == qu) & (qt - window > 0)
    all_counts = np.where(has_t[:, None], cum[np.maximum(idx_t, 0)], 0)
    before_window = np.where(has_w[:, None], cum[np.maximum(idx_w, 0)], 0)
    window_counts = all_counts - before_window
    last_t = np.where(has_t[:, None], last[np.maximum(idx_t, 0)], -1)
    if base_counts is not None:  # the history before the state's instant: counts add, last clicks are earlier
        all_counts = all_counts + _widen(base_counts, n_cat)
        last_t = np.where(last_t >= 0, last_t, _widen(base_last, n_cat, fill=-1))
        has_t = has_t | (all_counts.sum(axis=1) > 0)

    in_window = window_counts.sum(axis=1) > 0
    out[in_window] = _dominant(window_counts[in_window], last_t[in_window])
    rest = ~in_window & has_t
    out[rest] = _dominant(all_counts[rest], last_t[rest])
    return out


def top_category_of_window(history: list[tuple[int, int]], now: int, window: int = WINDOW_SECONDS) -> int:
    """Serving-side form for one user: ``history`` is [(timestamp, category_code), ...] of earlier clicks."""
    recent = [(t, c) for t, c in history if now - window <= t < now]
    pool = recent or [(t, c) for t, c in history if t < now]
    if not pool:
        return NONE
    counts: dict[int, int] = {}
    latest: dict[int, int] = {}
    for t, c in pool:
        counts[c] = counts.get(c, 0) + 1
        latest[c] = max(latest.get(c, -1), t)
    best = max(counts.values())
    return max((c for c in counts if counts[c] == best), key=lambda c: latest[c])


def point_in_time_interest_weights(events_user, events_ts, events_category, events_click, query_user, query_ts,
                                   n_categories: int, half_life_days: float = HALF_LIFE_DAYS,
                                   state: "HistoryState | None" = None) -> np.ndarray:
    """Each query's recency-weighted activity per category, as of the query's time: shape (n_queries,
    n_categories), float64, 0 where none. ``interest_1..3`` are its top three (:func:`rank_interests`); the
    end-of-day values are what the click path adds to (:func:`interests_after_clicks`).

    events_*: every impression of the history (any order), categories as codes, ``events_click`` 0/1. Only events
    strictly before the query time count. Weights decay as ``2 ** ((t_event - t_ref) / half_life)`` with one
    reference time for all, so one cumulative sum per category serves every query; each row is then moved to its
    own query time.
    """
    eu = np.asarray(events_user, np.int64)
    et = np.asarray(events_ts, np.int64)
    ec = np.asarray(events_category, np.int64)
    ek = np.asarray(events_click, np.int64)
    qu = np.asarray(query_user, np.int64)
    qt = np.asarray(query_ts, np.int64)
    n_cat = max(int(n_categories), int(ec.max()) + 1 if len(ec) else 0,
                0 if state is None else state.n_categories)
    base_totals = np.zeros((len(qu), n_cat))
    if state is not None and len(qu):
        if int(qt.min()) < state.at:
            raise ValueError(f"a query at {int(qt.min())} is before the state's instant {state.at}")
        (base,) = state.rows(qu, "weights")
        base_totals += _widen(base, n_cat) * _decay(state.at - qt, half_life_days)[:, None]
    if len(eu) == 0 or len(qu) == 0:
        return base_totals
    totals = np.zeros((len(qu), n_cat))
    if et.min() < 0 or qt.min() < 0 or max(et.max(), qt.max()) >= 2**32:
        raise ValueError("timestamps must be Unix seconds in 0..2^32")
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    order = np.lexsort((et, eu))
    eu, et, ec, ek = eu[order], et[order], ec[order], ek[order]
    key = (eu << 32) | et
    # The last event of the query's user strictly before its time (-1: none).
    idx = np.searchsorted(key, (qu << 32) | qt, side="left") - 1
    has = (idx >= 0) & (eu[np.maximum(idx, 0)] == qu) & (qu >= 0)  # anonymous (-1) rows have no history
    idx = np.maximum(idx, 0)
    # Where each event's user starts (cumulative sums are reset there).
    first = np.r_[0, np.flatnonzero(np.diff(eu)) + 1]
    start_of = np.repeat(first, np.diff(np.r_[first, len(eu)]))
    reference = int(et.max())
    weight = (IMPRESSION_WEIGHT + CLICK_WEIGHT * ek) * _decay(et - reference, half_life_days)
    for c in range(n_cat):  # one category at a time: memory stays O(events + queries x categories)
        cum = np.cumsum(np.where(ec == c, weight, 0.0))
        before_user = np.where(start_of > 0, cum[np.maximum(start_of - 1, 0)], 0.0)
        totals[:, c] = np.where(has, cum[idx] - before_user[idx], 0.0)
    # The differences of running sums leave rounding dust (about eps x the running total) where a user has no
    # weight in a category: below this, a category is no interest. Real weight this small is some 150 days old.
    totals[totals <= 1e-12 * weight.sum()] = 0.0
    return base_totals + totals * _decay(reference - qt, half_life_days)[:, None]


def _decay(age_seconds, half_life_days: float) -> np.ndarray:
    return np.exp2(np.asarray(age_seconds, np.float64) / (half_life_days * 86_400.0))


def rank_interests(weights: np.ndarray, n_interests: int = 3) -> np.ndarray:
    """The ``n_interests`` categories with the most weight, per row (ties to the lower code), -1 past the last
    category with any weight."""
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    if weights.shape[1] < n_interests:  # a catalogue may have fewer categories than interests
        weights = np.pad(weights, ((0, 0), (0, n_interests - weights.shape[1])))
    ranked = np.argsort(-weights, axis=1, kind="stable")[:, :n_interests]
    picked = np.take_along_axis(weights, ranked, axis=1)
    return np.where(picked > 0.0, ranked, NONE)


def point_in_time_interests(events_user, events_ts, events_category, events_click, query_user, query_ts,
                            n_interests: int = 3, half_life_days: float = HALF_LIFE_DAYS) -> np.ndarray:
    """``interest_1..n`` at each query (user, timestamp): shape (n_queries, n_interests), category codes, -1 none
    (the top categories of :func:`point_in_time_interest_weights`)."""
    weights = point_in_time_interest_weights(events_user, events_ts, events_category, events_click, query_user,
                                             query_ts, n_interests, half_life_days)
    return rank_interests(weights, n_interests)


def interests_after_clicks(weights, weights_at: int | None, clicks, now: int, n_interests: int = 3,
                           half_life_days: float = HALF_LIFE_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """The click path's ``interest_1..n``: the stored end-of-day ``weights`` (as of ``weights_at``; None or empty:
    no history) moved to ``now``, plus every click ``(timestamp, category)`` at or after ``weights_at`` as a clicked
    impression. Returns ``(weights as of now, codes)``: what :func:`point_in_time_interests` gives at ``now`` over
    the history plus those clicks. The impressions served since the snapshot are not known here (the API sees
    clicks only): the next end-of-day snapshot counts them."""
    base = np.asarray(weights if weights is not None else [], np.float64).reshape(-1)
    fresh = [(int(t), int(c)) for t, c in clicks if weights_at is None or int(t) >= int(weights_at)]
    n_cat = max([len(base), n_interests, *[c + 1 for _, c in fresh]])
    totals = np.zeros(n_cat)
    if len(base) and weights_at is not None:
        totals[:len(base)] = base * _decay(int(weights_at) - int(now), half_life_days)
    for t, c in fresh:
        totals[c] += (IMPRESSION_WEIGHT + CLICK_WEIGHT) * _decay(t - int(now), half_life_days)
    return totals, rank_interests(totals, n_interests)[0]


def _widen(table: np.ndarray, n_cat: int, fill=0) -> np.ndarray:
    """``table`` with columns up to ``n_cat`` (``fill`` in the new ones)."""
    if table.shape[1] >= n_cat:
        return table
    return np.pad(table, ((0, 0), (0, n_cat - table.shape[1])), constant_values=fill)


@dataclasses.dataclass(frozen=True)
class HistoryState:
    """Every user's history strictly before ``at`` (Unix seconds) summed up, one row per ``user`` (sorted): the
    ``clicks`` per category, the ``last_click`` time per category (-1: none) and the interest ``weights`` as of
    ``at``. With it, the values at any later time need only the events from ``at`` on (:func:`history_codes`).
    ``vocabulary``: the category names the codes index (a state of another vocabulary does not apply);
    ``sources``: a digest of each day of events it sums up, in day order (a day rewritten since does not apply)."""

    user: np.ndarray
    clicks: np.ndarray
    last_click: np.ndarray
    weights: np.ndarray
    at: int
    vocabulary: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    @property
    def n_categories(self) -> int:
        return int(self.clicks.shape[1])

    def rows(self, users, *fields: str) -> list[np.ndarray]:
        """Each field's row for every one of ``users`` (0, or -1 for ``last_click``, where the state has none)."""
        users = np.asarray(users, np.int64)
        pos = np.minimum(np.searchsorted(self.user, users), max(len(self.user) - 1, 0))
        found = (self.user[pos] == users) & (users >= 0) if len(self.user) else np.zeros(len(users), bool)
        out = []
        for field in fields:
            table = getattr(self, field)
            rows = np.full((len(users), table.shape[1]), -1 if field == "last_click" else 0, dtype=table.dtype)
            rows[found] = table[pos[found]]
            out.append(rows)
        return out

    @classmethod
    def of(cls, events, category: np.ndarray, at: int, state: "HistoryState | None" = None,
           vocabulary: tuple[str, ...] = (), sources: tuple[str, ...] = (),
           half_life_days: float = HALF_LIFE_DAYS) -> "HistoryState":
        """The state at ``at`` from ``events`` (a DataFrame with ``user_id``, ``timestamp``, ``item_id``, ``click``:
        the whole history, or the events from ``state.at`` on when ``state`` is given; those at or after ``at``
        do not count). Every user with an impression so far has a row. ``sources``: the digests of the days of
        ``events`` (appended to ``state``'s)."""
        events = events[events["timestamp"].to_numpy() < at]
        eu = events["user_id"].to_numpy().astype(np.int64)
        known = eu >= 0
        codes = category[events["item_id"].to_numpy()]
        n_cat = max(int(category.max()) + 1, 0 if state is None else state.n_categories)
        users = np.union1d(eu[known], state.user if state is not None else np.empty(0, np.int64))
        clicked = known & (events["click"].to_numpy() == 1)
        where = (np.searchsorted(users, eu[clicked]), codes[clicked])
        clicks = np.zeros((len(users), n_cat), np.int64)
        last = np.full((len(users), n_cat), -1, np.int64)
        np.add.at(clicks, where, 1)
        np.maximum.at(last, where, events["timestamp"].to_numpy().astype(np.int64)[clicked])
        if state is not None:
            base_clicks, base_last = state.rows(users, "clicks", "last_click")
            clicks += _widen(base_clicks, n_cat)
            last = np.maximum(last, _widen(base_last, n_cat, fill=-1))
        weights = point_in_time_interest_weights(eu, events["timestamp"], codes, events["click"], users,
                                                 np.full(len(users), at), n_cat, half_life_days, state=state)
        earlier = state.sources if state is not None else ()
        return cls(users, clicks, last, weights, int(at), tuple(vocabulary), tuple(earlier) + tuple(sources))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, user=self.user, clicks=self.clicks.astype(np.int32), last_click=self.last_click,
                            weights=self.weights, at=np.int64(self.at), vocabulary=np.array(self.vocabulary, dtype=str),
                            sources=np.array(self.sources, dtype=str))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "HistoryState":
        with np.load(io.BytesIO(data)) as z:
            return cls(z["user"], z["clicks"].astype(np.int64), z["last_click"], z["weights"], int(z["at"]),
                       tuple(str(v) for v in z["vocabulary"]), tuple(str(v) for v in z["sources"]))


def history_codes(events, category: np.ndarray, query_user, query_ts, with_weights: bool = False,
                  state: HistoryState | None = None, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every history code (``feature_spec.USER_HISTORY``) at each query (user, timestamp), point in time, and with
    ``with_weights`` the interest weights they come from (:data:`INTEREST_WEIGHTS`: one float32 array per row).

    ``events``: the impressions so far (a DataFrame with ``user_id``, ``timestamp``, ``item_id``, ``click``; rows at
    or after a query's time do not count for it), or with ``state`` those from ``state.at`` on (every query's 24 h
    window after ``state.at``); ``category``: the code of every raw item id (row = item id). ``weights``: the
    interest weights at the queries when already computed (``HistoryState.of`` for the same users and time)."""
    clicked = events["click"].to_numpy() == 1
    codes = category[events["item_id"].to_numpy()]
    top = point_in_time_top_category(events["user_id"].to_numpy()[clicked], events["timestamp"].to_numpy()[clicked],
                                     codes[clicked], query_user, query_ts, state=state)
    if weights is None:
        weights = point_in_time_interest_weights(events["user_id"], events["timestamp"], codes, events["click"],
                                                 query_user, query_ts, n_categories=int(category.max()) + 1,
                                                 state=state)
    interests = rank_interests(weights, len(INTERESTS))
    out = {"top_category": top, **{name: interests[:, k] for k, name in enumerate(INTERESTS)}}
    if with_weights:
        out[INTEREST_WEIGHTS] = list(weights.astype(np.float32))
    return out
