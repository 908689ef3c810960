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
"""

from __future__ import annotations

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
                               window: int = WINDOW_SECONDS) -> np.ndarray:
    """``top_category`` at each query (user, timestamp), from the clicks strictly before it.

    clicks_*: the click history (any order), categories as codes. query_*: the rows to compute for.
    Vectorised: one sort of the clicks, cumulative per-user category counts, and binary searches for the
    last click before ``t`` and before ``t - window``.
    """
    cu = np.asarray(clicks_user, np.int64)
    ct = np.asarray(clicks_ts, np.int64)
    cc = np.asarray(clicks_category, np.int64)
    qu = np.asarray(query_user, np.int64)
    qt = np.asarray(query_ts, np.int64)
    out = np.full(len(qu), NONE, dtype=np.int64)
    if len(cu) == 0 or len(qu) == 0:
        return out
    n_cat = int(cc.max()) + 1  # codes are positions in the catalogue's vocabulary (any size)
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
    has_t = (idx_t >= 0) & (cu[np.maximum(idx_t, 0)] == qu)
    has_w = (idx_w >= 0) & (cu[np.maximum(idx_w, 0)] == qu) & (qt - window > 0)
    all_counts = np.where(has_t[:, None], cum[np.maximum(idx_t, 0)], 0)
    before_window = np.where(has_w[:, None], cum[np.maximum(idx_w, 0)], 0)
    window_counts = all_counts - before_window
    last_t = np.where(has_t[:, None], last[np.maximum(idx_t, 0)], -1)

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
                                   n_categories: int, half_life_days: float = HALF_LIFE_DAYS) -> np.ndarray:
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
    n_cat = max(int(n_categories), int(ec.max()) + 1 if len(ec) else 0)
    totals = np.zeros((len(qu), n_cat))
    if len(eu) == 0 or len(qu) == 0:
        return totals
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
    return totals * _decay(reference - qt, half_life_days)[:, None]


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


def history_codes(events, category: np.ndarray, query_user, query_ts,
                  with_weights: bool = False) -> dict[str, np.ndarray]:
    """Every history code (``feature_spec.USER_HISTORY``) at each query (user, timestamp), point in time, and with
    ``with_weights`` the interest weights they come from (:data:`INTEREST_WEIGHTS`: one float32 array per row).

    ``events``: the impressions so far (a DataFrame with ``user_id``, ``timestamp``, ``item_id``, ``click``; rows at
    or after a query's time do not count for it); ``category``: the code of every raw item id (row = item id)."""
    clicked = events["click"].to_numpy() == 1
    codes = category[events["item_id"].to_numpy()]
    top = point_in_time_top_category(events["user_id"].to_numpy()[clicked], events["timestamp"].to_numpy()[clicked],
                                     codes[clicked], query_user, query_ts)
    weights = point_in_time_interest_weights(events["user_id"], events["timestamp"], codes, events["click"],
                                             query_user, query_ts, n_categories=int(category.max()) + 1)
    interests = rank_interests(weights, len(INTERESTS))
    out = {"top_category": top, **{name: interests[:, k] for k, name in enumerate(INTERESTS)}}
    if with_weights:
        out[INTEREST_WEIGHTS] = list(weights.astype(np.float32))
    return out
