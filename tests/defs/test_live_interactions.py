"""live_interactions and its sensor on a real Valkey: every event of the click stream lands once, across restarts."""

import contextlib
import json

import dagster as dg
import pytest

from recsys_assets.api import landing, stream
from recsys_assets.defs.events.assets import _checks, live_interactions, start_epoch
from recsys_assets.defs.events.resources import EventStreamResource
from recsys_assets.defs.events.sensors import live_events_sensor, parse_cursor
from recsys_assets.defs.feature_store.resources import ValkeyResource
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port

pytestmark = pytest.mark.integration

EVENTS_DB = 2


def _ts(day: int, second: int = 0) -> int:
    return start_epoch() + day * 86_400 + 3600 + second


def _key(day: int) -> str:
    return f"2026-01-{day + 1:02d}"


@pytest.fixture()
def server(tmp_path):
    box = {"server": EmbeddedValkey(tmp_path / "valkey", port=free_port()).start()}
    try:
        yield box
    finally:
        box["server"].stop()


def _restart(box) -> None:
    old = box["server"]
    old.stop()
    box["server"] = EmbeddedValkey(old.data_dir, port=old.port).start()


def _resources(resources, box) -> dict:
    return {**resources, "valkey": ValkeyResource(url=f"redis://127.0.0.1:{box['server'].port}"),
            "event_stream": EventStreamResource(events_db=EVENTS_DB)}


def _append(box, day: int, n: int, user: int = 7, first_second: int = 0) -> list[str]:
    with contextlib.closing(box["server"].endpoint.client(db=EVENTS_DB)) as c:
        return [stream.append(c, stream.Event(user, 10 + i, _ts(day, first_second + i), i % 3 - 1))[0]
                for i in range(n)]


def _land(resources, day: int, **config):
    result = dg.materialize([live_interactions], resources=resources, partition_key=_key(day),
                            run_config={"ops": {"live_interactions": {"config": config}}} if config else None)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks and all(e.passed for e in checks.values()), {n: e.description for n, e in checks.items()}
    return result.asset_materializations_for_node("live_interactions")[0].metadata


def _landed(resources, day: int):
    return ArtifactStore(resources["artifacts"].root).read_parquet(paths.live_interactions(day))


def test_events_land_exactly_once_across_new_events_restarts_and_reruns(resources, server):
    day2 = _append(server, 2, 5) + _append(server, 2, 1, user=-1, first_second=50)
    day3 = _append(server, 3, 3)
    meta = _land(_resources(resources, server), 2)
    assert (meta["rows"].value, meta["new_rows"].value, meta["anonymous_clicks"].value) == (6, 6, 1)
    assert _landed(_resources(resources, server), 2)["event_id"].tolist() == day2

    day2 += _append(server, 2, 4, first_second=100)
    day3 += _append(server, 3, 2, first_second=100)
    _restart(server)  # Valkey restarts from its append-only file; the resources are built anew, as in a new run
    meta = _land(_resources(resources, server), 2)
    assert (meta["rows"].value, meta["new_rows"].value, meta["previous_rows"].value) == (10, 4, 6)
    assert meta["stream_entries_scanned"].value == 6  # only what arrived after the file's high-water mark
    frame = _landed(_resources(resources, server), 2)
    assert frame["event_id"].tolist() == day2 and frame["event_id"].is_unique
    assert set(frame.columns) == set(landing.COLUMNS) and (frame["click"] == 1).all()
    assert sorted(frame["timestamp"]) == sorted([_ts(2, s) for s in (*range(5), 50, *range(100, 104))])

    again = _land(_resources(resources, server), 2)  # nothing new: the same file
    assert (again["rows"].value, again["new_rows"].value, again["stream_entries_scanned"].value) == (10, 0, 0)
    assert _land(_resources(resources, server), 3)["rows"].value == 5
    assert _landed(_resources(resources, server), 3)["event_id"].tolist() == day3


def test_a_run_that_dies_before_publishing_changes_nothing_and_the_next_one_lands_everything(
        resources, server, monkeypatch):
    ids = _append(server, 1, 3)
    _land(_resources(resources, server), 1)
    ids += _append(server, 1, 2, first_second=10)

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(landing, "write_landed", crash)
    failed = dg.materialize([live_interactions], resources=_resources(resources, server), partition_key=_key(1),
                            raise_on_error=False)
    assert not failed.success
    assert _landed(_resources(resources, server), 1)["event_id"].tolist() == ids[:3]
    monkeypatch.undo()
    assert _land(_resources(resources, server), 1)["new_rows"].value == 2
    assert _landed(_resources(resources, server), 1)["event_id"].tolist() == ids


def test_trimming_removes_only_landed_entries_and_rerunning_a_trimmed_day_keeps_its_rows(resources, server):
    day1, day2 = _append(server, 1, 3), _append(server, 2, 2)
    res = _resources(resources, server)
    meta = _land(res, 1, retention_hours=0.0)
    # day 1's entries are in its file and old enough; day 2 was never landed, so its entries stay
    assert meta["stream_entries_trimmed"].value == 3 and meta["stream_length"].value == 2
    again = _land(res, 1, retention_hours=0.0)
    assert again["rows"].value == 3 and _landed(res, 1)["event_id"].tolist() == day1
    assert _land(res, 2, retention_hours=0.0)["rows"].value == 2
    assert _landed(res, 2)["event_id"].tolist() == day2
    with contextlib.closing(server["server"].endpoint.client(db=EVENTS_DB)) as c:
        assert stream.length(c) == 0


def test_retention_keeps_recent_entries_even_when_landed(resources, server):
    _append(server, 1, 2)
    meta = _land(_resources(resources, server), 1)  # default retention: 48 h of arrival time
    assert meta["stream_entries_trimmed"].value == 0 and meta["stream_length"].value == 2


def test_an_interleaved_day_stops_trimming_at_its_first_unlanded_entry(resources, server):
    a = _append(server, 1, 2)
    b = _append(server, 2, 1)
    c = _append(server, 1, 2, first_second=10)
    store = ArtifactStore(resources["artifacts"].root)
    with contextlib.closing(server["server"].endpoint.client(db=EVENTS_DB)) as client:
        landing.land_day(store, client, 1, start_epoch())
        removed = landing.trim_landed(client, store, start_epoch(), older_than_ms=2**50)
        assert removed == 2  # up to (not including) the day-2 entry, which no file holds yet
        left = [e.event_id for batch in stream.read_after(client) for e in batch]
    assert left == b + c
    assert a  # landed and trimmed


def _tick(valkey, event_stream, cursor=None):
    with dg.build_sensor_context(cursor=cursor, resources={"valkey": valkey, "event_stream": event_stream}) as ctx:
        return live_events_sensor(ctx)


def test_the_sensor_requests_the_days_that_received_clicks_and_keeps_today_pending(resources, server):
    import time

    from recsys_assets.defs.partitions import START_DATE
    from recsys_assets.lib.settings import partition_key

    res = _resources(resources, server)
    _append(server, 2, 2)
    _append(server, 5, 1)
    first = _tick(res["valkey"], res["event_stream"])
    assert sorted(r.partition_key for r in first.run_requests) == [_key(2), _key(5)]
    assert parse_cursor(first.cursor)[1] == []

    quiet = _tick(res["valkey"], res["event_stream"], first.cursor)
    assert not quiet.run_requests and "no new clicks" in quiet.skip_reason.skip_message

    # a click of a day that is not over yet (its partition does not exist): pending until it does
    today = (int(time.time()) - start_epoch()) // 86_400
    _append(server, today, 1)
    _append(server, 2, 1, first_second=30)
    later = _tick(res["valkey"], res["event_stream"], quiet.cursor)
    assert [r.partition_key for r in later.run_requests] == [_key(2)]
    assert json.loads(later.cursor)["pending"] == [partition_key(today, START_DATE)]
    assert len({r.run_key for r in first.run_requests + later.run_requests}) == 3
    # the pending day stays in the cursor while there is nothing else to do
    still = _tick(res["valkey"], res["event_stream"], later.cursor)
    assert not still.run_requests and json.loads(still.cursor)["pending"] == [partition_key(today, START_DATE)]


def test_the_sensor_skips_without_starting_a_stopped_embedded_valkey(tmp_path):
    valkey = ValkeyResource(data_dir=str(tmp_path / "valkey"), port=free_port())
    result = _tick(valkey, EventStreamResource())
    assert "not running" in result.skip_message
    assert not (tmp_path / "valkey").exists()


def test_the_sensor_does_not_read_a_valkey_of_another_artifact_root(tmp_path, server):
    valkey = ValkeyResource(data_dir=str(tmp_path / "another-root" / "valkey"), port=server["server"].port)
    result = _tick(valkey, EventStreamResource())
    assert "already serves the data folder" in result.skip_message


def test_checks_catch_duplicates_and_days_out_of_place():
    frame = landing.events_frame([stream.Event(1, 2, _ts(4), 0, "1-0"), stream.Event(1, 2, _ts(5), 0, "1-0")])
    results = {r.check_name: r for r in _checks(frame, 4, "day_04")}
    assert not results["unique_event_ids"].passed and "1 duplicated" in results["unique_event_ids"].description
    assert not results["value_ranges"].passed and "not on day 04" in results["value_ranges"].description
    assert results["schema"].passed


def test_a_day_file_not_written_by_the_lander_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    store.write_parquet(paths.live_interactions(3), landing.events_frame([]))
    with pytest.raises(ValueError, match="no stream high-water mark"):
        landing.read_landed(store, 3)
