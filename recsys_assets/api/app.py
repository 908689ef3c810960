"""The HTTP service: recommendations from the Triton ensemble, click events, seen-state reset, health.

| method and path              | what                                                                         |
|------------------------------|------------------------------------------------------------------------------|
| GET /recommendations         | ``user_id`` (>= 0, or -1 anonymous), optional ``device_type``, ``timestamp``, |
|                              | ``k`` (1..100), ``diversity``: ids, scores and product details from Triton   |
| POST /events                 | a click (:class:`~recsys_assets.api.events.Click`), optional header          |
|                              | ``Idempotency-Key``; 201 (recorded) or 200 (a retry of a recorded click)     |
| DELETE /users/{id}/seen      | forget the user's seen items (Bloom filter + recent window)                  |
| GET /items/{id}/image        | the product image (``raw/item_images/<id>.jpg`` under the artifact root)     |
| GET /healthz, GET /readyz    | liveness; readiness = the ensemble ready on Triton (and, after failed        |
|                              | recommendations, answering a canary inference) and Valkey answering PING     |
| GET /docs, GET /openapi.json | the OpenAPI schema (FastAPI)                                                 |

Every request first passes :class:`~recsys_assets.api.guard.Guard`: size limits (413, 414, 431), a body
deadline (408), bearer-token authentication of writes (401) and a per-client rate limit of writes (429 with
``Retry-After``); see that module and the ``RECSYS_API_*`` settings in :mod:`~recsys_assets.api.config`.

Errors: a value the API refuses is a 4xx whose ``detail`` says what was wrong and what is accepted (FastAPI's
422 for wrong types, with each error's type, location and message but not the offending input: an input JSON
cannot encode, such as the NaN and Infinity Python's parser accepts, would make the answer itself fail). A dependency that cannot serve (Triton, Valkey, the online store) is a 503 with
``Retry-After``; nothing is cached about its failure, so the service recovers by itself when it returns.

:func:`create_app` takes an :class:`~recsys_assets.api.config.ApiConfig` (``ApiConfig.from_environ`` when
started by ``python -m recsys_assets.api``); the request logic lives in ``clicks``, ``events`` and ``triton``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from recsys_assets.api import events as ev
from recsys_assets.api.clicks import Backends, ClickPath, ServiceUnavailable
from recsys_assets.api.config import ApiConfig
from recsys_assets.api.guard import Guard
from recsys_assets.api.ids import load_ids
from recsys_assets.api.online import OnlineStoreUnavailable
from recsys_assets.api.triton import TritonClient, TritonRejected, TritonUnavailable

log = logging.getLogger("recsys_assets.api")


@dataclasses.dataclass
class ApiState:
    config: ApiConfig
    catalogue: ev.Catalogue
    ids: object  # api.ids: GeneratorIds or SourceIds (a shop's string ids)
    backends: Backends
    clicks: ClickPath
    triton: TritonClient
    store: object  # ArtifactStore
    valkey_server: object = None  # the EmbeddedValkey this process started or reused, if any


def load_catalogue(store) -> ev.Catalogue:
    from recsys_assets.lib import paths
    from recsys_assets.lib.artifacts import ArtifactNotFound

    try:
        return ev.Catalogue.from_frame(store.read_parquet(paths.ITEMS))
    except ArtifactNotFound as exc:
        raise RuntimeError(f"the API needs the catalogue {paths.ITEMS} under {store.root}: materialize the items "
                           "asset first (make demo), or point RECSYS_ARTIFACTS at a root that has it") from exc


def _valkey_endpoint(config: ApiConfig):
    """The Valkey to use: the URL's, else the embedded server of the artifact root (started or reused)."""
    from recsys_assets.lib.valkey_server import EmbeddedValkey, parse_url

    if config.valkey_url:
        return parse_url(config.valkey_url, config.valkey_password), None
    if "://" in config.artifacts:
        raise RuntimeError(f"the embedded Valkey needs a local artifact root, got {config.artifacts!r}: set "
                           "RECSYS_VALKEY_URL to a Valkey server (ElastiCache)")
    # Detached: Triton and later pipeline runs share it; it is not stopped with the API (its AOF keeps the events).
    server = EmbeddedValkey(Path(config.artifacts) / "valkey", port=config.valkey_port, detach=True).start()
    log.info("Valkey: embedded on %s:%s (%s)", server.host, server.port, "started" if server.owned else "reused")
    return server.endpoint, server


def create_app(config: ApiConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from recsys_assets.lib.artifacts import ArtifactStore

        store = ArtifactStore(config.artifacts)
        catalogue = load_catalogue(store)
        endpoint, server = _valkey_endpoint(config)
        backends = Backends(config, endpoint)
        from recsys_assets.lib.settings import GENERATOR_SOURCE

        ids = load_ids(config.source != GENERATOR_SOURCE, store)
        state = ApiState(config=config, catalogue=catalogue, ids=ids, backends=backends,
                         clicks=ClickPath(config, backends, catalogue),
                         triton=TritonClient(config.triton_url, config.triton_timeout_s,
                                             probe_timeout_s=config.ready_probe_timeout_s), store=store,
                         valkey_server=server)
        app.state.api = state
        await run_in_threadpool(_warm, backends)
        log.info("recsys API: Triton %s, Bloom sizing from %s, click durability %s", config.triton_url,
                 config.bloom.source, backends.durability or f"{config.durability} (Valkey not reached yet)")
        try:
            yield
        finally:
            await state.triton.close()
            backends.close()

    app = FastAPI(title="recsys-assets API", version="1.0",
                  description="Recommendations from the Triton ensemble and the real-time click path.",
                  lifespan=lifespan)
    guard = config.guard_settings()
    app.state.sessions = guard.sessions  # the storefront's page issues them (recsys_assets.api.storefront)
    app.add_middleware(Guard, settings=guard)

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(ev.InvalidRequest)
    async def _invalid(request: Request, exc: ev.InvalidRequest):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable):
        body = {"detail": str(exc)}
        if exc.event_id:
            body["event_id"] = exc.event_id
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(config.retry_after_s)})

    @app.exception_handler(TritonUnavailable)
    async def _triton_down(request: Request, exc: TritonUnavailable):
        return JSONResponse({"detail": f"recommendations are unavailable right now: {exc}"}, status_code=503,
                            headers={"Retry-After": str(config.retry_after_s)})

    @app.exception_handler(TritonRejected)
    async def _triton_rejected(request: Request, exc: TritonRejected):
        return JSONResponse({"detail": f"the recommender refused the request: {exc}"}, status_code=422)

    def state(request: Request) -> ApiState:
        return request.app.state.api

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the ensemble is loaded and answers, and Valkey answers")
    async def readyz(request: Request):
        s = state(request)
        triton_ok, triton_reason = await s.triton.ready()
        valkey_ok, valkey_reason = await run_in_threadpool(_valkey_ready, s.backends)
        body = {"ready": triton_ok and valkey_ok,
                "checks": {"triton": triton_reason, "valkey": valkey_reason}}
        headers = {} if body["ready"] else {"Retry-After": str(config.retry_after_s)}
        return JSONResponse(body, status_code=200 if body["ready"] else 503, headers=headers)

    @app.get("/recommendations", tags=["recommendations"],
             summary="The top k items for a user in a context, with product details")
    async def recommendations(
        request: Request,
        user_id: str = Query(..., description="user id (>= 0), or -1 for an anonymous user; with own data "
                                                    "(RECSYS_SOURCE) the shop's user id, empty for anonymous"),
        device_type: int | None = Query(None, description="0 desktop, 1 mobile, 2 tablet, -1 unknown"),
        timestamp: int | None = Query(None, description="Unix seconds (default: the server's clock)"),
        k: int | None = Query(None, description="how many (1..100; default the server's, 10)"),
        diversity: bool | None = Query(None, description="score-weighted sampling instead of the top k"),
    ):
        s = state(request)
        asked, user_id = user_id, s.ids.user_param(user_id)
        asked = asked if s.ids.own else user_id  # the shop's id as given; the generator's as an int
        try:
            ev.check_user_id(user_id)
            if device_type is not None:
                ev.check_device_type(device_type)
            if timestamp is not None:
                ev.check_timestamp(timestamp)
                ev.check_recommendation_day(timestamp, s.config.start_epoch, s.config.start_date)
            if k is not None:
                ev.check_k(k)
        except ValueError as exc:
            raise ev.InvalidRequest(str(exc)) from None
        t0 = time.perf_counter()
        result = await s.triton.recommend(user_id, device_type, timestamp, k, diversity)
        took = (time.perf_counter() - t0) * 1e3
        items = []
        for item_id, score in zip(result.ids, result.scores):
            details = s.catalogue.details(item_id) or {}
            items.append({"item_id": s.ids.item_out(item_id), "score": score, **details,
                          "image_url": str(request.url_for("item_image", item_id=s.ids.item_out(item_id)))})
        return {"user_id": asked, "device_type": device_type, "timestamp": timestamp, "k": len(items),
                "items": items, "triton_ms": round(took, 3)}

    @app.post("/events", tags=["events"], status_code=201,
              summary="Record a click: stream, seen filter, recent window, top_category",
              responses={200: {"description": "a retry of a click already recorded (same Idempotency-Key)"},
                         503: {"description": "Valkey or the online store cannot serve; retry (Retry-After)"}})
    def post_event(request: Request, response: Response, click: ev.Click,
                   idempotency_key: str | None = Header(None, description="makes retries safe: the same key "
                                                                              "records the click once")):
        s = state(request)
        asked = click
        click = click.model_copy(update={"user_id": s.ids.user(click.user_id), "item_id": s.ids.item(click.item_id)})
        outcome = s.clicks.record(click, idempotency_key)
        if outcome.duplicate:
            response.status_code = 200
        return {**outcome.to_json(s.catalogue.vocabulary), "user_id": asked.user_id, "item_id": asked.item_id}

    @app.delete("/users/{user_id}/seen", tags=["events"], summary="Forget the items a user has seen")
    def delete_seen(request: Request, user_id: str = PathParam(..., description="user id (>= 0); own data: the "
                                                                              "shop's")):
        s = state(request)
        result = s.clicks.reset_seen(s.ids.user_param(user_id))
        return {**result, "user_id": user_id} if s.ids.own else result

    @app.get("/items/{item_id}/image", tags=["items"], name="item_image", summary="A product image (JPEG)",
             response_class=FileResponse)
    def item_image(request: Request, item_id: str):
        from recsys_assets.lib import paths
        from recsys_assets.lib.artifacts import ArtifactNotFound

        s = state(request)
        item_id = s.ids.item_param(item_id, status=404)
        if not 0 <= item_id < len(s.catalogue):
            raise ev.InvalidRequest(f"item_id {item_id} is not in the catalogue (ids 0..{len(s.catalogue) - 1})",
                                    status=404)
        try:
            path = s.store.local_path(paths.item_image(item_id))
        except ArtifactNotFound:
            raise ev.InvalidRequest(f"no image for item {item_id} under {s.store.root}: materialize item_images",
                                    status=404) from None
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    from recsys_assets.api import storefront

    storefront.install(app)  # the demo page at /store/ (recsys_assets.api.storefront)
    return app


def uvicorn_options(config: ApiConfig) -> dict:
    """The uvicorn settings that bound what a client may hold: idle keep-alive connections and, for the h11
    parser, the size of an incomplete request head (httptools has its own fixed limit; the guard checks both)."""
    return {"timeout_keep_alive": config.keepalive_s, "h11_max_incomplete_event_size": config.max_header_bytes}


def validation_errors(errors) -> list[dict]:
    """Pydantic's errors without the offending input: what was wrong (``type``, ``msg``) and where (``loc``).

    FastAPI's default answer echoes each input back, which fails for values JSON cannot encode (NaN, Infinity: a 500
    instead of a 422) and sends a huge body back whole. Only context values that are plain text or integers are
    kept (the position of a JSON syntax error, a limit).
    """
    out = []
    for error in errors:
        item = {"type": str(error.get("type", "")), "loc": [p if isinstance(p, int) else str(p)
                                                             for p in error.get("loc", ())],
                "msg": str(error.get("msg", ""))}
        ctx = {k: v for k, v in (error.get("ctx") or {}).items()
               if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))}
        if ctx:
            item["ctx"] = ctx
        out.append(item)
    return out


def _warm(backends: Backends) -> None:
    """Connect and open the Feast store at startup; a dependency that is down now is retried per request."""
    try:
        backends.resolve()
        backends.history.warm()
    except (ServiceUnavailable, OnlineStoreUnavailable) as exc:
        log.warning("not ready yet (clicks answer 503 until this is fixed): %s", exc)


def _valkey_ready(backends: Backends) -> tuple[bool, str]:
    try:
        backends.ping()
        return True, "ready"
    except ServiceUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # any failure to answer PING means not ready; say which
        return False, f"Valkey does not answer ({type(exc).__name__}: {exc})"
