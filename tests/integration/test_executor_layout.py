"""The executor layout on a real tritonserver: one python model named ``ensemble_model`` running the whole graph.

Release 1 serves the tiny artifacts in the ensemble layout; release 2 is the same model versions in the executor
layout (only the layout changed, so no model got a new version). What a client sees must not change: the same
ids and scores for the same greedy requests, the same errors for bad requests; switching layouts (and back) is a
promotion under client traffic that fails no request; the executor exports per-stage latency histograms and the
stages' degradation counters on the metrics port, and Triton keeps only the executor loaded.
"""

import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from recsys_assets.lib.ensemble_request import ENSEMBLE
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from recsys_assets.release import promotion, repository
from recsys_assets.release.repository import ServingDefaults, build_repository
from recsys_assets.release.tiny import publish_online_state, serving_environ
from recsys_assets.release.triton_server import TritonServer
from recsys_assets.serving.executor import STAGE_LATENCY_BUCKETS, STAGE_LATENCY_FLUSH_S
from tests.release.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration

DAY5_MORNING = 1767225600 + 5 * 86400 + 9 * 3600
REQUESTS = [{"user_id": u, "device_type": d, "timestamp": DAY5_MORNING + h * 3600, "top_k": k}
            for u, d, h, k in [(-1, 1, 0, 10), (-1, 2, 9, 10), (3, 0, 2, 10), (7, 1, 12, 5), (11, 2, 4, 20),
                               (123456, 0, 1, 10)]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("executor")
    tiny = tiny_artifacts(tmp_path_factory)
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "artifacts")
        publish_online_state(tiny, environ)
        live = work / "repo"
        first = build_repository(live, tiny.trained, ServingDefaults(sampling_seed=5), tiny.start_date, release=1)
        text = (live / ENSEMBLE / "config.pbtxt").read_text()
        second = build_repository(live, tiny.trained, ServingDefaults(sampling_seed=5, layout="executor"),
                                  tiny.start_date, release=2, previous=live, previous_releases=[first])
        repository.write_served(live, first, text)
        server = TritonServer(live, env=environ, exit_timeout=2, workdir=work / "triton")
        server.start(models=[ENSEMBLE], timeout=900)
        yield server, live, text, first, second
    finally:
        if server is not None:
            server.stop()
        valkey.stop()


def answers(server) -> list[dict]:
    with server.client() as client:
        return [promotion.answer(client, r) for r in REQUESTS]


def loaded(server) -> set[str]:
    with server.client() as client:
        return promotion._ready_models(client, server.admin_headers)


def metric(server, name, **labels) -> float:
    text = urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def switch_under_traffic(server, live, target, text, current):
    """Promote ``target`` while a client sends requests without pause; (report, releases seen, errors)."""
    seen, errors, stop = [], [], threading.Event()

    def client():
        with server.client() as c:
            i = 0
            while not stop.is_set():
                try:
                    seen.append(promotion.answer(c, REQUESTS[i % len(REQUESTS)])["release"])
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    errors.append(repr(exc))
                i += 1

    thread = threading.Thread(target=client)
    thread.start()
    try:
        report = promotion.promote(server, live, target, text, current, text)
    finally:
        stop.set()
        thread.join()
    return report, seen, errors


def test_switching_layouts_under_traffic_fails_nothing_and_answers_the_same(stack):
    server, live, text, first, second = stack
    assert second.models == first.models and second.layout == "executor"  # same versions, another layout
    ensemble = answers(server)
    assert {a["release"] for a in ensemble} == {1}
    assert loaded(server) == {ENSEMBLE, *(repository.alias(m, v) for m, v in first.models.items()
                                          if m != ENSEMBLE)}

    report, seen, errors = switch_under_traffic(server, live, second, text, first)
    assert errors == [] and len(seen) > 0
    assert seen == sorted(seen) and set(seen) <= {1, 2}      # one client: once on release 2, never back
    assert report.loaded == [] and len(report.unloaded) == len(repository.MODELS)
    assert loaded(server) == {ENSEMBLE}                      # the executor alone: its stages are in-process

    executor = answers(server)
    assert {a["release"] for a in executor} == {2}
    for a, b in zip(ensemble, executor):
        assert a["ids"] == b["ids"] and a["scores"] == b["scores"]
        assert len(a["ids"]) == next(r["top_k"] for r in REQUESTS if r is REQUESTS[ensemble.index(a)])

    report, seen, errors = switch_under_traffic(server, live, first, text, second)  # back: a rollback
    assert errors == [] and set(seen) <= {1, 2} and seen[-1] == 1
    assert [a["ids"] for a in answers(server)] == [a["ids"] for a in ensemble]


def test_the_executor_exports_stage_latency_histograms_and_degradation_counters(stack):
    server, live, text, first, second = stack
    served = repository.served_release_of(live)
    if served != 2:
        promotion.promote(server, live, second, text, first, text)
    count = "recsys_stage_duration_us_count"
    before = metric(server, count, stage="dlrm_ranking")
    answers(server)
    # an instance sends its stage times after a request, at most once a second (TritonMetrics.flush): wait, then
    # ask until the instances that ran those requests have sent them (each request sends its own too)
    time.sleep(STAGE_LATENCY_FLUSH_S)
    more, deadline = 0, time.monotonic() + 60
    while metric(server, count, stage="dlrm_ranking") < before + len(REQUESTS) and time.monotonic() < deadline:
        with server.client() as client:
            promotion.answer(client, REQUESTS[more % len(REQUESTS)])
        more += 1
    assert before + len(REQUESTS) <= metric(server, count, stage="dlrm_ranking") <= before + len(REQUESTS) + more
    for stage in repository.MODELS:
        bounds = [*map(repr, STAGE_LATENCY_BUCKETS), "+Inf"]
        cumulative = [metric(server, "recsys_stage_duration_us_bucket", stage=stage, le=b) for b in bounds]
        assert cumulative[-1] == metric(server, count, stage=stage) > 0, stage
        assert cumulative == sorted(cumulative), (stage, cumulative)  # le buckets count what is at or below
    assert metric(server, "recsys_stage_duration_us_sum", stage="faiss_retrieval") > 0
    # declared at load, before any incident, as in the ensemble layout (labelled by the Triton model name the
    # stage would have there: its alias)
    stage = repository.alias("filter_seen_items", second.models["filter_seen_items"])
    text_metrics = urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics").read().decode()
    assert f'recsys_degraded_requests_total{{reason="valkey_unreachable",stage="{stage}"}} 0' in text_metrics


@pytest.mark.parametrize("user_id, device, message", [
    (-5, 1, "user_id -5 is negative: -1 (anonymous) is the only negative id"),
    (1, 7, "unknown device_type 7"),
])
def test_bad_requests_get_the_ensembles_400_from_the_executor(stack, user_id, device, message):
    server, live, text, first, second = stack
    if repository.served_release_of(live) != 2:
        promotion.promote(server, live, second, text, first, text)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inputs = []
        for name, value in (("user_id", user_id), ("device_type", device)):
            t = httpclient.InferInput(name, [1], "INT64")
            t.set_data_from_numpy(np.array([value], np.int64))
            inputs.append(t)
        with pytest.raises(InferenceServerException) as info:
            client.infer(ENSEMBLE, inputs)
        assert message in str(info.value) and "400" in str(info.value.status())
        assert promotion.answer(client, REQUESTS[0])["release"] == 2  # and it keeps serving
    finally:
        client.close()


def test_the_gpu_variant_calls_the_towers_through_bls_and_answers_the_same(stack, tmp_path):
    """The executor on NVIDIA's GPU image calls the towers through BLS (``onnx_groups.write_bls_variant``). The
    onnxruntime backend is not in the local server, so here the same rewritten graphs run in python stand-ins
    (onnxruntime in a python model): the BLS calls, tensors and versions are real; only the callee's backend
    differs. The onnxruntime variant's configs are validated offline."""
    import shutil

    from recsys_assets.release import onnx_groups
    from recsys_assets.release.repository import convert_layout, parse_config, validate_repository

    server, live, text, first, second = stack
    expected = answers(server)
    variants = {}
    for backend in ("python", "onnxruntime"):
        copy = variants[backend] = tmp_path / backend
        shutil.copytree(live, copy, symlinks=True)
        convert_layout(copy, "executor")
        loaded = onnx_groups.write_bls_variant(copy, backend=backend,
                                               kind="KIND_CPU" if backend == "python" else "KIND_GPU")
        assert loaded == ["query_tower_onnx", "dlrm_ranking_onnx"]
        assert validate_repository(copy) == []

    gpu = {m: parse_config(variants["onnxruntime"] / m / "config.pbtxt") for m in ("query_tower_onnx",
                                                                                  "dlrm_ranking_onnx")}
    assert {c.platform for c in gpu.values()} == {"onnxruntime_onnx"}
    assert all(c.instance_group[0].kind == c.instance_group[0].KIND_GPU for c in gpu.values())
    # the rewritten towers take exactly the stages' tensors (the feature groups, item_index, the embeddings)
    from recsys_assets.serving.stages import stage_class

    for name, config in gpu.items():
        assert {t.name for t in config.input} == set(stage_class(name.removesuffix("_onnx")).inputs)

    bls_server = TritonServer(variants["python"], env=dict(server.env), exit_timeout=2,
                              workdir=tmp_path / "triton-bls")
    bls_server.start(models=["query_tower_onnx", "dlrm_ranking_onnx", ENSEMBLE], timeout=900)
    try:
        got = answers(bls_server)
        for a, b in zip(expected, got):
            assert a["ids"] == b["ids"]
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
        with bls_server.client() as client:  # the towers really ran as their own models
            stats = {m["name"]: int(m["inference_count"]) for m in client.get_inference_statistics()["model_stats"]}
        assert stats["dlrm_ranking_onnx"] >= len(REQUESTS) and stats["query_tower_onnx"] >= len(REQUESTS)
    finally:
        bls_server.stop()
