import numpy as np
import pytest

from recsys_assets.lib.metrics import auc, log_loss, ndcg_at_k, recall_at_k


@pytest.mark.parametrize(
    "labels, scores, expected",
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # ties count half
        ([0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8], 0.5),
    ],
)
def test_auc_table(labels, scores, expected):
    assert auc(labels, scores) == pytest.approx(expected)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(pairwise)


def test_auc_single_class_is_nan():
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_log_loss():
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_recall_and_ndcg():
    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    relevant = [{2, 9}, {4}]
    assert recall_at_k(ranked, relevant, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 1.0) / 2)
    assert np.isnan(recall_at_k(ranked, [set(), set()], 2))
