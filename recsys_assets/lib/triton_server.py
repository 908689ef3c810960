"""Run the real Triton Inference Server bundled in the ``nvidia-pytriton`` wheel, on loopback ports.

The wheel ships ``tritonserver`` 2.51 (r24.10) with the python backend and python-backend stubs for CPython
3.8-3.13. This module lays out a backend directory (the python backend + the stub of the running Python),
sets ``LD_LIBRARY_PATH`` to the wheel's bundled libraries and the interpreter's libpython, puts the current
environment's ``python3`` first on ``PATH`` (the stub's interpreter: it must have numpy < 2, see README), and
starts the server in explicit model-control mode bound to 127.0.0.1. Models are loaded through the
repository API, so a model that fails to load is reported by name and the others keep serving.

Stop with :meth:`TritonServer.stop` (SIGTERM, then wait): SIGKILL leaks shared-memory regions in /dev/shm.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


class TritonError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed in this environment: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def server_binary() -> Path:
    return _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """A backend directory holding the python backend and the stub for this interpreter's version."""
    base = _pytriton_dir() / "tritonserver"
    python_dir = target / "python"
    if python_dir.exists():
        shutil.rmtree(python_dir)
    shutil.copytree(base / "backends" / "python", python_dir, ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"no Triton python-backend stub for Python {version} in nvidia-pytriton")
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return target


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub runs the first python3 on PATH: make it this environment's interpreter (numpy < 2).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra or {})
    return env


@dataclasses.dataclass
class TritonServer:
    """A running ``tritonserver`` (use as a context manager, or call :meth:`start` / :meth:`stop`)."""

    model_repository: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    workdir: Path | None = None
    exit_timeout: int = 5  # seconds Triton waits for open client connections when stopping
    process: subprocess.Popen | None = None
    _own_workdir: bool = False

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, models: list[str] | None = None, timeout: float = 120.0) -> "TritonServer":
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        if self.workdir is None:
            self.workdir, self._own_workdir = Path(tempfile.mkdtemp(prefix="recsys-triton-")), True
        self.workdir = Path(self.workdir)
        backends = prepare_backends(self.workdir / "backends")
        self.log_path = self.log_path or self.workdir / "tritonserver.log"
        cmd = [
            str(server_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--strict-readiness=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--metrics-config=summary_latencies=true",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(self.env),
                                        start_new_session=True)
        self._wait_live(timeout)
        if models:
            self.load(models, timeout=timeout)
        return self

    def _client(self):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url, connection_timeout=5.0, network_timeout=300.0)

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with {self.process.returncode}; log: {self.log_tail()}")
            try:
                if self._client().is_server_live():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise TritonError(f"tritonserver not live after {timeout:.0f} s; log: {self.log_tail()}")

    def load(self, models: list[str], timeout: float = 120.0) -> None:
        """Load (or reload) models by name, in order; raises naming the model that failed."""
        client = self._client()
        for name in models:
            try:
                client.load_model(name)
            except Exception as exc:
                raise TritonError(f"model {name!r} failed to load: {exc}; log: {self.log_tail()}") from exc
        deadline = time.monotonic() + timeout
        for name in models:
            while not client.is_model_ready(name):
                if time.monotonic() > deadline:
                    raise TritonError(f"model {name!r} not ready after {timeout:.0f} s; log: {self.log_tail()}")
                time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return "(no log)"
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # last resort; a stuck server is worse than a shm leak
            self.process.wait(timeout=10)
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir / "backends", ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
