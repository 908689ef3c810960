"""Pure evaluation logic: requests from sessions, rankings restricted to available items, metric tables, the
oracle against the generator's truth, context sensitivity and the deploy gates."""

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib import evaluation as ev
from recsys_assets.lib.feature_spec import NULL_INDEX, OOV_INDEX


def _rows():
    # session 10: warm user, two clicks (one on a cold item); session 11: new user, no click; 12: new user, one click
    return pd.DataFrame({
        "session_id": [10, 10, 10, 11, 12, 12],
        "day": [9, 9, 9, 9, 10, 10],
        "user_id": [5, 5, 5, 7, 8, 8],
        "device_type": [1, 1, 1, 0, 2, 2],
        "timestamp": [105, 100, 110, 50, 70, 80],
        "item_id": [3, 4, 6, 1, 2, 2],
        "click": [1, 0, 1, 0, 1, 1],
        "user_index": [9, 9, 9, OOV_INDEX, OOV_INDEX, OOV_INDEX],
        "item_index": [5, 6, OOV_INDEX, 4, 7, 7],
        "q_top_category": [3, 4, 5, 1, 1, 1],
    })


def test_requests_are_sessions_with_clicks_and_their_first_row_features():
    req = ev.build_requests(_rows(), ["q_top_category"])
    assert req["session_id"].tolist() == [10, 12]
    first = req.iloc[0]
    assert first["timestamp"] == 100 and first["q_top_category"] == 4  # the earliest row, not the first listed
    assert first["relevant"].tolist() == [3, 6] and first["cold_relevant"].tolist() == [6]
    assert req.iloc[1]["relevant"].tolist() == [2] and len(req.iloc[1]["cold_relevant"]) == 0
    assert req["split"].tolist() == ["warm", "new"]


def test_masked_user_index_is_an_anonymous_request():
    rows = _rows().assign(user_index=NULL_INDEX)
    assert set(ev.build_requests(rows, [])["split"]) == {"anonymous"}


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="q_age_norm"):
        ev.build_requests(_rows(), ["q_age_norm"])


def test_top_k_respects_availability_and_pads_with_minus_one():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    allowed = np.array([[True, False, True, True], [True, True, False, False]])
    ranked = ev.top_k(scores, allowed, 3)
    assert ranked.tolist() == [[3, 2, 0], [0, 1, -1]]
    assert ev.top_k(scores, np.ones_like(allowed), 6).shape == (2, 6)


def test_available_mask_and_popularity_order():
    mask = ev.available_mask(np.array([0, 5, 0, 12]), np.array([4, 12]))
    assert mask.tolist() == [[True, False, True, False], [True, True, True, True]]
    ranked = ev.popularity_top_k(np.array([1.0, 9.0, 5.0, 7.0]), mask, 2)
    assert ranked.tolist() == [[2, 0], [1, 3]]


def test_retrieval_table_scores_every_method_on_every_split():
    req = ev.build_requests(_rows(), [])
    rankings = {"model": np.array([[3, 6, 0], [2, 1, 0]]), "popularity": np.array([[0, 1, 3], [0, 1, 3]])}
    anonymous = {"model": np.array([[0, 1, 3], [0, 1, 2]])}
    table = ev.retrieval_table(rankings, req, anonymous, ks=(1, 3))
    assert set(table["split"]) == set(ev.SPLITS)
    assert ev.metric(table, "model", "all", "recall@3") == 1.0
    assert ev.metric(table, "model", "warm", "recall@1") == 0.5
    assert ev.metric(table, "model", "cold_items", "recall@3") == 1.0
    assert ev.metric(table, "model", "anonymous", "recall@3") == pytest.approx((0.5 + 1.0) / 2)
    # popularity has no user input: its anonymous row is its own ranking
    assert ev.metric(table, "popularity", "anonymous", "recall@3") == ev.metric(table, "popularity", "all", "recall@3")
    with pytest.raises(KeyError):
        ev.metric(table, "nope", "all", "recall@3")


def test_oracle_ranks_by_the_generators_true_probability(tiny_world):
    day, n_items = 2, len(tiny_world.items)
    req = pd.DataFrame({"user_id": [0, 1], "device_type": [0, 1],
                        "timestamp": tiny_world.day_start_ts(day) + np.array([3600, 7200]), "day": [day, day]})
    allowed = ev.available_mask(tiny_world.item_available_from, req["day"].to_numpy())
    ranked = ev.oracle_top_k(tiny_world.click_probability, req, n_items, allowed, 5, chunk=1)
    p = tiny_world.click_probability(np.int64(0), np.arange(n_items), np.int64(0), req["timestamp"].iloc[0])
    best = np.argsort(-np.where(allowed[0], p, -1))[:5]
    assert ranked[0].tolist() == best.tolist()
    assert (tiny_world.item_available_from[ranked] <= day).all()


def test_ranking_table_and_smoothed_ctr():
    labels = np.array([0, 0, 1, 1])
    table = ev.ranking_table(labels, {"good": np.array([0.1, 0.2, 0.8, 0.9]), "bad": np.array([0.9, 0.8, 0.2, 0.1])},
                             {"all": np.ones(4, bool), "half": np.array([True, False, True, False])},
                             probabilistic=("good",))
    assert ev.metric(table, "good", "all", "auc") == 1.0 and ev.metric(table, "bad", "all", "auc") == 0.0
    assert np.isfinite(ev.metric(table, "good", "all", "log_loss"))
    assert np.isnan(ev.metric(table, "bad", "all", "log_loss"))
    ctr = ev.smoothed_ctr(np.array([0, 5]), np.array([10, 10]), prior_strength=10)  # global CTR 0.25
    assert ctr.tolist() == pytest.approx([0.125, 0.375])


def test_list_change():
    assert ev.list_change({"a": np.arange(10), "b": np.arange(10)}) == 0.0
    assert ev.list_change({"a": np.arange(10), "b": np.arange(10, 20)}) == 1.0
    assert ev.list_change({"a": np.arange(10), "b": np.arange(5, 15), "c": np.arange(10)}) == pytest.approx(1 / 3)
    assert ev.list_change({"a": np.arange(10)}) == 0.0


@pytest.mark.parametrize("candidate, popularity, deployed, beats, no_regression", [
    (0.30, 0.20, None, True, True),     # first release: popularity test only
    (0.15, 0.20, None, False, True),    # worse than popularity
    (0.30, 0.20, 0.304, True, True),    # within the tolerance of the deployed release
    (0.30, 0.20, 0.31, True, False),    # drops 0.01 > 0.005
])
def test_gate(candidate, popularity, deployed, beats, no_regression):
    record = None if deployed is None else {"fingerprint": "f", "metrics": {"auc": deployed}}
    outcomes = {o.name: o for o in ev.gate("auc", candidate, popularity, record, "f")}
    assert outcomes["beats_popularity"].passed is beats
    assert outcomes["no_regression"].passed is no_regression


def test_gate_refuses_records_of_other_rows_and_nan():
    outcomes = {o.name: o for o in ev.gate("auc", 0.7, 0.6, {"fingerprint": "old", "metrics": {"auc": 0.5}}, "new")}
    assert not outcomes["no_regression"].passed and "other rows" in outcomes["no_regression"].description
    assert not ev.gate("auc", float("nan"), 0.6, None, "f")[0].passed


def test_rows_fingerprint_ignores_order():
    assert ev.rows_fingerprint([3, 1, 2]) == ev.rows_fingerprint([1, 2, 3]) != ev.rows_fingerprint([1, 2])


def test_plots_write_png(tmp_path):
    req = ev.build_requests(_rows(), [])
    table = ev.retrieval_table({"model": np.array([[3, 6, 0], [2, 1, 0]])}, req, ks=(1, 3))
    ev.recall_plot(table, tmp_path / "r.png", metric_name="recall@3")
    ev.history_plot({"a": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]}, tmp_path / "h.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "h.png").stat().st_size > 0
