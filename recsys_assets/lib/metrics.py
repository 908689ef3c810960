"""Evaluation metrics on plain numpy arrays (no sklearn: this module also runs in the merlin env)."""

from __future__ import annotations

import numpy as np


def auc(labels, scores) -> float:
    """ROC AUC with ties counted as half (the Mann-Whitney statistic). NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each tie group
    ranks = np.empty(len(s))
    ranks[order] = mid_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def recall_at_k(ranked: np.ndarray, relevant: list[set[int]] | list[np.ndarray], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / |relevant| (queries without relevant items are skipped)."""
    hits, n = 0.0, 0
    for row, rel in zip(ranked, relevant):
        rel = set(np.asarray(list(rel)).tolist())
        if not rel:
            continue
        hits += len(rel.intersection(np.asarray(row[:k]).tolist())) / len(rel)
        n += 1
    return hits / n if n else float("nan")


def ndcg_at_k(ranked: np.ndarray, relevant, k: int) -> float:
    """Mean binary NDCG@k over queries with at least one relevant item."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total, n = 0.0, 0
    for row, rel in zip(ranked, relevant):
        rel = set(np.asarray(list(rel)).tolist())
        if not rel:
            continue
        gains = np.array([1.0 if x in rel else 0.0 for x in np.asarray(row[:k]).tolist()])
        dcg = float((gains * discounts[: len(gains)]).sum())
        ideal = float(discounts[: min(len(rel), k)].sum())
        total += dcg / ideal
        n += 1
    return total / n if n else float("nan")
