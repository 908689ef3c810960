"""Runtime endpoints from the environment, the fail-fast Valkey link, and the seen filter stage on a real Valkey."""

import numpy as np
import pytest

from recsys_assets.lib import popularity
from recsys_assets.lib.valkey_server import EmbeddedValkey, KeyLayout
from recsys_assets.serving.bloom import BloomParams, SeenFilter
from recsys_assets.serving.executor import StageConfigError, StageContext
from recsys_assets.serving.runtime import Breaker, Runtime, ValkeyLink, ValkeyUnavailable, server_environ
from recsys_assets.serving.stages.filter_seen_items import FilterSeenItems


DAY0 = 1767225600


def test_runtime_reads_endpoints_from_the_environment_only():
    runtime = Runtime.from_environ({"RECSYS_VALKEY_URL": "rediss://:pw@cache.example:6379",
                                    "RECSYS_VALKEY_SEEN_DB": "5", "RECSYS_VALKEY_CLUSTER": "1",
                                    "RECSYS_FEAST_REPO": "/srv/feature_repo"})
    assert runtime.valkey_url.startswith("rediss://") and runtime.seen_db == 5 and runtime.cluster is True
    assert str(runtime.feast_repo) == "/srv/feature_repo"
    assert Runtime.from_environ({}).valkey_url is None
    with pytest.raises(ValueError, match="RECSYS_VALKEY_SEEN_DB='x'"):
        Runtime.from_environ({"RECSYS_VALKEY_SEEN_DB": "x"})


def test_server_environ_carries_feast_and_valkey_endpoints():
    env = server_environ("redis://127.0.0.1:6390", "/a/feature_store/registry.db")
    assert env["RECSYS_FEAST_ONLINE_STORE"] == "127.0.0.1:6390,db=0,socket_timeout=0.5,socket_connect_timeout=0.5"
    assert env["RECSYS_FEAST_REGISTRY"] == "/a/feature_store/registry.db"


def test_the_feast_yaml_needs_its_variables_and_says_which(tmp_path):
    runtime = Runtime.from_environ({"RECSYS_FEAST_REGISTRY": str(tmp_path / "r.db")})
    with pytest.raises(KeyError, match="RECSYS_FEAST_ONLINE_STORE"):
        runtime.feature_store()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_fails_fast_while_down_and_recovers_after_the_retry_interval():
    clock, calls = Clock(), []
    breaker = Breaker("dep", retry_after_s=1.0, clock=clock)

    def refused():
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(ValkeyUnavailable):
        breaker.call(refused)
    with pytest.raises(ValkeyUnavailable):
        breaker.call(refused)  # within the interval: not even tried
    assert len(calls) == 1 and breaker.down
    clock.now = 1.5
    assert breaker.call(lambda: "ok") == "ok" and not breaker.down
    with pytest.raises(ZeroDivisionError):  # not a connection problem: raised as is, breaker untouched
        breaker.call(lambda: 1 / 0)
    assert not breaker.down


@pytest.mark.integration
def test_valkey_link_degrades_when_valkey_stops_and_reconnects_when_it_returns(tmp_path, valkey):
    link = ValkeyLink(Runtime(valkey_url=f"redis://127.0.0.1:{valkey.port}"), "seen", retry_after_s=0.0)
    assert link.run(lambda c: c.set("k", "v")) and link.prefix == "recsys:seen:"
    valkey.stop()
    with pytest.raises(ValkeyUnavailable):
        link.run(lambda c: c.get("k"))
    restarted = EmbeddedValkey(valkey.data_dir, port=valkey.port).start()  # same folder: the AOF keeps the key
    try:
        assert link.run(lambda c: c.get("k")) == b"v"
    finally:
        restarted.stop()


# -- filter_seen_items ------------------------------------------------------------------------------------------
@pytest.fixture()
def seen_stage(tmp_path, tiny, valkey):
    np.save(tmp_path / "availability.npy", tiny.items["available_from_day"].to_numpy(np.int64))
    ctx = StageContext("filter_seen_items", model_dir=tmp_path, environ={
        "RECSYS_VALKEY_URL": f"redis://127.0.0.1:{valkey.port}"}, params={
        "START_DATE": "2026-01-01", "RETRIEVAL_TOPK": "5", "BLOOM_CAPACITY": "100", "RETRY_AFTER_S": "0"})
    client = valkey.endpoint.client(db=KeyLayout.make().popularity.db)
    tables = popularity.build_tables(np.repeat(np.arange(40), np.arange(40, 0, -1)), tiny.items, [0])
    popularity.publish(client, KeyLayout.make().popularity.prefix, tables)
    client.close()
    stage = FilterSeenItems(ctx)
    yield stage, ctx, valkey
    stage.close()


def click(valkey, user, items):
    client = valkey.endpoint.client(db=1)
    SeenFilter("recsys:seen:", BloomParams(capacity=100)).add(client, user, items)
    client.close()


def call(stage, user, candidates, k=3, ts=DAY0):
    return stage(user_id=np.array([user]), candidate_ids=np.asarray(candidates, np.int64),
                 timestamp=np.array([ts]), top_k=np.array([k]))["item_ids"].tolist()


@pytest.mark.integration
def test_seen_candidates_are_dropped_and_the_list_is_cut_to_retrieval_topk(seen_stage):
    stage, _, valkey = seen_stage
    click(valkey, 8, [101, 103])
    assert call(stage, 8, [100, 101, 102, 103, 104, 105, 106]) == [100, 102, 104, 105, 106]
    assert call(stage, -1, [101, 103], k=2) == [101, 103]  # anonymous: nothing filtered


@pytest.mark.integration
def test_too_few_survivors_are_filled_with_popular_released_unseen_items(seen_stage, tiny):
    stage, _, valkey = seen_stage
    click(valkey, 9, [0, 200, 201])
    out = call(stage, 9, [200, 201, 202], k=4)
    assert out[0] == 202 and len(out) == 4
    held_back = set(tiny.items.loc[tiny.items["available_from_day"] > 0, "item_id"])
    assert 0 not in out and not (set(out) & held_back)  # the seen item 0 (most popular) is not filled back
    assert out[1:] == [i for i in range(1, 40) if i not in held_back][:3]


@pytest.mark.integration
def test_with_valkey_down_candidates_pass_through_counted_and_filtering_resumes(seen_stage):
    stage, ctx, valkey = seen_stage
    click(valkey, 10, [1])
    assert call(stage, 10, [1, 2, 3], k=2) == [2, 3]
    valkey.stop()
    assert call(stage, 10, [1, 2, 3], k=2) == [1, 2, 3]
    assert ctx.metrics.value("recsys_degraded_requests_total", stage="filter_seen_items",
                             reason="valkey_unreachable") == 1
    restarted = EmbeddedValkey(valkey.data_dir, port=valkey.port).start()
    try:
        assert call(stage, 10, [1, 2, 3], k=2) == [2, 3]
    finally:
        restarted.stop()


# -- softmax_sampling's ordering prior ------------------------------------------------------------------------------
def _publish_prior(valkey, tiny):
    """Day 0 impressions where category A's items are clicked on mobile and category B's never."""
    import pandas as pd

    items = tiny.items
    names = sorted(items["category_l1"].unique())
    a, b = (items.index[items["category_l1"] == n][:20].to_numpy() for n in names[:2])
    shown = np.concatenate([a, b])
    impressions = pd.DataFrame({"item_id": np.repeat(shown, 5), "click": np.tile([1, 0, 0, 0, 0], len(shown)),
                                "device_type": 1, "timestamp": DAY0 + 3600})
    impressions.loc[impressions["item_id"].isin(b), "click"] = 0
    client = valkey.endpoint.client(db=KeyLayout.make().popularity.db)
    popularity.publish(client, KeyLayout.make().popularity.prefix,
                       popularity.build_window(impressions, items, [0]))
    client.close()
    return a, b, names


def _order(stage, ids, scores, interests=(-1, -1, -1), device=1):
    out = stage(scores=np.asarray(scores, np.float32), item_index=np.asarray(ids, np.int64),
                item_ids=np.asarray(ids, np.int64), top_k=np.array([len(ids)]), diversity=np.array([False]),
                device_type=np.array([device]), timestamp=np.array([DAY0 + 3600]),
                **{f"interest_{k + 1}": np.array([v]) for k, v in enumerate(interests)})
    return out["selected_ids"].tolist(), out["selected_scores"]


@pytest.mark.integration
def test_the_prior_reorders_by_clicks_context_and_interests_and_degrades_without_valkey(valkey, tiny):
    from recsys_assets.serving.stages.softmax_sampling import SoftmaxSampling

    a, b, names = _publish_prior(valkey, tiny)
    url = {"RECSYS_VALKEY_URL": f"redis://127.0.0.1:{valkey.port}"}
    params = {"RANKING_TOPK": "100", "PRIOR_WEIGHT": "1.0", "RETRY_AFTER_S": "0"}
    stage = SoftmaxSampling(StageContext("softmax_sampling", params=params, environ=url))
    off = SoftmaxSampling(StageContext("softmax_sampling", params={**params, "PRIOR_WEIGHT": "0"}, environ=url))
    ids, dlrm = [int(b[0]), int(a[0])], [0.30, 0.28]  # the DLRM prefers the never-clicked category's item
    assert off(scores=np.asarray(dlrm, np.float32), item_index=np.asarray(ids), item_ids=np.asarray(ids),
               top_k=np.array([2]), diversity=np.array([False]))["selected_ids"].tolist() == ids
    order, scores = _order(stage, ids, dlrm)
    assert order == ids[::-1] and scores[0] > scores[1]  # clicks and the mobile lift put A's item first
    # a user whose interests are all category B keeps B's item first, against the same context
    b_code = names.index(names[1])  # codes are positions in the catalogue's sorted categories (lib.top_category)
    assert _order(stage, ids, dlrm, interests=(b_code, -1, -1))[0] == ids
    assert stage.ctx.metrics.value("recsys_degraded_requests_total", stage="softmax_sampling",
                                   reason="prior_unavailable") == 0
    # without the request's context the DLRM's order stands, counted as degraded
    plain = stage(scores=np.asarray(dlrm, np.float32), item_index=np.asarray(ids), item_ids=np.asarray(ids),
                  top_k=np.array([2]), diversity=np.array([False]))
    assert plain["selected_ids"].tolist() == ids
    assert stage.ctx.metrics.value("recsys_degraded_requests_total", stage="softmax_sampling",
                                   reason="prior_unavailable") == 1
    # the gender terms (PRIOR_COEFFICIENTS): an item for the other gender falls behind, only for a known gender
    genders = tiny.items["item_gender"].to_numpy()
    female, male = (int(np.flatnonzero(genders == g)[0]) for g in ("F", "M"))
    crossed = SoftmaxSampling(StageContext("softmax_sampling", params={
        **params, "PRIOR_COEFFICIENTS": "0,0,0,0,-5,0"}, environ=url))
    pair, even = [female, male], [0.30, 0.29]
    for gender, first in ((0, female), (1, male)):
        out = crossed(scores=np.asarray(even, np.float32), item_index=np.asarray(pair), item_ids=np.asarray(pair),
                      top_k=np.array([2]), diversity=np.array([False]), device_type=np.array([1]),
                      timestamp=np.array([DAY0 + 3600]), age=np.array([40.0]), gender=np.array([gender]),
                      **{f"interest_{k}": np.array([-1]) for k in (1, 2, 3)})
        assert out["selected_ids"].tolist()[0] == first
    assert _order(crossed, pair, even)[0] == pair  # no gender with the request: the terms are 0
    with pytest.raises(StageConfigError, match="PRIOR_COEFFICIENTS"):
        SoftmaxSampling(StageContext("softmax_sampling", params={**params, "PRIOR_COEFFICIENTS": "1,2"}, environ=url))
    # Valkey gone before the first read: the DLRM's order, degraded, no error
    cold = SoftmaxSampling(StageContext("softmax_sampling", params=params, environ=url))
    valkey.stop()
    assert _order(cold, ids, dlrm)[0] == ids
    assert cold.ctx.metrics.value("recsys_degraded_requests_total", stage="softmax_sampling",
                                  reason="prior_unavailable") == 1


@pytest.mark.integration
def test_anonymous_requests_swap_their_last_candidates_for_the_contexts_best_items(tmp_path, tiny, valkey):
    a, b, _ = _publish_prior(valkey, tiny)
    np.save(tmp_path / "availability.npy", np.zeros(len(tiny.items), np.int64))
    stage = FilterSeenItems(StageContext("filter_seen_items", model_dir=tmp_path, environ={
        "RECSYS_VALKEY_URL": f"redis://127.0.0.1:{valkey.port}"}, params={
        "START_DATE": "2026-01-01", "RETRIEVAL_TOPK": "5", "CONTEXT_CANDIDATES": "2", "RETRY_AFTER_S": "0"}))
    try:
        retrieved = [int(i) for i in b[:7]]  # never clicked: the context's best are category A's clicked items

        def run(user, device=1):
            return stage(user_id=np.array([user]), candidate_ids=np.asarray(retrieved, np.int64),
                         timestamp=np.array([DAY0 + 3600]), top_k=np.array([3]),
                         **({"device_type": np.array([device])} if device is not None else {}))["item_ids"].tolist()

        anonymous = run(-1)
        assert anonymous[:3] == retrieved[:3] and len(anonymous) == 5
        assert set(anonymous[3:]) <= set(a.tolist())  # swapped in from the prior's context ranking
        assert run(12) == retrieved[:5]                 # a known user keeps retrieval's candidates
        assert run(-1, device=None) == retrieved[:5]    # no context, nothing to rank by
        assert stage.ctx.metrics.value("recsys_degraded_requests_total", stage="filter_seen_items",
                                       reason="prior_unavailable") == 0
    finally:
        stage.close()
