"""Bounded load on loopback against the API and against Triton directly: latency percentiles, throughput, errors,
and the sustained request rate at which p99 stays within 100 ms.

    .venv/bin/python benchmarks/load.py                    # start the tiny stack, find the sustained rate of both
    .venv/bin/python benchmarks/load.py --mode fixed --rate 40 --seconds 20
    .venv/bin/python benchmarks/load.py --api http://127.0.0.1:8080 --triton http://127.0.0.1:8000 \
        --known-users 0-3999

Targets: ``--api`` (``GET /recommendations`` and ``POST /events``) and ``--triton`` (``POST
/v2/models/ensemble_model/infer``, the KServe v2 JSON body the API sends). Without either, the stack of
``tests/support/stack.py`` is started in a temporary folder: the tiny serving world (real catalogue, 60 users,
small ONNX towers) behind a password-protected Valkey, Triton deployed by the serving assets, the API as its own
process; it is stopped at the end.

The mix (seeded, the same for every run): 60% known users, 20% new ids (cold start), 20% anonymous (-1); device
mobile 40%, desktop 35%, tablet 15%, unknown 5%, left out 5%; a time of day on day 13 of the world; k mostly 10.
Against the API a share of the requests (``--click-share``, 20%) are clicks, each with its own ``Idempotency-Key``,
on an item the user was shown last (else an item available from day 00), interleaved with the recommendations.

Load is open-loop: requests are sent on a fixed schedule (``--rate`` per second per target) whatever the answers,
and a request's latency runs from when it was due, so a server that falls behind shows it (no coordinated
omission). At most ``--max-in-flight`` requests are outstanding per target; one that cannot be sent counts as an
error (``client overload``). Everything is bounded: a run stops after ``--seconds`` or ``--max-requests``, each
request after ``--timeout``, the sustained-rate search after ``--budget`` seconds.

``--mode sustained`` (the default) finds the sustained rate per target: steps of ``--step-seconds`` at rising
rates (doubling, then bisection) until a step fails: p99 above ``--slo-ms``, more than ``--max-error-rate`` errors,
or less than 95% of the offered rate completed. The result is the highest passing rate. The client runs on the
same cores as the servers, as a caller on this machine sees it; the numbers are this machine's, not a target.

Loopback only: a URL whose host does not resolve to a loopback address is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

DAY0 = 1767225600  # 2026-01-01 00:00 UTC, day 00 of the synthetic world
NEW_USER_BASE = 10**6
DEVICES = (1, 0, 2, -1, None)
DEVICE_WEIGHTS = (0.40, 0.35, 0.15, 0.05, 0.05)
K_CHOICES = (10, 10, 10, 10, 5, 20)
ENSEMBLE_PATH = "/v2/models/ensemble_model/infer"


# -- the request mix ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mix:
    """Who asks, from where, when; what the API's clicks choose from."""

    known_users: tuple[int, ...]
    items: tuple[int, ...]               # clickable on ``day`` (fallback when the user was shown nothing yet)
    known: float = 0.6
    new: float = 0.2                     # the rest is anonymous (-1)
    click_share: float = 0.2             # API only
    day: int = 13
    start_epoch: int = DAY0

    def __post_init__(self) -> None:
        if not self.known_users or not self.items:
            raise ValueError("the mix needs known users and clickable items")
        if not (0 <= self.known and 0 <= self.new and self.known + self.new <= 1 and 0 <= self.click_share < 1):
            raise ValueError("shares must be in [0, 1] with known + new <= 1")


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str                     # "recommend" | "click"
    user_id: int
    device_type: int | None
    timestamp: int
    k: int | None = None
    item_id: int | None = None
    key: str | None = None        # the click's Idempotency-Key

    def click_body(self) -> dict:
        body = {"user_id": self.user_id, "item_id": self.item_id, "timestamp": self.timestamp}
        if self.device_type is not None:
            body["device_type"] = self.device_type
        return body

    def query(self) -> dict:
        params = {"user_id": self.user_id, "timestamp": self.timestamp}
        for name, value in (("device_type", self.device_type), ("k", self.k)):
            if value is not None:
                params[name] = value
        return params


class Planner:
    """A deterministic stream of operations; clicks choose among what the user was shown last."""

    def __init__(self, mix: Mix, seed: int = 0, clicks: bool = True) -> None:
        self.mix = mix
        self.rng = random.Random(seed)
        self.clicks = clicks and mix.click_share > 0
        self.last_shown: dict[int, list[int]] = {}
        self.run_id = uuid.uuid4().hex[:8]
        self.n = 0

    def _user(self) -> int:
        r = self.rng.random()
        if r < self.mix.known:
            return self.rng.choice(self.mix.known_users)
        if r < self.mix.known + self.mix.new:
            return NEW_USER_BASE + self.rng.randrange(100_000)
        return -1

    def next(self) -> Op:
        self.n += 1
        user = self._user()
        device = self.rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
        ts = self.mix.start_epoch + self.mix.day * 86_400 + self.rng.randrange(86_400)
        if self.clicks and self.rng.random() < self.mix.click_share:
            shown = self.last_shown.get(user)
            item = self.rng.choice(shown) if shown else self.rng.choice(self.mix.items)
            return Op("click", user, device, ts, item_id=item, key=f"load-{self.run_id}-{self.n}")
        return Op("recommend", user, device, ts, k=self.rng.choice(K_CHOICES))

    def shown(self, user_id: int, ids: list[int]) -> None:
        if ids:
            self.last_shown[user_id] = ids


# -- records and summaries ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Record:
    target: str            # "api" | "triton"
    kind: str              # "recommend" | "click"
    due: float             # seconds since the run started, when the request was due
    latency_ms: float      # from due to the answer (or the failure)
    status: int            # HTTP status; 0 transport error or timeout; -1 not sent (client overload)
    ok: bool
    detail: str = ""
    retry_after: str | None = None
    op: Op | None = None
    event_id: str | None = None
    ids: list[int] | None = None

    @property
    def done(self) -> float:
        return self.due + self.latency_ms / 1e3


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summarize(records: list[Record], since: float | None = None, until: float | None = None,
              kind: str | None = None, target: str | None = None, elapsed: float | None = None) -> dict:
    """Counts, errors by cause, latency percentiles (of answered requests) and throughput of a slice of records."""
    rows = [r for r in records if (since is None or r.due >= since) and (until is None or r.due < until)
            and (kind is None or r.kind == kind) and (target is None or r.target == target)]
    answered = [r.latency_ms for r in rows if r.status > 0]
    errors: dict[str, int] = {}
    for r in rows:
        if not r.ok:
            cause = f"{r.status} {r.detail[:60]}".strip()
            errors[cause] = errors.get(cause, 0) + 1
    if elapsed is None:
        elapsed = (max(r.done for r in rows) - min(r.due for r in rows)) if rows else 0.0
    n_ok = sum(r.ok for r in rows)
    return {"requests": len(rows), "ok": n_ok, "errors": len(rows) - n_ok, "error_kinds": errors,
            "p50_ms": percentile(answered, 50), "p90_ms": percentile(answered, 90),
            "p99_ms": percentile(answered, 99), "max_ms": max(answered) if answered else float("nan"),
            "ok_per_s": n_ok / elapsed if elapsed > 0 else float("nan"), "seconds": elapsed}


# -- the driver -----------------------------------------------------------------------------------------------------
def check_loopback(url: str) -> str:
    """The URL without a trailing slash, or ValueError when its host is not a loopback address."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host = parsed.hostname
    if not host or parsed.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: expected http://host:port")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 80, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise ValueError(f"{url!r}: cannot resolve {host!r} ({exc})") from None
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"{url!r} resolves to {sorted(addresses)}: this load generator only targets loopback "
                         "addresses (127.0.0.0/8, ::1)")
    return f"{parsed.scheme}://{parsed.netloc}".rstrip("/")


@dataclasses.dataclass
class Target:
    name: str        # "api" | "triton"
    url: str

    def __post_init__(self) -> None:
        if self.name not in ("api", "triton"):
            raise ValueError(f"target {self.name!r}: expected api or triton")
        self.url = check_loopback(self.url)


async def _send(client, target: Target, op: Op) -> tuple[int, bool, str, str | None, str | None, list[int] | None]:
    """One request; returns (status, ok, detail, retry_after, event_id, ids)."""
    if target.name == "triton":
        from recsys_assets.api.triton import request_body

        response = await client.post(ENSEMBLE_PATH, json=request_body(op.user_id, op.device_type, op.timestamp, op.k))
        if response.status_code != 200:
            return response.status_code, False, _error_text(response), None, None, None
        outputs = {o.get("name"): o.get("data", []) for o in response.json().get("outputs", [])}
        ids = [int(x) for x in outputs.get("ordered_ids", [])]
        ok = "ordered_ids" in outputs and len(ids) == len(outputs.get("ordered_scores", []))
        return 200, ok, "" if ok else "malformed answer", None, None, ids
    if op.kind == "click":
        response = await client.post("/events", json=op.click_body(), headers={"Idempotency-Key": op.key})
        retry = response.headers.get("retry-after")
        if response.status_code in (200, 201):
            return response.status_code, True, "", retry, response.json().get("event_id"), None
        body = _json(response)
        return response.status_code, False, _error_text(response), retry, body.get("event_id"), None
    response = await client.get("/recommendations", params=op.query())
    retry = response.headers.get("retry-after")
    if response.status_code != 200:
        return response.status_code, False, _error_text(response), retry, None, None
    ids = [int(i["item_id"]) for i in response.json().get("items", [])]
    return 200, True, "", retry, None, ids


def _json(response) -> dict:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def _error_text(response) -> str:
    body = _json(response)
    return str(body.get("detail") or body.get("error") or response.text[:200])


async def drive(target: Target, planner: Planner, rate: float, seconds: float, max_requests: int,
                records: list[Record], t0: float, stop: threading.Event | None = None, max_in_flight: int = 64,
                timeout_s: float = 5.0) -> None:
    """Send ``planner``'s operations to ``target`` at ``rate`` per second until ``seconds``, ``max_requests`` or
    ``stop``; append one :class:`Record` per scheduled request to ``records`` (times relative to ``t0``)."""
    import httpx

    if rate <= 0:
        raise ValueError(f"rate {rate}: expected > 0 requests per second")
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: a request sent on a connection the
    # server is closing at that moment fails with "server disconnected", an artefact of the client, not a fault.
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight,
                          keepalive_expiry=2.0)
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter() - t0
    async with httpx.AsyncClient(base_url=target.url, timeout=timeout_s, limits=limits) as client:

        async def one(op: Op, due: float) -> None:
            detail, status, ok, retry, event_id, ids = "", 0, False, None, None, None
            try:
                status, ok, detail, retry, event_id, ids = await _send(client, target, op)
            except httpx.TimeoutException as exc:
                detail = f"timeout ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                detail = f"transport error ({type(exc).__name__}: {exc})"
            except ValueError as exc:  # an answer that is not JSON
                status, detail = status or 0, f"unreadable answer ({exc})"
            latency = (time.perf_counter() - t0 - due) * 1e3
            if ids is not None:
                planner.shown(op.user_id, ids)
            records.append(Record(target.name, op.kind, due, latency, status, ok, detail, retry, op, event_id, ids))

        i = 0
        while i < max_requests and (stop is None or not stop.is_set()):
            due = start + i / rate
            if due - start >= seconds:
                break
            delay = due - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            op = planner.next() if target.name == "api" else _recommendation_only(planner)
            if len(in_flight) >= max_in_flight:
                records.append(Record(target.name, op.kind, due, 0.0, -1, False, "client overload: in-flight limit",
                                      op=op))
            else:
                task = asyncio.create_task(one(op, due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            i += 1
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=timeout_s + 1)


def _recommendation_only(planner: Planner) -> Op:
    op = planner.next()
    while op.kind != "recommend":
        op = planner.next()
    return op


def run_load(targets: list[Target], mix: Mix, rate: float, seconds: float, max_requests: int = 100_000,
             seed: int = 0, max_in_flight: int = 64, timeout_s: float = 5.0) -> list[Record]:
    """One bounded run, every target at ``rate`` per second at the same time; returns the records."""
    records: list[Record] = []
    t0 = time.perf_counter()

    async def main():
        await asyncio.gather(*(drive(t, Planner(mix, seed + n, clicks=t.name == "api"), rate, seconds, max_requests,
                                     records, t0, max_in_flight=max_in_flight, timeout_s=timeout_s)
                               for n, t in enumerate(targets)))

    asyncio.run(main())
    return records


class BackgroundLoad:
    """Load in a thread while a test breaks things: ``start()``, ``now()`` for marks, ``stop()`` -> records.

    Bounded like every run here: it stops by itself after ``seconds`` or ``max_requests`` per target.
    """

    def __init__(self, targets: list[Target], mix: Mix, rate: float = 20.0, seconds: float = 120.0,
                 max_requests: int = 20_000, seed: int = 0, timeout_s: float = 5.0, max_in_flight: int = 32) -> None:
        self.targets, self.mix, self.rate, self.seconds = targets, mix, rate, seconds
        self.max_requests, self.seed, self.timeout_s, self.max_in_flight = max_requests, seed, timeout_s, max_in_flight
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def start(self) -> BackgroundLoad:
        self.t0 = time.perf_counter()

        async def main():
            await asyncio.gather(*(drive(t, Planner(self.mix, self.seed + n, clicks=t.name == "api"), self.rate,
                                         self.seconds, self.max_requests, self.records, self.t0, self._stop,
                                         self.max_in_flight, self.timeout_s)
                                   for n, t in enumerate(self.targets)))

        def run():
            try:
                asyncio.run(main())
            except BaseException as exc:  # surfaced by stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name="background-load", daemon=True)
        self._thread.start()
        return self

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def stop(self) -> list[Record]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
            if self._thread.is_alive():
                raise RuntimeError("the background load did not stop")
        if self._error is not None:
            raise RuntimeError(f"the background load failed: {self._error!r}") from self._error
        return sorted(self.records, key=lambda r: r.due)

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the sustained rate ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Step:
    rate: float
    summary: dict
    passed: bool
    why: str


def judge(summary: dict, rate: float, slo_ms: float, max_error_rate: float) -> tuple[bool, str]:
    if summary["requests"] == 0:
        return False, "no requests"
    error_rate = summary["errors"] / summary["requests"]
    if error_rate > max_error_rate:
        return False, f"error rate {error_rate:.2%} > {max_error_rate:.2%}"
    if not summary["p99_ms"] <= slo_ms:
        return False, f"p99 {summary['p99_ms']:.1f} ms > {slo_ms:.0f} ms"
    if summary["ok_per_s"] < 0.95 * rate:
        return False, f"completed {summary['ok_per_s']:.1f}/s < 95% of {rate:.1f}/s offered"
    return True, "ok"


def find_sustained(target: Target, mix: Mix, slo_ms: float = 100.0, start_rate: float = 10.0,
                   max_rate: float = 4000.0, step_s: float = 6.0, budget_s: float = 120.0,
                   max_error_rate: float = 0.001, seed: int = 0, log=print, **run_kwargs) -> tuple[float, list[Step]]:
    """The highest rate (requests/s) at which ``target`` holds p99 <= ``slo_ms`` with (almost) no errors."""
    deadline = time.monotonic() + budget_s
    run_load([target], mix, start_rate, 2.0, seed=seed, **run_kwargs)  # warm-up: lazy imports, connections
    steps: list[Step] = []
    lo, hi, rate = 0.0, None, start_rate
    while time.monotonic() + step_s < deadline and rate <= max_rate:
        records = run_load([target], mix, rate, step_s, max_requests=int(rate * step_s) + 1, seed=seed + len(steps),
                           **run_kwargs)
        # the first second is ramp-up for a new connection pool: judged on the rest
        summary = summarize(records, since=1.0, elapsed=step_s - 1.0)
        passed, why = judge(summary, rate, slo_ms, max_error_rate)
        steps.append(Step(rate, summary, passed, why))
        log(f"  {target.name:6s} {rate:8.1f}/s  p50 {summary['p50_ms']:7.1f}  p99 {summary['p99_ms']:7.1f} ms  "
            f"ok {summary['ok_per_s']:7.1f}/s  errors {summary['errors']:4d}  {'pass' if passed else 'FAIL: ' + why}")
        if passed:
            lo = rate
            rate = rate * 2 if hi is None else (lo + hi) / 2
        else:
            hi = rate
            rate = (lo + hi) / 2 if lo else rate / 2
            if rate < 1:
                break
        if hi is not None and lo and hi / lo < 1.15:
            break
    return lo, steps


# -- command line ---------------------------------------------------------------------------------------------------
def _users(spec: str) -> tuple[int, ...]:
    if "-" in spec:
        a, b = spec.split("-", 1)
        return tuple(range(int(a), int(b) + 1))
    return tuple(int(x) for x in spec.split(","))


def _print_summary(name: str, s: dict) -> None:
    print(f"| {name} | {s['requests']} | {s['ok_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | "
          f"{s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['errors']} |")
    for cause, n in sorted(s["error_kinds"].items(), key=lambda kv: -kv[1])[:5]:
        print(f"|   error: {cause} | {n} | | | | | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", help="the API's base URL (loopback)")
    parser.add_argument("--triton", help="Triton's HTTP URL (loopback)")
    parser.add_argument("--known-users", default=None, help="known user ids: 0-3999 or 1,2,3 (with --api/--triton)")
    parser.add_argument("--mode", choices=["sustained", "fixed"], default="sustained")
    parser.add_argument("--rate", type=float, default=20.0, help="fixed mode: requests/s per target")
    parser.add_argument("--seconds", type=float, default=20.0, help="fixed mode: duration")
    parser.add_argument("--max-requests", type=int, default=50_000, help="fixed mode: at most this many per target")
    parser.add_argument("--click-share", type=float, default=0.2)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--max-error-rate", type=float, default=0.001)
    parser.add_argument("--step-seconds", type=float, default=6.0)
    parser.add_argument("--budget", type=float, default=150.0, help="sustained mode: seconds per target")
    parser.add_argument("--start-rate", type=float, default=20.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    try:
        explicit = [Target(name, url) for name, url in (("api", args.api), ("triton", args.triton)) if url]
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2

    stack = None
    t_setup = time.perf_counter()
    if explicit:
        if not args.known_users:
            parser.error("--known-users is needed with --api/--triton (the ids the online store knows)")
        targets, users, source = explicit, _users(args.known_users), "given servers"
        items = tuple(range(0, 2000))
    else:
        from tests.support.stack import start_stack

        work = Path(tempfile.mkdtemp(prefix="bench-load-"))
        print(f"# starting the tiny stack in {work} ...", flush=True)
        stack = start_stack(work)
        targets = [Target("api", stack.api_url), Target("triton", stack.triton_url)]
        users, items = tuple(stack.known_users), tuple(stack.warm_items())
        source = ("tiny serving artifacts (release.tiny: real catalogue, 60 users, small ONNX towers), "
                  "tests/support/stack")
    mix = Mix(known_users=users, items=items, click_share=args.click_share)
    results: dict = {"source": source, "cpu_count": os.cpu_count(), "mode": args.mode,
                     "setup_s": round(time.perf_counter() - t_setup, 1)}
    run_kwargs = {"max_in_flight": args.max_in_flight, "timeout_s": args.timeout}
    try:
        print(f"# load: {source}; client on the same {os.cpu_count()} cores; setup {results['setup_s']} s")
        if args.mode == "fixed":
            records = run_load(targets, mix, args.rate, args.seconds, args.max_requests, seed=args.seed, **run_kwargs)
            print(f"\nfixed rate {args.rate}/s per target for {args.seconds:.0f} s (latency from when each request "
                  "was due):")
            print("| target / kind | requests | ok/s | p50 ms | p90 ms | p99 ms | max ms | errors |\n"
                  "|---|---|---|---|---|---|---|---|")
            results["fixed"] = {}
            for t in targets:
                kinds = ("recommend", "click") if t.name == "api" else ("recommend",)
                for kind in (None, *kinds):
                    s = summarize(records, target=t.name, kind=kind, elapsed=args.seconds)
                    if s["requests"]:
                        _print_summary(f"{t.name} {kind or 'all'}", s)
                        results["fixed"][f"{t.name}/{kind or 'all'}"] = s
        else:
            results["sustained"] = {}
            for t in targets:
                print(f"\nsustained rate of {t.name} (p99 <= {args.slo_ms:.0f} ms, errors <= "
                      f"{args.max_error_rate:.1%}, steps of {args.step_seconds:.0f} s):")
                best, steps = find_sustained(t, mix, args.slo_ms, args.start_rate, step_s=args.step_seconds,
                                             budget_s=args.budget, max_error_rate=args.max_error_rate,
                                             seed=args.seed, **run_kwargs)
                passing = [s for s in steps if s.passed and s.rate == best]
                results["sustained"][t.name] = {"rate": best, "at_best": passing[0].summary if passing else None,
                                                "steps": [dataclasses.asdict(s) for s in steps]}
                summary = passing[0].summary if passing else None
                print(f"  => {t.name}: {best:.0f} requests/s sustained"
                      + (f" (p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms)" if summary else ""))
    finally:
        if stack is not None:
            stack.close()
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
