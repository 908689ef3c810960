"""The Triton chart's server command, probes and autoscaling metric, against a real tritonserver.

The pipeline image runs Triton through infra/docker/triton-backends.sh and tritonserver.sh (nvidia-pytriton's
2.51.0 server with the CPython 3.11 python-backend stub). Here the same two scripts run against the pipeline
venv, with the arguments the chart renders (only repository, model list and ports swapped for a tiny
repository on free loopback ports), and a two-model repository: ``slow_identity`` (a python model that holds
each request 5 ms, one instance) behind an ``ensemble_model``. What it shows:

- tritonserver accepts every flag the chart passes, and the probe paths answer 200 once the models loaded;
- the prometheus-adapter rule's arithmetic on real counters: sum of rate(nv_inference_queue_duration_us) over
  sum of rate(nv_inference_request_success), composing models only, is microseconds of queue per request
  (8 concurrent clients on a 5 ms single-instance model queue for milliseconds; the ensemble's own queue is
  near zero, which is why the rule leaves it out);
- a hot swap (new version + load API) starts series under a new `version` label, which is why the rule sums
  over versions.
"""

import concurrent.futures
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.infra.test_k8s_manifests import DOCKER, HELM, adapter_rule, container, rendered

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not HELM.exists(), reason="helm is not installed in .tools/bin: run scripts/install-k8s-tools.sh"
    ),
]

HOLD_MS = 5
CLIENTS = 8
REQUESTS_PER_CLIENT = 10

SLOW_IDENTITY_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
SLOW_IDENTITY_MODEL = f"""
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            time.sleep({HOLD_MS} / 1000)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return responses
"""
ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "slow_identity" model_version: -1
  input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } ] }
"""
REQUEST = json.dumps(
    {"inputs": [{"name": "X", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """``{(metric, model, version): value}`` of the two counters the adapter rule reads."""
    _, body = http(f"http://127.0.0.1:{port}/metrics")
    samples = {}
    for line in body.decode().splitlines():
        match = re.match(
            r"^(nv_inference_queue_duration_us|nv_inference_request_success)\{(.*)\} (\S+)$", line
        )
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels["model"], labels["version"])] = float(match.group(3))
    return samples


def served(before, after, model) -> float:
    """Requests ``model`` answered between two scrapes, summed over its versions."""
    return sum(
        v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0] == "nv_inference_request_success" and k[1] == model
    )


def scrape_after(port: int, before, model: str, expected: int, timeout_s: float = 30.0):
    """Scrape until ``model`` counted ``expected`` requests since ``before``, or the deadline passed.

    Triton counts a composing model's request when the request is released, which can come after the
    ensemble's response reached the client: on a loaded machine a scrape right after the last response
    may miss it (CI saw 2 of 3). The caller still asserts the count, so a lost or extra request fails.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape(port)
        if served(before, after, model) >= expected or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


def version_states(server, headers) -> dict[str, str]:
    """``{version: state}`` of slow_identity from the repository index."""
    status, body = http(server["base"] + "/v2/repository/index", b"{}", headers=headers)
    assert status == 200, body
    return {m["version"]: m.get("state", "") for m in json.loads(body) if m["name"] == "slow_identity"}


def queue_us_per_request(before, after, models) -> float:
    """The adapter rule over one window: sum over (model, version) of Δqueue_us / sum of Δsuccess."""

    def delta(metric):
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == metric and k[1] in models)

    return delta("nv_inference_queue_duration_us") / max(delta("nv_inference_request_success"), 1e-9)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("pytriton", reason="the pipeline env's nvidia-pytriton provides tritonserver")
    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "repository"
    (repo / "slow_identity" / "1").mkdir(parents=True)
    (repo / "slow_identity" / "config.pbtxt").write_text(SLOW_IDENTITY_CONFIG)
    (repo / "slow_identity" / "1" / "model.py").write_text(SLOW_IDENTITY_MODEL)
    (repo / "ensemble_model" / "1").mkdir(parents=True)
    (repo / "ensemble_model" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)

    # The python3 on PATH runs the python models (the stub's interpreter): the pipeline venv's.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TRITON_BACKENDS": str(tmp / "backends"),
    }
    subprocess.run(
        ["sh", str(DOCKER / "triton-backends.sh"), str(tmp / "backends")],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )

    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    # The admin key of the restricted APIs, expanded into the arguments as Kubernetes expands $(VAR) from env.
    admin_key = secrets.token_urlsafe(24)
    args = []
    for arg in container(rendered("values.yaml"))["args"]:
        flag = arg.split("=", 1)[0]
        if flag in ("--model-repository", "--load-model", "--http-port", "--grpc-port", "--metrics-port"):
            continue
        args.append(arg.replace("$(RECSYS_TRITON_ADMIN_KEY)", admin_key))
    args += [
        f"--model-repository={repo}",
        "--load-model=slow_identity",
        "--load-model=ensemble_model",
        f"--http-port={ports['http']}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-port={ports['metrics']}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ]
    log = open(tmp / "tritonserver.log", "w")
    proc = subprocess.Popen(
        ["sh", str(DOCKER / "tritonserver.sh"), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 120
        while http(f"{base}/v2/models/ensemble_model/ready")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "tritonserver did not get ready with the chart's arguments:\n"
                    + (tmp / "tritonserver.log").read_text()[-3000:]
                )
            time.sleep(0.25)
        yield {"base": base, "ports": ports, "repo": repo, "log": tmp / "tritonserver.log", "admin_key": admin_key}
    finally:
        # SIGTERM, as the kubelet does: tritonserver drains and releases its /dev/shm regions.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_the_charts_probe_paths_answer_on_a_server_started_with_its_flags(server):
    c = container(rendered("values.yaml"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        status, _ = http(server["base"] + c[probe]["httpGet"]["path"])
        assert status == 200, probe
    assert http(server["base"] + "/v2/models/not_loaded/ready")[0] != 200


def test_queue_time_metric_is_microseconds_per_request_of_the_composing_models(server):
    before = scrape(server["ports"]["metrics"])

    # All clients send their first request at once, so requests queue behind the single instance by
    # construction (not by luck of thread scheduling on a loaded machine).
    start_together = threading.Barrier(CLIENTS)

    def client(_):
        latencies = []
        start_together.wait(timeout=60)
        for _ in range(REQUESTS_PER_CLIENT):
            start = time.perf_counter()
            status, _body = http(server["base"] + "/v2/models/ensemble_model/infer", REQUEST)
            latencies.append(time.perf_counter() - start)
            assert status == 200
        return latencies

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        latencies = [t for batch in pool.map(client, range(CLIENTS)) for t in batch]
    total = CLIENTS * REQUESTS_PER_CLIENT
    after = scrape_after(server["ports"]["metrics"], before, "slow_identity", total)

    assert (
        after[("nv_inference_request_success", "slow_identity", "1")]
        - before.get(("nv_inference_request_success", "slow_identity", "1"), 0)
        == total
    )
    composing = queue_us_per_request(before, after, {"slow_identity"})
    ensemble = queue_us_per_request(before, after, {"ensemble_model"})
    mean_latency_us = 1e6 * sum(latencies) / len(latencies)
    # One instance, 5 ms per request, 8 clients at once: a request waits for several others, i.e.
    # milliseconds -- thousands in these units -- and never longer than the whole request took.
    assert 1000 <= composing <= mean_latency_us
    # The ensemble's own queue is a small fraction of it: averaging it in would hide the queueing.
    assert ensemble < composing / 10
    # Against the chart's target (an integer of microseconds) this load is far above 2 ms: it would scale out.
    from tests.infra.test_k8s_manifests import chart_values

    assert composing > chart_values("values.yaml")["autoscaling"]["targetQueueTimeUs"]
    assert "[30s]" in adapter_rule()["metricsQuery"]


def test_a_hot_swap_starts_series_under_a_new_version_label(server):
    model = server["repo"] / "slow_identity"
    shutil.copytree(model / "1", model / "2", ignore=shutil.ignore_patterns("__pycache__"))
    load = server["base"] + "/v2/repository/models/slow_identity/load"
    assert http(load, b"{}")[0] == 403  # the chart restricts the repository API: no key, no load
    status, body = http(load, b"{}", headers={"recsys-triton-admin-key": server["admin_key"]})
    assert status == 200, body
    # The load returns once version 2 is ready; version 1 unloads behind it. Count from when it is gone,
    # so that no request of the window can be served by a version whose series then disappears.
    admin = {"recsys-triton-admin-key": server["admin_key"]}
    deadline = time.monotonic() + 30
    while version_states(server, admin).get("1") == "READY" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert version_states(server, admin).get("1") != "READY"
    before = scrape(server["ports"]["metrics"])
    for _ in range(3):
        assert http(server["base"] + "/v2/models/ensemble_model/infer", REQUEST)[0] == 200
    after = scrape_after(server["ports"]["metrics"], before, "slow_identity", 3)
    versions = {k[2] for k in after if k[1] == "slow_identity"}
    assert "2" in versions, versions
    # Summed over versions, the rule still sees every request of the window, whatever version served it.
    assert served(before, after, "slow_identity") == 3
    assert queue_us_per_request(before, after, {"slow_identity"}) >= 0
