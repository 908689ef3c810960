"""The API's guard (recsys_assets.api.guard) and its configuration: the pure parts directly, then the real API under
uvicorn on real Valkey and Feast (Triton down: /recommendations is a 503) for 413, 414, 431, 408, 401, 429 with
Retry-After, the storefront's session cookie, and a Hypothesis walk over every route that finds no 5xx but 503."""

import json
import socket
import string
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_assets.api.config import ApiConfig, ConfigError
from recsys_assets.api.guard import SESSION_COOKIE, Sessions, TokenBucket, token_matches
from tests.support.api_server import ApiServer

TOKEN_A = "token-a-" + "x" * 24
TOKEN_B = "token-b-" + "y" * 24
DAY3 = 1767225600 + 3 * 86_400 + 12 * 3600


# -- the pure parts -------------------------------------------------------------------------------------------------
def test_the_token_bucket_allows_the_burst_then_one_per_interval():
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)       # empty: half a second until the next token
    assert bucket.take("b") == 0.0                      # another client has its own bucket
    now[0] += 0.5
    assert bucket.take("a") == 0.0 and bucket.take("a") > 0
    now[0] += 60
    assert [bucket.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    assert TokenBucket(rate=0, burst=1).take("a") == 0.0  # rate 0: no limit


def test_tokens_match_by_value_only_and_every_listed_token_works():
    assert token_matches(TOKEN_A, (TOKEN_A, TOKEN_B)) == 0
    assert token_matches(TOKEN_B, (TOKEN_A, TOKEN_B)) == 1
    for wrong in ("", TOKEN_A[:-1], TOKEN_A + "x", TOKEN_A.upper(), "é" * 40):
        assert token_matches(wrong, (TOKEN_A, TOKEN_B)) is None


def test_session_cookies_verify_until_they_expire_and_not_when_altered():
    sessions = Sessions("k" * 32, ttl_s=60)
    cookie = sessions.issue()
    assert sessions.verify(cookie)
    assert sessions.verify(sessions.issue(now=time.time() - 120)) is None          # expired
    assert Sessions("other-key" * 4).verify(cookie) is None                          # another key signed it
    head, payload, signature = cookie.split(".")
    assert sessions.verify(f"{head}.{payload}.{signature[::-1]}") is None
    header = sessions.cookie_header(cookie, secure=True)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" in header


def test_authentication_is_off_on_local_and_required_on_k8s(tmp_path):
    assert ApiConfig.from_environ({}).tokens == ()
    with pytest.raises(ConfigError, match="no token is configured"):
        ApiConfig.from_environ({"RECSYS_PROFILE": "k8s"})
    with pytest.raises(ConfigError, match="refused on the k8s profile"):
        ApiConfig.from_environ({"RECSYS_PROFILE": "k8s", "RECSYS_API_AUTH": "off", "RECSYS_API_TOKENS": TOKEN_A})
    with pytest.raises(ConfigError, match="shorter than 16"):
        ApiConfig.from_environ({"RECSYS_API_AUTH": "on", "RECSYS_API_TOKENS": "short"})
    secret = tmp_path / "tokens"
    secret.write_text(f"{TOKEN_B}\n\n# the previous one, until every client has the new one\n{TOKEN_A}\n")
    k8s = ApiConfig.from_environ({"RECSYS_PROFILE": "k8s", "RECSYS_API_TOKENS_FILE": str(secret),
                                  "RECSYS_API_TOKENS": TOKEN_A})
    assert k8s.tokens == (TOKEN_A, TOKEN_B) and not k8s.sessions and TOKEN_A not in repr(k8s)
    assert (k8s.write_rate, k8s.write_burst) == (100, 200) and ApiConfig.from_environ({}).write_rate == 0
    local_on = ApiConfig.from_environ({"RECSYS_API_AUTH": "on", "RECSYS_API_TOKENS": f"{TOKEN_A},{TOKEN_B}"})
    assert local_on.tokens == (TOKEN_A, TOKEN_B) and local_on.sessions
    with pytest.raises(ConfigError, match="cannot be read"):
        ApiConfig.from_environ({"RECSYS_API_TOKENS_FILE": str(tmp_path / "missing")})


def test_the_api_refuses_to_start_on_k8s_without_a_token():
    env = {"PATH": "/usr/bin:/bin", "RECSYS_PROFILE": "k8s", "PYTHONPATH": str(ApiConfig().feast_repo.parent)}
    done = subprocess.run([sys.executable, "-m", "recsys_assets.api"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no token is configured" in done.stderr, (done.returncode, done.stderr)


# -- the real API under uvicorn -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(online):
    """Authentication on (two tokens: a rotation), sessions on, a short body deadline, no rate limit."""
    config = online.config(tokens=(TOKEN_A, TOKEN_B), sessions=True, body_timeout_s=1.0, write_rate=0.0)
    with ApiServer(config) as server:
        yield server


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _click_body(user: int = 7_300_000) -> dict:
    return {"user_id": user, "item_id": 1, "device_type": 1, "timestamp": DAY3}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_writes_need_a_listed_token_and_the_refusal_does_not_say_what_was_wrong(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as api:
        refusals = [api.post("/events", json=_click_body(), headers=headers)
                    for headers in ({}, _auth("wrong-" + "z" * 30), {"Authorization": f"Basic {TOKEN_A}"},
                                    {"Authorization": "Bearer"}, _auth(TOKEN_A[:-1]))]
        refusals.append(api.delete("/users/7300000/seen"))
        assert {r.status_code for r in refusals} == {401}
        assert len({r.text for r in refusals}) == 1  # one answer for every way of being wrong
        assert refusals[0].headers["WWW-Authenticate"].startswith("Bearer")
        assert api.post("/events", json=_click_body(), headers=_auth(TOKEN_A)).status_code == 201
        assert api.post("/events", json=_click_body(), headers=_auth(TOKEN_B)).status_code == 201  # rotation
        assert api.delete("/users/7300000/seen", headers=_auth(TOKEN_B)).status_code == 200
        # reads stay open
        assert api.get("/recommendations", params={"user_id": 3}).status_code == 503  # Triton is down here
        assert api.get("/users/7300000/recent").status_code == 200
        assert api.get("/healthz").status_code == 200


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_reads_can_require_a_token_too_but_never_the_probes(online):
    with ApiServer(online.config(tokens=(TOKEN_A,), auth_reads=True)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as api:
        assert api.get("/users/3/recent").status_code == 401
        assert api.get("/users/3/recent", headers=_auth(TOKEN_A)).status_code == 200
        assert api.get("/healthz").status_code == 200 and api.get("/readyz").status_code in (200, 503)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_oversized_requests_are_refused_before_parsing(guarded):
    big = b"{" + b" " * (20 * 2**20) + b"}"
    with httpx.Client(base_url=guarded.url, timeout=60, headers=_auth(TOKEN_A)) as api:
        t0 = time.perf_counter()
        declared = api.post("/events", content=big, headers={"content-type": "application/json"})
        took = time.perf_counter() - t0

        def chunks():  # no Content-Length: chunked transfer encoding
            for _ in range(10):
                yield b" " * 1024

        chunked = api.post("/events", content=chunks(), headers={"content-type": "application/json"})
        padded_ok = api.post("/events", content=json.dumps(_click_body()).encode() + b" " * 3000,
                             headers={"content-type": "application/json"})
        long_query = api.get("/recommendations", params={"user_id": 3, "x": "y" * 5000})
        big_headers = api.get("/healthz", headers={f"x-h{i}": "v" * 1000 for i in range(20)})
    assert declared.status_code == 413 and "RECSYS_API_MAX_BODY_BYTES" in declared.text, declared.text
    assert chunked.status_code == 413, chunked.text
    assert padded_ok.status_code == 201, padded_ok.text  # a valid click well inside the limit
    assert long_query.status_code == 414 and big_headers.status_code == 431
    print(f"20 MiB body refused in {took * 1e3:.0f} ms")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_client_that_trickles_its_body_gets_a_408_and_the_connection_closes(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN_A}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 80\r\n\r\n{\"user_id\"".encode())
        t0 = time.perf_counter()
        answer = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            answer += chunk
        took = time.perf_counter() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.5 < took < 5, took  # the deadline is 1 s


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_writes_over_the_rate_get_a_429_with_retry_after_per_client(online):
    config = online.config(tokens=(TOKEN_A, TOKEN_B), write_rate=1.0, write_burst=3)
    with ApiServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        statuses = [api.post("/events", json=_click_body(7_300_100), headers=_auth(TOKEN_A)).status_code
                    for _ in range(4)]
        limited = api.post("/events", json=_click_body(7_300_100), headers=_auth(TOKEN_A))
        other = api.post("/events", json=_click_body(7_300_101), headers=_auth(TOKEN_B))
        reads = [api.get("/users/7300100/recent").status_code for _ in range(10)]
        time.sleep(float(limited.headers.get("Retry-After", "1")))
        again = api.post("/events", json=_click_body(7_300_100), headers=_auth(TOKEN_A))
    assert statuses[:3] == [201, 201, 201] and statuses[3] == 429, statuses
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1, limited.headers
    assert other.status_code == 201 and set(reads) == {200}  # another client, and reads, are not limited
    assert again.status_code == 201, again.text


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_storefront_page_sets_a_session_cookie_that_authorises_its_writes_from_its_own_origin(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as browser:
        page = browser.get("/store/")
        assert page.status_code == 200
        set_cookie = page.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        own = browser.post("/events", json=_click_body(7_300_200), headers={"Origin": guarded.url})
        foreign = browser.post("/events", json=_click_body(7_300_200), headers={"Origin": "https://evil.example"})
        cookie = browser.cookies[SESSION_COOKIE]
    assert own.status_code == 201, own.text
    assert foreign.status_code == 401
    altered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    with httpx.Client(base_url=guarded.url, timeout=30, cookies={SESSION_COOKIE: altered}) as forged:
        assert forged.post("/events", json=_click_body(7_300_200)).status_code == 401


# -- every route, generated input: no 5xx but 503 ---------------------------------------------------------------------
def _routes(config) -> list[tuple[str, str, list[str]]]:
    """(method, path template, query parameter names) of every route the app serves."""
    from fastapi.routing import APIRoute

    from recsys_assets.api.app import create_app

    out = []
    for route in create_app(config).routes:
        if isinstance(route, APIRoute):
            queries = [p.name for p in route.dependant.query_params]
            out += [(method, route.path, queries) for method in sorted(route.methods)]
    return out


NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, 2**64, 10**20]))
TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%é١２ ", max_size=12)
VALUES = st.one_of(NUMBERS, TEXT, st.sampled_from(["true", "false", "1e3", "NaN", "-0", "+5", "0x10", ""]))
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, st.floats(), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
FIELDS = st.sampled_from(["user_id", "item_id", "device_type", "timestamp", "k", "diversity", "extra"])


@pytest.mark.integration
@pytest.mark.timeout(600)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_generated_requests_to_every_route_never_get_a_5xx_but_503(online, guarded, data):
    routes = _routes(online.config())
    method, template, queries = data.draw(st.sampled_from(routes), label="route")
    path = template
    for name in [part[1:-1] for part in template.split("/") if part.startswith("{")]:
        value = str(data.draw(VALUES, label=name))
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    params = data.draw(st.dictionaries(st.one_of(st.sampled_from(queries or ["q"]), FIELDS), VALUES, max_size=4),
                       label="query")
    body = data.draw(st.one_of(st.none(), JSON_VALUES, st.fixed_dictionaries({}, optional={
        name: JSON_VALUES for name in ("user_id", "item_id", "device_type", "timestamp")})), label="body")
    content = None if body is None else json.dumps(body, allow_nan=True).encode()
    with httpx.Client(base_url=guarded.url, timeout=30, headers=_auth(TOKEN_A)) as api:
        response = api.request(method, path, params={k: str(v) for k, v in params.items()}, content=content,
                               headers={"content-type": "application/json"} if content else {})
    assert response.status_code < 500 or response.status_code == 503, \
        (method, path, params, body, response.status_code, response.text[:300])
    if response.status_code == 503:  # only where a dependency that is down answers: Triton, in this fixture
        assert "Retry-After" in response.headers and path.startswith(("/recommendations", "/readyz")), \
            response.text[:300]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_recent_clicks_of_a_user_id_beyond_int64_is_a_422_not_a_500(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as api:
        response = api.get("/users/99999999999999999999/recent")
    assert response.status_code == 422 and "expected an id >= 0" in response.text, response.text
