"""What a hop through Triton's python backend costs: a chain of N identity python models passing K tensors.

    .venv/bin/python benchmarks/python_backend_hops.py [--hops 1 4 14] [--tensors 1 8 16] [--seconds 4]

Each model copies its K FP32 [300] inputs to its outputs; the ensemble chains N of them. Concurrency 1, the Python
HTTP and gRPC clients on the same machine, p50 per request after a warm-up, and the server's CPU time per request
(tritonserver and its stubs, from /proc). The difference between K = 1 and a
larger K at the same N is the cost of a tensor crossing a hop (it decided how the serving graph packs features,
``recsys_assets/serving/features.py``); the difference between N values at K = 1 is the cost of a hop itself.
Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.release.triton_server import TritonServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import tree_cpu_s  # noqa: E402  (benchmarks/serving.py)

IDENTITY = '''
import json

import triton_python_backend_utils as pb


class TritonPythonModel:
    def initialize(self, args):
        self.names = [t["name"] for t in json.loads(args["model_config"])["input"]]

    def execute(self, requests):
        return [pb.InferenceResponse([pb.Tensor("o" + n[1:], pb.get_input_tensor_by_name(r, n).as_numpy())
                                      for n in self.names]) for r in requests]
'''


def _tensors(prefix: str, k: int) -> str:
    return ",".join(f'{{name:"{prefix}{j}" data_type:TYPE_FP32 dims:[-1]}}' for j in range(k))


def build(root: Path, hops: int, k: int) -> None:
    for i in range(hops):
        (root / f"m{i}" / "1").mkdir(parents=True)
        (root / f"m{i}" / "1" / "model.py").write_text(IDENTITY)
        (root / f"m{i}" / "config.pbtxt").write_text(
            f'name:"m{i}" backend:"python" max_batch_size:0 input[{_tensors("i", k)}] output[{_tensors("o", k)}] '
            'instance_group[{count:1 kind:KIND_CPU}]')
    steps = []
    for i in range(hops):
        src = "in" if i == 0 else f"t{i - 1}_"
        dst = "out" if i == hops - 1 else f"t{i}_"
        ins = ",".join(f'{{key:"i{j}" value:"{src}{j}"}}' for j in range(k))
        outs = ",".join(f'{{key:"o{j}" value:"{dst}{j}"}}' for j in range(k))
        steps.append(f'{{model_name:"m{i}" model_version:-1 input_map[{ins}] output_map[{outs}]}}')
    (root / "chain" / "1").mkdir(parents=True)
    (root / "chain" / "config.pbtxt").write_text(
        f'name:"chain" platform:"ensemble" max_batch_size:0 input[{_tensors("in", k)}] output[{_tensors("out", k)}] '
        f'ensemble_scheduling{{step[{",".join(steps)}]}}')


def p50_ms(url: str, protocol: str, k: int, seconds: float, server_pid: int | None = None) -> tuple[float, float]:
    if protocol == "http":
        import tritonclient.http as client_lib
    else:
        import tritonclient.grpc as client_lib
    client = client_lib.InferenceServerClient(url)
    inputs = []
    for j in range(k):
        tensor = client_lib.InferInput(f"in{j}", [300], "FP32")
        tensor.set_data_from_numpy(np.ones(300, np.float32))
        inputs.append(tensor)
    outputs = [client_lib.InferRequestedOutput(f"out{j}") for j in range(k)]
    for _ in range(50):
        client.infer("chain", inputs, outputs=outputs)
    cpu0 = tree_cpu_s(server_pid) if server_pid else 0.0
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        client.infer("chain", inputs, outputs=outputs)
        samples.append(time.perf_counter() - t0)
    cpu_ms = (tree_cpu_s(server_pid) - cpu0) / len(samples) * 1e3 if server_pid else float("nan")
    return statistics.median(samples) * 1e3, cpu_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 4, 14])
    parser.add_argument("--tensors", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hops-"))
    rows = []
    for hops in args.hops:
        for k in args.tensors:
            root = work / f"repo-{hops}-{k}"
            build(root, hops, k)
            server = TritonServer(root, workdir=work / f"triton-{hops}-{k}")
            server.start(models=["chain"], timeout=600)
            try:
                http, cpu = p50_ms(server.http_url, "http", k, args.seconds, server.pid)
                rows.append((hops, k, http, p50_ms(server.grpc_url, "grpc", k, args.seconds)[0], cpu))
            finally:
                server.stop()
            print(f"hops {hops:2d}  tensors {k:2d}  http p50 {rows[-1][2]:.2f} ms  grpc p50 {rows[-1][3]:.2f} ms  "
                  f"server CPU {rows[-1][4]:.2f} ms/request", flush=True)
    print("\n| hops | tensors per hop | HTTP p50 ms | gRPC p50 ms | server CPU ms/request (HTTP) |\n|---|---|---|---|---|")
    for hops, k, http, grpc, cpu in rows:
        print(f"| {hops} | {k} | {http:.2f} | {grpc:.2f} | {cpu:.2f} |")
    base = {hops: http for hops, k, http, *_ in rows if k == min(args.tensors)}
    for hops, k, http, *_ in rows:
        if k > min(args.tensors) and hops in base:
            per = (http - base[hops]) / (hops * (k - min(args.tensors)) * 2)
            print(f"{hops} hops, {k} tensors: {per * 1e3:.0f} µs per tensor crossing (input or output), HTTP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
