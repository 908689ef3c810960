"""What every request passes before the app sees it: size limits, a body deadline, write authentication and a
per-client rate limit for writes. A plain ASGI middleware (no web framework), outermost in the app.

In order, for each HTTP request:

1. **Sizes** (no body read yet): the path plus query string over ``max_url_bytes`` is a 414, the request
   headers over ``max_header_bytes`` a 431, a ``Content-Length`` over ``max_body_bytes`` a 413.
2. **Authentication**, for writes (every method but GET, HEAD and OPTIONS) and, when ``auth_reads`` is set, for
   reads too (never for ``/healthz``, ``/readyz`` and the storefront's page and assets, which a probe or a browser
   loads without credentials). Accepted: ``Authorization: Bearer <token>`` with one of the configured tokens
   (each compared with :func:`hmac.compare_digest`, all of them every time, so the time taken does not say which
   one came close), or the storefront's session cookie (:class:`Sessions`) when sessions are on and the request
   comes from the API's own origin. Anything else is a 401 that does not say which part was wrong.
3. **Rate limit** of writes: a token bucket per client (the token or session that authenticated it, else the
   client address) refilled at ``write_rate`` per second up to ``write_burst``; an empty bucket is a 429 whose
   ``Retry-After`` is the whole seconds until one write is allowed again.
4. **Body**: read here, before any parsing, each chunk within ``body_timeout_s`` (a client that trickles its body
   gets a 408 and its connection closed) and the total within ``max_body_bytes`` (a 413 even without a
   ``Content-Length``, as with chunked encoding); then handed to the app unchanged.

Errors are JSON ``{"detail": ...}`` like the app's own.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import math
import secrets
import time

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/healthz", "/readyz")            # probes: never behind authentication
OPEN_PREFIXES = ("/store/assets/",)             # the storefront's script and style
OPEN_PAGES = ("/", "/store", "/store/")         # the storefront's page (it issues the session cookie)
SESSION_COOKIE = "recsys_session"
SESSION_AUDIENCE = "recsys-storefront"
MAX_BUCKETS = 100_000                           # clients remembered by the rate limiter (least recent forgotten)
UNAUTHORIZED = "this request needs valid credentials: Authorization: Bearer <token> (RECSYS_API_TOKENS)"


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """The limits and credentials the guard enforces (built by ``ApiConfig.guard_settings``)."""

    tokens: tuple[str, ...] = ()                 # empty: authentication off
    auth_reads: bool = False
    max_body_bytes: int = 4096
    max_url_bytes: int = 4096
    max_header_bytes: int = 16_384
    body_timeout_s: float = 10.0
    write_rate: float = 0.0                      # writes per second per client (0: no limit)
    write_burst: int = 200
    sessions: Sessions | None = None             # the storefront's session cookies; None: not accepted

    @property
    def auth(self) -> bool:
        return bool(self.tokens)


class Sessions:
    """Signed, expiring session cookies for the storefront page (HS256 JSON web tokens, PyJWT).

    The page is served by this API and its writes go to this API: the browser keeps an ``HttpOnly``,
    ``SameSite=Strict`` cookie that scripts cannot read and other sites cannot make it send, instead of a bearer
    token that any script on the page (or anyone viewing its source) could copy. The signing key is
    ``RECSYS_API_SESSION_KEY`` (replicas behind one load balancer must share it) or a random one per process.
    """

    def __init__(self, key: str | None = None, ttl_s: int = 3600) -> None:
        self.key = key or secrets.token_urlsafe(32)
        self.ttl_s = int(ttl_s)

    def issue(self, now: float | None = None) -> str:
        import jwt

        now = time.time() if now is None else now
        claims = {"sub": secrets.token_urlsafe(12), "aud": SESSION_AUDIENCE, "iat": int(now),
                  "exp": int(now) + self.ttl_s}
        return jwt.encode(claims, self.key, algorithm="HS256")

    def verify(self, cookie: str) -> str | None:
        """The session id of a valid, unexpired cookie; None for anything else."""
        import jwt

        try:
            claims = jwt.decode(cookie, self.key, algorithms=["HS256"], audience=SESSION_AUDIENCE,
                                options={"require": ["exp", "sub", "aud"]})
        except jwt.PyJWTError:
            return None
        return str(claims["sub"])

    def cookie_header(self, cookie: str, secure: bool) -> str:
        parts = [f"{SESSION_COOKIE}={cookie}", "Path=/", f"Max-Age={self.ttl_s}", "HttpOnly", "SameSite=Strict"]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)


class TokenBucket:
    """Per-client token buckets: ``rate`` tokens a second up to ``burst``; :meth:`take` answers the wait."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.clock = clock
        self.buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, client: str) -> float:
        """0 when the client may go ahead (one token taken), else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self.buckets[client] = (tokens, now)
        while len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return wait


def token_matches(presented: str, tokens: tuple[str, ...]) -> int | None:
    """The index of the configured token equal to ``presented`` (compared in constant time, all of them)."""
    found = None
    presented_digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    for index, token in enumerate(tokens):
        # Digests first: compare_digest's time depends on the lengths, a digest's length is fixed.
        if hmac.compare_digest(presented_digest, hashlib.sha256(token.encode()).digest()):
            found = index
    return found


def _headers(scope) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        out.setdefault(name.lower(), value)
    return out


def _cookie(raw: bytes | None, name: str) -> str | None:
    if not raw:
        return None
    for part in raw.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _same_origin(scope, headers: dict[bytes, bytes]) -> bool:
    """A browser's write carries Origin; it must be this API's own (no other site may use the cookie)."""
    origin = headers.get(b"origin")
    if origin is None:
        return True  # not a cross-site browser request (browsers send Origin on every POST and DELETE)
    host = headers.get(b"host", b"").decode("latin-1")
    scheme = scope.get("scheme", "http")
    return origin.decode("latin-1") == f"{scheme}://{host}"


async def _answer(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = TokenBucket(settings.write_rate, settings.write_burst)

    def _needs_auth(self, method: str, path: str) -> bool:
        if not self.settings.auth:
            return False
        if method not in READ_METHODS:
            return True
        if path in OPEN_PATHS or path in OPEN_PAGES or path.startswith(OPEN_PREFIXES):
            return False
        return self.settings.auth_reads

    def _identify(self, scope, headers: dict[bytes, bytes]) -> str | None:
        """Who the credentials of this request name (``token:<n>``, ``session:<id>``), or None."""
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and presented.strip():
            index = token_matches(presented.strip(), self.settings.tokens)
            return None if index is None else f"token:{index}"
        sessions = self.settings.sessions
        cookie = _cookie(headers.get(b"cookie"), SESSION_COOKIE)
        if sessions is not None and cookie and _same_origin(scope, headers):
            session = sessions.verify(cookie)
            return None if session is None else f"session:{session}"
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.settings
        method = scope["method"]
        path = scope.get("path", "")
        url_bytes = len(scope.get("raw_path") or path.encode()) + len(scope.get("query_string", b""))
        if url_bytes > limits.max_url_bytes:
            await _answer(send, 414, f"the URL is {url_bytes} bytes long: at most {limits.max_url_bytes} "
                                     "(RECSYS_API_MAX_URL_BYTES)")
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
        if header_bytes > limits.max_header_bytes:
            await _answer(send, 431, f"the request headers are {header_bytes} bytes: at most "
                                     f"{limits.max_header_bytes} (RECSYS_API_MAX_HEADER_BYTES)")
            return
        headers = _headers(scope)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if length > limits.max_body_bytes:
                await _answer(send, 413, self._too_large(length))
                return
        client = None
        if self._needs_auth(method, path):
            client = self._identify(scope, headers)
            if client is None:
                await _answer(send, 401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="recsys"'})
                return
        if method not in READ_METHODS:
            address = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.take(client or f"address:{address}")
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                await _answer(send, 429, f"too many writes from this client: at most {limits.write_rate:g} a "
                                         f"second (bursts of {limits.write_burst}); retry in {seconds} s",
                              {"Retry-After": str(seconds)})
                return
        if method in READ_METHODS and declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body to read
            return
        body, problem = await self._read_body(receive)
        if problem is not None:
            status, detail = problem
            await _answer(send, status, detail, {"Connection": "close"} if status == 408 else None)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: int) -> str:
        return (f"the request body is {size} bytes or more: at most {self.settings.max_body_bytes} "
                "(RECSYS_API_MAX_BODY_BYTES; one click is about 100)")

    async def _read_body(self, receive) -> tuple[bytes, tuple[int, str] | None]:
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_s)
            except asyncio.TimeoutError:
                return b"", (408, f"the request body did not arrive within {self.settings.body_timeout_s:g} s "
                                  "(RECSYS_API_BODY_TIMEOUT_S)")
            if message["type"] == "http.disconnect":
                return b"", (400, "the client disconnected before its request body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                return b"", (413, self._too_large(size))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A ``receive`` that gives the app the body read already, then waits for the disconnect as usual."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
