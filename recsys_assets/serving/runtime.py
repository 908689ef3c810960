"""Runtime endpoints of the serving stages, read from the server's environment when a model loads.

Nothing here is baked into the model repository (DESIGN.md Contracts): the same repository version serves against
any Valkey and Feast registry, chosen by the environment of the ``tritonserver`` process.

| variable                      | default                 | meaning                                               |
|-------------------------------|-------------------------|-------------------------------------------------------|
| RECSYS_VALKEY_URL             | (unset: no Valkey)      | seen filter, popularity fill and the Feast online store |
| RECSYS_VALKEY_PASSWORD        | (unset)                 | password when the URL carries none                    |
| RECSYS_VALKEY_CLUSTER         | auto                    | ``auto`` (ask the server), ``1`` or ``0``              |
| RECSYS_VALKEY_SEEN_DB         | 1                       | logical db of the seen-state keys (0 on a cluster)    |
| RECSYS_VALKEY_POPULARITY_DB   | 3                       | logical db of the popularity tables (0 on a cluster)  |
| RECSYS_FEAST_REPO             | <project>/feature_repo  | the Feast repository the lookups read through         |
| RECSYS_FEAST_YAML             | feature_store.yaml      | its yaml (``feature_store.k8s.yaml`` on Kubernetes)    |
| RECSYS_FEAST_REGISTRY         | (required for Feast)    | expanded into that yaml: the registry file            |
| RECSYS_FEAST_ONLINE_STORE     | (required for Feast)    | expanded into that yaml: Feast's Redis connection string |

:class:`ValkeyLink` is a client that degrades instead of failing: every call runs with short socket timeouts; after
a connection failure it raises :class:`ValkeyUnavailable` at once (no waiting on a dead server) until
``retry_after_s`` has passed, then tries again, so the stage recovers by itself when Valkey returns. It logs the
loss and the recovery once each, not per request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from recsys_assets.lib.valkey_server import is_unavailable

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ValkeyUnavailable(ConnectionError):
    """Valkey cannot be reached right now (or none is configured)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    valkey_url: str | None = None
    valkey_password: str | None = None
    cluster: bool | None = None  # None: ask the server
    seen_db: int = 1
    popularity_db: int = 3
    feast_repo: Path = PROJECT_ROOT / "feature_repo"
    feast_yaml: str = "feature_store.yaml"
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "Runtime":
        cluster_raw = (env.get("RECSYS_VALKEY_CLUSTER") or "auto").strip().lower()
        if cluster_raw not in ("auto", "1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"RECSYS_VALKEY_CLUSTER={cluster_raw!r}: expected auto, 1 or 0")
        cluster = None if cluster_raw == "auto" else cluster_raw in ("1", "true", "yes")

        def db(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a database number") from None

        return cls(
            valkey_url=env.get("RECSYS_VALKEY_URL") or None,
            valkey_password=env.get("RECSYS_VALKEY_PASSWORD") or None,
            cluster=cluster,
            seen_db=db("RECSYS_VALKEY_SEEN_DB", 1),
            popularity_db=db("RECSYS_VALKEY_POPULARITY_DB", 3),
            feast_repo=Path(env.get("RECSYS_FEAST_REPO") or PROJECT_ROOT / "feature_repo"),
            feast_yaml=env.get("RECSYS_FEAST_YAML") or "feature_store.yaml",
            environ=dict(env),
        )

    def feature_store(self):
        """A Feast ``FeatureStore`` over the repository, its yaml's ``${VAR}`` expanded from this environment."""
        from recsys_assets.lib.feast_store import open_feature_store

        return open_feature_store(self.feast_repo, self.feast_yaml, self.environ)


def server_environ(valkey_url: str | None, feast_registry: str, feast_repo: Path | None = None,
                   feast_yaml: str = "feature_store.yaml", valkey_password: str | None = None, cluster: bool = False,
                   feast_db: int = 0) -> dict[str, str]:
    """The variables a serving process needs (what :meth:`Runtime.from_environ` and the Feast yaml read)."""
    from recsys_assets.lib.valkey_server import (
        FEAST_ONLINE_STORE_ENV,
        FEAST_REGISTRY_ENV,
        feast_connection_string,
        parse_url,
    )

    env = {"RECSYS_FEAST_REPO": str(feast_repo or PROJECT_ROOT / "feature_repo"), "RECSYS_FEAST_YAML": feast_yaml,
           FEAST_REGISTRY_ENV: str(feast_registry), "RECSYS_VALKEY_CLUSTER": "1" if cluster else "auto"}
    if valkey_url:
        env["RECSYS_VALKEY_URL"] = valkey_url
        # Short socket timeouts: a partitioned Valkey must degrade a request, not hang it (redis-py has none).
        env[FEAST_ONLINE_STORE_ENV] = feast_connection_string(parse_url(valkey_url, valkey_password),
                                                              db=0 if cluster else feast_db, cluster=cluster) \
            + ",socket_timeout=0.5,socket_connect_timeout=0.5"
    return env


class Breaker:
    """Fails fast while a dependency is down, retries after ``retry_after_s``, logs the loss and the recovery once."""

    def __init__(self, name: str, log: logging.Logger | None = None, retry_after_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.log = log or logging.getLogger("recsys_assets.serving")
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_since: float | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def call(self, fn: Callable[[], T], on_failure: Callable[[], None] | None = None) -> T:
        """``fn()``, or :class:`ValkeyUnavailable` when it cannot connect (or failed to within ``retry_after_s``)."""
        now = self._clock()
        with self._lock:
            if self._down_since is not None and now < self._next_try:
                raise ValkeyUnavailable(f"{self.name} unreachable for {now - self._down_since:.1f} s")
        try:
            result = fn()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            with self._lock:
                if self._down_since is None:
                    self._down_since = now
                    self.log.warning("%s unreachable (%s: %s); degrading until it answers again",
                                     self.name, type(exc).__name__, exc)
                self._next_try = now + self.retry_after_s
            if on_failure is not None:
                on_failure()
            raise ValkeyUnavailable(f"{self.name}: {exc}") from exc
        if self._down_since is not None:
            with self._lock:
                if self._down_since is not None:
                    self.log.warning("%s answers again after %.1f s", self.name, now - self._down_since)
                    self._down_since = None
        return result


class ValkeyLink:
    """A Valkey client for one key space (``seen`` or ``popularity``) that fails fast and recovers by itself."""

    def __init__(self, runtime: Runtime, space: str, log: logging.Logger | None = None, timeout_s: float = 0.25,
                 retry_after_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if space not in ("seen", "popularity"):
            raise ValueError(f"unknown key space {space!r}: expected seen or popularity")
        self.runtime = runtime
        self.space = space
        self.timeout_s = timeout_s
        self.breaker = Breaker(f"Valkey ({space})", log, retry_after_s, clock)
        self._client = None
        self._prefix: str | None = None

    @property
    def configured(self) -> bool:
        return self.runtime.valkey_url is not None

    @property
    def prefix(self) -> str:
        """The key prefix of this space (the same in database and cluster mode)."""
        from recsys_assets.lib.valkey_server import KeyLayout

        return self._prefix or getattr(KeyLayout.make(cluster=False), self.space).prefix

    def _connect(self):
        from recsys_assets.lib.valkey_server import KeyLayout, parse_url

        endpoint = parse_url(self.runtime.valkey_url, self.runtime.valkey_password)
        options = dict(socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s)
        cluster = self.runtime.cluster
        if cluster is None:
            probe = endpoint.client(**options)
            try:
                cluster = bool(probe.info("cluster").get("cluster_enabled", 0))
            finally:
                probe.close()
        layout = KeyLayout.make(cluster=cluster, seen_db=self.runtime.seen_db,
                                popularity_db=self.runtime.popularity_db)
        space = getattr(layout, self.space)
        client = endpoint.client(db=space.db, cluster=cluster, **options)
        self._prefix = space.prefix
        return client

    def run(self, fn: Callable[[object], T]) -> T:
        """``fn(client)``; raises :class:`ValkeyUnavailable` if Valkey is unreachable (now or very recently)."""
        if not self.configured:
            raise ValkeyUnavailable("RECSYS_VALKEY_URL is not set for this server")

        def attempt():
            if self._client is None:
                self._client = self._connect()
            return fn(self._client)

        return self.breaker.call(attempt, on_failure=self._drop_client)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection may fail too; nothing to keep
                pass

    def close(self) -> None:
        self._drop_client()



class PublishedPrior:
    """The ordering prior published with the popularity tables (``lib.popularity.read_prior``), read through a
    :class:`ValkeyLink` on the popularity space (the stage's own, shared) at most every ``refresh_s``; the last good table while Valkey is
    away or nothing newer is published. Connects on the first :meth:`get` only."""

    def __init__(self, link: ValkeyLink, log: logging.Logger, refresh_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if link.space != "popularity":
            raise ValueError(f"the prior lives in the popularity key space, not {link.space!r}")
        self.link = link
        self.log = log
        self.refresh_s = refresh_s
        self.clock = clock
        self._table = None
        self._read_at: float | None = None

    def invalidate(self) -> None:
        """Read again on the next :meth:`get` (a new table was just published)."""
        self._read_at = None

    def get(self):
        """The current ``lib.prior.Prior``, or None when none could be read yet."""
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            from recsys_assets.lib import popularity, prior

            try:
                self._table = self.link.run(lambda c: popularity.read_prior(c, self.link.prefix))
            except ValkeyUnavailable:
                pass
            except (popularity.PopularityNotPublished, prior.PriorError) as exc:
                self.log.warning("no ordering prior: %s", exc)
            self._read_at = now
        return self._table
