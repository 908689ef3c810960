"""The ensemble over Triton's HTTP/JSON (KServe v2) protocol, with an async ``httpx`` client.

``POST /v2/models/ensemble_model/infer`` with the request tensors (``user_id``, and where given ``device_type``,
``timestamp``, ``top_k``: INT64 [1]; ``diversity``: BOOL [1]), asking for ``ordered_ids`` (INT64 [-1]) and
``ordered_scores`` (FP32 [-1]) (``triton_repo/ensemble_model/config.pbtxt``).

Failures are sorted into what the caller can do about them:

- :class:`TritonUnavailable` (the API answers 503 + Retry-After): no connection, a timeout, a 5xx from the
  server, or a model that is not loaded or not ready (Triton says so with a 400 or 404 naming the model). Nothing is
  cached between requests, so the next request after Triton returns simply works.
- :class:`TritonRejected` (422): Triton refused the request's values (a stage's validation message), passed on.

Readiness (:meth:`TritonClient.ready`) is honest about a loaded ensemble that fails: every call's outcome is noted
(:class:`InferenceHealth`: answered, or the inference itself failed or hung), and while the newest outcome is such
a failure, ``ready`` runs a canary inference of its own (an anonymous user, top 1, within
``RECSYS_API_READY_PROBE_MS``) and says ready only if it answers. A version that raises on every request makes the
service unready; one that failed to load while the old version keeps serving does not. The canary, not the
traffic, decides, so an instance taken out of rotation (and so sent no traffic) still becomes ready again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from recsys_assets.lib.ensemble_request import ENSEMBLE, request_body

_NOT_SERVING = ("unknown model", "is not found", "not ready", "no available version", "unavailable",
                "is not loaded", "failed to load")


class TritonUnavailable(RuntimeError):
    """``inference``: Triton was reached and serves the ensemble, but the inference failed, hung past the timeout or
    answered nonsense (what a loaded-but-broken version does); False for no connection or a model not loaded."""

    def __init__(self, message: str, inference: bool = False) -> None:
        super().__init__(message)
        self.inference = inference


class TritonRejected(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Recommendations:
    ids: list[int]
    scores: list[float]
    model_version: str | None = None


class InferenceHealth:
    """The times of the latest answered and the latest failed ensemble call (monotonic seconds), and why it failed.

    *Suspect* while the newest outcome is a failure: then readiness asks a canary before it says ready. Only
    failures of the inference itself are noted (:attr:`TritonUnavailable.inference`): a server that is unreachable
    or has not loaded the ensemble is what readiness's own model check sees, and requests Triton refused for their
    values (:class:`TritonRejected`) say nothing about the service.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_ok: float | None = None
        self.last_failure: float | None = None
        self.reason = ""

    def answered(self) -> None:
        self.last_ok = self._clock()

    def failed(self, reason: str) -> None:
        self.last_failure = self._clock()
        self.reason = reason

    @property
    def suspect(self) -> bool:
        return self.last_failure is not None and (self.last_ok is None or self.last_failure >= self.last_ok)


def parse_response(body: dict) -> Recommendations:
    outputs = {o.get("name"): o for o in body.get("outputs", [])}
    missing = {"ordered_ids", "ordered_scores"} - set(outputs)
    if missing:
        raise TritonUnavailable(f"the ensemble's answer lacks {sorted(missing)}: is ensemble_model the "
                                "recommender's ensemble?", inference=True)
    ids = [int(x) for x in outputs["ordered_ids"].get("data", [])]
    scores = [float(x) for x in outputs["ordered_scores"].get("data", [])]
    if len(ids) != len(scores):
        raise TritonUnavailable(f"the ensemble returned {len(ids)} ids but {len(scores)} scores", inference=True)
    return Recommendations(ids, scores, body.get("model_version"))


class TritonClient:
    """One ``httpx.AsyncClient`` (connection pool) to the server at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout_s: float = 10.0, connect_timeout_s: float = 1.0,
                 probe_timeout_s: float = 1.0, health: InferenceHealth | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        self._connect_timeout_s = connect_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.health = health or InferenceHealth()
        self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout_s,
                                                                                connect=connect_timeout_s))

    async def recommend(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                        top_k: int | None = None, diversity: bool | None = None) -> Recommendations:
        try:
            result = await self._recommend(user_id, device_type, timestamp, top_k, diversity)
        except TritonUnavailable as exc:
            if exc.inference:
                self.health.failed(str(exc))
            raise
        self.health.answered()
        return result

    async def _recommend(self, user_id: int, device_type: int | None, timestamp: int | None, top_k: int | None,
                         diversity: bool | None, timeout_s: float | None = None) -> Recommendations:
        body = request_body(user_id, device_type, timestamp, top_k, diversity)
        options = ({} if timeout_s is None
                   else {"timeout": self._httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))})
        try:
            response = await self._client.post(f"/v2/models/{ENSEMBLE}/infer", json=body, **options)
        except self._httpx.HTTPError as exc:  # connect/read errors and timeouts
            # A read timeout means the request was taken and not answered in time: the inference hangs.
            raise TritonUnavailable(f"Triton at {self.url} is unreachable ({type(exc).__name__}: {exc})",
                                    inference=isinstance(exc, self._httpx.ReadTimeout)) from exc
        message = _error_message(response)
        if response.status_code >= 400:
            if any(word in message.lower() for word in _NOT_SERVING):
                raise TritonUnavailable(f"the ensemble is not being served by Triton at {self.url}: {message}")
            if response.status_code >= 500 or response.status_code in (404, 429):
                raise TritonUnavailable(f"Triton at {self.url} answered {response.status_code}: {message}",
                                        inference=response.status_code != 404)
            raise TritonRejected(message)
        try:
            return parse_response(response.json())
        except ValueError as exc:
            raise TritonUnavailable(f"Triton at {self.url} sent an unreadable answer: {exc}", inference=True) from exc

    async def ready(self) -> tuple[bool, str]:
        """Whether the ensemble is loaded and, after failed calls, answers a canary; with a reason when not."""
        try:
            response = await self._client.get(f"/v2/models/{ENSEMBLE}/ready")
        except self._httpx.HTTPError as exc:
            return False, f"Triton at {self.url} is unreachable ({type(exc).__name__})"
        if response.status_code != 200:
            return False, f"{ENSEMBLE} is not ready on Triton at {self.url} (HTTP {response.status_code})"
        if not self.health.suspect:
            return True, "ready"
        return await self.probe()

    async def probe(self) -> tuple[bool, str]:
        """A canary inference (an anonymous user, top 1) within ``probe_timeout_s``; its outcome is noted."""
        try:
            await self._recommend(-1, None, None, 1, None, timeout_s=self.probe_timeout_s)
        except (TritonUnavailable, TritonRejected) as exc:
            self.health.failed(str(exc))
            return False, (f"{ENSEMBLE} is loaded on Triton at {self.url} but recommendations fail: a canary "
                           f"inference (anonymous user, top 1) got: {exc}")
        self.health.answered()
        return True, "ready"

    async def close(self) -> None:
        await self._client.aclose()


def _error_message(response) -> str:
    if response.status_code < 400:
        return ""
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text[:500]
