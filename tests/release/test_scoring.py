"""The release gate's scoring: the list a release serves, computed from its repository versions, and the gate by
true expected clicks (logged recall/AUC without truth), on the tiny serving artifacts and a generated tiny world."""

import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.release import releases
from recsys_assets.lib import dataset, masking, paths, policy_value
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.generator import World
from recsys_assets.lib.feature_spec import USER_HISTORY, WORKFLOW_INPUTS
from recsys_assets.lib.top_category import category_codes, history_codes
from recsys_assets.release import records, repository, scoring
from recsys_assets.release.repository import ServingDefaults
from tests.release.tiny_serving import tiny_artifacts

DAY = 5


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """An artifact store with raw days 00-05, the masked day 05 and release 1 built from the tiny artifacts."""
    tiny = tiny_artifacts(tmp_path_factory)
    world = World(seed=7, scale="tiny")
    store = ArtifactStore(tmp_path_factory.mktemp("scoring") / "artifacts")
    items = dataset.write_items(store, world)
    users = dataset.write_users(store, world, DAY)
    raws = [dataset.write_day(store, world, d)[0] for d in range(DAY + 1)]
    codes = history_codes(pd.concat(raws, ignore_index=True), category_codes(items["category_l1"]),
                          raws[DAY]["user_id"], raws[DAY]["timestamp"])
    history = pd.DataFrame({"interaction_id": raws[DAY]["interaction_id"], **codes})
    joined = masking.join_day(raws[DAY], users, items, history, masking.training_mean_age(users, 3))
    store.write_parquet(paths.masked_interactions(DAY), joined)
    with store.writing(paths.TRITON_REPOSITORY) as target:
        release, _ = repository.assemble_candidate(target, None, tiny.trained, ServingDefaults(sampling_seed=5),
                                                   tiny.start_date, 1, [])
    store.write_bytes(paths.triton_release(1), release.to_json().encode())
    return store, world, records.manifest(store, 1)


@pytest.fixture(scope="module")
def scorer(released):
    store, _, release = released
    return scoring.ReleaseScorer(store.local_path(paths.TRITON_REPOSITORY), release)


@pytest.fixture(scope="module")
def gate_slice(released):
    store, _, _ = released
    return releases._slice(store, DAY, 0.5, 3)


def test_the_served_list_is_the_rankers_order_of_the_retrieved_candidates(released, scorer, gate_slice):
    store, _, _ = released
    items = store.read_parquet(paths.ITEMS)
    requests = scoring.gate_requests(gate_slice, scorer.known_users())
    assert set(requests["split"]) == {"warm", "new", "anonymous"}
    lists = scorer.recommend(requests, DAY, items, k=10, candidates=50)
    available = items.set_index("item_id")["available_from_day"]
    assert lists.shape == (len(requests), 10) and (lists >= 0).all()
    assert all(len(set(row)) == 10 for row in lists.tolist())
    assert (available.loc[lists.ravel()].to_numpy() <= DAY).all()
    # the list is the DLRM's top 10 of FAISS's 50, for the first request: recompute it by hand
    first = scorer.as_served(requests.iloc[:1])
    candidates = scorer.retrieve(first, DAY, 50)[0]
    rows = pd.concat([first[[*WORKFLOW_INPUTS["user"], *WORKFLOW_INPUTS["context"]]]] * 50, ignore_index=True)
    rows = pd.concat([rows, items.set_index("item_id").loc[candidates, ["category_l1", "category_l2", "item_gender",
                                                                        "price"]].reset_index(drop=True)], axis=1)
    p = scorer.click_probability(rows.assign(item_id=candidates))
    np.testing.assert_array_equal(lists[0], candidates[np.argsort(-p, kind="stable")[:10]])
    # an anonymous request is served the cold-start user features, whatever the hidden user's were
    anonymous = requests[requests["split"] == "anonymous"].iloc[:3]
    defaults = scorer.transforms.unknown_user(3)
    explicit = anonymous.assign(age=defaults["age"], gender=defaults["gender"],
                                **{name: defaults[name] for name in USER_HISTORY})
    np.testing.assert_array_equal(scorer.recommend(anonymous, DAY, items, k=10, candidates=50),
                                  scorer.recommend(explicit, DAY, items, k=10, candidates=50))


def test_the_gate_judges_by_true_expected_clicks_and_falls_back_to_logged_measures(released, gate_slice):
    store, world, release = released
    live = store.local_path(paths.TRITON_REPOSITORY)
    config = releases.GateConfig(bootstrap_samples=200)
    # the candidate against itself as the served release: the paired difference is exactly zero
    gate = releases._gate(store, live, release, release, gate_slice, config, world)
    assert gate.measure == policy_value.TRUTH_MEASURE
    outcomes = {name: (ok, text) for name, ok, text in gate.outcomes}
    assert set(outcomes) == {"beats_popularity", "no_regression"}
    assert outcomes["no_regression"][0] and "users +0.0000 [+0.0000, +0.0000]" in outcomes["no_regression"][1]
    candidate = policy_value.pooled_value(gate.true, "candidate")
    popularity = policy_value.pooled_value(gate.true, "popularity")
    assert outcomes["beats_popularity"][0] is (candidate > popularity)
    table = gate.true_table()
    captured = table[table["method"] == "candidate"]
    assert set(captured["split"]) == {"warm", "new", "anonymous"} and captured["capture"].notna().all()
    assert {"recall@10", "ndcg@10"} <= set(table.columns)  # the logged measures, secondary columns
    summary = gate.summary(config.recall_k)
    assert summary["true_expected_clicks/candidate/users"] == summary["true_expected_clicks/served/users"]
    assert {"capture/candidate/warm", "recall_at_100/candidate", "auc/served"} <= set(summary)
    assert "true" in gate.evaluation(config) and "true_expected_clicks" in gate.check_metadata()
    # no world (own data): the logged measures decide, and the record says so
    logged = releases._gate(store, live, release, release, gate_slice, config, None)
    assert logged.measure == policy_value.LOGGED_MEASURE and logged.true is None
    assert dict((n, ok) for n, ok, _ in logged.outcomes)["no_regression"]
    assert "recall@100" in dict((n, d) for n, _, d in logged.outcomes)["beats_popularity"]
