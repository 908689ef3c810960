"""The storefront demo page and the two small endpoints it needs, mounted on the API by :func:`install`.

| method and path        | what                                                                             |
|------------------------|----------------------------------------------------------------------------------|
| GET /                  | redirects to ``/store/``                                                         |
| GET /store/            | the page (``static/index.html``); its script and style under ``/store/assets/``  |
| GET /store/context     | what the page's pickers offer: a sample of known users (the Feast offline users  |
|                        | file, else ``raw/users.parquet``), a fresh id for a brand-new user, devices,    |
|                        | categories, the server's clock and day 00                                        |
| GET /users/{id}/recent | the user's recent clicks, newest first, as the click path keeps them (the 24 h   |
|                        | window of ``POST /events``), with product details, and ``top_category`` as the   |
|                        | online store holds it                                                            |

The page is plain HTML, CSS and JavaScript served from this package (no CDN, no build step). It calls only the
API's own endpoints (``/recommendations``, ``/events``, ``/users/{id}/seen``, ``/readyz`` and the two above),
so what it shows is exactly what a client of the API gets. With authentication on, its writes are authorised
by a session cookie the page's own load sets (``HttpOnly``, ``SameSite=Strict``, signed, expiring: see
:class:`~recsys_assets.api.guard.Sessions`), never by a bearer token in the browser; ``RECSYS_API_SESSIONS``
turns that off (the default on ``k8s``), and the page's writes then answer 401. Errors follow the API's rules:
a dependency that cannot serve is a 503 with ``Retry-After`` (the page shows the message and retries), a
refused value a 4xx.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from recsys_assets.api import events as ev
from recsys_assets.api.clicks import ServiceUnavailable, is_unavailable
from recsys_assets.api.online import OnlineStoreUnavailable

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE_USERS = 12           # how many known users the picker offers
NEW_USER_IDS = (10**9, 2 * 10**9)  # far above generated ids: such a user is unknown everywhere (cold start)
RECENT_LIMIT = 50           # the most recent clicks returned (the window itself may hold more)

router = APIRouter(tags=["storefront"])


def install(app: FastAPI) -> None:
    """Add the page, its assets and its endpoints to the API app."""
    app.include_router(router)
    app.mount("/store/assets", StaticFiles(directory=STATIC_DIR), name="storefront-assets")


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/store/")


@router.get("/store", include_in_schema=False)
def store_without_slash() -> RedirectResponse:
    return RedirectResponse("/store/")  # the page's relative asset links need the slash


@router.get("/store/", include_in_schema=False)
def page(request: Request) -> FileResponse:
    # no-cache: a browser revalidates (cheap, ETag) so a changed page shows without a hard reload
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
    sessions = request.app.state.sessions
    if sessions is not None:  # the page's writes go with this cookie (recsys_assets.api.guard.Sessions)
        response.headers.append("Set-Cookie", sessions.cookie_header(sessions.issue(),
                                                                     secure=request.url.scheme == "https"))
    return response


def _known_users(request: Request) -> tuple[list[dict], str | None]:
    """A sample of the users serving knows, read once per process (a picker need not offer later arrivals)."""
    cached = getattr(request.app.state, "storefront_users", None)
    if cached is not None:
        return cached
    import pandas as pd

    from recsys_assets.lib import paths
    from recsys_assets.lib.artifacts import ArtifactNotFound

    store = request.app.state.api.store
    users, source = [], None
    for path in (paths.FEAST_USERS, paths.USERS):  # the users of the online store, else the generated ones
        try:
            frame = store.read_parquet(path, columns=["user_id", "age", "gender"])
        except ArtifactNotFound:
            continue
        frame = frame.sort_values("user_id").drop_duplicates("user_id").head(SAMPLE_USERS)
        users = [{"user_id": int(u), "age": int(a) if pd.notna(a) else None,
                  "gender": str(g) if pd.notna(g) else None}
                 for u, a, g in zip(frame["user_id"], frame["age"], frame["gender"])]
        source = path
        break
    request.app.state.storefront_users = (users, source)
    return users, source


@router.get("/store/context", summary="What the storefront's pickers offer: users, devices, categories")
def context(request: Request) -> dict:
    config = request.app.state.api.config
    users, source = _known_users(request)
    return {
        "server_time": int(time.time()),
        "start_date": config.start_date.isoformat(),
        "start_epoch": config.start_epoch,
        "users": users,
        "users_source": source,
        "new_user_id": random.randrange(*NEW_USER_IDS),
        "devices": [{"code": code, "name": name} for code, name in sorted(ev.DEVICES.items(), key=lambda kv:
                                                                            (kv[0] < 0, kv[0]))],
        "categories": list(request.app.state.api.catalogue.vocabulary),
        "k_max": ev.RANKING_TOPK,
        "window_seconds": ev.WINDOW_SECONDS,
    }


@router.get("/users/{user_id}/recent", summary="A user's recent clicks (the 24 h window) and top_category")
def recent(request: Request, user_id: int = PathParam(..., description="user id (>= 0)")) -> dict:
    s = request.app.state.api
    try:
        ev.check_user_id(user_id)
    except ValueError as exc:
        raise ev.InvalidRequest(str(exc)) from None
    if user_id < 0:
        raise ev.InvalidRequest(f"user_id {user_id}: anonymous users have no recent clicks (expected >= 0)")
    backends = s.backends.resolve()
    try:
        reply = backends.seen.zrange(ev.window_key(backends.seen_prefix, user_id), 0, -1, withscores=True)
    except Exception as exc:
        if is_unavailable(exc):
            raise ServiceUnavailable(f"Valkey is unreachable ({exc}): recent clicks cannot be read; retry") \
                from exc
        raise
    window = ev.parse_window([v for member, score in reply for v in (member, score)])
    try:
        top, stored_at = backends.history.read(user_id)
    except OnlineStoreUnavailable as exc:
        raise ServiceUnavailable(f"the online store cannot be read ({exc}); retry") from exc
    except Exception as exc:
        if is_unavailable(exc):
            raise ServiceUnavailable(f"the online store is unreachable ({exc}); retry") from exc
        raise
    clicks = []
    for entry in sorted(window, key=lambda e: e.timestamp, reverse=True)[:RECENT_LIMIT]:
        details = s.catalogue.details(entry.item_id) or {}
        clicks.append({"item_id": entry.item_id, "timestamp": entry.timestamp, "event_id": entry.event_id,
                       **details, "category": ev.category_name(entry.category, s.catalogue.vocabulary)
                       or details.get("category"),
                       "image_url": str(request.url_for("item_image", item_id=entry.item_id))})
    names = s.catalogue.vocabulary
    return {"user_id": user_id, "top_category": top, "top_category_name": ev.category_name(top, names),
            "top_category_event_time": stored_at, "window_size": len(window),
            "window_top_category_name": ev.category_name(ev.window_top_category(window), names), "clicks": clicks}
