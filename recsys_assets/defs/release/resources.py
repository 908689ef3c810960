"""The release domain's resources: where the local Triton listens, how the Kubernetes release is deployed, and
which running ensemble the served-list evaluation replays requests through.

| variable                    | default                               | meaning                                  |
|-----------------------------|---------------------------------------|------------------------------------------|
| RECSYS_TRITON_HTTP_PORT     | 8000                                  | local server, HTTP (127.0.0.1)           |
| RECSYS_TRITON_GRPC_PORT     | 8001                                  | local server, gRPC                       |
| RECSYS_TRITON_METRICS_PORT  | 8002                                  | local server, Prometheus metrics         |
| RECSYS_TRITON_HELM_VALUES   | infra/helm/triton/values-eks-gpu.yaml | k8s: values file(s), comma-separated     |
| RECSYS_TRITON_URL           | 127.0.0.1:<RECSYS_TRITON_HTTP_PORT>   | the ensemble served_list_evaluation      |
|                             |                                       | replays the day's requests through       |

Read by :func:`build_resources` when the code location loads, never at import time.
"""

import os
from typing import List

import dagster as dg

from recsys_assets.lib.settings import Settings
from recsys_assets.release.deploy import HELM_CHART, PROJECT_ROOT, Ports


class TritonResource(dg.ConfigurableResource):
    """Where the served graph runs: a local tritonserver (loopback ports) or a Helm release on Kubernetes."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    load_timeout_s: float = 300.0
    helm: str = "helm"
    helm_chart: str = str(HELM_CHART)
    helm_release: str = "triton"
    helm_namespace: str = "recsys"
    helm_values: List[str] = [str(PROJECT_ROOT / "infra" / "helm" / "triton" / "values-eks-gpu.yaml")]

    def ports(self) -> Ports:
        return Ports(self.http_port, self.grpc_port, self.metrics_port)


class ServedEnsemble(dg.ConfigurableResource):
    """The running Triton whose lists the served-list evaluation scores (HTTP, ``host:port``)."""

    url: str = "127.0.0.1:8000"
    timeout_s: float = 30.0

    def client(self):
        from recsys_assets.release.client import RecommendationClient

        return RecommendationClient(self.url, protocol="http", timeout_s=self.timeout_s)


def build_resources(settings: Settings, environ=None) -> dict:
    env = os.environ if environ is None else environ
    ports = Ports.from_environ(env)
    values = env.get("RECSYS_TRITON_HELM_VALUES")
    extra = {"helm_values": [v.strip() for v in values.split(",") if v.strip()]} if values else {}
    return {"triton": TritonResource(http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics,
                                     **extra),
            "served_ensemble": ServedEnsemble(url=settings.triton_url or f"127.0.0.1:{ports.http}")}
