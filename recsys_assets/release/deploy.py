"""Putting a built repository into service: the local ``tritonserver`` or, on Kubernetes, the Helm release.

Local (``RECSYS_PROFILE=local``): one server per artifact root, on fixed loopback ports (default 8000 HTTP, 8001
gRPC, 8002 metrics), recorded in ``<root>/serving/triton_server.json`` so a later process (the next Dagster run,
``make serve``, ``python -m recsys_assets.release.serve stop``) finds it. :func:`deploy_local` starts it when none
runs, or hot-swaps a running one: it reloads the models whose version changed, then the ensemble (Triton keeps
serving the old versions until the new ones are ready). Its environment carries the runtime endpoints
(:func:`local_environ`): the embedded Valkey (started or reused) unless ``RECSYS_VALKEY_URL`` names one, and the
Feast registry under the artifact root.

Kubernetes: :func:`helm_command` builds ``helm upgrade --install`` of ``infra/helm/triton`` pointing the chart at
the repository's S3 URI; :func:`run_helm` runs it. The chart loads the models itself; the pods read the same
runtime variables from their Secrets and values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from recsys_assets.release.triton_server import TritonServer, attach

STATE_FILE = "serving/triton_server.json"
WORKDIR = "serving/triton_work"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELM_CHART = PROJECT_ROOT / "infra" / "helm" / "triton"


@dataclasses.dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "Ports":
        def port(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a port number") from None

        return cls(port("RECSYS_TRITON_HTTP_PORT", 8000), port("RECSYS_TRITON_GRPC_PORT", 8001),
                   port("RECSYS_TRITON_METRICS_PORT", 8002))


def local_environ(artifacts_root: Path, environ: Mapping[str, str] | None = None):
    """The runtime endpoints of a local server, plus the embedded Valkey it needs (started or reused).

    Returns ``(environment, valkey)``: ``valkey`` is the :class:`EmbeddedValkey` when one is used (its ``owned``
    says whether this call started it), None when ``RECSYS_VALKEY_URL`` names a server.
    """
    from recsys_assets.lib import paths
    from recsys_assets.lib.valkey_server import DEFAULT_PORT, PASSWORD_ENV, EmbeddedValkey
    from recsys_assets.serving.runtime import server_environ

    env = dict(os.environ if environ is None else environ)
    root = Path(artifacts_root)
    valkey = None
    url = env.get("RECSYS_VALKEY_URL")
    if not url:
        port = int(env.get("RECSYS_VALKEY_PORT") or DEFAULT_PORT)
        valkey = EmbeddedValkey(root / paths.VALKEY_DATA, port=port, detach=True).start()
        url = f"redis://{valkey.host}:{valkey.port}"
    runtime = server_environ(url, str(root / paths.FEAST_REGISTRY), valkey_password=env.get(PASSWORD_ENV))
    return {**runtime, "RECSYS_ARTIFACTS": str(root)}, valkey


def running_server(artifacts_root: Path) -> TritonServer | None:
    """The local server of this artifact root, if one runs and answers."""
    return attach(Path(artifacts_root) / STATE_FILE)


def deploy_local(artifacts_root: Path, repository: Path, environ: Mapping[str, str], ports: Ports = Ports(),
                 changed: Sequence[str] = (), models: Sequence[str] = ("ensemble_model",),
                 timeout: float = 300.0) -> tuple[TritonServer, str, float]:
    """Start (or hot-swap) the local server; returns ``(server, "started" | "reloaded", seconds)``."""
    root = Path(artifacts_root)
    t0 = time.perf_counter()
    server = running_server(root)
    if server is not None and Path(server.model_repository).resolve() == Path(repository).resolve():
        # Changed composing models first, then the ensemble: each swaps versions once its new one is ready.
        server.load([m for m in changed if m not in models] + list(models), timeout=timeout)
        return server, "reloaded", time.perf_counter() - t0
    if server is not None:
        server.stop()
    server = TritonServer(Path(repository), http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics,
                          env=dict(environ), workdir=root / WORKDIR, state_file=root / STATE_FILE,
                          log_path=root / WORKDIR / "tritonserver.log")
    (root / WORKDIR).mkdir(parents=True, exist_ok=True)
    server.start(models=list(models), timeout=timeout)
    return server, "started", time.perf_counter() - t0


def stop_local(artifacts_root: Path) -> bool:
    """Stop the local server of this artifact root (SIGTERM); True when one was running."""
    server = running_server(artifacts_root)
    if server is None:
        return False
    server.stop()
    return True


def helm_command(repository_uri: str, release: str = "triton", namespace: str = "recsys",
                 chart: Path = HELM_CHART, values: Sequence[str] = (), helm: str = "helm",
                 extra_set: Mapping[str, str] | None = None, timeout: str = "15m") -> list[str]:
    """``helm upgrade --install`` of the Triton chart with the repository of this release."""
    cmd = [helm, "upgrade", "--install", release, str(chart), "--namespace", namespace, "--wait",
           "--timeout", timeout]
    for path in values:
        cmd += ["-f", str(path)]
    for key, value in {"modelRepository.uri": repository_uri, **(extra_set or {})}.items():
        cmd += ["--set-string", f"{key}={value}"]
    return cmd


def run_helm(cmd: Sequence[str], timeout: float = 1200) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(out.splitlines()[-30:]))
    return out


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
_SECRET_PARAMS = re.compile(r"(?P<key>(?:password|passwd|pwd|token|secret)=)[^&,\s]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``rediss://user:***@host:6379``, ``...,password=***``)."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL password and ``password=``/``token=`` value in ``text`` replaced by ``***`` (for metadata, logs
    and error messages, which Dagster keeps in its event log)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAMS.sub(lambda m: f"{m['key']}***", text)
