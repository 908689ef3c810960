import contextlib
import socket

import pytest

from recsys_assets.lib.valkey_server import (
    EmbeddedValkey,
    Endpoint,
    KeyLayout,
    ValkeyError,
    feast_connection_string,
    free_port,
    parse_url,
    ping,
    stop_embedded,
)


@pytest.mark.parametrize(
    "url, password, expected",
    [
        ("redis://127.0.0.1:6390", None, Endpoint("127.0.0.1", 6390)),
        ("valkey://localhost", None, Endpoint("localhost", 6379)),
        ("rediss://master.x.cache.amazonaws.com:6379", "s3cret",
         Endpoint("master.x.cache.amazonaws.com", 6379, password="s3cret", tls=True)),
        ("valkeys://app:p%40ss@cache.internal:6380", "ignored",
         Endpoint("cache.internal", 6380, password="p@ss", username="app", tls=True)),
    ],
)
def test_parse_url(url, password, expected):
    assert parse_url(url, password=password) == expected


@pytest.mark.parametrize("url", ["http://host:6379", "redis://", "redis://host:6379/2"])
def test_parse_url_rejects_what_it_cannot_use(url):
    with pytest.raises(ValkeyError, match="RECSYS_VALKEY_URL"):
        parse_url(url)


def test_endpoint_repr_hides_the_password():
    assert "s3cret" not in repr(parse_url("rediss://u:s3cret@h:1"))


@pytest.mark.parametrize(
    "endpoint, db, cluster, expected",
    [
        (Endpoint("127.0.0.1", 6390), 0, False, "127.0.0.1:6390,db=0"),
        (Endpoint("h", 6379, password="pw", tls=True), 0, False, "h:6379,db=0,ssl=true,password=pw"),
        (Endpoint("h", 6379, password="pw", username="app", tls=True), 0, True,
         "h:6379,ssl=true,username=app,password=pw"),
    ],
)
def test_feast_connection_string(endpoint, db, cluster, expected):
    assert feast_connection_string(endpoint, db, cluster) == expected


def test_feast_connection_string_refuses_a_comma_in_the_password():
    with pytest.raises(ValkeyError, match="comma"):
        feast_connection_string(Endpoint("h", 1, password="a,b"))


def test_key_layout_databases_and_cluster_prefixes():
    plain = KeyLayout.make()
    assert (plain.feast.db, plain.seen.db, plain.popularity.db) == (0, 1, 3)
    cluster = KeyLayout.make(cluster=True)
    assert {cluster.feast.db, cluster.seen.db, cluster.popularity.db} == {0}
    assert len({cluster.seen.prefix, cluster.popularity.prefix}) == 2
    assert cluster.popularity.key("v1", "global") == "recsys:pop:v1:global"


def test_start_reuse_stop(tmp_path):
    port = free_port()
    first = EmbeddedValkey(tmp_path / "vk", port=port).start()
    try:
        assert first.owned and ping("127.0.0.1", port)
        with contextlib.closing(first.endpoint.client()) as c:
            cfg = c.config_get("appendonly")
            assert cfg["appendonly"] == "yes"
        # a second start on the same port and folder reuses the running server and does not own it
        second = EmbeddedValkey(tmp_path / "vk", port=port).start()
        assert not second.owned
        assert second.stop() is False
        assert ping("127.0.0.1", port), "stopping a reused server must not stop it"
    finally:
        assert first.stop() is True
    assert not ping("127.0.0.1", port)
    assert first.stop() is False


def test_data_survives_a_restart_through_the_append_only_file(tmp_path):
    port = free_port()
    with EmbeddedValkey(tmp_path / "vk", port=port) as server:
        with contextlib.closing(server.endpoint.client(db=3)) as c:
            c.zadd("recsys:pop:test", {"7": 3.0, "9": 1.0})
            c.set("recsys:seen:u1", b"\x01\x02")
    assert any((tmp_path / "vk" / "appendonlydir").iterdir())
    with EmbeddedValkey(tmp_path / "vk", port=free_port()) as server:  # another port, same folder
        with contextlib.closing(server.endpoint.client(db=3)) as c:
            assert c.zrevrange("recsys:pop:test", 0, -1) == [b"7", b"9"]
            assert c.get("recsys:seen:u1") == b"\x01\x02"


def test_a_server_of_another_folder_is_not_reused(tmp_path, valkey):
    with pytest.raises(ValkeyError, match="already serves the data folder"):
        EmbeddedValkey(tmp_path / "other", port=valkey.port).start()


def test_a_port_held_by_something_else_is_reported(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(ValkeyError, match="does not answer a Valkey PING"):
            EmbeddedValkey(tmp_path / "vk", port=port).start(timeout=5)


def test_detached_server_is_stopped_by_its_pidfile(tmp_path):
    port = free_port()
    server = EmbeddedValkey(tmp_path / "vk", port=port, detach=True).start()
    assert server.owned
    assert stop_embedded(tmp_path / "elsewhere", port=port) is False  # not the folder it serves
    assert stop_embedded(tmp_path / "vk", port=port) is True
    assert not ping("127.0.0.1", port)
    server._process.wait(5)  # reap the child this test process started


def _valkey_errors():
    import redis.exceptions
    import valkey.exceptions

    return valkey.exceptions, redis.exceptions


@pytest.mark.parametrize("make, unavailable", [
    (lambda errors: errors.ConnectionError("Connection refused"), True),
    (lambda errors: errors.TimeoutError("Timeout reading from socket"), True),
    (lambda errors: errors.BusyLoadingError("LOADING Valkey is loading the dataset in memory"), True),
    (lambda errors: errors.ReadOnlyError("READONLY You can't write against a read only replica."), True),
    (lambda errors: errors.ResponseError("MASTERDOWN Link with MASTER is down"), True),
    (lambda errors: errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (lambda errors: errors.DataError("Invalid input of type: 'dict'"), False),
])
def test_is_unavailable_sorts_both_clients_errors_alike(make, unavailable):
    from recsys_assets.lib.valkey_server import is_unavailable

    for errors in _valkey_errors():
        assert is_unavailable(make(errors)) is unavailable
    assert is_unavailable(ValueError("a bug")) is False and is_unavailable(ConnectionResetError()) is True
