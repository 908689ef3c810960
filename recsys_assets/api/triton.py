"""The ensemble over Triton's HTTP/JSON (KServe v2) protocol, with an async ``httpx`` client.

``POST /v2/models/ensemble_model/infer`` with the request tensors (``user_id``, and where given ``device_type``,
``timestamp``, ``top_k``: INT64 [1]; ``diversity``: BOOL [1]), asking for ``ordered_ids`` (INT64 [-1]) and
``ordered_scores`` (FP32 [-1]) (``triton_repo/ensemble_model/config.pbtxt``).

Failures are sorted into what the caller can do about them:

- :class:`TritonUnavailable` (the API answers 503 + Retry-After): no connection, a timeout, a 5xx from the
  server, or a model that is not loaded or not ready (Triton says so with a 400 or 404 naming the model). Nothing is
  cached between requests, so the next request after Triton returns simply works.
- :class:`TritonRejected` (422): Triton refused the request's values (a stage's validation message), passed on.
"""

from __future__ import annotations

import dataclasses

ENSEMBLE = "ensemble_model"
_NOT_SERVING = ("unknown model", "is not found", "not ready", "no available version", "unavailable",
                "is not loaded", "failed to load")


class TritonUnavailable(RuntimeError):
    pass


class TritonRejected(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Recommendations:
    ids: list[int]
    scores: list[float]
    model_version: str | None = None


def request_body(user_id: int, device_type: int | None = None, timestamp: int | None = None,
                 top_k: int | None = None, diversity: bool | None = None) -> dict:
    """The KServe v2 JSON body of one ensemble request (optional inputs left out when None)."""
    inputs = []
    for name, value, dtype in (("user_id", user_id, "INT64"), ("device_type", device_type, "INT64"),
                               ("timestamp", timestamp, "INT64"), ("top_k", top_k, "INT64"),
                               ("diversity", diversity, "BOOL")):
        if value is None:
            continue
        inputs.append({"name": name, "shape": [1], "datatype": dtype,
                       "data": [bool(value) if dtype == "BOOL" else int(value)]})
    return {"inputs": inputs, "outputs": [{"name": "ordered_ids"}, {"name": "ordered_scores"}]}


def parse_response(body: dict) -> Recommendations:
    outputs = {o.get("name"): o for o in body.get("outputs", [])}
    missing = {"ordered_ids", "ordered_scores"} - set(outputs)
    if missing:
        raise TritonUnavailable(f"the ensemble's answer lacks {sorted(missing)}: is ensemble_model the "
                                "recommender's ensemble?")
    ids = [int(x) for x in outputs["ordered_ids"].get("data", [])]
    scores = [float(x) for x in outputs["ordered_scores"].get("data", [])]
    if len(ids) != len(scores):
        raise TritonUnavailable(f"the ensemble returned {len(ids)} ids but {len(scores)} scores")
    return Recommendations(ids, scores, body.get("model_version"))


class TritonClient:
    """One ``httpx.AsyncClient`` (connection pool) to the server at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout_s: float = 10.0, connect_timeout_s: float = 1.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout_s,
                                                                                connect=connect_timeout_s))

    async def recommend(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                        top_k: int | None = None, diversity: bool | None = None) -> Recommendations:
        body = request_body(user_id, device_type, timestamp, top_k, diversity)
        try:
            response = await self._client.post(f"/v2/models/{ENSEMBLE}/infer", json=body)
        except self._httpx.HTTPError as exc:  # connect/read errors and timeouts
            raise TritonUnavailable(f"Triton at {self.url} is unreachable ({type(exc).__name__}: {exc})") from exc
        message = _error_message(response)
        if response.status_code >= 400:
            if any(word in message.lower() for word in _NOT_SERVING):
                raise TritonUnavailable(f"the ensemble is not being served by Triton at {self.url}: {message}")
            if response.status_code >= 500 or response.status_code in (404, 429):
                raise TritonUnavailable(f"Triton at {self.url} answered {response.status_code}: {message}")
            raise TritonRejected(message)
        try:
            return parse_response(response.json())
        except ValueError as exc:
            raise TritonUnavailable(f"Triton at {self.url} sent an unreadable answer: {exc}") from exc

    async def ready(self) -> tuple[bool, str]:
        """Whether the server is live and the ensemble ready, with a reason when not."""
        try:
            response = await self._client.get(f"/v2/models/{ENSEMBLE}/ready")
        except self._httpx.HTTPError as exc:
            return False, f"Triton at {self.url} is unreachable ({type(exc).__name__})"
        if response.status_code == 200:
            return True, "ready"
        return False, f"{ENSEMBLE} is not ready on Triton at {self.url} (HTTP {response.status_code})"

    async def close(self) -> None:
        await self._client.aclose()


def _error_message(response) -> str:
    if response.status_code < 400:
        return ""
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text[:500]
