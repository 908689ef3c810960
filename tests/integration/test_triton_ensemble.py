"""The serving graph on a real tritonserver, over a repository built from tiny real artifacts, with a real
Valkey (Bloom filters, popularity, Feast's online store) and Feast's registry: what a client sees, in both layouts
(the 14-model ensemble and the executor running the same stages in one python model)."""

import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from recsys_assets.release.triton_server import TritonServer
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from recsys_assets.serving.bloom import BloomParams, SeenFilter
from recsys_assets.release.client import RecommendationClient
from recsys_assets.release.repository import ServingDefaults, build_repository, convert_layout
from recsys_assets.release.tiny import publish_online_state, serving_environ
from tests.release.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration

DAY5_MORNING = 1767225600 + 5 * 86400 + 9 * 3600   # 2026-01-06 09:00 UTC
DAY5_EVENING = DAY5_MORNING + 12 * 3600


class Served:
    def __init__(self, server, valkey, tiny, state):
        self.server, self.valkey, self.tiny, self.state = server, valkey, tiny, state
        self.http = RecommendationClient(server.http_url, "http")
        self.grpc = RecommendationClient(server.grpc_url, "grpc")

    def recommend(self, user_id, device_type=None, timestamp=DAY5_MORNING, top_k=None, diversity=None):
        return self.http.recommend(user_id, device_type, timestamp, top_k, diversity)

    def click(self, user_id, items):
        """What the click path does: add the items to the user's Bloom filter (the served sizing)."""
        client = self.valkey.endpoint.client(db=1)
        try:
            SeenFilter("recsys:seen:", BloomParams(capacity=1000, error_rate=0.01)).add(client, user_id, items)
        finally:
            client.close()

    def metric(self, name, **labels) -> float:
        text = urllib.request.urlopen(f"http://{self.server.host}:{self.server.metrics_port}/metrics").read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module", params=["ensemble", "executor"])
def served(request, tmp_path_factory):
    """The same tiny repository served in each layout (``serving.graph``): every test below holds for both."""
    work = tmp_path_factory.mktemp(f"served-{request.param}")
    tiny = tiny_artifacts(tmp_path_factory)
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = s = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "artifacts")
        state = publish_online_state(tiny, environ)
        build_repository(work / "repo", tiny.trained, ServingDefaults(sampling_seed=5), tiny.start_date, release=1)
        convert_layout(work / "repo", request.param)
        server = TritonServer(work / "repo", env=environ, exit_timeout=2, workdir=work / "triton")
        server.start(models=["ensemble_model"], timeout=900)
        s = Served(server, valkey, tiny, state)
        yield s
        s.http.close()
        s.grpc.close()
    finally:
        if server is not None:
            server.stop()
        # the Valkey test restarts the server: stop whichever one runs now
        (s.valkey if s is not None else valkey).stop()


def assert_valid(served, ids, scores, k, timestamp=DAY5_MORNING, greedy=True):
    items = served.tiny.items.set_index("item_id")
    day = (timestamp - 1767225600) // 86400
    assert len(ids) == k and ids.dtype == np.int64 and scores.dtype == np.float32
    assert len(set(ids.tolist())) == k
    assert set(ids.tolist()) <= set(items.index)                      # raw catalogue ids
    assert (items.loc[ids, "available_from_day"] <= day).all()        # nothing before its release
    assert ((scores > 0) & (scores < 1)).all()
    if greedy:
        assert (np.diff(scores) <= 0).all()                          # descending in greedy mode


def test_http_and_grpc_give_the_same_valid_list(served):
    ids, scores = served.recommend(3, device_type=1)
    assert_valid(served, ids, scores, 10)
    g_ids, g_scores = served.grpc.recommend(3, 1, DAY5_MORNING)
    assert g_ids.tolist() == ids.tolist() and np.allclose(g_scores, scores)


def test_a_known_user_gets_their_features_and_an_unknown_user_the_cold_start_defaults(served):
    known, _ = served.recommend(3, device_type=1)
    new, _ = served.recommend(10**6, device_type=1)
    anonymous, _ = served.recommend(-1, device_type=1)
    assert new.tolist() == anonymous.tolist()  # unknown id -> user_id -1, mean age, gender/top_category -1
    assert known.tolist() != new.tolist()


def test_unknown_users_get_context_dependent_lists(served):
    lists = {(device, ts): served.recommend(-1, device_type=device, timestamp=ts)[0].tolist()
             for device in (0, 1, 2) for ts in (DAY5_MORNING, DAY5_EVENING)}
    for (device, ts), ids in lists.items():
        assert_valid(served, np.array(ids), served.recommend(-1, device, ts)[1], 10, ts)
    by_device = {tuple(lists[(d, DAY5_MORNING)]) for d in (0, 1, 2)}
    assert len(by_device) == 3
    assert lists[(1, DAY5_MORNING)] != lists[(1, DAY5_EVENING)]


def test_missing_context_is_imputed_and_top_k_is_honoured(served):
    ids, scores = served.http.recommend(4)          # no device, no timestamp: device -1, the server's clock
    assert len(ids) == 10
    ids, scores = served.recommend(4, device_type=2, top_k=37)
    assert_valid(served, ids, scores, 37)


def test_seen_items_are_filtered_once_a_click_lands_in_the_bloom_filter(served):
    before, _ = served.recommend(5, device_type=0)
    clicked = before[:3].tolist()
    served.click(5, clicked)
    after, scores = served.recommend(5, device_type=0)
    assert not set(clicked) & set(after.tolist())
    assert after[:7].tolist() == before[3:].tolist()   # the rest moves up, in the same order
    assert_valid(served, after, scores, 10)


def test_diversity_differs_from_greedy_but_keeps_high_scorers(served):
    ranked, ranked_scores = served.recommend(7, device_type=1, top_k=100)
    greedy, _ = served.recommend(7, device_type=1)
    diverse, diverse_scores = served.recommend(7, device_type=1, diversity=True)
    assert greedy.tolist() == ranked[:10].tolist()
    assert_valid(served, diverse, diverse_scores, 10, greedy=False)
    assert diverse.tolist() != greedy.tolist()
    assert set(diverse.tolist()) <= set(ranked.tolist())          # drawn from the ranked top 100 only
    assert diverse_scores.mean() > ranked_scores.mean()           # weighted towards the high scorers
    again, _ = served.recommend(7, device_type=1, diversity=True)
    assert again.tolist() == diverse.tolist()                      # SAMPLING_SEED: same request, same draw


def _infer_raw(served, inputs):
    client = httpclient.InferenceServerClient(served.server.http_url)
    try:
        return client.infer("ensemble_model", inputs)
    finally:
        client.close()


def _tensor(name, value, dtype):
    t = httpclient.InferInput(name, list(np.shape(value)), dtype)
    t.set_data_from_numpy(np.asarray(value, dtype={"INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_,
                                                   "BYTES": object}[dtype]))
    return t


@pytest.mark.parametrize("inputs, status, message", [
    ([("user_id", [-5], "INT64")], "400", "user_id -5 is negative: -1 (anonymous) is the only negative id"),
    ([("user_id", [1.5], "FP32")], "400", "data-type is 'FP32', but model 'ensemble_model' expects 'INT64'"),
    ([("user_id", [b"12"], "BYTES")], "400", "expects 'INT64'"),
    ([("user_id", [1, 2], "INT64")], "400", "unexpected shape for input 'user_id'"),
    ([("user_id", [1], "INT64"), ("device_type", [7], "INT64")], "400", "unknown device_type 7"),
    ([("user_id", [1], "INT64"), ("top_k", [1000], "INT64")], "400", "top_k 1000 is out of range: expected 1..100"),
    ([("device_type", [1], "INT64")], "400", "user_id is required"),
])
def test_bad_requests_are_rejected_clearly_and_the_server_keeps_serving(served, inputs, status, message):
    with pytest.raises(InferenceServerException) as info:
        _infer_raw(served, [_tensor(*i) for i in inputs])
    assert message in str(info.value)
    assert str(info.value.status()) == status or f"[{status}]" in str(info.value)
    ids, scores = served.recommend(3, device_type=1)
    assert len(ids) == 10


def test_grpc_rejections_carry_the_same_message(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    try:
        t = grpcclient.InferInput("user_id", [1], "INT64")
        t.set_data_from_numpy(np.array([-3], np.int64))
        with pytest.raises(InferenceServerException, match="user_id -3 is negative"):
            client.infer("ensemble_model", [t])
    finally:
        client.close()


def test_degradation_counters_are_exported_before_any_incident(served):
    text = urllib.request.urlopen(f"http://{served.server.host}:{served.server.metrics_port}/metrics").read().decode()
    for stage in ("filter_seen_items", "feast_user_lookup"):  # the series exist, at 0
        assert f'recsys_degraded_requests_total{{reason="valkey_unreachable",stage="{stage}"}} 0' in text, stage
    # the tiny release blends the ordering prior (PRIOR_WEIGHT 1): every request so far found it in Valkey
    assert 'recsys_degraded_requests_total{reason="prior_unavailable",stage="softmax_sampling"}' in text
    served.recommend(3, device_type=1)
    assert served.metric("recsys_degraded_requests_total", stage="softmax_sampling", reason="prior_unavailable") == 0


def test_valkey_killed_mid_test_degrades_without_errors_and_recovers(served):
    served.click(11, served.recommend(11, device_type=2)[0][:2].tolist())
    filtered, _ = served.recommend(11, device_type=2)
    unfiltered_anonymous, _ = served.recommend(-1, device_type=2)
    data_dir, port = served.valkey.data_dir, served.valkey.port
    served.valkey.stop()
    try:
        for _ in range(3):
            ids, scores = served.recommend(11, device_type=2)   # no error: served degraded
            assert_valid(served, ids, scores, 10)
        # the seen filter passes candidates through and the user lookup falls back to the cold-start defaults
        assert ids.tolist() == unfiltered_anonymous.tolist()
        assert served.metric("recsys_degraded_requests_total", stage="filter_seen_items",
                             reason="valkey_unreachable") >= 1
        assert served.metric("recsys_degraded_requests_total", stage="feast_user_lookup",
                             reason="valkey_unreachable") >= 1
    finally:
        served.valkey = EmbeddedValkey(data_dir, port=port).start()  # the AOF brings filters and features back
    deadline = time.monotonic() + 60  # the stages retry Valkey every RETRY_AFTER_S (1 s)
    while time.monotonic() < deadline:
        ids, _ = served.recommend(11, device_type=2)
        if ids.tolist() == filtered.tolist():
            break
        time.sleep(0.5)
    assert ids.tolist() == filtered.tolist()
    log = served.server.log_tail(400)
    assert re.search(r"Valkey \(seen\) unreachable", log) and re.search(r"Valkey \(seen\) answers again", log)
