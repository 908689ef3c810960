"""Run the real Triton Inference Server bundled in the ``nvidia-pytriton`` wheel, on loopback ports.

The wheel ships ``tritonserver`` 2.51 (r24.10) with the python backend and python-backend stubs for CPython
3.8-3.13. This module lays out a backend directory (the python backend + the stub of the running Python),
sets ``LD_LIBRARY_PATH`` to the wheel's bundled libraries and the interpreter's libpython, puts the current
environment's ``python3`` first on ``PATH`` (the stub's interpreter: it must have numpy < 2, see README), and
starts the server in explicit model-control mode bound to 127.0.0.1. Models are loaded through the
repository API, so a model that fails to load is reported by name and the others keep serving. The project root
is put on the server's ``PYTHONPATH`` so the python models can import ``recsys_assets``.

Stop with :meth:`TritonServer.stop` (SIGTERM, then wait): SIGKILL leaks shared-memory regions in /dev/shm.
A server meant to outlive the starting process (a Dagster run, ``make serve``) records itself in a state file
(``state_file``: pid, ports, repository, log); :func:`attach` finds it again and :func:`stop_recorded` stops it.
"""

from __future__ import annotations

import contextlib
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

from recsys_assets.lib.processes import pid_alive


class TritonError(RuntimeError):
    pass


# The model-repository and shared-memory APIs (load, unload, register regions) answer only requests carrying
# this header with the key of RECSYS_TRITON_ADMIN_KEY when one is set; inference, health and metadata stay open.
ADMIN_KEY_HEADER = "recsys-triton-admin-key"
ADMIN_KEY_ENV = "RECSYS_TRITON_ADMIN_KEY"
RESTRICTED_APIS = "model-repository,shared-memory"


def restricted_api_flags(key: str | None) -> list[str]:
    """The tritonserver flags restricting :data:`RESTRICTED_APIS` to requests that carry ``key`` (none without)."""
    if not key:
        return []
    setting = f"{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}={key}"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: all sockets stay bound until every port is picked (one at a time, the kernel
    may hand the same port out twice, and Triton refuses gRPC and metrics on one port)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed in this environment: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def server_binary() -> Path:
    return pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """A backend directory holding the python backend and the stub for this interpreter's version."""
    base = pytriton_dir() / "tritonserver"
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


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    libs = pytriton_dir().parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env.update(extra or {})
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub runs the first python3 on PATH: make it this environment's interpreter (numpy < 2).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # ... and the python models import recsys_assets.serving from this checkout.
    env["PYTHONPATH"] = ":".join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
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
    state_file: Path | None = None  # where a long-running server records pid, ports and repository
    # the key of the restricted APIs (restricted_api_flags); never written to the state file
    admin_key: str | None = dataclasses.field(default_factory=lambda: os.environ.get(ADMIN_KEY_ENV) or None,
                                              repr=False)
    process: subprocess.Popen | None = None
    pid: int | None = None
    _own_workdir: bool = False

    @property
    def admin_headers(self) -> dict[str, str] | None:
        """The headers a model-repository or shared-memory request to this server needs."""
        return {ADMIN_KEY_HEADER: self.admin_key} if self.admin_key else None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, models: list[str] | None = None, timeout: float = 120.0) -> "TritonServer":
        picked = iter(free_ports(3))
        self.http_port = self.http_port or next(picked)
        self.grpc_port = self.grpc_port or next(picked)
        self.metrics_port = self.metrics_port or next(picked)
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
            *restricted_api_flags(self.admin_key),
        ]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(self.env),
                                            start_new_session=True)
        finally:
            log.close()
        self.pid = self.process.pid
        try:
            self._wait_live(timeout)
            if self.state_file is not None:
                self._record()
            if models:
                self.load(models, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _record(self) -> None:
        import json

        path = Path(self.state_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({
            "pid": self.pid, "host": self.host, "http_port": self.http_port, "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port, "model_repository": str(self.model_repository),
            "log_path": str(self.log_path), "workdir": str(self.workdir), "started_at": time.time(),
        }, indent=1))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def client(self):
        """An HTTP client of this server, closed after use (open connections delay a stop)."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=5.0, network_timeout=300.0)
        try:
            yield client
        finally:
            client.close()

    def _alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive():
                code = self.process.returncode if self.process is not None else "?"
                raise TritonError(f"tritonserver exited with {code}; log: {self.log_tail()}")
            try:
                with self.client() as client:
                    if client.is_server_live():
                        return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise TritonError(f"tritonserver not live after {timeout:.0f} s; log: {self.log_tail()}")

    def is_live(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.is_server_live())
        except Exception:
            return False

    def load(self, models: list[str], timeout: float = 120.0) -> None:
        """Load (or reload) models by name, in order; raises naming the model that failed.

        Loading the ensemble loads its composing models too (in parallel); loading a model that is already
        loaded reloads it when its configuration or files changed (a hot swap: in-flight requests finish on
        the old version).
        """
        with self.client() as client:
            for name in models:
                try:
                    client.load_model(name, headers=self.admin_headers)
                except Exception as exc:
                    raise TritonError(f"model {name!r} failed to load: {exc}; log: {self.log_tail()}") from exc
            deadline = time.monotonic() + timeout
            for name in models:
                while not client.is_model_ready(name):
                    if time.monotonic() > deadline:
                        raise TritonError(f"model {name!r} not ready after {timeout:.0f} s; log: {self.log_tail()}")
                    time.sleep(0.1)

    def repository_index(self) -> list[dict]:
        with self.client() as client:
            return list(client.get_model_repository_index(headers=self.admin_headers))

    def statistics(self, model: str = "") -> dict:
        """Triton's inference statistics (``/v2/models[/<model>]/stats``): counts and cumulative ns per phase."""
        with self.client() as client:
            return client.get_inference_statistics(model_name=model)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return "(no log)"
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self._alive():
            os.kill(self.pid, signal.SIGTERM)
            if not _wait_exit(self.process, self.pid, timeout):
                os.killpg(self.pid, signal.SIGKILL)  # last resort; a stuck server is worse than a shm leak
                _wait_exit(self.process, self.pid, 10)
        if self.state_file is not None and Path(self.state_file).exists():
            Path(self.state_file).unlink(missing_ok=True)
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir / "backends", ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self if self._alive() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()




def _wait_exit(process: subprocess.Popen | None, pid: int, timeout: float) -> bool:
    if process is not None:
        try:
            process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def attach(state_file: Path) -> TritonServer | None:
    """The server a state file records, if its process is alive and answers; else None (a stale file is removed)."""
    import json

    path = Path(state_file)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    server = TritonServer(model_repository=Path(state["model_repository"]), http_port=state["http_port"],
                          grpc_port=state["grpc_port"], metrics_port=state["metrics_port"], host=state["host"],
                          log_path=Path(state["log_path"]), state_file=path, pid=int(state["pid"]))
    if server._alive() and server.is_live():
        return server
    if not server._alive():
        path.unlink(missing_ok=True)
    return None


def stop_recorded(state_file: Path, timeout: float = 30.0) -> bool:
    """Stop the server a state file records (SIGTERM, wait); True when one was running."""
    server = attach(state_file)
    if server is None:
        return False
    server.stop(timeout=timeout)
    return True
