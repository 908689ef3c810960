"""The events API's pure logic: validation, the recent window and top_category, stream entries, configuration."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recsys_assets.api import events as ev
from recsys_assets.api import landing, stream
from recsys_assets.api.config import ApiConfig, BloomSettings, ConfigError, bloom_settings_from_repository
from recsys_assets.api.online import push_time
from recsys_assets.api.triton import InferenceHealth, TritonUnavailable, parse_response, request_body
from recsys_assets.lib.top_category import NONE, WINDOW_SECONDS, point_in_time_top_category

H = 3600
START = dt.date(2026, 1, 1)
START_EPOCH = 1767225600  # 2026-01-01T00:00:00Z


# -- validators ---------------------------------------------------------------------------------------------------
@given(st.integers(min_value=-1, max_value=2**63 - 1))
def test_user_ids_from_minus_one_up_are_accepted(user_id):
    assert ev.check_user_id(user_id) == user_id
    assert ev.Click(user_id=user_id, item_id=0).user_id == user_id


@given(st.integers(max_value=-2))
def test_negative_user_ids_other_than_minus_one_are_refused_saying_what_is_accepted(user_id):
    with pytest.raises(ValueError, match="or -1 for an anonymous user"):
        ev.check_user_id(user_id)
    with pytest.raises(ValidationError, match="anonymous"):
        ev.Click(user_id=user_id, item_id=0)


@given(st.integers())
def test_device_types_are_exactly_the_four_codes(device):
    if device in (-1, 0, 1, 2):
        assert ev.Click(user_id=1, item_id=0, device_type=device).device_type == device
    else:
        with pytest.raises(ValidationError, match=f"unknown device_type {device}: expected 0"):
            ev.Click(user_id=1, item_id=0, device_type=device)


@given(st.integers())
def test_timestamps_are_unix_seconds_below_two_to_the_32(ts):
    if 0 <= ts < 2**32:
        assert ev.Click(user_id=1, item_id=0, timestamp=ts).timestamp == ts
    else:
        with pytest.raises(ValidationError, match="Unix seconds"):
            ev.Click(user_id=1, item_id=0, timestamp=ts)


@given(st.integers())
def test_k_is_one_to_ranking_topk(k):
    if 1 <= k <= 100:
        assert ev.check_k(k) == k
    else:
        with pytest.raises(ValueError, match="expected 1..100"):
            ev.check_k(k)


@pytest.mark.parametrize("body, field", [
    ({"user_id": 12.0, "item_id": 3}, "user_id"),            # nor float -> int
    ({"user_id": True, "item_id": 3}, "user_id"),            # nor bool -> int
    ({"user_id": 12, "item_id": None}, "item_id"),
    ({"item_id": 3}, "user_id"),                             # required
    ({"user_id": 12, "item_id": 3, "device": 1}, "device"),  # unknown fields are refused, not ignored
    ({"user_id": 12, "item_id": -4}, "item_id"),
])
def test_wrong_json_types_and_fields_are_refused(body, field):
    with pytest.raises(ValidationError) as info:
        ev.Click.model_validate_json(json.dumps(body))
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def test_string_ids_are_a_shops_and_never_become_generator_ints():
    """The model keeps a string id as text (own data's ids, ``api.ids``); the generator's API refuses it."""
    from recsys_assets.api.ids import GeneratorIds

    click = ev.Click.model_validate_json(json.dumps({"user_id": "12", "item_id": "SKU-1"}))
    assert (click.user_id, click.item_id) == ("12", "SKU-1")
    with pytest.raises(ev.InvalidRequest, match="RECSYS_SOURCE is not set"):
        GeneratorIds().user(click.user_id)
    with pytest.raises(ev.InvalidRequest, match="not a valid integer catalogue id"):
        GeneratorIds().item(click.item_id)
    assert GeneratorIds().user(12) == 12 and GeneratorIds().item_out(3) == 3


@given(st.text(max_size=140))
def test_idempotency_keys_are_short_plain_tokens(key):
    ok = 1 <= len(key) <= 128 and all(c.isascii() and (c.isalnum() or c in "._:-") for c in key)
    if ok:
        assert stream.check_key(key) == key
    else:
        with pytest.raises(ValueError, match="Idempotency-Key"):
            stream.check_key(key)


# -- the catalogue ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalogue():
    items = pd.DataFrame({"item_id": [0, 1, 2], "name": ["a", "b", "c"], "category_l1": ["books", "tools", "books"],
                          "category_l2": ["x", "y", "z"], "price": [1.0, 2.0, 3.0], "available_from_day": [0, 0, 5]})
    return ev.Catalogue.from_frame(items)


def test_clickable_items_give_their_category_code(catalogue):
    # Codes are positions in the served catalogue's own sorted categories (the generator's: all 20).
    assert catalogue.vocabulary == ("books", "tools")
    assert catalogue.check_clickable(1, day=0, start_date=START) == 1
    assert catalogue.check_clickable(2, day=5, start_date=START) == 0
    assert ev.category_name(1, catalogue.vocabulary) == "tools"


@pytest.mark.parametrize("item, day, message", [
    (3, 0, r"item_id 3 is not in the catalogue \(ids 0..2\)"),
    (2, 4, r"item_id 2 is not available before day 05 \(2026-01-06\); the click is on day 04"),
])
def test_unknown_and_not_yet_available_items_are_refused(catalogue, item, day, message):
    with pytest.raises(ev.InvalidRequest, match=message):
        catalogue.check_clickable(item, day=day, start_date=START)


def test_a_click_before_day_00_belongs_to_no_partition():
    assert ev.check_click_day(START_EPOCH, START_EPOCH, START) == 0
    assert ev.check_click_day(START_EPOCH + 86_399, START_EPOCH, START) == 0
    assert ev.check_click_day(START_EPOCH + 86_400, START_EPOCH, START) == 1
    with pytest.raises(ev.InvalidRequest, match="before day 00"):
        ev.check_click_day(START_EPOCH - 1, START_EPOCH, START)


@pytest.mark.parametrize("ahead, allowance, refused", [
    (-86_400, 300, False), (0, 300, False), (300, 300, False), (301, 300, True), (2**31, 300, True), (1, 0, True),
])
def test_a_click_may_be_dated_past_the_server_clock_only_by_the_allowed_skew(ahead, allowance, refused):
    now = START_EPOCH + 13 * 86_400 + 0.75  # the clock's fraction of a second does not count
    if refused:
        with pytest.raises(ev.InvalidRequest, match=rf"{ahead} s ahead of the server's clock.*at most {allowance} s"):
            ev.check_not_ahead(int(now) + ahead, now, allowance)
    else:
        assert ev.check_not_ahead(int(now) + ahead, now, allowance) == int(now) + ahead


def test_a_recommendation_before_day_00_is_refused_naming_day_00():
    assert ev.check_recommendation_day(START_EPOCH, START_EPOCH, START) == 0
    with pytest.raises(ev.InvalidRequest, match=r"before day 00 \(2026-01-01, RECSYS_START_DATE\)"):
        ev.check_recommendation_day(START_EPOCH - 1, START_EPOCH, START)


def test_validation_errors_say_what_and_where_but_never_echo_the_input():
    from recsys_assets.api.app import validation_errors

    try:
        ev.Click.model_validate({"user_id": float("nan"), "item_id": -3, "extra": "x" * 10_000})
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
    text = json.dumps(errors, allow_nan=False)  # JSON can carry it, NaN and all
    assert {tuple(e["loc"]) for e in errors} == {("user_id",), ("item_id",), ("extra",)}
    assert "valid integer" in text and "expected a catalogue id >= 0" in text and "xxxx" not in text
    assert all(set(e) <= {"type", "loc", "msg", "ctx"} for e in errors)


def test_details_name_category_style_and_price(catalogue):
    assert catalogue.details(1) == {"name": "b", "category": "tools", "style": "y", "price": 2.0}
    assert catalogue.details(7) is None


# -- the window and top_category ------------------------------------------------------------------------------------
def _entries(clicks):
    return [ev.WindowEntry(t, f"{i + 1}-0", i, c) for i, (t, c) in enumerate(clicks)]


@pytest.mark.parametrize("clicks, expected", [
    ([], NONE),
    ([(10 * H, 3)], 3),
    ([(10 * H, 3), (11 * H, 5)], 5),                         # tie -> the most recent click
    ([(10 * H, 3), (11 * H, 5), (12 * H, 3)], 3),
    ([(1 * H, 3), (2 * H, 3), (30 * H, 5)], 5),              # the two old clicks fell out of the 24 h window
    ([(30 * H, 5), (6 * H + 1, 3), (6 * H + 2, 3)], 3),      # late clicks count where their timestamp puts them
    ([(30 * H, 5), (6 * H, 3), (6 * H + 1, 3)], 5),          # ... exactly 24 h before the newest is outside
])
def test_top_category_of_the_window_just_after_its_newest_click(clicks, expected):
    assert ev.window_top_category(_entries(clicks)) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * 24 * H), st.integers(0, 3)), min_size=1, max_size=25,
                unique_by=lambda c: c[0]))
def test_the_click_path_value_is_the_training_definition_at_the_next_instant(clicks):
    """What the click path pushes equals what training computes for a request one second after the newest click,
    and trimming the window to 24 h never changes it."""
    entries = _entries(clicks)
    newest = max(t for t, _ in clicks)
    training = point_in_time_top_category([7] * len(clicks), [t for t, _ in clicks], [c for _, c in clicks],
                                          [7], [newest + 1])[0]
    assert ev.window_top_category(entries) == training
    assert ev.window_top_category(ev.trim_window(entries)) == training


@given(st.lists(st.integers(0, 4 * 24 * H), min_size=1, max_size=40), st.integers(1, 10))
def test_trimming_keeps_the_last_24_hours_and_at_most_cap_entries(times, cap):
    entries = _entries([(t, 0) for t in times])
    kept = ev.trim_window(entries, cap=cap)
    newest = max(times)
    assert all(newest - e.timestamp < WINDOW_SECONDS for e in kept)
    assert len(kept) == min(cap, sum(newest - t < WINDOW_SECONDS for t in times))
    assert [e.timestamp for e in kept] == sorted(e.timestamp for e in kept)


def test_window_members_round_trip_through_the_script_reply():
    reply = [b"1700000000000-0|12|3", b"1767225600", b"1700000000001-0|9|5", b"1767229200"]
    assert ev.parse_window(reply) == [ev.WindowEntry(1767225600, "1700000000000-0", 12, 3),
                                      ev.WindowEntry(1767229200, "1700000000001-0", 9, 5)]
    assert ev.window_member("1700000000000-0", 12, 3) == "1700000000000-0|12|3"
    with pytest.raises(ValueError, match="anonymous"):
        ev.window_key("recsys:seen:", -1)


@pytest.mark.parametrize("click, stored, expected", [
    (100, None, 100),   # nothing stored yet
    (100, 50, 100),     # a later click: its own time
    (100, 100, 101),    # the same second: Feast would skip an equal time
    (100, 500, 501),    # a snapshot stamped later (end of day): just after it
])
def test_push_time_is_always_after_the_stored_event_time(click, stored, expected):
    assert push_time(click, stored) == expected


# -- stream entries ------------------------------------------------------------------------------------------------
@given(st.integers(-1, 2**63 - 1), st.integers(0, 10**6), st.integers(0, 2**32 - 1), st.sampled_from([-1, 0, 1, 2]),
       st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9._:\-]{1,20}", fullmatch=True)))
def test_events_round_trip_through_stream_fields(user, item, ts, device, key):
    event = stream.Event(user, item, ts, device, key=key)
    raw = {k.encode(): v.encode() for k, v in event.fields().items()}
    assert stream.decode(b"5-1", raw) == stream.Event(user, item, ts, device, event_id="5-1", key=key)


def test_malformed_entries_name_the_entry():
    with pytest.raises(ValueError, match="stream entry 9-0 .* malformed"):
        stream.decode("9-0", {b"user_id": b"1"})


@given(st.lists(st.tuples(st.integers(0, 2**45), st.integers(0, 50)), min_size=1, max_size=30, unique=True))
def test_stream_ids_order_numerically_not_as_text(ids):
    texts = [f"{ms}-{seq}" for ms, seq in ids]
    assert sorted(texts, key=stream.parse_id) == [f"{ms}-{seq}" for ms, seq in sorted(ids)]
    frame = landing.events_frame([stream.Event(0, 0, 0, event_id=t) for t in texts])
    assert landing.order_by_event_id(frame)["event_id"].tolist() == [f"{a}-{b}" for a, b in sorted(ids)]


def test_event_day_uses_the_click_timestamp():
    assert stream.day_of(START_EPOCH + 3 * 86_400 + 5, START_EPOCH) == 3
    assert stream.day_of(START_EPOCH - 1, START_EPOCH) == -1


def test_day_files_have_the_interaction_dtypes():
    frame = landing.events_frame([stream.Event(3, 4, 5, 1, event_id="1-0"), stream.Event(-1, 2, 6, -1, "2-0")])
    assert {c: str(t) for c, t in frame.dtypes.items()} == landing.COLUMNS
    assert frame["click"].tolist() == [1, 1]
    empty = landing.events_frame([])
    assert {c: str(t) for c, t in empty.dtypes.items()} == landing.COLUMNS


# -- the Triton request ----------------------------------------------------------------------------------------------
def test_the_ensemble_request_leaves_out_what_is_not_given():
    assert request_body(5) == {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [5]}],
                               "outputs": [{"name": "ordered_ids"}, {"name": "ordered_scores"}]}
    full = request_body(5, 1, 1767225600, 7, True)["inputs"]
    assert [(i["name"], i["datatype"], i["data"]) for i in full] == [
        ("user_id", "INT64", [5]), ("device_type", "INT64", [1]), ("timestamp", "INT64", [1767225600]),
        ("top_k", "INT64", [7]), ("diversity", "BOOL", [True])]


def test_the_ensemble_answer_is_parsed_and_checked():
    body = {"model_name": "ensemble_model", "model_version": "1", "outputs": [
        {"name": "ordered_ids", "datatype": "INT64", "shape": [2], "data": [4, 9]},
        {"name": "ordered_scores", "datatype": "FP32", "shape": [2], "data": [0.5, 0.25]}]}
    got = parse_response(body)
    assert (got.ids, got.scores, got.model_version) == ([4, 9], [0.5, 0.25], "1")
    with pytest.raises(TritonUnavailable, match="lacks"):
        parse_response({"outputs": body["outputs"][:1]})


# -- readiness: what recent calls say ------------------------------------------------------------------------------
def test_inference_health_is_suspect_exactly_while_the_newest_outcome_is_a_failure():
    now = [0.0]
    health = InferenceHealth(clock=lambda: now[0])
    assert not health.suspect                    # nothing known yet: the model's readiness decides
    for outcome, suspect in (("ok", False), ("fail", True), ("fail", True), ("ok", False), ("fail", True)):
        now[0] += 1
        health.answered() if outcome == "ok" else health.failed(f"failure at {now[0]}")
        assert health.suspect is suspect
    assert health.reason == "failure at 5.0"


# -- configuration ---------------------------------------------------------------------------------------------------
def test_configuration_defaults_bind_loopback_and_leave_triton_its_port(tmp_path):
    config = ApiConfig.from_environ({"RECSYS_ARTIFACTS": str(tmp_path)})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.triton_url == "http://127.0.0.1:8000"
    assert (config.seen_db, config.events_db, config.durability) == (1, 2, "auto")
    assert config.registry() == str(tmp_path.resolve() / "feature_store" / "registry.db")
    assert config.start_epoch == START_EPOCH
    assert config.bloom == BloomSettings()
    assert (config.max_clock_skew_s, config.ready_probe_timeout_s) == (300, 1.0)


@pytest.mark.parametrize("env, url", [
    ({"RECSYS_TRITON_URL": "triton.internal:8000"}, "http://triton.internal:8000"),
    ({"RECSYS_TRITON_URL": "https://triton.example/"}, "https://triton.example"),
    ({"RECSYS_TRITON_HTTP_PORT": "8100"}, "http://127.0.0.1:8100"),
])
def test_triton_url_forms(env, url):
    assert ApiConfig.from_environ(env).triton_url == url


@pytest.mark.parametrize("env, message", [
    ({"RECSYS_API_PORT": "http"}, "RECSYS_API_PORT='http': expected an integer"),
    ({"RECSYS_API_PORT": "70000"}, "RECSYS_API_PORT=70000"),
    ({"RECSYS_TRITON_URL": "grpc://x:8001"}, "KServe v2 HTTP"),
    ({"RECSYS_EVENTS_DURABILITY": "sometimes"}, "expected one of auto, fsync, replica, async"),
    ({"RECSYS_VALKEY_CLUSTER": "maybe"}, "expected auto, 1 or 0"),
    ({"RECSYS_START_DATE": "yesterday"}, "RECSYS_START_DATE"),
    ({"RECSYS_API_MAX_CLOCK_SKEW_S": "-5"}, "RECSYS_API_MAX_CLOCK_SKEW_S=-5: expected 0..86400"),
    ({"RECSYS_API_READY_PROBE_MS": "0"}, "RECSYS_API_READY_PROBE_MS=0"),
])
def test_bad_configuration_says_which_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        ApiConfig.from_environ(env)


def test_bloom_sizing_follows_the_live_repository(tmp_path):
    """The seen filter's key carries its sizing, so the API must size it exactly as filter_seen_items does."""
    from recsys_assets.lib import paths

    template = (ApiConfig().feast_repo.parent / "triton_repo" / "filter_seen_items" / "config.pbtxt").read_text()
    changed = template.replace('"1000"', '"250"').replace('"0.01"', '"0.001"')
    target = tmp_path / paths.TRITON_REPOSITORY / "filter_seen_items"
    target.mkdir(parents=True)
    (target / "config.pbtxt").write_text(changed)
    config = ApiConfig.from_environ({"RECSYS_ARTIFACTS": str(tmp_path)})
    assert (config.bloom.capacity, config.bloom.error_rate, config.bloom.source) == (
        250, 0.001, str(target / "config.pbtxt"))
    assert bloom_settings_from_repository(tmp_path / "nowhere") == BloomSettings()


def test_a_heavy_users_window_is_capped():
    rng = np.random.default_rng(0)
    clicks = list(zip(rng.integers(0, 2 * 24 * H, 5000).tolist(), rng.integers(0, 20, 5000).tolist()))
    kept = ev.trim_window(_entries(clicks))
    assert len(kept) == ev.WINDOW_CAP


def test_the_server_command_refuses_bad_configuration_before_starting(monkeypatch, capsys):
    from recsys_assets.api.__main__ import main

    monkeypatch.setenv("RECSYS_API_PORT", "eighty")
    assert main([]) == 2
    assert "RECSYS_API_PORT='eighty'" in capsys.readouterr().err
