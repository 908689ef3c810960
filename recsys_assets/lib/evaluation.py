"""Offline evaluation against the generator's ground truth, and the deploy gates (pure numpy/pandas).

Retrieval (:func:`build_requests`, :func:`retrieval_table`)
  A *request* is a validation session with at least one click: who (the true user), on which device, when (the
  session's first impression), and the query features the model saw on that first row (point in time, so the
  session's own clicks never leak into them). Its *relevant* items are the raw ids it clicked. Every method
  ranks the items available that day (``available_from_day <= day``) and is scored on the same requests:
  recall@k (share of the clicked items in the top k) and binary NDCG@10. Splits:

  * ``warm``: users in the training vocabulary; ``new``: users unseen at fit time (NVTabular OOV row);
  * ``anonymous``: every request again with the unknown-user features serving gives (user -1, mean age, ...)
    and the request's own context; the relevant items stay those the (hidden) user clicked;
  * ``cold_items``: requests that clicked an item unseen at fit time, scored on those cold items alone.

  References on the same requests: ``popularity`` (train-window click counts), ``random`` and the ``oracle``,
  which ranks by the generator's true p(click | user, item, device, time) for the true user (an upper bound:
  for anonymous requests it still knows who is behind the request).

Ranking (:func:`ranking_table`): AUC and log-loss of scores against the click labels of every validation
  impression, per split, beside popularity and the oracle's true probabilities.

Context sensitivity (:func:`list_change`): for one anonymous user, how much the final top-k changes between
  contexts (mean over context pairs of the share of the list that differs).

Gates (:func:`gate`): a candidate must beat popularity and must not fall more than ``tolerance`` below the
  deployed release on the same rows (the first release has only the popularity test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from recsys_assets.lib.onnx_model import OnnxModel  # the one feeder (serving stages, scorer, gates)
from recsys_assets.lib.metrics import auc, log_loss, ndcg_at_k, recall_at_k
from recsys_assets.lib.feature_spec import FIRST_INDEX, NULL_INDEX, OOV_INDEX

SPLITS = ("all", "warm", "new", "anonymous", "cold_items")
RETRIEVAL_KS = (10, 100, 300)
NDCG_K = 10
GATE_TOLERANCE = 0.005


# -- requests -------------------------------------------------------------------------------------------------
def build_requests(rows, feature_columns: Sequence[str]):
    """One request per session with at least one click.

    ``rows``: validation impressions with ``session_id``, ``day``, ``user_id`` (true raw id), ``device_type``
    (true), ``timestamp``, ``item_id`` (raw), ``click``, ``user_index`` and ``item_index`` (NVTabular indices of
    user and item) and ``feature_columns`` (the transformed query features). Returns a DataFrame with those
    fields of each session's first impression plus ``relevant`` and ``cold_relevant`` (arrays of raw item ids)
    and ``split`` (``warm``/``new``/``anonymous`` by the user index).
    """
    import pandas as pd

    need = {"session_id", "day", "user_id", "device_type", "timestamp", "item_id", "click", "user_index",
            "item_index", *feature_columns}
    missing = sorted(need - set(rows.columns))
    if missing:
        raise ValueError(f"validation rows lack columns {missing}")
    ordered = rows.sort_values(["session_id", "timestamp"], kind="stable")
    first = ordered.groupby("session_id", sort=True).head(1).set_index("session_id")
    clicks = ordered[ordered["click"] == 1]
    relevant = _unique_per_key(clicks["session_id"].to_numpy(), clicks["item_id"].to_numpy(np.int64))
    cold_rows = clicks[clicks["item_index"] == OOV_INDEX]
    cold = _unique_per_key(cold_rows["session_id"].to_numpy(), cold_rows["item_id"].to_numpy(np.int64))
    sessions = np.array(sorted(relevant), dtype=first.index.dtype)
    out = first.loc[sessions, ["day", "user_id", "device_type", "timestamp", "user_index", *feature_columns]].copy()
    empty = np.zeros(0, np.int64)
    out["relevant"] = pd.Series([relevant[s] for s in sessions], index=out.index, dtype=object)
    out["cold_relevant"] = pd.Series([cold.get(s, empty) for s in sessions], index=out.index, dtype=object)
    idx = out["user_index"].to_numpy()
    out["split"] = np.where(idx >= FIRST_INDEX, "warm", np.where(idx == NULL_INDEX, "anonymous", "new"))
    return out.reset_index()


def _unique_per_key(keys: np.ndarray, values: np.ndarray) -> dict:
    """``{key: sorted unique values}`` for aligned arrays."""
    if len(keys) == 0:
        return {}
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return {k: np.unique(v) for k, v in zip(keys[starts], np.split(values, starts[1:]))}


def available_mask(available_from_day: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(requests, items) booleans: item available on the request's day."""
    return np.asarray(available_from_day)[None, :] <= np.asarray(days)[:, None]


# -- rankings -------------------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Item ids (column indices) of the ``k`` highest scores per row among allowed items, best first.

    Rows with fewer than ``k`` allowed items are padded with -1 (never counted as a hit).
    """
    scores = np.where(allowed, np.asarray(scores, dtype=np.float64), -np.inf)
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(part, order, axis=1)
    ranked = np.where(np.take_along_axis(scores, ranked, axis=1) == -np.inf, -1, ranked)
    if k_eff < k:
        ranked = np.hstack([ranked, np.full((len(ranked), k - k_eff), -1)])
    return ranked


def popularity_top_k(item_scores: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """The same popularity order for every request, restricted to what is available to it."""
    return top_k(np.broadcast_to(np.asarray(item_scores, dtype=np.float64), allowed.shape), allowed, k)


def random_top_k(allowed: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return top_k(rng.random(allowed.shape), allowed, k)


def oracle_top_k(click_probability: Callable, requests, n_items: int, allowed: np.ndarray, k: int,
                 chunk: int = 256) -> np.ndarray:
    """Items ranked by the true p(click) for each request's true user, device and time.

    ``click_probability(user_ids, item_ids, device, timestamp)`` is the generator's
    (:meth:`recsys_assets.lib.generator.World.click_probability`), evaluated on broadcast (requests, items) grids.
    """
    users = requests["user_id"].to_numpy(np.int64)
    devices = requests["device_type"].to_numpy(np.int64)
    stamps = requests["timestamp"].to_numpy(np.int64)
    items = np.arange(n_items, dtype=np.int64)[None, :]
    out = []
    for s in range(0, len(users), chunk):
        sl = slice(s, s + chunk)
        p = click_probability(users[sl, None], items, devices[sl, None], stamps[sl, None])
        out.append(top_k(p, allowed[sl], k))
    return np.vstack(out) if out else np.zeros((0, k), np.int64)


# -- retrieval metrics ----------------------------------------------------------------------------------------
def retrieval_metrics(ranked: np.ndarray, relevant: Sequence[np.ndarray], ks=RETRIEVAL_KS) -> dict[str, float]:
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out[f"ndcg@{NDCG_K}"] = ndcg_at_k(ranked, relevant, NDCG_K)
    return out


def retrieval_table(rankings: Mapping[str, np.ndarray], requests, anonymous: Mapping[str, np.ndarray] | None = None,
                    ks=RETRIEVAL_KS):
    """Metrics of every method on every split, as a long DataFrame (method, split, requests, metrics...).

    ``rankings[method]``: (requests, >= max(ks)) ranked raw ids for the requests as they are (warm/new rows).
    ``anonymous[method]``: the same requests ranked with the unknown-user query (methods without a user input,
    such as popularity, are the same list and may be omitted: their own ranking is reused).
    """
    import pandas as pd

    relevant = list(requests["relevant"])
    cold = list(requests["cold_relevant"])
    split = requests["split"].to_numpy()
    has_cold = np.array([len(c) > 0 for c in cold])
    rows = []
    for method, ranked in rankings.items():
        ranked = np.asarray(ranked)
        masks = {"all": np.ones(len(split), bool), "warm": split == "warm", "new": split == "new"}
        for name, mask in masks.items():
            rows.append({"method": method, "split": name, "requests": int(mask.sum()),
                         **_metrics_or_nan(ranked[mask], [relevant[i] for i in np.flatnonzero(mask)], ks)})
        anon = ranked if anonymous is None or method not in anonymous else np.asarray(anonymous[method])
        rows.append({"method": method, "split": "anonymous", "requests": len(split),
                     **_metrics_or_nan(anon, relevant, ks)})
        rows.append({"method": method, "split": "cold_items", "requests": int(has_cold.sum()),
                     **_metrics_or_nan(ranked[has_cold], [cold[i] for i in np.flatnonzero(has_cold)], ks)})
    return pd.DataFrame(rows)


def _metrics_or_nan(ranked, relevant, ks) -> dict[str, float]:
    if len(relevant) == 0:
        return {**{f"recall@{k}": float("nan") for k in ks}, f"ndcg@{NDCG_K}": float("nan")}
    return retrieval_metrics(ranked, relevant, ks)


def metric(table, method: str, split: str, name: str) -> float:
    """One number out of a :func:`retrieval_table` / :func:`ranking_table`."""
    hit = table[(table["method"] == method) & (table["split"] == split)]
    if hit.empty:
        raise KeyError(f"no row for method {method!r}, split {split!r}")
    return float(hit.iloc[0][name])


# -- ranking metrics ------------------------------------------------------------------------------------------
def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, prior_strength: float = 20.0) -> np.ndarray:
    """Item CTR shrunk towards the global CTR (``prior_strength`` pseudo-impressions): a calibrated popularity."""
    clicks = np.asarray(clicks, dtype=np.float64)
    impressions = np.asarray(impressions, dtype=np.float64)
    base = clicks.sum() / max(impressions.sum(), 1.0)
    return (clicks + prior_strength * base) / (impressions + prior_strength)


def ranking_table(labels: np.ndarray, scores: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                  probabilistic: Sequence[str] = ()):
    """AUC (and log-loss for methods whose scores are probabilities) per method and split."""
    import pandas as pd

    labels = np.asarray(labels)
    rows = []
    for method, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != labels.shape:
            raise ValueError(f"{method}: {s.shape[0]} scores for {labels.shape[0]} labels")
        for split, mask in masks.items():
            y, p = labels[mask], s[mask]
            rows.append({"method": method, "split": split, "rows": int(mask.sum()),
                         "clicks": int(y.sum()), "auc": auc(y, p) if len(y) else float("nan"),
                         "log_loss": log_loss(y, p) if method in probabilistic and len(y) else float("nan")})
    return pd.DataFrame(rows)


# -- context sensitivity --------------------------------------------------------------------------------------
def list_change(lists: Mapping[object, np.ndarray]) -> float:
    """Mean over pairs of contexts of the share of the top-k that differs (0: identical lists, 1: disjoint)."""
    keys = list(lists)
    if len(keys) < 2:
        return 0.0
    changes = []
    for a, b in itertools.combinations(keys, 2):
        la, lb = np.asarray(lists[a]), np.asarray(lists[b])
        k = max(len(la), 1)
        changes.append(1.0 - len(np.intersect1d(la, lb)) / k)
    return float(np.mean(changes))


# -- gates ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GateOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict


def rows_fingerprint(interaction_ids) -> str:
    """Identity of an evaluation row set: sha256 of its sorted interaction ids."""
    ids = np.sort(np.asarray(interaction_ids, dtype=np.int64))
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def gate(metric_name: str, candidate: float, popularity: float, deployed: Mapping | None, fingerprint: str,
         tolerance: float = GATE_TOLERANCE) -> list[GateOutcome]:
    """The two deploy gates of one metric: ``beats_popularity`` and ``no_regression``.

    ``deployed``: the deployed release's evaluation record (``{"fingerprint": ..., "metrics": {name: value}}``)
    or None for the first release. A record of other rows cannot be compared and fails the gate (re-evaluate
    the deployed release on these rows, or promote by hand).
    """
    ok = bool(np.isfinite(candidate) and candidate > popularity)
    outcomes = [GateOutcome(
        "beats_popularity", ok,
        f"{metric_name}: candidate {candidate:.4f} vs popularity {popularity:.4f}"
        + ("" if ok else " (the candidate must beat popularity: not deployable)"),
        {"candidate": float(candidate), "popularity": float(popularity)})]
    if deployed is None:
        outcomes.append(GateOutcome("no_regression", True,
                                    f"{metric_name}: no deployed release yet (first release: popularity test only)",
                                    {"candidate": float(candidate)}))
        return outcomes
    if deployed.get("fingerprint") != fingerprint:
        outcomes.append(GateOutcome(
            "no_regression", False,
            f"{metric_name}: the deployed release was evaluated on other rows ({deployed.get('fingerprint')} vs "
            f"{fingerprint}): re-evaluate it on these rows before comparing", {"candidate": float(candidate)}))
        return outcomes
    old = deployed.get("metrics", {}).get(metric_name)
    if old is None:
        outcomes.append(GateOutcome("no_regression", False,
                                    f"{metric_name}: the deployed record has no {metric_name!r} to compare with",
                                    {"candidate": float(candidate)}))
        return outcomes
    ok = bool(candidate >= float(old) - tolerance)
    outcomes.append(GateOutcome(
        "no_regression", ok,
        f"{metric_name}: candidate {candidate:.4f} vs deployed {float(old):.4f} (tolerance {tolerance})"
        + ("" if ok else f": drops {float(old) - candidate:.4f}, more than {tolerance}"),
        {"candidate": float(candidate), "deployed": float(old), "tolerance": tolerance}))
    return outcomes


# -- plots ----------------------------------------------------------------------------------------------------
def recall_plot(table, path, methods: Sequence[str] | None = None, metric_name: str = "recall@300",
                title: str = "") -> None:
    """Grouped bars: ``metric_name`` of each method on each split (PNG at ``path``)."""
    from matplotlib.figure import Figure

    methods = list(methods or dict.fromkeys(table["method"]))
    splits = [s for s in SPLITS if s in set(table["split"])]
    fig = Figure(figsize=(1.6 * len(splits) + 3, 4.0), dpi=80)
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    for m, method in enumerate(methods):
        values = [metric(table, method, s, metric_name) for s in splits]
        ax.bar(np.arange(len(splits)) + m * width, values, width, label=method)
    ax.set_xticks(np.arange(len(splits)) + width * (len(methods) - 1) / 2, splits)
    ax.set_ylabel(metric_name)
    if metric_name == "auc":
        ax.set_ylim(0.4, 1.0)  # AUC differences live above chance
    ax.set_title(title or f"{metric_name} by split")
    ax.legend(fontsize=8, ncols=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")


def history_plot(histories: Mapping[str, Sequence[Mapping]], path, key: str = "loss", title: str = "") -> None:
    """Training curves: ``key`` per epoch for each named run (PNG at ``path``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.4), dpi=80)
    ax = fig.subplots()
    for name, epochs in histories.items():
        ax.plot([e["epoch"] for e in epochs], [e[key] for e in epochs], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


# -- ONNX models in the pipeline env --------------------------------------------------------------------------
def onnx_parity(onnx_path, parity_npz) -> dict:
    """onnxruntime on the rows the merlin env saved, against TensorFlow's outputs on them."""
    data = np.load(parity_npz)
    model = OnnxModel(onnx_path)
    expected = data["expected"]
    got = model({name: data[name] for name in model.inputs})
    if got.shape != expected.shape:
        raise ValueError(f"{onnx_path}: ONNX output shape {got.shape} differs from TensorFlow's {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return {"rows": len(expected), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "inputs": {n: np.dtype(t).name for n, t in model.inputs.items()}, "output": model.output}
