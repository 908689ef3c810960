"""Resources of the feature store: the Valkey in use (embedded or a URL) and the Feast repository bound to it.

``valkey``: with ``url`` unset (``RECSYS_VALKEY_URL``), starts or reuses the embedded valkey-server on
``host:port`` (``RECSYS_VALKEY_PORT``, default 6390) with its AOF under ``<artifact root>/valkey``. The server
is started detached and left running for later runs and the servers (``keep_running``): two steps of one run
may share it, and a step must not stop it under another. ``python -m recsys_assets.lib.valkey_server stop
--dir <root>/valkey`` stops it (``make`` targets do). With ``keep_running=False`` a server this resource started
is stopped when the step ends. With a URL it connects there (TLS for rediss://, AUTH from the URL or
``RECSYS_VALKEY_PASSWORD``); cluster mode is detected (``key_mode="auto"``) and switches to key prefixes in db 0.

``feast``: the repository in ``feature_repo/`` (``feature_store.yaml`` locally, ``feature_store.k8s.yaml`` on
Kubernetes). Its yaml takes the registry and the online store from ``RECSYS_FEAST_REGISTRY`` and
``RECSYS_FEAST_ONLINE_STORE``; :class:`FeastRepo` computes both from the artifact root and the Valkey endpoint,
runs the ``feast`` CLI with them, and opens a ``FeatureStore`` in-process with the same values.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from recsys_assets.defs.resources import PROJECT_ROOT
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.settings import Settings
from recsys_assets.lib.valkey_server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    FEAST_ONLINE_STORE_ENV,
    FEAST_REGISTRY_ENV,
    PASSWORD_ENV,
    EmbeddedValkey,
    Endpoint,
    KeyLayout,
    feast_connection_string,
    parse_url,
)

FEATURE_REPO = PROJECT_ROOT / "feature_repo"
# The feast CLI's own click group, called once per command in one process.
_CLI_SCRIPT = """
import json, sys, time
from feast.cli.cli import cli
for args in json.loads(sys.argv[1]):
    t0 = time.perf_counter()
    cli.main(args=args, prog_name="feast", standalone_mode=False)
    print(f"@@seconds {time.perf_counter() - t0:.3f}", flush=True)
"""
PORT_ENV = "RECSYS_VALKEY_PORT"
KEY_MODES = ("auto", "databases", "cluster")


class ValkeyResource(dg.ConfigurableResource):
    """The Valkey holding online features (db 0), seen state (db 1) and popularity (db 3), or prefixes on a cluster."""

    url: Optional[str] = None
    password: Optional[str] = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: str = "artifacts/valkey"
    keep_running: bool = True
    key_mode: str = "auto"
    feast_db: int = 0
    seen_db: int = 1
    popularity_db: int = 3

    _server: Optional[EmbeddedValkey] = PrivateAttr(default=None)
    _endpoint: Optional[Endpoint] = PrivateAttr(default=None)
    _layout: Optional[KeyLayout] = PrivateAttr(default=None)

    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            if self.url:
                self._endpoint = parse_url(self.url, password=self.password)
            else:
                if not self.data_dir or "://" in self.data_dir:
                    raise dg.Failure(f"the embedded Valkey needs a local data folder, got {self.data_dir!r}: with an "
                                     "s3:// artifact root set RECSYS_VALKEY_URL to a Valkey server (ElastiCache)")
                self._server = EmbeddedValkey(self.data_dir, port=self.port, host=self.host,
                                              detach=self.keep_running).start()
                self._endpoint = self._server.endpoint
        return self._endpoint

    def layout(self) -> KeyLayout:
        if self._layout is None:
            if self.key_mode not in KEY_MODES:
                raise dg.Failure(f"valkey key_mode {self.key_mode!r}: expected one of {', '.join(KEY_MODES)}")
            if self.key_mode == "auto":
                cluster = bool(self.url) and self.endpoint().is_cluster()
            else:
                cluster = self.key_mode == "cluster"
            self._layout = KeyLayout.make(cluster=cluster, feast_db=self.feast_db, seen_db=self.seen_db,
                                          popularity_db=self.popularity_db)
        return self._layout

    def client(self, space: str):
        """A client on the database of ``space`` (``feast``, ``seen`` or ``popularity``)."""
        layout = self.layout()
        return self.endpoint().client(db=getattr(layout, space).db, cluster=layout.cluster)

    def feast_online_store(self) -> str:
        layout = self.layout()
        return feast_connection_string(self.endpoint(), db=layout.feast.db, cluster=layout.cluster)

    def describe(self) -> str:
        """Where the data went, for asset metadata (no password)."""
        endpoint = self.endpoint()
        if self._server is not None:
            how = "embedded, started here" if self._server.owned else "embedded, already running"
            return f"{endpoint.host}:{endpoint.port} ({how}; data {self._server.data_dir})"
        return f"{endpoint!r}"

    def teardown_after_execution(self, context) -> None:
        if self._server is not None and not self.keep_running:
            self._server.stop()


@dataclasses.dataclass(frozen=True)
class FeastRepo:
    """The Feast repository bound to one registry, one online store and the offline parquet of one artifact root."""

    registry: str
    online_store: str
    artifacts: str
    profile: str = "local"
    repo_dir: str = str(FEATURE_REPO)
    yaml_file: str = "feature_store.yaml"

    def __repr__(self) -> str:  # the online store string may carry a password
        return f"FeastRepo(registry={self.registry!r}, repo={self.repo_dir}/{self.yaml_file})"

    def environ(self) -> dict[str, str]:
        return {FEAST_REGISTRY_ENV: self.registry, FEAST_ONLINE_STORE_ENV: self.online_store,
                "RECSYS_ARTIFACTS": self.artifacts, "RECSYS_PROFILE": self.profile}

    def cli(self, *commands: list[str], timeout: float = 3600) -> list[float]:
        """Run ``feast -c <repo> -f <yaml> <command>`` for each command, in one interpreter (Feast takes seconds
        to import); returns the seconds each took, raises with the output's tail when one fails."""
        base = ["-c", self.repo_dir, "-f", str(Path(self.repo_dir) / self.yaml_file)]
        env = {**os.environ, **self.environ(),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        argv = json.dumps([base + list(c) for c in commands])
        proc = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, argv], env=env, capture_output=True, text=True,
                              timeout=timeout)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            tail = "\n".join(out.splitlines()[-30:])
            names = ", ".join(f"`feast {' '.join(c)}`" for c in commands)
            raise RuntimeError(f"{names} failed (exit {proc.returncode}) in {self.repo_dir}:\n{tail}")
        return [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("@@seconds ")]

    def store(self):
        """A ``FeatureStore`` over the same yaml, with the same variables expanded (without touching os.environ)."""
        from recsys_assets.lib.feast_store import open_feature_store

        # Feast itself expands with os.path.expandvars: the process environment, then our own values over it.
        return open_feature_store(Path(self.repo_dir), self.yaml_file, {**os.environ, **self.environ()})


class FeastResource(dg.ConfigurableResource):
    """The Feast repository (``feature_repo/``) and which yaml to use; the registry lives under the artifact root."""

    repo_dir: str = str(FEATURE_REPO)
    yaml_file: str = "feature_store.yaml"
    registry: Optional[str] = None
    profile: str = "local"

    def repo(self, artifacts: ArtifactStore, valkey: ValkeyResource) -> FeastRepo:
        return FeastRepo(
            registry=self.registry or artifacts.uri(paths.FEAST_REGISTRY),
            online_store=valkey.feast_online_store(),
            artifacts=artifacts.root,
            profile=self.profile,
            repo_dir=self.repo_dir,
            yaml_file=self.yaml_file,
        )


def valkey_port() -> int:
    """The embedded Valkey's port: ``RECSYS_VALKEY_PORT``, default 6390."""
    raw_port = os.environ.get(PORT_ENV, str(DEFAULT_PORT))
    try:
        return int(raw_port)
    except ValueError as exc:
        raise ValueError(f"{PORT_ENV}={raw_port!r}: expected a port number such as {DEFAULT_PORT}") from exc


def build_resources(settings: Settings) -> dict:
    port = valkey_port()
    local_root = "://" not in settings.artifacts
    data_dir = str(Path(settings.artifacts).resolve() / paths.VALKEY_DATA) if local_root else ""
    return {
        "valkey": ValkeyResource(
            url=settings.valkey_url,
            # a secret: passed as an EnvVar so it never shows in the run's config
            password=dg.EnvVar(PASSWORD_ENV) if os.environ.get(PASSWORD_ENV) else None,
            port=port,
            data_dir=data_dir,
        ),
        "feast": FeastResource(
            yaml_file="feature_store.k8s.yaml" if settings.profile == "k8s" else "feature_store.yaml",
            profile=settings.profile,
        ),
    }
