"""The API on real services: Valkey (embedded, AOF), a Feast online store (apply + materialize of the tiny world),
and for /recommendations the real Triton ensemble over the tiny serving artifacts."""

import contextlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys_assets.api import events as ev
from recsys_assets.api import landing, stream
from recsys_assets.api.app import create_app
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.top_category import CATEGORIES, interests_after_clicks
from recsys_assets.lib.valkey_server import KeyLayout, free_port
from recsys_assets.serving.bloom import SeenFilter

pytestmark = pytest.mark.integration

DAY3 = 1767225600 + 3 * 86_400 + 12 * 3600  # 2026-01-04 12:00 UTC


@pytest.fixture()
def api(online):
    with TestClient(create_app(online.config())) as client:
        yield client


def _user(online, index: int) -> int:
    """A user of the online store whose published top_category is set."""
    users = [u for u, c in online.top_category.items() if c >= 0]
    return int(users[index])


def _click(api, user, item, ts, device=1, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return api.post("/events", json={"user_id": user, "item_id": item, "device_type": device, "timestamp": ts},
                    headers=headers)


def _seen(online, user, items) -> list[bool]:
    layout = KeyLayout.make()
    with contextlib.closing(online.client(layout.seen.db)) as c:
        return SeenFilter(layout.seen.prefix).contains(c, user, items).tolist()


def _stream(online) -> list[stream.Event]:
    with contextlib.closing(online.client(2)) as c:
        return [e for batch in stream.read_after(c) for e in batch]


def _online_top_category(api, online, user):
    store = api.app.state.api.backends.history
    return store.read(user)[0]


# -- the click path -----------------------------------------------------------------------------------------------
def test_clicks_update_the_seen_filter_the_window_top_category_and_interests_in_the_online_store(api, online):
    user = _user(online, 0)
    before = online.top_category[user]
    category = next(c for c in sorted(set(online.catalogue["category_l1"])) if ev.CATEGORIES.index(c) != before)
    items = online.items_of(category, 3)
    n_stream = len(_stream(online))
    responses = [_click(api, user, item, DAY3 + i) for i, item in enumerate(items)]
    assert [r.status_code for r in responses] == [201] * 3, responses[-1].text
    bodies = [r.json() for r in responses]
    assert bodies[0]["top_category_before"] == before
    assert bodies[-1]["top_category_after"] == CATEGORIES.index(category)
    assert bodies[-1]["top_category_after_name"] == category
    assert bodies[-1]["window_size"] == 3 and bodies[-1]["personalized"] and bodies[-1]["day"] == 3
    assert set(bodies[-1]["timings_ms"]) >= {"stream", "seen_filter", "window", "feast_read", "total"}
    # read back where serving reads: Feast's online store, the Bloom filter, the stream
    assert _online_top_category(api, online, user) == CATEGORIES.index(category)
    assert _seen(online, user, items) == [True] * 3
    recorded = _stream(online)[n_stream:]
    assert [(e.user_id, e.item_id, e.timestamp, e.device_type) for e in recorded] == [
        (user, item, DAY3 + i, 1) for i, item in enumerate(items)]
    assert [e.event_id for e in recorded] == [b["event_id"] for b in bodies]

    # interest_1..3: the published weights (3, 2, 1 on the published interests) plus the clicks, ranked again
    code = CATEGORIES.index(category)
    stored = api.app.state.api.backends.history.read_interests(user)
    published = online.interests[user]
    assert bodies[0]["interests_before"] == list(published) and stored.weights_at is not None
    expected = np.zeros(len(CATEGORIES))
    expected[list(published)] = [3, 2, 1]
    np.testing.assert_array_equal(stored.weights, expected)  # the float list read back through Feast
    _, want = interests_after_clicks(stored.weights, stored.weights_at, [(DAY3 + i, code) for i in range(3)],
                                     DAY3 + 3)
    assert bodies[-1]["interests_after"] == want.tolist() and want[0] == code
    assert bodies[-1]["interests_after_names"][0] == category and bodies[0]["interests_pushed"]
    assert list(stored.codes) == want.tolist()  # read back from Feast's online store
    assert "feast_push_interests" in bodies[0]["timings_ms"]


def test_ties_go_to_the_most_recent_click_and_the_window_is_24_hours(api, online):
    user = _user(online, 1)
    a, b = "books", "electronics"
    ia, ib = online.items_of(a, 3), online.items_of(b, 2)
    t = DAY3 + 3600
    assert _click(api, user, ia[0], t).json()["top_category_after"] == CATEGORIES.index(a)
    assert _click(api, user, ib[0], t + 10).json()["top_category_after"] == CATEGORIES.index(b)  # 1:1, b newer
    assert _click(api, user, ia[1], t + 20).json()["top_category_after"] == CATEGORIES.index(a)  # 2:1
    # a day later the three clicks above are out of the window: one b click decides
    late = _click(api, user, ib[1], t + 20 + ev.WINDOW_SECONDS).json()
    assert late["top_category_after"] == CATEGORIES.index(b) and late["window_size"] == 1
    assert _online_top_category(api, online, user) == CATEGORIES.index(b)


def test_clicks_in_the_same_second_still_update_the_online_value(api, online):
    """Feast skips a write whose event time is not later than the stored one; the push time moves past it."""
    user = _user(online, 2)
    a, b = "beauty", "footwear"
    ia, ib = online.items_of(a, 1), online.items_of(b, 2)
    t = DAY3 + 7200
    assert _click(api, user, ia[0], t).json()["top_category_after"] == CATEGORIES.index(a)
    _click(api, user, ib[0], t)
    last = _click(api, user, ib[1], t).json()
    assert last["top_category_after"] == CATEGORIES.index(b) and last["pushed"]
    assert _online_top_category(api, online, user) == CATEGORIES.index(b)


def test_a_new_user_gets_state_and_an_anonymous_click_is_only_recorded(api, online):
    new_user = 10**6
    item = online.items_of("tools", 1)[0]
    body = _click(api, new_user, item, DAY3).json()
    assert body["top_category_before"] is None and body["top_category_after"] == CATEGORIES.index("tools")
    assert body["interests_before"] is None and body["interests_after"] == [CATEGORIES.index("tools"), -1, -1]
    assert _seen(online, new_user, [item]) == [True]

    n_stream = len(_stream(online))
    anonymous = _click(api, -1, item, DAY3)
    assert anonymous.status_code == 201, anonymous.text
    body = anonymous.json()
    assert not body["personalized"] and body["top_category_after"] is None and body["window_size"] == 0
    assert [(e.user_id, e.item_id) for e in _stream(online)[n_stream:]] == [(-1, item)]


@pytest.mark.parametrize("body, status, message", [
    ({"user_id": 1, "item_id": 999_999, "timestamp": DAY3}, 422, "item_id 999999 is not in the catalogue"),
    ({"user_id": -2, "item_id": 0, "timestamp": DAY3}, 422, "or -1 for an anonymous user"),
    ({"user_id": 1, "item_id": 0, "device_type": 7, "timestamp": DAY3}, 422, "unknown device_type 7"),
    ({"user_id": "1", "item_id": 0}, 422, "user_id"),
    ({"user_id": 1, "item_id": 0, "timestamp": 1767225599}, 422, "before day 00 (2026-01-01"),
    ({"user_id": 1}, 422, "item_id"),
])
def test_invalid_clicks_are_refused_with_a_message_and_not_recorded(api, online, body, status, message):
    n_stream = len(_stream(online))
    response = api.post("/events", json=body)
    assert response.status_code == status
    assert message in response.text
    assert len(_stream(online)) == n_stream


def test_an_item_is_not_clickable_before_it_is_released(api, online):
    c = online.catalogue
    late = c.loc[c["available_from_day"] > 3].iloc[0]
    response = _click(api, 5, int(late["item_id"]), DAY3)
    assert response.status_code == 422
    assert f"not available before day {int(late['available_from_day']):02d}" in response.json()["detail"]


def test_a_retried_click_with_the_same_idempotency_key_is_recorded_once(api, online):
    user, (item, other) = _user(online, 3), online.items_of("outdoors", 2)
    n_stream = len(_stream(online))
    first = _click(api, user, item, DAY3, key="click-abc-1")
    again = _click(api, user, item, DAY3, key="click-abc-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] and again.json()["event_id"] == first.json()["event_id"]
    assert len(_stream(online)) == n_stream + 1
    # a retry without a timestamp keeps the first attempt's; a key reused for another click is refused
    assert api.post("/events", json={"user_id": user, "item_id": item, "device_type": 1},
                    headers={"Idempotency-Key": "click-abc-1"}).json()["timestamp"] == DAY3
    reused = _click(api, user, other, DAY3, key="click-abc-1")
    assert reused.status_code == 422 and "use a new key per click" in reused.json()["detail"]
    assert len(_stream(online)) == n_stream + 1
    assert _click(api, user, item, DAY3, key="has space").status_code == 400


def test_deleting_seen_state_forgets_the_bloom_filter_and_the_window(api, online):
    user = _user(online, 4)
    items = online.items_of("jewelry", 2)
    for i, item in enumerate(items):
        _click(api, user, item, DAY3 + i)
    assert _seen(online, user, items) == [True, True]
    response = api.delete(f"/users/{user}/seen")
    assert response.status_code == 200 and response.json()["keys_deleted"] == 2
    assert _seen(online, user, items) == [False, False]
    assert api.delete(f"/users/{user}/seen").json()["keys_deleted"] == 0
    assert api.delete("/users/-1/seen").status_code == 422
    assert api.delete("/users/abc/seen").status_code == 422


def test_window_script_keeps_what_the_python_rules_keep(online):
    """The server-side window script and :func:`trim_window` agree on random click sequences (incl. late ones)."""
    rng = np.random.default_rng(3)
    layout = KeyLayout.make()
    with contextlib.closing(online.client(layout.seen.db)) as c:
        for trial in range(5):
            key = ev.window_key(layout.seen.prefix, 900_000 + trial)
            entries = []
            for n in range(40):
                e = ev.WindowEntry(int(rng.integers(0, 3 * 86_400)), f"{trial}-{n}", n, int(rng.integers(0, 4)))
                entries.append(e)
                reply = c.eval(ev.WINDOW_SCRIPT, 1, key, e.timestamp, ev.window_member(e.event_id, e.item_id,
                                                                                       e.category),
                               ev.WINDOW_SECONDS, 10, ev.WINDOW_TTL_S)
                expected = ev.trim_window(entries, cap=10)
                assert ev.parse_window(reply) == expected
                entries = expected  # the server forgets what it trimmed
            assert 0 < c.ttl(key) <= ev.WINDOW_TTL_S


# -- the service around it -------------------------------------------------------------------------------------------
def test_openapi_schema_health_and_image(api):
    schema = api.get("/openapi.json").json()
    assert {"/recommendations", "/events", "/users/{user_id}/seen", "/healthz", "/readyz"} <= set(schema["paths"])
    assert api.get("/healthz").json() == {"status": "ok"}
    image = api.get("/items/0/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"
    assert api.get("/items/1/image").status_code == 404           # not rendered in this root
    assert api.get("/items/999999/image").status_code == 404


def test_recommendations_answer_503_with_retry_after_while_triton_is_unreachable(api):
    response = api.get("/recommendations", params={"user_id": 3, "device_type": 1})
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert "unreachable" in response.json()["detail"]
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["valkey"] == "ready"
    assert "unreachable" in ready.json()["checks"]["triton"]


@pytest.mark.parametrize("params, message", [
    ({"user_id": -3}, "anonymous"), ({"user_id": 1, "k": 0}, "expected 1..100"),
    ({"user_id": 1, "k": 101}, "expected 1..100"), ({"user_id": 1, "device_type": 4}, "unknown device_type 4"),
    ({"user_id": "x"}, "user_id"), ({}, "user_id"),
])
def test_bad_recommendation_requests_are_refused_before_triton(api, params, message):
    response = api.get("/recommendations", params=params)
    assert response.status_code == 422 and message in response.text


def test_valkey_down_is_a_retryable_503_and_events_survive_restarts_of_valkey_and_the_api(online):
    user = _user(online, 5)
    items = online.items_of("housewares", 3)
    with TestClient(create_app(online.config())) as api:
        recorded = [_click(api, user, items[0], DAY3).json()["event_id"]]
        online.valkey.stop()
        try:
            down = _click(api, user, items[1], DAY3 + 1, key="during-outage")
            assert down.status_code == 503 and down.headers["retry-after"] == "3"
            assert "NOT recorded" in down.json()["detail"]
            assert api.get("/readyz").status_code == 503
        finally:
            online.start_valkey()
        # the same API recovers by itself; the retried click is recorded once
        retried = _click(api, user, items[1], DAY3 + 1, key="during-outage")
        assert retried.status_code == 201, retried.text
        recorded.append(retried.json()["event_id"])
    # a new API process over a restarted Valkey: everything recorded is still there (the AOF), and goes on
    online.restart_valkey()
    with TestClient(create_app(online.config())) as api:
        recorded.append(_click(api, user, items[2], DAY3 + 2).json()["event_id"])
        assert api.get("/readyz").json()["checks"]["valkey"] == "ready"
    events = {e.event_id: e for e in _stream(online)}
    assert [events[i].item_id for i in recorded] == items
    assert _seen(online, user, items) == [True] * 3
    # and they land in the day's file
    with contextlib.closing(online.client(2)) as c:
        result = landing.land_day(ArtifactStore(online.root), c, 3, online.config().start_epoch)
    assert set(recorded) <= set(result.frame["event_id"])


@pytest.mark.parametrize("mode, chosen", [("auto", "fsync"), ("async", "async")])
def test_durability_waits_for_the_append_only_file_where_there_is_one(online, mode, chosen):
    with TestClient(create_app(online.config(durability=mode))) as api:
        response = _click(api, _user(online, 6), online.items_of("groceries", 1)[0], DAY3)
        assert response.status_code == 201, response.text
        assert api.app.state.api.backends.durability == chosen
    # no replica here: asking to wait for one is a 503 naming it, and the event is in the stream nonetheless
    with TestClient(create_app(online.config(durability="replica"))) as api:
        response = _click(api, _user(online, 6), online.items_of("groceries", 1)[0], DAY3 + 5)
        assert response.status_code == 503 and "reached no replica" in response.json()["detail"]


# -- with the real Triton ensemble -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def triton(online, tmp_path_factory):
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.release.repository import ServingDefaults, build_repository

    repository = tmp_path_factory.mktemp("api-triton") / "repository"
    build_repository(repository, online.tiny.trained, ServingDefaults(), online.tiny.start_date, release=1)
    server = TritonServer(repository, http_port=free_port(), env=online.environ)
    state = {"started": False}

    def start():
        if not state["started"]:
            server.start(models=["ensemble_model"], timeout=300)
            state["started"] = True
        return server

    try:
        yield server, start
    finally:
        if state["started"]:
            server.stop()


def test_recommendations_recover_when_triton_comes_up_and_clicks_change_them(online, triton):
    server, start = triton
    user = _user(online, 7)
    params = {"user_id": user, "device_type": 1, "timestamp": DAY3 + 4 * 3600, "k": 10}
    with TestClient(create_app(online.config(triton_port=server.http_port))) as api:
        if not server.is_live():
            assert api.get("/recommendations", params=params).status_code == 503
            assert api.get("/readyz").status_code == 503
        start()
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        first = api.get("/recommendations", params=params)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["k"] == 10 and len(body["items"]) == 10
        item = body["items"][0]
        assert {"item_id", "score", "name", "category", "style", "price", "image_url"} <= set(item)
        assert item["image_url"].endswith(f"/items/{item['item_id']}/image")
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)

        # clicks on several items of one category: they vanish, top_category moves, the list changes
        before = online.top_category[user]
        shown = [i["item_id"] for i in body["items"]]
        category = next(i["category"] for i in body["items"] if CATEGORIES.index(i["category"]) != before)
        clicked = [i for i in shown if online.catalogue.at[i, "category_l1"] == category][:3]
        clicked += online.items_of(category, 3 - len(clicked), exclude=clicked)
        for n, item_id in enumerate(clicked):
            response = _click(api, user, item_id, DAY3 + 3 * 3600 + n)
            assert response.status_code == 201, response.text
        assert response.json()["top_category_after"] == CATEGORIES.index(category)
        after = api.get("/recommendations", params=params).json()["items"]
        after_ids = [i["item_id"] for i in after]
        assert len(after_ids) == 10 and not set(clicked) & set(after_ids)
        assert after_ids != shown

        # the ensemble unloaded (a failed swap, a restart): 503, then back without restarting the API
        with server.client() as triton_client:
            triton_client.unload_model("ensemble_model")
        try:
            gone = api.get("/recommendations", params=params)
            assert gone.status_code == 503 and "not being served" in gone.json()["detail"]
        finally:
            server.load(["ensemble_model"])
        assert api.get("/recommendations", params={"user_id": -1, "k": 3}).json()["k"] == 3


def test_with_own_data_the_api_speaks_the_shops_ids(online, triton):
    """RECSYS_SOURCE set: string ids in, string item ids out, through the id maps (here written for the tiny
    world's ids, as an ingest of a shop's folder would have: ``lib.sources``) and the real ensemble."""
    from recsys_assets.lib import paths
    from recsys_assets.lib.sources.id_maps import IdMap, save_id_map

    server, start = triton
    start()
    store = ArtifactStore(online.root)
    n_items, n_users = len(online.catalogue), 1 + max(online.top_category)
    save_id_map(store, paths.ITEM_ID_MAP, IdMap("item", tuple(f"SKU-{i:05d}" for i in range(n_items)), (0,) * n_items))
    save_id_map(store, paths.USER_ID_MAP, IdMap("user", tuple(f"u-{u}" for u in range(n_users)), (0,) * n_users))
    user = _user(online, 9)
    with TestClient(create_app(online.config(triton_port=server.http_port, source=str(online.root)))) as api:
        body = api.get("/recommendations", params={"user_id": f"u-{user}", "device_type": 1,
                                                   "timestamp": DAY3, "k": 5}).json()
        assert body["user_id"] == f"u-{user}" and body["k"] == 5
        ids = [i["item_id"] for i in body["items"]]
        assert all(isinstance(i, str) and i.startswith("SKU-") for i in ids), ids
        assert body["items"][0]["image_url"].endswith(f"/items/{ids[0]}/image")
        item = online.items_of("housewares", 1)[0]
        n_stream = len(_stream(online))
        clicked = api.post("/events", json={"user_id": f"u-{user}", "item_id": f"SKU-{item:05d}",
                                            "timestamp": DAY3})
        assert clicked.status_code == 201, clicked.text
        assert (clicked.json()["user_id"], clicked.json()["item_id"]) == (f"u-{user}", f"SKU-{item:05d}")
        assert [(e.user_id, e.item_id) for e in _stream(online)[n_stream:]] == [(user, item)]  # int ids inside
        unknown = api.post("/events", json={"user_id": f"u-{user}", "item_id": "SKU-nope", "timestamp": DAY3})
        assert unknown.status_code == 422 and "'SKU-nope' is not in the catalogue" in unknown.text
        newcomer = api.get("/recommendations", params={"user_id": "u-not-ingested-yet", "k": 3})
        assert newcomer.status_code == 200 and newcomer.json()["k"] == 3  # served as anonymous
    # The generator's API keeps integer ids and refuses text.
    with TestClient(create_app(online.config(triton_port=server.http_port))) as api:
        assert api.get("/recommendations", params={"user_id": f"u-{user}"}).status_code == 422
        assert all(isinstance(i["item_id"], int)
                   for i in api.get("/recommendations", params={"user_id": user, "k": 3}).json()["items"])
