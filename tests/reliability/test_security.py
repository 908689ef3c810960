"""Security basics: loopback by default, Valkey AUTH/TLS from configuration, no secrets in the repository, in logs
or in run metadata, and clicks only on items that exist.

The stack of these tests runs Valkey with a password (random per run) given in ``RECSYS_VALKEY_URL``, the way a
managed Valkey is reached; every process and every file it writes is then searched for that password.
One leak found on the way is fixed: the ``triton_deployment`` asset wrote the Valkey URL, password included, into
its materialization metadata; it now shows the URL with the password redacted.
"""

import re
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.support.stack import DAY13, PROJECT_ROOT



def is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how a dual-stack socket reports loopback
    return address.is_loopback or bool(mapped and mapped.is_loopback)


# -- nothing listens beyond loopback --------------------------------------------------------------------------------
def _listening(pid: int, children: bool = False) -> list[tuple[str, int]]:
    processes = [psutil.Process(pid)]
    if children:
        processes += processes[0].children(recursive=True)
    out = []
    for process in processes:
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.append((conn.laddr.ip, conn.laddr.port))
    return out


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_every_server_the_stack_starts_listens_on_loopback_only(stack):
    """The API (started without --host), Triton (with its python stubs) and Valkey, as their defaults start them."""
    sockets = {"api": _listening(stack.api.pid), "triton": _listening(stack.triton().pid, children=True),
               "valkey": _listening(stack.valkey.pid)}
    assert [port for _, port in sockets["api"]] == [stack.api.port]
    assert {port for _, port in sockets["triton"]} == set(stack.ports.values())  # http, grpc, metrics; stubs: none
    assert {port for _, port in sockets["valkey"]} == {stack.valkey.port}
    exposed = {name: [s for s in found if not is_loopback(s[0])] for name, found in sockets.items()}
    assert not any(exposed.values()), exposed
    # the same seen from the kernel's table of listening TCP sockets
    table = _proc_listening()
    for name, found in sockets.items():
        for _, port in found:
            assert all(is_loopback(ip) for ip in table.get(port, ())), (name, port, table.get(port))


def _proc_listening() -> dict[int, set[str]]:
    """port -> local addresses of the LISTEN sockets in /proc/net/tcp and tcp6."""
    import ipaddress
    import socket
    import struct

    out: dict[int, set[str]] = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(path).exists():
            continue
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host byte order
            raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
            ip = str(ipaddress.ip_address(raw)) if family == socket.AF_INET else str(ipaddress.IPv6Address(raw))
            out.setdefault(int(port, 16), set()).add(ip)
    return out


def test_the_defaults_bind_loopback():
    from recsys_assets.api.config import ApiConfig
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.lib.valkey_server import EmbeddedValkey

    assert ApiConfig().host == "127.0.0.1" and ApiConfig.from_environ({}).host == "127.0.0.1"
    command = EmbeddedValkey("/tmp/x", port=1).command()
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    assert command[command.index("--protected-mode") + 1] == "yes"
    assert TritonServer(Path("/tmp/x")).host == "127.0.0.1"
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"dg dev --host 127\.0\.0\.1", makefile)  # the UI of `make dev`


def test_the_load_generator_targets_loopback_only():
    from tests.support.harness import check_loopback

    assert check_loopback("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_loopback("localhost:8000") == "http://localhost:8000"
    for url in ("http://10.0.0.8:8080", "http://192.168.1.2:8000", "ftp://127.0.0.1:21"):
        with pytest.raises(ValueError):
            check_loopback(url)


# -- Valkey AUTH and TLS from configuration -------------------------------------------------------------------------
def test_a_rediss_url_with_a_password_gives_tls_and_auth_everywhere_valkey_is_reached():
    from recsys_assets.api.config import ApiConfig
    from recsys_assets.lib.valkey_server import feast_connection_string, parse_url
    from recsys_assets.serving.runtime import Runtime, server_environ

    url = "rediss://recsys:s3cr%40t@cache.example.internal:6380"
    endpoint = parse_url(url)
    assert (endpoint.tls, endpoint.username, endpoint.password, endpoint.port) == (True, "recsys", "s3cr@t", 6380)
    assert "s3cr@t" not in repr(endpoint)
    client = endpoint.client(db=1)  # built, not connected
    pool = client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection" and pool.connection_kwargs["password"] == "s3cr@t"
    assert pool.connection_kwargs["username"] == "recsys"
    assert "ssl=true" in feast_connection_string(endpoint) and "password=s3cr@t" in feast_connection_string(endpoint)
    # a password given apart from the URL (RECSYS_VALKEY_PASSWORD), as the Kubernetes Secret holds it
    apart = parse_url("rediss://cache.example.internal:6379", password="token-1")
    assert apart.tls and apart.password == "token-1"
    api = ApiConfig.from_environ({"RECSYS_VALKEY_URL": "rediss://cache.example.internal:6379",
                                  "RECSYS_VALKEY_PASSWORD": "token-1"})
    assert parse_url(api.valkey_url, api.valkey_password) == apart and "token-1" not in repr(api)
    runtime = Runtime.from_environ({"RECSYS_VALKEY_URL": "rediss://cache.example.internal:6379",
                                    "RECSYS_VALKEY_PASSWORD": "token-1"})
    assert parse_url(runtime.valkey_url, runtime.valkey_password) == apart
    env = server_environ("rediss://cache.example.internal:6379", "/r.db", valkey_password="token-1", cluster=True)
    assert "ssl=true" in env["RECSYS_FEAST_ONLINE_STORE"] and "password=token-1" in env["RECSYS_FEAST_ONLINE_STORE"]


def test_the_k8s_profile_takes_tls_and_auth_from_a_secret():
    """Config-level: the Kubernetes configuration reaches ElastiCache with rediss:// and an AUTH token kept in the
    Secret ``recsys-valkey`` (the rendered chart is checked in tests/infra)."""
    values = yaml.safe_load((PROJECT_ROOT / "infra" / "helm" / "triton" / "values.yaml").read_text())
    assert "recsys-valkey" in values["envFromSecrets"]
    assert not {"RECSYS_VALKEY_URL", "RECSYS_VALKEY_PASSWORD", "RECSYS_FEAST_ONLINE_STORE"} & set(values["env"])
    feast = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.k8s.yaml").read_text())
    assert feast["online_store"]["connection_string"] == "${RECSYS_FEAST_ONLINE_STORE}"
    docs = "\n".join(p.read_text() for p in (PROJECT_ROOT / "infra" / "helm" / "triton" / "values.yaml",
                                            PROJECT_ROOT / "infra" / "k8s" / "dagster-values.yaml",
                                            PROJECT_ROOT / "feature_repo" / "feature_store.k8s.yaml"))
    assert "rediss://" in docs and "ssl=true,password=<AUTH token>" in docs
    assert not re.search(r"\bredis://", docs)  # no plain-text Valkey anywhere in the k8s configuration
    dagster = yaml.safe_load((PROJECT_ROOT / "infra" / "k8s" / "dagster-values.yaml").read_text())
    assert "recsys-valkey" in yaml.safe_dump(dagster)


# -- no secrets in the repository -----------------------------------------------------------------------------------
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}", re.I),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9]{32,}\b"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"<>]*:([^\s/@'\"<>]{3,})@"),
}
# What documentation and tests use where a credential goes; never a real one.
PLACEHOLDER = re.compile(r"^(\*+|<[^>]*>?|\$\{?\w*\}?|\{[^}]*\}?|x+|pw|p(?:a|%40|@)ss\w*|s3cr\S*|secret\w*|"
                         r"token\w*|user|changeme|example\w*|\w*placeholder\w*)$", re.I)


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=PROJECT_ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no git checkout to list the repository's files ({exc})")
    return [PROJECT_ROOT / name for name in listed.decode().split("\0") if name]


def test_no_secret_is_committed_to_the_repository():
    found = []
    for path in _repository_files():
        if not path.is_file() or path.stat().st_size > 2_000_000 or ".hypothesis" in path.parts:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for name, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                secret = match.group(1) if pattern.groups else match.group(0)
                if name == "password in a URL" and PLACEHOLDER.match(secret):
                    continue
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {name}")
    assert not found, "\n".join(found)


def test_the_secret_scan_finds_what_it_looks_for():
    # assembled here, so that this file does not hold what the scan looks for
    samples = {"AWS access key id": "key = AKIA" + "ABCDEFGHIJKLMNOP",
               "private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
               "password in a URL": "RECSYS_VALKEY_URL=rediss://default:" + "Xk29fj3kdP@cache:6379",
               "GitHub token": "ghp_" + "a" * 36}
    for name, text in samples.items():
        assert SECRET_PATTERNS[name].search(text), name
    assert PLACEHOLDER.match("<AUTH token>") and PLACEHOLDER.match("***") and not PLACEHOLDER.match("Xk29fj3kdP")


# -- no secrets in logs or metadata ---------------------------------------------------------------------------------
def _files_holding(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_valkey_password_never_reaches_a_log_or_an_artifact(stack):
    """Every log the stack wrote (API, Triton with its stubs, Valkey) and every file under the artifact root: the
    password of RECSYS_VALKEY_URL is in none. (Run last in the suite, the logs hold every fault of it.)"""
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:  # a little traffic of every kind, an error too
        api.get("/recommendations", params={"user_id": 3, "timestamp": DAY13})
        api.post("/events", json={"user_id": 9, "item_id": 5, "timestamp": DAY13})
        api.get("/readyz")
    logs = stack.logs()
    assert {"api", "triton", "valkey"} <= set(logs)
    assert [name for name, path in logs.items() if stack.password in path.read_text(errors="replace")] == []
    assert _files_holding(stack.root, stack.password) == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_valkey_password_never_reaches_dagster_metadata_or_logs(stack):
    texts = []
    for result in stack.deployments:
        for event in result.all_events:
            texts.append(event.message or "")
        for event in result.get_asset_materialization_events():
            texts += [str(value.value) for value in event.materialization.metadata.values()]
    assert texts and not [t for t in texts if stack.password in t]


# -- clicks only on items that exist --------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_events_api_records_clicks_only_on_catalogue_items(stack):
    before = len(stack.events())
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        for item in (2465, 10**9, 2**63 - 1, -1):
            response = api.post("/events", json={"user_id": 7_100_000, "item_id": item, "timestamp": DAY13})
            assert response.status_code == 422 and "catalogue" in response.text, response.text
        ok = api.post("/events", json={"user_id": 7_100_000, "item_id": 5, "timestamp": DAY13})
        assert ok.status_code == 201
    assert len(stack.events()) == before + 1


# -- Triton's model-repository and shared-memory APIs behind a key ---------------------------------------------------
IDENTITY_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
"""


def test_the_restricted_api_flags_name_the_repository_and_shared_memory_apis():
    from recsys_assets.release.triton_server import ADMIN_KEY_HEADER, TritonServer, restricted_api_flags

    assert restricted_api_flags(None) == []
    flags = restricted_api_flags("k" * 32)
    assert flags == [f"--http-restricted-api=model-repository,shared-memory:{ADMIN_KEY_HEADER}={'k' * 32}",
                     f"--grpc-restricted-protocol=model-repository,shared-memory:{ADMIN_KEY_HEADER}={'k' * 32}"]
    assert "k" * 32 not in repr(TritonServer(Path("/tmp/x"), admin_key="k" * 32))


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_restricted_triton_refuses_unload_without_the_key_and_our_client_code_still_loads_and_unloads(tmp_path):
    """A real tritonserver started with the restriction: anyone may infer; unload, load, the repository index and
    shared-memory registration need the key, which TritonServer and the release code send (RECSYS_TRITON_ADMIN_KEY)."""
    import secrets

    from recsys_assets.release import promotion
    from recsys_assets.release.triton_server import ADMIN_KEY_HEADER, TritonServer

    repository = tmp_path / "repository"
    (repository / "identity" / "1").mkdir(parents=True)
    (repository / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (repository / "identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    key = secrets.token_urlsafe(24)
    wrong_key = key[:-1] + ("y" if key.endswith("x") else "x")   # differs from the key in its last character
    infer = {"inputs": [{"name": "X", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    with TritonServer(repository, admin_key=key, workdir=tmp_path / "work") as server:
        server.load(["identity"], timeout=120)                       # our load sends the key
        base = f"http://{server.http_url}"
        with httpx.Client(base_url=base, timeout=30) as client:
            refused = {
                "unload": client.post("/v2/repository/models/identity/unload", json={}),
                "load": client.post("/v2/repository/models/identity/load", json={}),
                "index": client.post("/v2/repository/index", json={}),
                "wrong key": client.post("/v2/repository/models/identity/unload", json={},
                                         headers={ADMIN_KEY_HEADER: wrong_key}),
                "shared memory": client.post("/v2/systemsharedmemory/region/r/register",
                                             json={"key": "/r", "offset": 0, "byte_size": 8}),
            }
            answered = client.post("/v2/models/identity/infer", json=infer)
            ready = client.get("/v2/models/identity/ready")
        assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 403), \
            {name: (r.status_code, r.text[:120]) for name, r in refused.items()}
        assert answered.status_code == 200 and answered.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0]
        assert ready.status_code == 200                               # the refused unload changed nothing
        with server.client() as client:                               # what a release promotion calls
            assert promotion._ready_models(client, server.admin_headers) == {"identity"}
        promotion._unload(server, ["identity"])
        deadline = time.monotonic() + 60  # unloading finishes in the background
        while [m.get("state") for m in server.repository_index()] != ["UNAVAILABLE"]:
            assert time.monotonic() < deadline, server.repository_index()
            time.sleep(0.1)
        server.load(["identity"], timeout=120)
        assert [m.get("state") for m in server.repository_index()] == ["READY"]
