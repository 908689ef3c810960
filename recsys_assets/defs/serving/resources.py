"""The serving stage's resource: where the local Triton listens, and how the Kubernetes release is deployed.

| variable                    | default                               | meaning                                  |
|-----------------------------|---------------------------------------|------------------------------------------|
| RECSYS_TRITON_HTTP_PORT     | 8000                                  | local server, HTTP (127.0.0.1)           |
| RECSYS_TRITON_GRPC_PORT     | 8001                                  | local server, gRPC                       |
| RECSYS_TRITON_METRICS_PORT  | 8002                                  | local server, Prometheus metrics         |
| RECSYS_TRITON_HELM_VALUES   | infra/helm/triton/values-eks-gpu.yaml | k8s: values file(s), comma-separated     |

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


def build_resources(settings: Settings) -> dict:
    ports = Ports.from_environ(os.environ)
    values = os.environ.get("RECSYS_TRITON_HELM_VALUES")
    extra = {"helm_values": [v.strip() for v in values.split(",") if v.strip()]} if values else {}
    return {"triton": TritonResource(http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics,
                                     **extra)}
