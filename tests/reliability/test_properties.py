"""Properties of the request validators and the pure serving functions, over generated input (hypothesis).

What the example tables next to the code do not reach: whole generated request bodies (any JSON value in any
field), arrays of any length and dtype fed to the stages, extreme int64 ids, truncated Bloom bitmaps. Each
property says what must hold for *every* input: the answer is either a value inside the documented ranges or the
documented refusal (``ValidationError`` / ``InvalidRequest`` / ``BadRequest`` with a message), never another
exception, and never a value outside the contract.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from recsys_assets.api import events as ev
from recsys_assets.api import stream
from recsys_assets.lib.feature_spec import USER_HISTORY
from recsys_assets.serving.bloom import BloomParams, SeenFilter, bit_positions, bits_contain
from recsys_assets.serving.common import Availability
from recsys_assets.serving.executor import BadRequest, StageContext
from recsys_assets.serving.stages.context_preprocessor import ContextPreprocessor
from recsys_assets.serving.stages.item_id_decoder import IdSpaceError, ItemIdDecoder
from recsys_assets.serving.stages.softmax_sampling import SoftmaxSampling, greedy, sample
from recsys_assets.serving.features import CONTEXT, UNROLLED, USER
from recsys_assets.serving.stages.unroll_features import UnrollFeatures

DAY0 = 1767225600
INT64 = st.integers(-(2**63), 2**63 - 1)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3)), max_leaves=6)
FIELDS = ("user_id", "item_id", "device_type", "timestamp")


# -- the events API's validators ------------------------------------------------------------------------------------
def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@given(st.dictionaries(st.sampled_from([*FIELDS, "extra", "USER_ID"]), JSON_VALUES, max_size=6))
def test_a_click_body_is_accepted_exactly_when_every_field_follows_the_rules(body):
    valid = (set(body) <= set(FIELDS) and {"user_id", "item_id"} <= set(body)
             and _int(body["user_id"]) and -1 <= body["user_id"] <= 2**63 - 1
             and _int(body["item_id"]) and 0 <= body["item_id"] <= 2**63 - 1
             and _int(body.get("device_type", -1)) and body.get("device_type", -1) in (-1, 0, 1, 2)
             and (body.get("timestamp") is None or (_int(body["timestamp"]) and 0 <= body["timestamp"] < 2**32)))
    try:
        click = ev.Click.model_validate(body)
    except ValidationError as exc:
        assert not valid, (body, exc)
        assert exc.errors() and all(e["msg"] for e in exc.errors())   # each refusal says what and where
        return
    assert valid, body
    assert (click.user_id, click.item_id) == (body["user_id"], body["item_id"])


@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_any_bytes_as_a_click_are_a_click_or_a_validation_error(raw):
    try:
        ev.Click.model_validate_json(raw)
    except ValidationError:
        pass


@given(st.integers(-(2**40), 2**40), st.integers(0, 2**33))
def test_a_click_belongs_to_the_day_of_its_timestamp_or_is_refused_before_day_00(start_epoch, ts):
    import datetime as dt

    try:
        day = ev.check_click_day(ts, start_epoch, dt.date(2026, 1, 1))
    except ev.InvalidRequest as exc:
        assert ts < start_epoch and "before day 00" in str(exc) and exc.status == 422
        return
    assert ts >= start_epoch and start_epoch + day * 86_400 <= ts < start_epoch + (day + 1) * 86_400


@pytest.fixture(scope="module")
def catalogue():
    from recsys_assets.lib.generator import World

    items = World(seed=7, scale="tiny").items
    return ev.Catalogue.from_frame(items[["item_id", "name", "category_l1", "category_l2", "price",
                                          "available_from_day"]])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(INT64, st.integers(0, 2500)), st.integers(-5, 400))
def test_only_catalogue_items_available_on_the_day_are_clickable(catalogue, item, day):
    import datetime as dt

    try:
        code = catalogue.check_clickable(item, day, dt.date(2026, 1, 1))
    except ev.InvalidRequest as exc:
        assert exc.status == 422 and f"item_id {item}" in str(exc)
        assert not (0 <= item < len(catalogue)) or catalogue.available_from_day[item] > day
        return
    assert 0 <= item < len(catalogue) and catalogue.available_from_day[item] <= day
    assert 0 <= code < 20


# Event ids are unique and an item has one category, as in the stream; the window script orders entries by time,
# then by member text (ZRANGE of a sorted set), which is the order trim_window returns.
WINDOWS = st.lists(st.tuples(st.integers(0, 4 * 86_400), st.integers(0, 2464)), max_size=40).map(
    lambda clicks: [ev.WindowEntry(ts, f"{1767225600000 + ts}-{n}", item, item % 20)
                    for n, (ts, item) in enumerate(clicks)])


def _server_order(entries):
    return sorted(entries, key=lambda e: (e.timestamp, ev.window_member(e.event_id, e.item_id, e.category)))


@given(WINDOWS, st.randoms())
def test_trimming_the_window_loses_nothing_top_category_needs_and_does_not_depend_on_order(entries, rnd):
    trimmed = ev.trim_window(entries)
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert ev.trim_window(shuffled) == trimmed
    assert ev.trim_window(trimmed) == trimmed
    assert ev.window_top_category(trimmed) == ev.window_top_category(_server_order(entries))
    assert -1 <= ev.window_top_category(entries) < 20


@given(st.text(max_size=140))
def test_an_accepted_idempotency_key_travels_through_the_stream_unchanged(key):
    try:
        stream.check_key(key)
    except ValueError:
        return
    event = stream.Event(user_id=1, item_id=2, timestamp=DAY0, device_type=1, key=key)
    assert stream.decode("1-0", event.fields()).key == key


# -- context_preprocessor -------------------------------------------------------------------------------------------
def _optional(elements):
    return st.one_of(st.none(), elements)


@pytest.fixture(scope="module")
def pre():
    return ContextPreprocessor(StageContext("context_preprocessor", {"RANKING_TOPK": "100", "DEFAULT_TOP_K": "10"}))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_optional(INT64), _optional(INT64), _optional(INT64), _optional(INT64), _optional(st.booleans()))
def test_the_preprocessor_passes_exactly_the_documented_requests_and_fills_the_rest(pre, user, device, ts, k,
                                                                                     diversity):
    def t(v, dtype=np.int64):
        return None if v is None else np.array([v], dtype)

    valid = (user is not None and user >= -1 and (device is None or device in (-1, 0, 1, 2))
             and (ts is None or ts >= 0) and (k is None or 1 <= k <= 100))
    try:
        out = pre(user_id=t(user), device_type=t(device), timestamp=t(ts), top_k=t(k),
                  diversity=t(diversity, np.bool_))
    except BadRequest as exc:
        assert not valid and str(exc)
        return
    assert valid
    assert out["request_user_id"].tolist() == [user]
    assert out["request_device_type"].tolist() == [-1 if device is None else device]
    assert out["request_top_k"].tolist() == [10 if k is None else k]
    assert out["request_timestamp"][0] >= 0 and out["request_diversity"].dtype == np.bool_
    assert all(v.shape == (1,) for v in out.values())


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hnp.arrays(np.int64, st.integers(0, 5).filter(lambda n: n != 1), elements=st.integers(-1, 5)))
def test_a_request_tensor_with_other_than_one_value_is_refused_by_name(pre, values):
    with pytest.raises(BadRequest, match="user_id must hold exactly one value"):
        pre(user_id=values)


# -- softmax_sampling -----------------------------------------------------------------------------------------------
SCORES = hnp.arrays(np.float32, st.integers(0, 60), elements=st.floats(0, 1, width=32))


@given(SCORES, st.integers(0, 80))
def test_greedy_returns_the_k_best_distinct_positions_best_first(scores, k):
    chosen = greedy(scores, k)
    assert len(chosen) == min(k, len(scores)) and len(set(chosen.tolist())) == len(chosen)
    assert (np.diff(scores[chosen]) <= 0).all()
    if len(chosen) and len(chosen) < len(scores):
        rest = np.setdiff1d(np.arange(len(scores)), chosen)
        assert scores[chosen].min() >= scores[rest].max()


@given(hnp.arrays(np.float32, st.integers(1, 60), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       st.integers(1, 80), st.integers(1, 100), st.floats(0.05, 5.0), st.integers(0, 2**32 - 1))
def test_sampling_draws_distinct_positions_from_the_pool_whatever_the_scores(scores, k, pool, temperature, seed):
    pool = max(pool, k)
    with np.errstate(invalid="ignore", over="ignore"):
        chosen = sample(scores, k, pool, temperature, np.random.default_rng(seed))
    assert len(chosen) == min(k, len(scores)) and len(set(chosen.tolist())) == len(chosen)
    assert set(chosen.tolist()) <= set(greedy(scores, pool).tolist())


@given(SCORES, st.integers(1, 100), st.booleans())
def test_the_sampling_stage_returns_aligned_ids_indices_and_scores(scores, k, diversity):
    stage = SoftmaxSampling(StageContext("softmax_sampling", {"SAMPLING_SEED": "3"}))
    ids = np.arange(len(scores), dtype=np.int64) + 1000
    out = stage(scores=scores, item_index=ids - 997, item_ids=ids, top_k=np.array([k]),
                diversity=np.array([diversity]))
    n = min(k, len(scores))
    assert len(out["selected_ids"]) == len(out["selected_index"]) == len(out["selected_scores"]) == n
    assert (out["selected_ids"] - out["selected_index"] == 997).all()
    assert np.array_equal(out["selected_scores"], scores[out["selected_ids"] - 1000])


# -- unroll_features, item_id_decoder, availability -----------------------------------------------------------------
@given(st.integers(0, 400), INT64, st.floats(-1e6, 1e6, width=32))
def test_unrolling_repeats_each_request_feature_once_per_candidate_keeping_its_dtype(n, int_value, float_value):
    features = {name: (np.array([int_value], np.int64) if name in UNROLLED.categorical
                       else np.array([float_value], np.float32)) for name in UNROLLED.features}
    groups = {**USER.pack(features), **CONTEXT.pack(features)}
    out = UnrollFeatures(StageContext("unroll_features"))(item_ids=np.zeros(n, np.int64), **groups)
    unrolled = UNROLLED.unpack(out["unrolled_categorical"], out["unrolled_continuous"])
    for name, value in features.items():
        got = unrolled[name]
        assert got.shape == (n,) and got.dtype == value.dtype and (got == value[0]).all()


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """The decoder over the tiny world's compiled item vocabulary (written without the ONNX models)."""
    from recsys_assets.lib.generator import World
    from recsys_assets.serving import transforms as compiled
    from recsys_assets.release.tiny import transforms_description

    world = World(seed=7, scale="tiny")
    users = world.users(0).head(60)
    folder = tmp_path_factory.mktemp("decoder")
    description, vocabularies = transforms_description(world.items, users, float(users["age"].mean()))
    compiled.write_description(folder / "transforms", description, vocabularies)
    return ItemIdDecoder(StageContext("item_id_decoder", model_dir=folder)), compiled.CompiledTransforms.load(
        folder / "transforms"), vocabularies


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hnp.arrays(np.int64, st.integers(0, 50), elements=INT64))
def test_decoding_any_row_gives_a_catalogue_id_or_minus_one_never_an_error(decoder, rows):
    stage, _, vocabularies = decoder
    decoded = stage.decode(rows)
    values, labels = vocabularies["item.item_id"]
    known = dict(zip(labels.astype(np.int64).tolist(), values.astype(np.int64).tolist()))
    assert decoded.tolist() == [known.get(r, -1) for r in rows.tolist()]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2600), st.integers(0, 2464)), max_size=30))
def test_the_decoder_returns_carried_ids_or_refuses_mixed_id_spaces(decoder, pairs):
    stage, _, _ = decoder
    rows = np.array([p[0] for p in pairs], np.int64)
    carried = np.array([p[1] for p in pairs], np.int64)
    scores = np.linspace(1, 0, len(pairs), dtype=np.float32)
    decoded = stage.decode(rows)
    mixed = bool(((decoded >= 0) & (decoded != carried)).any())
    try:
        out = stage(item_index=rows, item_ids=carried, scores=scores)
    except IdSpaceError:
        assert mixed
        return
    assert not mixed and out["ordered_ids"].tolist() == carried.tolist()


@given(hnp.arrays(np.int64, st.integers(0, 40), elements=st.one_of(INT64, st.integers(-3, 2470))),
       st.integers(-10, 20))
def test_availability_is_false_outside_the_catalogue_and_follows_the_release_day_inside(ids, day):
    available_from = np.arange(0, 2465, dtype=np.int64) % 14
    mask = Availability(available_from).mask(ids, day)
    assert mask.tolist() == [0 <= i < 2465 and bool(available_from[i] <= day) for i in ids.tolist()]


# -- compiled transforms (the numpy side of NVTabular) --------------------------------------------------------------
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hnp.arrays(np.int64, st.integers(1, 30), elements=st.one_of(INT64, st.integers(-1, 70))),
       st.floats(0, 130), st.sampled_from([-1, 0, 1, "F", "M", "x"]), st.integers(-1, 25))
def test_user_transform_maps_any_id_to_its_row_null_or_oov(decoder, user_ids, age, gender, top):
    _, transforms, vocabularies = decoder
    n = len(user_ids)
    out = transforms.transform_user(user_ids, np.full(n, age), np.array([gender] * n, dtype=object),
                                    *[np.full(n, top, np.int64)] * len(USER_HISTORY))
    values, labels = vocabularies["user.user_id"]
    row = dict(zip(values.astype(np.int64).tolist(), labels.astype(np.int64).tolist()))
    assert out["user_id"].tolist() == [1 if u == -1 else row.get(u, 2) for u in user_ids.tolist()]
    for name in ("gender", *USER_HISTORY, "age_binned"):
        size = 3 + len(vocabularies[f"user.{name}"][0])
        assert ((out[name] >= 1) & (out[name] < size)).all(), (name, out[name])
    assert np.isfinite(out["age_norm"]).all()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(-5, 5)),
       hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 2**62)))
def test_context_transform_keeps_devices_in_their_rows_and_time_on_the_unit_circle(decoder, devices, timestamps):
    _, transforms, _ = decoder
    n = min(len(devices), len(timestamps))
    out = transforms.transform_context(devices[:n], timestamps[:n])
    assert ((out["device_type"] >= 1) & (out["device_type"] < 6)).all()
    assert (out["device_type"][devices[:n] == -1] == 1).all()            # unknown -> the null row
    for fn in ("hour", "weekday"):
        radius = out[f"{fn}_sin"].astype(np.float64) ** 2 + out[f"{fn}_cos"].astype(np.float64) ** 2
        assert np.allclose(radius, 1.0, atol=1e-5)


# -- the Bloom filter -----------------------------------------------------------------------------------------------
@given(st.integers(1, 10**6), st.floats(1e-6, 0.5))
def test_a_sizing_meets_its_false_positive_bound_at_capacity(capacity, error_rate):
    params = BloomParams(capacity=capacity, error_rate=error_rate)
    assert params.bits % 8 == 0 and params.bits >= capacity and params.hashes >= 1
    assert params.expected_error_rate(capacity) <= error_rate * 1.1


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50, unique=True), st.integers(0, 200))
def test_a_truncated_bitmap_never_raises_and_keeps_every_answer_it_still_holds(ids, keep_bytes):
    params = BloomParams(capacity=100, error_rate=0.01)
    positions = bit_positions(ids, params)
    bits = np.zeros(params.bits, np.uint8)
    bits[positions.reshape(-1)] = 1
    bitmap = np.packbits(bits).tobytes()
    truncated = bitmap[:keep_bytes]
    answers = bits_contain(truncated, positions)
    assert answers.shape == (len(ids),)
    inside = (positions < 8 * len(truncated)).all(axis=1)
    assert answers[inside].all()                  # no false negative among what the bytes still cover
    assert not answers[~inside].any()             # and nothing claimed beyond them


@given(st.lists(INT64, max_size=30))
def test_an_anonymous_user_has_seen_nothing_and_no_server_is_asked(ids):
    answers = SeenFilter("recsys:seen:").contains(None, -1, ids)  # a client that would fail if used
    assert answers.shape == (len(ids),) and not answers.any()


@given(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True))
def test_a_sizing_is_refused_with_a_message_exactly_when_impossible(capacity, error_rate):
    possible = capacity >= 1 and 0 < error_rate < 1
    try:
        BloomParams(capacity=capacity, error_rate=error_rate)
    except ValueError as exc:
        assert not possible and "Bloom" in str(exc)
        return
    assert possible
