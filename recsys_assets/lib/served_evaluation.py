"""The list as served, scored: validation requests replayed through the running ensemble (pure numpy/pandas).

Requests (:func:`replay_requests`): one per user who clicked on the day: the user, the device and the time of
their first visit that day (the homepage request), and as *relevant* every item they clicked that day. Splits:

* ``warm``: users the release knows (its user vocabulary); ``new``: every other registered user (the release
  serves them the cold-start path plus whatever features the daily refresh put online);
* ``anonymous``: a sample of the same requests sent as user -1 (the request's own device and time), scored
  against the hidden user's clicks.

Methods on the same requests (:func:`evaluate`):

* ``served``: what the ensemble returns with greedy ordering (``diversity`` false): FAISS retrieval, the Bloom
  seen filter as it stands in Valkey, the DLRM ranker, top ``k``;
* ``served_diverse``: the same requests with ``diversity`` true (score-weighted sampling without replacement);
* ``oracle``: the ``k`` items with the highest true p(click) for the true user, device and time among the items
  available that day (the generator's :meth:`~recsys_assets.lib.generator.World.click_probability`; it knows
  who is behind an anonymous request, so it is an upper bound, not a competitor);
* ``popularity``: the day's popularity list (click counts of a window before the day), the same for everyone.

Metrics per method and split (:func:`summary_table`): recall@k and binary NDCG@k against the day's clicks,
coverage (share of the items available that day that appear in at least one list), intra-list diversity (mean
over lists of the share of item pairs from different ``category_l1``), distinct categories per list, the mean
list length and the number of failed requests (a failed request scores an empty list, never silently dropped).

Gate (:func:`gate`): the release gate's use of it: the served list must beat popularity on recall@k over all
users, and must not fall more than ``tolerance`` below the deployed release's record on the same requests
(:func:`record` writes that record; ``lib.evaluation.gate`` does the comparison).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from recsys_assets.lib import evaluation as ev
from recsys_assets.lib.metrics import ndcg_at_k, recall_at_k

K = 10
SPLITS = ("warm", "new", "anonymous")
METHODS = ("served", "served_diverse", "oracle", "popularity")
GATE_METHOD, GATE_SPLIT, GATE_METRIC = "served", "all", f"recall@{K}"
METRIC_COLUMNS = (f"recall@{K}", f"ndcg@{K}", "coverage", "diversity", "categories_per_list", "mean_length")


# -- requests -----------------------------------------------------------------------------------------------
def replay_requests(day_rows, known_user_ids, per_split: int = 200, seed: int = 0):
    """The day's requests (see the module doc) as a DataFrame, sampled to at most ``per_split`` per split.

    ``day_rows``: the day's impressions (``user_id``, ``session_id``, ``device_type``, ``timestamp``, ``item_id``,
    ``click``). Columns out: ``user_id`` (the id sent; -1 for anonymous rows), ``true_user_id``, ``device_type``,
    ``timestamp``, ``relevant`` (sorted unique raw ids), ``split``.
    """
    import pandas as pd

    need = {"user_id", "session_id", "device_type", "timestamp", "item_id", "click"}
    missing = sorted(need - set(day_rows.columns))
    if missing:
        raise ValueError(f"the day's rows lack columns {missing}")
    if per_split < 1:
        raise ValueError(f"per_split must be >= 1, got {per_split}")
    rows = day_rows[day_rows["user_id"] >= 0]
    clicks = rows[rows["click"] == 1]
    relevant = {int(u): np.unique(g.to_numpy(np.int64)) for u, g in clicks.groupby("user_id")["item_id"]}
    first = (rows[rows["user_id"].isin(list(relevant))].sort_values(["user_id", "timestamp"], kind="stable")
             .groupby("user_id", sort=True).head(1).set_index("user_id"))
    base = pd.DataFrame({"true_user_id": first.index.to_numpy(np.int64),
                         "device_type": first["device_type"].to_numpy(np.int64),
                         "timestamp": first["timestamp"].to_numpy(np.int64)})
    base["relevant"] = [relevant[u] for u in base["true_user_id"]]
    known = np.isin(base["true_user_id"].to_numpy(), np.asarray(list(known_user_ids), dtype=np.int64))
    base["split"] = np.where(known, "warm", "new")
    rng = np.random.default_rng(seed)
    parts = []
    for split in ("warm", "new"):
        part = base[base["split"] == split]
        if len(part) > per_split:
            part = part.iloc[np.sort(rng.choice(len(part), per_split, replace=False))]
        parts.append(part)
    anonymous = base if len(base) <= per_split else base.iloc[np.sort(rng.choice(len(base), per_split,
                                                                                   replace=False))]
    parts.append(anonymous.assign(split="anonymous"))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "user_id", np.where(out["split"] == "anonymous", -1, out["true_user_id"]).astype(np.int64))
    return out


def fingerprint(requests) -> str:
    """Identity of a request set (who, on which device, when, as which split): gates compare equal sets only."""
    keys = sorted(zip(requests["user_id"].tolist(), requests["true_user_id"].tolist(),
                      requests["device_type"].tolist(), requests["timestamp"].tolist()))
    return hashlib.sha256(repr(keys).encode()).hexdigest()[:16]


# -- list measures ------------------------------------------------------------------------------------------
def padded(lists: Sequence[Sequence[int]], k: int = K) -> np.ndarray:
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for r, row in enumerate(lists):
        row = np.asarray(row, dtype=np.int64)[:k]
        out[r, :len(row)] = row
    return out


def intra_list_diversity(lists: Sequence[Sequence[int]], category: np.ndarray) -> float:
    """Mean over lists (of two items or more) of the share of item pairs whose ``category_l1`` differs."""
    shares = []
    for row in lists:
        cats = category[np.asarray(row, dtype=np.int64)]
        if len(cats) < 2:
            continue
        pairs = list(itertools.combinations(cats.tolist(), 2))
        shares.append(sum(a != b for a, b in pairs) / len(pairs))
    return float(np.mean(shares)) if shares else float("nan")


def categories_per_list(lists: Sequence[Sequence[int]], category: np.ndarray) -> float:
    sizes = [len(np.unique(category[np.asarray(r, dtype=np.int64)])) for r in lists if len(r)]
    return float(np.mean(sizes)) if sizes else float("nan")


def coverage(lists: Sequence[Sequence[int]], n_available: int) -> float:
    """Share of the available catalogue that appears in at least one list."""
    if n_available <= 0:
        return float("nan")
    items = set()
    for row in lists:
        items.update(int(i) for i in row)
    return len(items) / n_available


def list_metrics(lists: Sequence[Sequence[int]], relevant: Sequence[np.ndarray], category: np.ndarray,
                 n_available: int, k: int = K) -> dict[str, float]:
    if not len(lists):
        return {c: float("nan") for c in METRIC_COLUMNS}
    ranked = padded(lists, k)
    return {f"recall@{k}": recall_at_k(ranked, relevant, k), f"ndcg@{k}": ndcg_at_k(ranked, relevant, k),
            "coverage": coverage([r[:k] for r in lists], n_available),
            "diversity": intra_list_diversity([r[:k] for r in lists], category),
            "categories_per_list": categories_per_list([r[:k] for r in lists], category),
            "mean_length": float(np.mean([min(len(r), k) for r in lists]))}


# -- the evaluation -----------------------------------------------------------------------------------------
Recommend = Callable[[int, int, int, bool], Sequence[int]]  # (user_id, device_type, timestamp, diversity) -> ids


@dataclasses.dataclass
class ServedLists:
    """Every method's list per request (row-aligned with ``requests``) and what the serving calls cost."""

    requests: object                       # DataFrame from replay_requests
    lists: dict[str, list[np.ndarray]]     # method -> one array of raw ids per request
    failures: dict[str, dict[int, str]]    # method -> {request row: error message} of failed requests
    latency_ms: dict[str, np.ndarray]      # served methods -> per-request latency


def oracle_lists(click_probability: Callable, requests, available_from_day: np.ndarray, day: int,
                 k: int = K) -> list[np.ndarray]:
    """The ``k`` items of highest true p(click) for each request's true user, device and time."""
    allowed = np.broadcast_to(np.asarray(available_from_day) <= day, (len(requests), len(available_from_day)))
    frame = requests.assign(user_id=requests["true_user_id"])
    ranked = ev.oracle_top_k(click_probability, frame, len(available_from_day), allowed, k)
    return [row[row >= 0] for row in ranked]


def evaluate(recommend: Recommend, requests, popular: Sequence[int], oracle: list[np.ndarray] | None = None,
             k: int = K, diversity_modes: Sequence[bool] = (False, True),
             clock: Callable[[], float] = time.perf_counter) -> ServedLists:
    """Replay every request through ``recommend`` once per diversity mode; popularity and oracle beside them."""
    lists: dict[str, list[np.ndarray]] = {}
    failures: dict[str, dict[int, str]] = {}
    latency: dict[str, np.ndarray] = {}
    for diversity in diversity_modes:
        method = "served_diverse" if diversity else "served"
        rows, errors, took = [], {}, []
        for r, req in enumerate(requests.itertuples(index=False)):
            t0 = clock()
            try:
                ids = np.asarray(recommend(int(req.user_id), int(req.device_type), int(req.timestamp),
                                           bool(diversity)), dtype=np.int64)[:k]
            except Exception as exc:  # scored as an empty list and counted: a failure must show, not vanish
                ids = np.zeros(0, np.int64)
                errors[r] = f"user {int(req.user_id)} at {int(req.timestamp)}: {type(exc).__name__}: {exc}"
            took.append((clock() - t0) * 1e3)
            rows.append(ids)
        lists[method], failures[method], latency[method] = rows, errors, np.asarray(took)
    lists["popularity"] = [np.asarray(popular, dtype=np.int64)[:k]] * len(requests)
    if oracle is not None:
        if len(oracle) != len(requests):
            raise ValueError(f"{len(oracle)} oracle lists for {len(requests)} requests")
        lists["oracle"] = [np.asarray(o, dtype=np.int64)[:k] for o in oracle]
    return ServedLists(requests=requests, lists=lists, failures=failures, latency_ms=latency)


def summary_table(result: ServedLists, category: np.ndarray, n_available: int, k: int = K):
    """One row per method and split (``warm``, ``new``, ``anonymous`` and ``all`` = warm + new)."""
    import pandas as pd

    split = result.requests["split"].to_numpy()
    relevant = list(result.requests["relevant"])
    masks = {"warm": split == "warm", "new": split == "new", "anonymous": split == "anonymous",
             "all": split != "anonymous"}
    rows = []
    for method in [m for m in METHODS if m in result.lists]:
        lists = result.lists[method]
        failed = set(result.failures.get(method, {}))
        for name, mask in masks.items():
            idx = np.flatnonzero(mask)
            rows.append({"method": method, "split": name, "requests": int(len(idx)),
                         "failed": int(len(failed.intersection(idx.tolist()))),
                         **list_metrics([lists[i] for i in idx], [relevant[i] for i in idx], category,
                                        n_available, k)})
    return pd.DataFrame(rows)


def metric(table, method: str, split: str, name: str) -> float:
    return ev.metric(table, method, split, name)


# -- the gate -----------------------------------------------------------------------------------------------
def record(table, requests_fingerprint: str, release: int | None = None, day: int | None = None) -> dict:
    """What the release gate stores for the deployed release: the request set and every number of the table."""
    metrics = {f"{row['method']}/{row['split']}/{name}": float(row[name])
               for row in table.to_dict("records") for name in METRIC_COLUMNS if np.isfinite(row[name])}
    return {"fingerprint": requests_fingerprint, "release": release, "day": day, "metrics": metrics}


def gate(table, requests_fingerprint: str, deployed: Mapping | None = None,
         tolerance: float = ev.GATE_TOLERANCE) -> list[ev.GateOutcome]:
    """``served_beats_popularity`` and ``served_no_regression`` on recall@k of all (warm + new) requests.

    ``deployed``: :func:`record` of the release serving now on the same requests, or None (first release).
    """
    name = f"{GATE_METHOD}/{GATE_SPLIT}/{GATE_METRIC}"
    candidate = metric(table, GATE_METHOD, GATE_SPLIT, GATE_METRIC)
    popularity = metric(table, "popularity", GATE_SPLIT, GATE_METRIC)
    outcomes = ev.gate(name, candidate, popularity, deployed, requests_fingerprint, tolerance)
    return [dataclasses.replace(o, name=f"served_{o.name}") for o in outcomes]


# -- plots --------------------------------------------------------------------------------------------------
def plot(table, path, title: str = "", k: int = K) -> None:
    """Recall@k and NDCG@k by split, coverage and diversity over all requests, per method (PNG at ``path``)."""
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if m in set(table["method"])]
    splits = [s for s in ("warm", "new", "anonymous") if s in set(table["split"])]
    fig = Figure(figsize=(11, 6.4), dpi=80)
    axes = fig.subplots(2, 2)
    width = 0.8 / max(len(methods), 1)
    for ax, name in zip(axes[0], (f"recall@{k}", f"ndcg@{k}")):
        for m, method in enumerate(methods):
            values = [metric(table, method, s, name) for s in splits]
            ax.bar(np.arange(len(splits)) + m * width, values, width, label=method)
        ax.set_xticks(np.arange(len(splits)) + width * (len(methods) - 1) / 2, splits)
        ax.set_ylabel(name)
        ax.set_title(f"{name} by user split")
    axes[0][0].legend(fontsize=8)
    everyone = table[table["split"].isin(["all", "anonymous"])]
    for ax, name, label in ((axes[1][0], "coverage", "share of available items ever recommended"),
                            (axes[1][1], "diversity", "intra-list category diversity")):
        for s, split in enumerate(("all", "anonymous")):
            values = [float(everyone[(everyone["method"] == m) & (everyone["split"] == split)][name].iloc[0])
                      for m in methods]
            ax.bar(np.arange(len(methods)) + s * 0.4, values, 0.4, label="users" if split == "all" else split)
        ax.set_xticks(np.arange(len(methods)) + 0.2, methods, fontsize=8)
        ax.set_title(label)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")


# -- one day, end to end ------------------------------------------------------------------------------------
@dataclasses.dataclass
class DayEvaluation:
    """Everything :func:`evaluate_day` measured, for the asset's files and the release gate."""

    day: int
    requests: object          # replay_requests(...)
    lists: ServedLists
    table: object             # summary_table(...)
    fingerprint: str
    n_available: int
    popularity_window: list
    seconds: float

    def gate(self, deployed: Mapping | None = None, tolerance: float = ev.GATE_TOLERANCE) -> list[ev.GateOutcome]:
        return gate(self.table, self.fingerprint, deployed, tolerance)

    def record(self, release: int | None = None) -> dict:
        return record(self.table, self.fingerprint, release=release, day=self.day)


def known_users(store, train_through_day: int) -> tuple[np.ndarray, str]:
    """The user ids the served release knows, and where that came from.

    The compiled user vocabulary of the newest release in the local repository, else the compiled serving
    transforms, else (no transforms yet) the users registered by the last training day.
    """
    from recsys_assets.lib import paths
    from recsys_assets.lib.transform_files import read_description

    candidates = []
    releases = sorted(p for p in store.list(paths.TRITON_RELEASES) if p.endswith(".json"))
    if releases:
        import json

        manifest = json.loads(store.read_bytes(releases[-1]))
        version = manifest.get("models", {}).get("nvt_user_transform")
        if version is not None:
            candidates.append(f"{paths.TRITON_REPOSITORY}/nvt_user_transform/{version}/transforms")
    candidates.append(paths.SERVING_TRANSFORMS)
    for rel in candidates:
        if store.exists(f"{rel}/transforms.json"):
            _, vocabularies = read_description(store.local_path(rel))
            values = vocabularies["user.user_id"][0]
            return np.asarray(values, dtype=np.float64).astype(np.int64), f"user vocabulary of {rel}"
    users = store.read_parquet(paths.USERS, columns=["user_id", "signup_day"])
    known = users.loc[users["signup_day"] <= train_through_day, "user_id"].to_numpy(np.int64)
    return known, f"users registered by day {train_through_day:02d} (no compiled transforms found)"


LOGGED_COLUMNS = ("user_id", "session_id", "item_id", "device_type", "timestamp", "click")


def logged_days(store, days, columns: Sequence[str] = LOGGED_COLUMNS):
    """The raw interactions of ``days`` that exist (the ``columns`` the true-value references need) with a
    ``day`` column: ``lib.policy_value.evaluate``'s history (days before) or visits (the evaluated day)."""
    import pandas as pd

    from recsys_assets.lib import paths

    parts = [store.read_parquet(paths.raw_interactions(d), columns=list(columns)).assign(day=d) for d in days
             if store.exists(paths.raw_interactions(d))]
    if not parts:
        return pd.DataFrame({**{c: np.zeros(0, np.int64) for c in columns}, "day": np.zeros(0, np.int64)})
    return pd.concat(parts, ignore_index=True)


def popularity_list(store, catalogue, day: int, window: int, k: int = K) -> tuple[list[int], list[int]]:
    """The ``k`` most clicked items of the ``window`` days before ``day`` that are available on it."""
    from recsys_assets.lib import paths
    from recsys_assets.lib import popularity as pop

    days = [d for d in range(max(0, day - window), day) if store.exists(paths.raw_interactions(d))]
    clicked = [store.read_parquet(paths.raw_interactions(d), columns=["item_id", "click"]) for d in days]
    ids = (np.concatenate([c.loc[c["click"] == 1, "item_id"].to_numpy(np.int64) for c in clicked])
           if clicked else np.zeros(0, np.int64))
    tables = pop.build_tables(ids, catalogue, days or [day])
    return pop.ranking(tables, day=day)[:k], days


def evaluate_day(store, world, recommend: Recommend, day: int, known_user_ids, per_split: int = 200,
                 popularity_days: int = 7, k: int = K, diversity_modes: Sequence[bool] = (False, True),
                 seed: int = 0) -> DayEvaluation:
    """Replay day ``day``'s requests through ``recommend`` and score every method (the asset and the gate use it).

    ``store``: the artifact store (the day's raw interactions, the catalogue); ``world``: the generator, whose
    true click probabilities make the oracle (None: no oracle, as in production, where no ground truth exists).
    """
    from recsys_assets.lib import paths

    t0 = time.perf_counter()
    catalogue = store.read_parquet(paths.ITEMS).sort_values("item_id").reset_index(drop=True)
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    category = catalogue["category_l1"].to_numpy()
    rows = store.read_parquet(paths.raw_interactions(day))
    requests = replay_requests(rows, known_user_ids, per_split=per_split, seed=seed)
    popular, window = popularity_list(store, catalogue, day, popularity_days, k)
    oracle = oracle_lists(world.click_probability, requests, available_from, day, k) if world is not None else None
    lists = evaluate(recommend, requests, popular, oracle, k=k, diversity_modes=diversity_modes)
    n_available = int((available_from <= day).sum())
    table = summary_table(lists, category, n_available, k)
    return DayEvaluation(day=day, requests=requests, lists=lists, table=table, fingerprint=fingerprint(requests),
                         n_available=n_available, popularity_window=window, seconds=time.perf_counter() - t0)
