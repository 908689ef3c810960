"""Lists judged by their true expected clicks (policy value), beside reference lists on the same requests.

Requests: a DataFrame with ``user_id`` (the id sent; -1 for an anonymous request), ``true_user_id`` (who is
behind it), ``device_type``, ``timestamp``, ``split`` (``warm``, ``new``, ``anonymous``) and optionally
``day`` (else derived from the timestamp by the world) and ``relevant`` (the raw ids the user clicked that
day), as :func:`recsys_assets.lib.served_evaluation.replay_requests` builds them.

The **value** of a list for a request is the mean true p(click) of its ``k`` slots for the true user in the
request's device and time (:meth:`recsys_assets.lib.generator.World.click_probability`). An empty slot (a
short or failed list), a repeated item and an item not available that day earn nothing, so a list cannot score
by repeating its best item or by naming items that cannot be shown; such slots are counted in
``invalid_slots``.

References on the same requests (:func:`reference_lists`):

* ``popularity``: the most clicked available items of the ``popularity_days`` days before the request's day;
* ``random``: the expected value of a uniformly random list of available items (its row is that expectation);
* ``heuristic``: the user's category mix over earlier days (impressions x1, clicks x5, as shares) times
  log(1 + item clicks) times the category's click lift on the request's device and 6-hour band; visitors
  with no history (and every anonymous request) get lift times log popularity. A few lines any model must
  beat;
* ``oracle``: top ``k`` by true p among the items available that day (knows who is behind an anonymous
  request);
* ``oracle_no_taste``: top ``k`` by p without the hidden taste term (persona, demographics, context and item
  features only): the realistic ceiling for what features and history can teach, scored by the full true p;
* ``context_ceiling`` (anonymous requests): the list maximising mean true p over a sample of the users seen
  that day on the request's device within ``band_hours`` of its hour: the best a context-only list can do.

**Capture** = (value - popularity) / (ceiling - popularity) per split, the ceiling being ``oracle_no_taste``
for warm and new users and ``context_ceiling`` for anonymous requests; with a paired bootstrap interval over
requests.

Secondary columns, exposure-biased: recall@k and NDCG@k against the clicks logged that day (they favour what
the logging policy showed, popular and persona impressions; the ranker's logged AUC in
:func:`recsys_assets.lib.evaluation.ranking_table` has the same bias). Without a world (no ground truth, as in
production) :func:`evaluate` computes only those and says so in :attr:`PolicyValue.measure`.

Everything is deterministic for a ``seed`` (random lists, context user samples, bootstrap resamples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from recsys_assets.lib import evaluation, prior, served_evaluation
from recsys_assets.lib.generator import BASE_LOGIT
from recsys_assets.lib.metrics import ndcg_at_k, recall_at_k
from recsys_assets.lib.popularity import tie_broken_scores

K = served_evaluation.K
SPLITS = served_evaluation.SPLITS
REFERENCES = ("popularity", "random", "heuristic", "oracle", "oracle_no_taste", "context_ceiling")
CEILING = {"warm": "oracle_no_taste", "new": "oracle_no_taste", "anonymous": "context_ceiling"}
USERS = ("warm", "new")  # the identified users' requests (the anonymous ones are the same people sent as -1)
HIDDEN_TERMS = ("taste",)  # logit terms no feature or history carries: removed for the realistic ceiling
HEURISTIC_CLICK_WEIGHT = 5.0
HEURISTIC_BAND_HOURS = prior.BAND_HOURS
band_of = prior.band_of
TRUTH_MEASURE = "true expected clicks (generator's p(click) for the true user in the request's context)"
LOGGED_MEASURE = ("logged clicks only (no ground truth): recall/NDCG against the day's logged clicks, "
                  "exposure-biased towards what the logging policy showed")
SECONDS_PER_HOUR = prior.SECONDS_PER_HOUR


class PolicyValueError(ValueError):
    """The requests, lists or history handed to the evaluation cannot be scored as given."""


# -- the truth ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Truth:
    """True click probabilities of every (request, item) pair, row-aligned with the requests."""

    p: np.ndarray           # (requests, items) float32: true p(click)
    p_no_taste: np.ndarray  # (requests, items) float32: p with the hidden terms removed (ranks the ceiling)
    allowed: np.ndarray     # (requests, items) bool: item available on the request's day


def request_days(requests, world=None) -> np.ndarray:
    """Each request's day index: the ``day`` column, else derived from ``timestamp`` by the world."""
    if "day" in requests.columns:
        return requests["day"].to_numpy(np.int64)
    if world is None:
        raise PolicyValueError("requests have no 'day' column and no world was given to derive it from the "
                               "timestamps: add a 'day' column")
    return np.asarray(world.day_of_ts(requests["timestamp"].to_numpy(np.int64)), dtype=np.int64)


def probabilities(world, users, items, devices, stamps) -> tuple[np.ndarray, np.ndarray]:
    """(true p, p without the hidden terms) for aligned (broadcastable) rows of the world's click model."""
    parts = world.logit_components(users, items, devices, stamps)
    hidden = sum(parts[name] for name in HIDDEN_TERMS)
    visible = BASE_LOGIT + sum(value for name, value in parts.items() if name not in HIDDEN_TERMS)
    return 1.0 / (1.0 + np.exp(-(visible + hidden))), 1.0 / (1.0 + np.exp(-visible))


def _probabilities(world, users, devices, stamps, n_items: int, chunk: int):
    """(true p, p without hidden terms) on the (rows, items) grid, ``chunk`` rows at a time."""
    items = np.arange(n_items, dtype=np.int64)[None, :]
    p = np.empty((len(users), n_items), np.float32)
    p_no_taste = np.empty_like(p)
    for start in range(0, len(users), chunk):
        rows = slice(start, start + chunk)
        p[rows], p_no_taste[rows] = probabilities(world, users[rows, None], items, devices[rows, None],
                                                  stamps[rows, None])
    return p, p_no_taste


def truth(world, requests, chunk: int = 256) -> Truth:
    """The :class:`Truth` of ``requests`` (true users, their device and time) over the world's catalogue."""
    missing = sorted({"true_user_id", "device_type", "timestamp"} - set(requests.columns))
    if missing:
        raise PolicyValueError(f"requests lack columns {missing} (see lib.served_evaluation.replay_requests)")
    devices = requests["device_type"].to_numpy(np.int64)
    if len(devices) and not np.isin(devices, (0, 1, 2)).all():
        bad = sorted(set(devices[~np.isin(devices, (0, 1, 2))].tolist()))
        raise PolicyValueError(f"device_type {bad}: the true p needs the real device 0, 1 or 2 of each "
                               "request")
    n_items = len(world.items)
    p, p_no_taste = _probabilities(world, requests["true_user_id"].to_numpy(np.int64), devices,
                                   requests["timestamp"].to_numpy(np.int64), n_items, chunk)
    allowed = evaluation.available_mask(world.item_available_from, request_days(requests, world))
    return Truth(p=p, p_no_taste=p_no_taste, allowed=allowed)


# -- scoring lists ------------------------------------------------------------------------------------------
def as_matrix(lists, k: int = K) -> np.ndarray:
    """Lists of raw ids (ragged sequences or a 2-D array) as an (n, k) int64 array padded with -1."""
    if isinstance(lists, np.ndarray) and lists.ndim == 2:  # the references' shape: no per-row loop
        out = np.full((len(lists), k), -1, np.int64)
        width = min(k, lists.shape[1])
        out[:, :width] = lists[:, :width]
        return out
    return served_evaluation.padded(lists, k)


def valid_slots(ranked: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(n, k) booleans: the slot names an item available that day that no earlier slot of the list named."""
    n_items = allowed.shape[1]
    inside = (ranked >= 0) & (ranked < n_items)
    safe = np.where(inside, ranked, 0)
    ok = inside & np.take_along_axis(allowed, safe, axis=1)
    # A repeat is a slot whose id equals an earlier slot's id in the same row.
    earlier = (ranked[:, :, None] == ranked[:, None, :]) & np.tri(ranked.shape[1], k=-1, dtype=bool)[None]
    return ok & ~earlier.any(axis=2)


def list_values(probabilities: np.ndarray, lists, allowed: np.ndarray, k: int = K) -> tuple[np.ndarray, int]:
    """Per request, the mean of ``probabilities`` over the list's ``k`` slots (invalid slots earn 0), and the
    number of invalid slots (empty, repeated, unavailable)."""
    ranked = as_matrix(lists, k)
    if len(ranked) != len(probabilities):
        raise PolicyValueError(f"{len(ranked)} lists for {len(probabilities)} requests: lists must be "
                               "row-aligned with the requests")
    ok = valid_slots(ranked, allowed)
    gathered = np.take_along_axis(probabilities, np.where(ok, ranked, 0), axis=1).astype(np.float64)
    return np.where(ok, gathered, 0.0).sum(axis=1) / k, int((~ok).sum())


def random_values(probabilities: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The expected value of a uniformly random list of distinct available items: their mean p."""
    counts = allowed.sum(axis=1)
    return np.where(allowed, probabilities, 0.0).sum(axis=1, dtype=np.float64) / np.maximum(counts, 1)


# -- reference lists ----------------------------------------------------------------------------------------
def click_counts(history, n_items: int, day: int, window: int = 7) -> np.ndarray:
    """Clicks per item in the ``window`` days before ``day``."""
    days = _history_days(history)
    rows = history[(days >= day - window) & (days < day) & (history["click"].to_numpy() == 1)]
    return np.bincount(rows["item_id"].to_numpy(np.int64), minlength=n_items)[:n_items]


def popularity_scores(history, n_items: int, day: int, window: int = 7) -> np.ndarray:
    """Tie-broken click counts of the ``window`` days before ``day`` (the popularity tables' order)."""
    return tie_broken_scores(click_counts(history, n_items, day, window), np.arange(n_items), n_items)


def _history_days(history) -> np.ndarray:
    if "day" not in history.columns:
        raise PolicyValueError("history rows need a 'day' column (the day index of each impression)")
    return history["day"].to_numpy(np.int64)


def heuristic_scores(history, requests, days: np.ndarray, item_category: np.ndarray, n_categories: int,
                     window: int = 7, band_hours: int = HEURISTIC_BAND_HOURS) -> np.ndarray:
    """(requests, items) scores of the reference heuristic (see the module doc) from rows before each day.

    ``history``: logged impressions with ``day``, ``user_id``, ``item_id``, ``device_type``, ``timestamp``,
    ``click``. Anonymous requests (``user_id`` -1) and users with no earlier impressions use lift x log pop.
    """
    need = {"day", "user_id", "item_id", "device_type", "timestamp", "click"}
    missing = sorted(need - set(history.columns))
    if missing:
        raise PolicyValueError(f"history rows lack columns {missing}")
    if band_hours < 1 or 24 % band_hours:
        raise PolicyValueError(f"band_hours={band_hours}: expected a divisor of 24 (1, 2, 3, 4, 6, 8, 12, 24)")
    n_items = len(item_category)
    n_bands = 24 // band_hours
    hist_days = _history_days(history)
    out = np.zeros((len(requests), n_items))
    sent_users = requests["user_id"].to_numpy(np.int64)
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        past = history[hist_days < day]
        cat = item_category[past["item_id"].to_numpy(np.int64)]
        click = past["click"].to_numpy(np.float64)
        # Click lift of each category on each device and band (the ordering prior's table, lib.prior)
        lift = prior.lift_table(cat, past["device_type"].to_numpy(np.int64), past["timestamp"].to_numpy(np.int64),
                                click, n_categories, band_hours).reshape(-1)
        log_pop = np.log1p(click_counts(history, n_items, int(day), window))
        request_devices = requests["device_type"].to_numpy(np.int64)[rows, None]
        cells = ((item_category[None, :] * prior.N_DEVICES + request_devices) * n_bands
                 + band_of(requests["timestamp"].to_numpy(np.int64)[rows], band_hours)[:, None])
        context = lift[cells] * log_pop[None, :]
        # The user's category mix: shares of (impressions + 5 x clicks) per category over earlier days.
        users, user_rows = np.unique(past["user_id"].to_numpy(np.int64), return_inverse=True)
        mix = np.zeros((len(users), n_categories))
        np.add.at(mix, (user_rows, cat), 1.0 + HEURISTIC_CLICK_WEIGHT * click)
        mix /= mix.sum(axis=1, keepdims=True)
        sent = sent_users[rows]
        user_mix = np.ones((len(rows), n_categories))
        if len(users):
            where = np.minimum(np.searchsorted(users, sent), len(users) - 1)
            known = (sent >= 0) & (users[where] == sent)
            # A small floor keeps a user's unseen categories ranked by context instead of tied at zero.
            user_mix[known] = mix[where[known]] + 1e-3
        out[rows] = user_mix[:, item_category] * context
    return out


def context_ceiling_lists(world, requests, visits, days: np.ndarray, allowed: np.ndarray, k: int = K,
                          band_hours: int = HEURISTIC_BAND_HOURS, sample_users: int = 100, seed: int = 0,
                          chunk: int = 256) -> np.ndarray:
    """(requests, k): for each request the list of highest mean true p over up to ``sample_users`` sessions
    seen (that day or before) on its device within ``band_hours / 2`` of its hour, at its day and hour.

    ``visits``: impressions (``user_id``, ``device_type``, ``timestamp``, optional ``session_id``: one visit per
    session), the requests' own days' for the traffic of that day, or earlier days' for a historical sample.
    The true p depends on time only through the day and hour, so one list per (day, device, hour) is exact.
    """
    visits = visits[visits["user_id"].to_numpy() >= 0]
    if "session_id" in visits.columns:
        visits = visits.sort_values(["session_id", "timestamp"], kind="stable").drop_duplicates("session_id")
    visit_days = np.asarray(world.day_of_ts(visits["timestamp"].to_numpy(np.int64)), np.int64)
    visit_hours = (visits["timestamp"].to_numpy(np.int64) % 86_400) // SECONDS_PER_HOUR
    visit_devices = visits["device_type"].to_numpy(np.int64)
    visit_users = visits["user_id"].to_numpy(np.int64)
    hours = (requests["timestamp"].to_numpy(np.int64) % 86_400) // SECONDS_PER_HOUR
    devices = requests["device_type"].to_numpy(np.int64)
    n_items = allowed.shape[1]
    out = np.full((len(requests), k), -1, np.int64)
    keys = np.stack([days, devices, hours], axis=1)
    for day, device, hour in np.unique(keys, axis=0):
        gap = np.abs(visit_hours - hour)
        near = (visit_days <= day) & (visit_devices == device) & (np.minimum(gap, 24 - gap) <= band_hours / 2)
        users = visit_users[near]
        if len(users) == 0:
            raise PolicyValueError(f"no visits by day {day} on device {device} near hour {hour}: pass the "
                                   "requests' day's impressions as visits for the context ceiling")
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(day), int(device), int(hour)]))
        if len(users) > sample_users:
            users = users[np.sort(rng.choice(len(users), sample_users, replace=False))]
        stamp = int(world.day_start_ts(int(day))) + int(hour) * SECONDS_PER_HOUR
        p, _ = _probabilities(world, users, np.full(len(users), device), np.full(len(users), stamp), n_items,
                              chunk)
        rows = np.flatnonzero((keys == (day, device, hour)).all(axis=1))
        mean_p = p.mean(axis=0, dtype=np.float64)
        out[rows] = evaluation.top_k(mean_p[None, :], allowed[rows[:1]], k)[0]
    return out


def reference_lists(world, requests, truth_: Truth, history, visits, k: int = K, seed: int = 0,
                    popularity_days: int = 7, band_hours: int = HEURISTIC_BAND_HOURS,
                    context_users: int = 100) -> dict[str, np.ndarray]:
    """Every reference's (requests, k) list (``random``: one seeded draw; its row uses the expectation)."""
    days = request_days(requests, world)
    n_items = truth_.allowed.shape[1]
    popularity = np.empty((len(requests), k), np.int64)
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        scores = popularity_scores(history, n_items, int(day), popularity_days)
        popularity[rows] = evaluation.popularity_top_k(scores, truth_.allowed[rows], k)
    anonymous = requests["split"].to_numpy() == "anonymous"
    ceiling = np.full((len(requests), k), -1, np.int64)
    if anonymous.any():
        ceiling[anonymous] = context_ceiling_lists(world, requests[anonymous], visits, days[anonymous],
                                                   truth_.allowed[anonymous], k, band_hours, context_users,
                                                   seed)
    heuristic = heuristic_scores(history, requests, days, world.item_category, len(world.categories),
                                 popularity_days, band_hours)
    return {"popularity": popularity,
            "random": evaluation.random_top_k(truth_.allowed, k, seed),
            "heuristic": evaluation.top_k(heuristic, truth_.allowed, k),
            "oracle": evaluation.top_k(truth_.p, truth_.allowed, k),
            "oracle_no_taste": evaluation.top_k(truth_.p_no_taste, truth_.allowed, k),
            "context_ceiling": ceiling}


# -- the evaluation -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class PolicyValue:
    """Per-request values of every method, the summary table and how it was measured."""

    measure: str                     # TRUTH_MEASURE, or LOGGED_MEASURE when no ground truth exists
    requests: object                 # the requests DataFrame
    values: dict[str, np.ndarray]    # method -> per-request true value (empty without truth)
    lists: dict[str, np.ndarray]     # method -> (requests, k) raw ids (models and references)
    invalid_slots: dict[str, int]    # method -> empty/repeated/unavailable slots over all requests
    table: object                    # summary_table(...)
    fingerprint: str

    @property
    def has_truth(self) -> bool:
        return bool(self.values)


def bootstrap_indices(n: int, n_boot: int, seed: int, stream: int) -> np.ndarray:
    """(n_boot, n) resample indices, one seeded stream per split (every method of a split shares them)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    return rng.integers(0, n, size=(n_boot, n))


def capture(value: np.ndarray, popularity: np.ndarray, ceiling: np.ndarray,
            resamples: np.ndarray | None = None, level: float = 0.95) -> tuple[float, float, float]:
    """(capture, low, high): (mean value - mean popularity) / (mean ceiling - mean popularity) over requests,
    with a paired percentile bootstrap interval over ``resamples`` (NaN interval without resamples)."""
    def ratio(v, p, c):
        gap = c - p
        return np.where(gap > 0, (v - p) / np.where(gap > 0, gap, 1.0), np.nan)

    point = float(ratio(value.mean(), popularity.mean(), ceiling.mean()))
    if resamples is None or not len(value):
        return point, float("nan"), float("nan")
    boot = ratio(value[resamples].mean(axis=1), popularity[resamples].mean(axis=1),
                 ceiling[resamples].mean(axis=1))
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return point, float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return point, float(low), float(high)


def summary_table(requests, values: Mapping[str, np.ndarray], lists: Mapping[str, np.ndarray], k: int = K,
                  n_boot: int = 1000, seed: int = 0):
    """One row per method and split: requests, value (+ bootstrap interval), capture (+ interval), and the
    exposure-biased recall@k / ndcg@k against logged clicks (NaN without a ``relevant`` column)."""
    import pandas as pd

    split = requests["split"].to_numpy()
    relevant = list(requests["relevant"]) if "relevant" in requests.columns else None
    rows = []
    for stream, name in enumerate(SPLITS):
        idx = np.flatnonzero(split == name)
        if not len(idx):
            continue
        resamples = bootstrap_indices(len(idx), n_boot, seed, stream) if n_boot else None
        ceiling = CEILING[name]
        for method in lists:
            row = {"method": method, "split": name, "requests": int(len(idx))}
            if method in values:
                value = values[method][idx]
                row["value"] = float(value.mean())
                if resamples is not None:
                    low, high = np.percentile(value[resamples].mean(axis=1), [2.5, 97.5])
                    row["value_low"], row["value_high"] = float(low), float(high)
                if "popularity" in values and ceiling in values:
                    row["capture"], row["capture_low"], row["capture_high"] = capture(
                        value, values["popularity"][idx], values[ceiling][idx], resamples)
            if relevant is not None:
                ranked = np.asarray(lists[method])[idx]
                rel = [relevant[i] for i in idx]
                row[f"recall@{k}"] = recall_at_k(ranked, rel, k)
                row[f"ndcg@{k}"] = ndcg_at_k(ranked, rel, k)
            rows.append(row)
    return pd.DataFrame(rows)


def evaluate(requests, model_lists: Mapping[str, Sequence], world=None, history=None, visits=None, k: int = K,
             seed: int = 0, n_boot: int = 1000, popularity_days: int = 7, context_users: int = 100,
             band_hours: int = HEURISTIC_BAND_HOURS, truth_: Truth | None = None) -> PolicyValue:
    """Score ``model_lists`` (method -> lists row-aligned with ``requests``) and the references on them.

    ``world``: the generator (None: no ground truth; only logged recall/NDCG, and :attr:`PolicyValue.measure`
    says so). ``history``: logged impressions of earlier days with a ``day`` column (popularity, heuristic);
    ``visits``: impressions whose sessions the context ceiling samples users from: the requests' days' (the
    traffic of that day; the benchmark's choice) or by default ``history`` (earlier days' traffic). ``truth_``: the
    requests' :func:`truth` when the caller already has it (computed here otherwise).
    """
    missing = sorted({"user_id", "true_user_id", "device_type", "timestamp", "split"} - set(requests.columns))
    if missing:
        raise PolicyValueError(f"requests lack columns {missing} (see lib.served_evaluation.replay_requests)")
    unknown = sorted(set(requests["split"]) - set(SPLITS))
    if unknown:
        raise PolicyValueError(f"unknown splits {unknown}: expected {', '.join(SPLITS)}")
    requests = requests.reset_index(drop=True)
    lists = {name: as_matrix(rows, k) for name, rows in model_lists.items()}
    for name, ranked in lists.items():
        if len(ranked) != len(requests):
            raise PolicyValueError(f"{name}: {len(ranked)} lists for {len(requests)} requests")
    values: dict[str, np.ndarray] = {}
    invalid: dict[str, int] = {}
    measure = LOGGED_MEASURE
    if world is not None:
        if history is None:
            raise PolicyValueError("the references need the logged impressions of earlier days (history)")
        measure = TRUTH_MEASURE
        truth_ = truth(world, requests) if truth_ is None else truth_
        references = reference_lists(world, requests, truth_, history, history if visits is None else visits,
                                     k, seed, popularity_days, band_hours, context_users)
        for name, ranked in {**lists, **references}.items():
            values[name], invalid[name] = list_values(truth_.p, ranked, truth_.allowed, k)
        values["random"] = random_values(truth_.p, truth_.allowed)
        # The context ceiling is defined on anonymous requests only: NaN elsewhere, empty rows not counted.
        anonymous = requests["split"].to_numpy() == "anonymous"
        values["context_ceiling"] = np.where(anonymous, values["context_ceiling"], np.nan)
        invalid["context_ceiling"] = int((~valid_slots(references["context_ceiling"][anonymous],
                                                       truth_.allowed[anonymous])).sum())
        lists = {**lists, **references}
    table = summary_table(requests, values, lists, k, n_boot, seed)
    if world is not None:  # the context ceiling is defined on anonymous requests only
        keep = (table["method"] != "context_ceiling") | (table["split"] == "anonymous")
        table = table[keep].reset_index(drop=True)
    return PolicyValue(measure=measure, requests=requests, values=values, lists=lists, invalid_slots=invalid,
                       table=table, fingerprint=served_evaluation.fingerprint(requests))


def evaluation_requests(requests, limit: int, seed: int, anonymous_copies: bool) -> tuple:
    """Requests for :func:`evaluate` from evaluation requests (``evaluation.build_requests``): a seeded sample of at
    most ``limit``, the raw user as the true user (-1 sent for a masked, anonymous one) and, with
    ``anonymous_copies``, the identified ones again sent as user -1. Returns them and the sampled row numbers."""
    import pandas as pd

    rows = np.arange(len(requests))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    picked = requests.iloc[rows]
    split = picked["split"].to_numpy()
    base = pd.DataFrame({"user_id": np.where(split == "anonymous", -1, picked["user_id"]).astype(np.int64),
                         "true_user_id": picked["user_id"].to_numpy(np.int64),
                         "device_type": picked["device_type"].to_numpy(np.int64),
                         "timestamp": picked["timestamp"].to_numpy(np.int64),
                         "day": picked["day"].to_numpy(np.int64), "split": split,
                         "relevant": list(picked["relevant"])})
    if anonymous_copies:
        base = pd.concat([base, base[base["split"] != "anonymous"].assign(user_id=np.int64(-1), split="anonymous")],
                         ignore_index=True)
    return base, rows


def evaluate_logged(store, world, requests, lists: Mapping[str, Sequence], seed: int = 0,
                    n_boot: int = 1000, truth_: Truth | None = None) -> PolicyValue:
    """:func:`evaluate` with the logged days of the artifact ``store``: the history is the popularity window (7
    days) before the first requested day up to the last one, the visits the requested days' impressions."""
    days = sorted({int(d) for d in requests["day"]})
    history = served_evaluation.logged_days(store, range(max(0, days[0] - 7), days[-1]))
    return evaluate(requests, lists, world=world, history=history, visits=served_evaluation.logged_days(store, days),
                    seed=seed, n_boot=n_boot, truth_=truth_)


def value(table, method: str, split: str, column: str = "value") -> float:
    """One number of a :func:`summary_table`."""
    return evaluation.metric(table, method, split, column)


# -- the gate -----------------------------------------------------------------------------------------------
def record(result: PolicyValue, release: int | None = None, day: int | None = None) -> dict:
    """What a gate stores for the deployed release: the request set and every value/capture of the table."""
    columns = ("value", "capture")
    metrics = {f"{row['method']}/{row['split']}/{name}": float(row[name])
               for row in result.table.to_dict("records") for name in columns
               if name in row and np.isfinite(row[name])}
    return {"fingerprint": result.fingerprint, "measure": result.measure, "release": release, "day": day,
            "metrics": metrics}


def paired_difference(result: PolicyValue, method: str, baseline: str, splits=USERS, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high): mean true value of ``method`` minus ``baseline`` over the requests of
    ``splits``, with a paired percentile bootstrap interval (both lists judged on the same resampled requests)."""
    if not result.has_truth:
        raise PolicyValueError(f"{result.measure}: a paired difference of true values needs the world")
    for name in (method, baseline):
        if name not in result.values:
            raise PolicyValueError(f"no true values of {name!r}: scored methods are {sorted(result.values)}")
    rows = np.flatnonzero(np.isin(result.requests["split"].to_numpy(), list(splits)))
    if not len(rows):
        return float("nan"), float("nan"), float("nan")
    delta = result.values[method][rows] - result.values[baseline][rows]
    # One stream per split set, distinct from summary_table's per-split streams (0, 1, 2).
    stream = 100 + sum(1 << SPLITS.index(s) for s in splits)
    boot = delta[bootstrap_indices(len(rows), n_boot, seed, stream)].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(delta.mean()), float(low), float(high)


def pooled_value(result: PolicyValue, method: str, splits=USERS) -> float:
    """Mean true value of ``method`` over the requests of ``splits`` together (NaN without such requests)."""
    rows = np.isin(result.requests["split"].to_numpy(), list(splits))
    return float(result.values[method][rows].mean()) if rows.any() else float("nan")


def release_gate(result: PolicyValue, candidate: str, served: str | None = None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95, margin: float = 0.0) -> list[evaluation.GateOutcome]:
    """DESIGN.md "Gates" by true expected clicks, both outcomes judged on the same requests:

    * ``beats_popularity``: ``candidate``'s mean true value over the users' requests (warm and new together)
      is above popularity's;
    * ``no_regression``: for the users' requests and for each split, the paired bootstrap interval of
      ``candidate`` minus ``served`` (the deployed release's list, scored in the same evaluation) does not lie
      wholly below ``-margin``, i.e. the candidate falls below the deployed release by no more than the bootstrap
      interval plus ``margin`` (a non-inferiority margin: a drop smaller than it is no regression, however
      certain). No ``served`` (the first release): popularity test only.
    """
    if not result.has_truth:
        raise PolicyValueError(f"{result.measure}: a true-value gate needs the world; gate on the logged "
                               "measures (release.scoring.logged_gate) instead")
    present = [s for s in SPLITS if (result.requests["split"] == s).any()]
    users = [s for s in USERS if s in present]
    if not users:
        raise PolicyValueError("no warm or new requests to gate on: the evaluation day has no clicked "
                               "sessions of identified users")
    value_of = {m: pooled_value(result, m, users) for m in (candidate, "popularity")}
    per_split = ", ".join(f"{s} {value(result.table, candidate, s):.4f} vs "
                          f"{value(result.table, 'popularity', s):.4f}" for s in present)
    ok = bool(np.isfinite(value_of[candidate]) and value_of[candidate] > value_of["popularity"])
    outcomes = [evaluation.GateOutcome(
        "beats_popularity", ok,
        f"true expected clicks of the top {result.lists[candidate].shape[1]} over the users' requests: "
        f"candidate {value_of[candidate]:.4f} vs popularity {value_of['popularity']:.4f} (per split: {per_split})"
        + ("" if ok else ": the candidate must beat popularity, not deployable"),
        {"candidate": value_of[candidate], "popularity": value_of["popularity"]})]
    if served is None:
        outcomes.append(evaluation.GateOutcome(
            "no_regression", True, "no deployed release yet (first release: popularity test only)",
            {"candidate": value_of[candidate]}))
        return outcomes
    parts, worst, failed = [], {}, []
    for name, splits in (("users", tuple(users)), *((s, (s,)) for s in present)):
        diff, low, high = paired_difference(result, candidate, served, splits, n_boot, seed, level)
        parts.append(f"{name} {diff:+.4f} [{low:+.4f}, {high:+.4f}]")
        worst[f"{name}_difference"], worst[f"{name}_high"] = diff, high
        if high < -margin:
            failed.append(name)
    ok = not failed
    outcomes.append(evaluation.GateOutcome(
        "no_regression", ok,
        f"candidate minus deployed, true expected clicks with a paired {level:.0%} bootstrap interval: "
        + "; ".join(parts) + (f" (margin {margin:.4f})" if margin else "")
        + ("" if ok else f": worse than the deployed release beyond the interval{' and margin' if margin else ''} "
                         f"on {', '.join(failed)}"),
        worst))
    return outcomes


def gate(result: PolicyValue, method: str, deployed: Mapping | None = None,
         tolerance: float = evaluation.GATE_TOLERANCE,
         beat_heuristic: bool = False) -> list[evaluation.GateOutcome]:
    """Per split with requests: ``<split>_beats_popularity`` and ``<split>_no_regression`` of ``method``'s
    true value (``deployed``: :func:`record` of the serving release on the same requests, or None), and with
    ``beat_heuristic`` also ``<split>_beats_heuristic`` (the issue's target for the served list)."""
    if not result.has_truth:
        raise PolicyValueError(f"{result.measure}: a true-value gate needs the world; gate on the logged "
                               "measures (lib.evaluation.gate) instead")
    outcomes = []
    for split in SPLITS:
        if not ((result.table["method"] == method) & (result.table["split"] == split)).any():
            continue
        name = f"{method}/{split}/value"
        candidate = value(result.table, method, split)
        for outcome in evaluation.gate(name, candidate, value(result.table, "popularity", split), deployed,
                                       result.fingerprint, tolerance):
            outcomes.append(dataclasses.replace(outcome, name=f"{split}_{outcome.name}"))
        if beat_heuristic:
            heuristic = value(result.table, "heuristic", split)
            ok = bool(np.isfinite(candidate) and candidate > heuristic)
            outcomes.append(evaluation.GateOutcome(
                f"{split}_beats_heuristic", ok,
                f"{name}: candidate {candidate:.4f} vs heuristic {heuristic:.4f}"
                + ("" if ok else " (a few-line heuristic on the logs does better: the model misses what "
                                 "they say)"),
                {"candidate": candidate, "heuristic": heuristic}))
    return outcomes
