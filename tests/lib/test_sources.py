"""A shop's own data (lib.sources): a folder in the contract's shape, written here, through the normalisation."""

import datetime as dt
import json
import sys

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib import paths
from recsys_assets.lib import validation
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.settings import Settings, day_start, start_epoch
from recsys_assets.lib.sources.events import (SOURCE_CLICK_ONLY, SOURCE_SAMPLED, parse_timestamps, read_events,
                                            sample_negatives)
from recsys_assets.lib.sources.files import SourceError, SourceFolder
from recsys_assets.lib.sources.id_maps import IdMap, IdMapError, load_id_map, save_id_map
from recsys_assets.lib.sources.ingest import configured_source, ingest_catalogue, ingest_day, ingest_users

START = dt.date(2026, 1, 1)
SEED = 7
ITEMS_CSV = """item_id,title,description,category,price,gender,available_from,colour_code
SKU-001,Red kettle,A red kettle for the kitchen,home/kitchen,24.5,,,x
SKU-002,Blue shirt,A blue cotton shirt,apparel/shirts,19.0,men,,x
SKU-003,Garden hose,Green hose,outdoors,12.0,female,2026-01-03,x
SKU-004,Broken price,No price here,home/kitchen,free,,,x
SKU-005,Desk lamp,A white lamp,home/lighting/desk,30,U,2025-06-01,x
"""
# Day 0 (2026-01-01 UTC) with: offsets, a duplicate, a malformed timestamp, a line with too many fields, anonymous
# rows, an unknown event type, an unknown item, an impression at 23:59:50 UTC clicked just after midnight, and a
# row that is day 1's.
EVENTS_CSV = """user_id,item_id,timestamp,event,device,session_id,referrer
u-alice,SKU-001,2026-01-01T10:00:00+02:00,impression,mobile,s1,x
u-alice,SKU-002,2026-01-01T10:00:05+02:00,impression,mobile,s1,x
u-alice,SKU-001,2026-01-01T10:00:30+02:00,click,mobile,s1,x
u-alice,SKU-001,2026-01-01T10:00:30+02:00,click,mobile,s1,x
,SKU-002,2026-01-01T12:00:00Z,impression,desktop,anon-1,x
,SKU-002,2026-01-01T12:00:09Z,click,desktop,anon-1,x
u-bob,SKU-999,2026-01-01T13:00:00Z,impression,tablet,s2,x
u-bob,SKU-005,yesterday,impression,tablet,s2,x
u-bob,SKU-005,2026-01-01T13:00:00Z,impression,tablet,s2,x,unexpected
u-bob,SKU-005,2026-01-01T13:05:00Z,view,tablet,s2,x
u-carol,SKU-005,2026-01-01T14:00:00Z,click,other,s3,x
u-dave,SKU-001,2026-01-01T23:59:50+00:00,impression,desktop,s4,x
u-dave,SKU-001,2026-01-02T00:00:10+00:00,click,desktop,s4,x
u-erin,SKU-002,2026-01-02T08:00:00+00:00,impression,desktop,s5,x
"""


def _write_source(folder):
    (folder / "events").mkdir(parents=True)
    (folder / "items.csv").write_text(ITEMS_CSV)
    (folder / "events" / "part-000.csv").write_text(EVENTS_CSV)
    # A parquet part with a 0/1 click column, Unix milliseconds and no session ids.
    ms = (day_start(0, start_epoch(START)) + 15 * 3600) * 1000
    pd.DataFrame({"user_id": ["u-frank", "u-frank", "u-alice"], "item_id": ["SKU-002", "SKU-001", "SKU-005"],
                  "timestamp": [ms, ms + 20_000, ms + 40_000], "click": [0, 1, 0],
                  "device": ["phone", "desktop", "mobile"]}).to_parquet(folder / "events" / "part-001.parquet")
    return folder


@pytest.fixture
def world(tmp_path):
    source = SourceFolder(str(_write_source(tmp_path / "shop")))
    store = ArtifactStore(tmp_path / "artifacts")
    return source, store


def _ingest(source, store, days):
    catalogue = ingest_catalogue(source, store, START)
    events = read_events(source, START)  # read once for all the days, as a backfill would
    results = {day: ingest_day(source, store, day, START, SEED, events=events) for day in days}
    users = ingest_users(source, store, START)
    return catalogue, results, users


def test_catalogue_is_normalised_to_the_generator_layout(world):
    source, store = world
    catalogue = ingest_catalogue(source, store, START)
    items = store.read_parquet(paths.ITEMS)
    assert validation.check_schema(items, validation.ITEM_SCHEMA, "items").passed
    assert items["item_id"].tolist() == [0, 1, 2, 3]
    assert items["item_uuid"].tolist() == ["SKU-001", "SKU-002", "SKU-003", "SKU-005"]
    assert items["category_l1"].tolist() == ["home", "apparel", "outdoors", "home"]
    assert items["category_l2"].tolist() == ["kitchen", "shirts", "outdoors", "lighting"]  # one level: its own l2
    assert items["item_gender"].tolist() == ["U", "M", "F", "U"]
    assert items["available_from_day"].tolist() == [0, 0, 2, 0]  # 2026-01-03 is day 2; earlier dates are day 0
    descriptions = store.read_parquet(paths.ITEM_DESCRIPTIONS)
    assert descriptions["colour"].tolist()[:2] == ["red", "blue"]
    quarantine = store.read_parquet(paths.ITEMS_QUARANTINE)
    assert quarantine[["row", "column", "reason"]].values.tolist() == [[4, "price", "not a non-negative number"]]
    assert quarantine["file"].iloc[0].endswith("items.csv")
    assert json.loads(quarantine["values"].iloc[0])["item_id"] == "SKU-004"
    report = catalogue.report.metadata()
    assert report["has_images"] is False and report["items_without_image"] == 4
    assert "colour_code" in report["notes"] and "text embeddings only" in report["notes"]
    assert not store.exists(paths.ITEM_IMAGES)


def test_events_become_a_labelled_day_with_everything_set_aside_counted(world):
    source, store = world
    _, results, _ = _ingest(source, store, [0, 1])
    day0 = store.read_parquet(paths.raw_interactions(0))
    assert validation.check_schema(day0, validation.INTERACTION_SCHEMA, "day 0").passed
    users = load_id_map(store, paths.USER_ID_MAP, "user")
    items = load_id_map(store, paths.ITEM_ID_MAP, "item")
    rows = pd.DataFrame({"user": users.to_source(day0["user_id"]), "item": items.to_source(day0["item_id"]),
                         "timestamp": day0["timestamp"], "click": day0["click"], "device": day0["device_type"],
                         "source": day0["impression_source"]})
    alice = rows[(rows["user"] == "u-alice")].set_index("item")
    # The impression clicked 30 s later is the positive; the duplicate click is removed, not a second positive.
    assert alice.loc["SKU-001", "click"] == 1 and alice.loc["SKU-002", "click"] == 0
    assert alice.loc["SKU-005", "click"] == 0  # the parquet part's label
    assert alice.loc["SKU-001", "timestamp"] == day_start(0, start_epoch(START)) + 8 * 3600  # 10:00+02:00
    anonymous = rows[rows["user"] == ""]
    assert (day0.loc[anonymous.index, "user_id"] == -1).all() and anonymous["click"].tolist() == [1]
    # A click without an impression becomes an impression with click=1; device "other" is unknown (-1).
    carol = rows[rows["user"] == "u-carol"]
    assert carol[["click", "device", "source"]].values.tolist() == [[1, -1, SOURCE_CLICK_ONLY]]
    # The impression at 23:59:50 keeps its click at 00:00:10 the next day, and stays on day 0.
    assert rows[rows["user"] == "u-dave"]["click"].tolist() == [1]
    # "phone" is not a device name: unknown, counted.
    assert rows[(rows["user"] == "u-frank") & (rows["item"] == "SKU-002")]["device"].tolist() == [-1]
    assert day0["interaction_id"].is_unique
    available = store.read_parquet(paths.ITEMS)["available_from_day"].to_numpy()
    check = validation.check_interaction_ranges(day0, "day 0", len(users), available, 0, unknown_allowed=True)
    assert check.passed, check.description
    # The generator's stricter form rejects what own logs legitimately hold: anonymous users, unknown devices.
    strict = validation.check_interaction_ranges(day0, "day 0", len(users), available, 0)
    assert "'user_id' outside 0.." in strict.description and "'device_type'" in strict.description

    report = results[0].report.metadata()
    assert report["duplicate_events"] == 1
    assert report["events_for_unknown_items"] == 1
    assert report["anonymous_rows"] == 1
    assert report["source_unknown_device_values"] == 1
    assert (report["clicks"], report["clicks_without_impression"]) == (5, 1)
    assert report["source_repeat_clicks"] == 0 and report["source_clicks_matched_to_impressions"] == 3
    assert report["rows_of_other_days"] == 1  # u-erin's row is day 1's
    assert report["clicks_only"] is False
    assert "referrer" in report["notes"]
    kept_aside = store.read_parquet(paths.unknown_item_events(0))
    assert kept_aside[["user", "item"]].values.tolist() == [["u-bob", "SKU-999"]]

    quarantine = store.read_parquet(paths.quarantine(0))
    assert quarantine[["row", "column", "reason", "day"]].values.tolist() == [
        [10, "event", "unknown event (expected impression or click)", 0]]
    assert quarantine["file"].iloc[0].endswith("events/part-000.csv")
    assert report["quarantined: unknown event (expected impression or click)"] == 1
    undated = store.read_parquet(paths.UNDATED_QUARANTINE)
    reasons = dict(zip(undated["reason"], undated["column"]))
    assert reasons == {"unparseable timestamp": "timestamp",
                       "malformed line: the number of fields differs from the header": ""}
    assert undated["file"].str.endswith("events/part-000.csv").all()
    assert sorted(undated["row"]) == [8, 9]  # record numbers in the file, the bad line's own included
    assert json.loads(undated[undated["column"] == "timestamp"]["values"].iloc[0])["timestamp"] == "yesterday"
    assert report["undated_rows_in_source"] == 2

    day1 = store.read_parquet(paths.raw_interactions(1))
    assert users.to_source(day1["user_id"]) == ["u-erin"]
    # Day 0's eight rows and the event kept aside for its unknown item are other days' rows for day 1.
    assert len(day0) == 8 and results[1].report.metadata()["rows_of_other_days"] == 9


def test_user_ids_follow_first_appearance_and_a_second_run_keeps_every_id(world, tmp_path):
    source, store = world
    _ingest(source, store, [0, 1])
    users = load_id_map(store, paths.USER_ID_MAP, "user")
    assert users.source_ids == ("u-alice", "u-carol", "u-frank", "u-dave", "u-erin")  # bob's only event is aside
    assert users.first_days == (0, 0, 0, 0, 1)
    day0 = store.read_parquet(paths.raw_interactions(0))
    users_table = store.read_parquet(paths.USERS)
    assert users_table["user_id"].tolist() == [0, 1, 2, 3, 4] and users_table["age"].isna().all()
    assert users_table["signup_day"].tolist() == [0, 0, 0, 0, 1]

    # One more day of events, a new item in the catalogue (it brings SKU-999 back) and a new user.
    folder = tmp_path / "shop"
    (folder / "items.csv").write_text(ITEMS_CSV + "SKU-999,Mystery box,A box,home/storage,5,,,x\n")
    (folder / "events" / "part-002.csv").write_text(
        "user_id,item_id,timestamp,event\nu-zoe,SKU-999,2026-01-03T09:00:00-05:00,click\n"
        "u-alice,SKU-003,2026-01-03T10:00:00Z,impression\n")
    _ingest(source, store, [2, 0])
    again = load_id_map(store, paths.USER_ID_MAP, "user")
    # Earlier ids stay; zoe (day 2) and bob (day 0 re-run: his item now exists) get the next numbers.
    assert again.source_ids[: len(users)] == users.source_ids
    assert again.source_ids[len(users):] == ("u-zoe", "u-bob") and again.first_days[len(users):] == (2, 0)
    items = load_id_map(store, paths.ITEM_ID_MAP, "item")
    assert items.source_ids == ("SKU-001", "SKU-002", "SKU-003", "SKU-005", "SKU-999")
    rerun = store.read_parquet(paths.raw_interactions(0))
    # Day 0 now also holds bob's event for SKU-999 (id 4), and nothing else changed.
    assert len(rerun) == len(day0) + 1 and 4 in set(rerun["item_id"])
    pd.testing.assert_frame_equal(rerun[rerun["item_id"] != 4].drop(columns=["interaction_id", "session_id",
                                                                              "position"]).reset_index(drop=True),
                                  day0.drop(columns=["interaction_id", "session_id", "position"]))
    assert store.read_parquet(paths.unknown_item_events(0)).empty


def test_an_item_missing_from_a_later_catalogue_keeps_its_id_and_row(world, tmp_path):
    source, store = world
    ingest_catalogue(source, store, START)
    (tmp_path / "shop" / "items.csv").write_text(ITEMS_CSV.replace("SKU-002,", "SKU-002-gone,"))
    catalogue = ingest_catalogue(source, store, START)
    items = store.read_parquet(paths.ITEMS)
    assert items["item_uuid"].tolist() == ["SKU-001", "SKU-002", "SKU-003", "SKU-005", "SKU-002-gone"]
    assert catalogue.report.counts["items_kept_from_earlier_catalogue"] == 1


def test_a_click_only_log_gets_seeded_sampled_negatives(tmp_path):
    folder = tmp_path / "shop"
    (folder / "events").mkdir(parents=True)
    (folder / "items.csv").write_text(ITEMS_CSV)
    (folder / "events" / "clicks.csv").write_text(
        "user_id,item_id,timestamp,event\n" + "".join(
            f"u{k},SKU-00{1 + k % 2},{day_start(0, start_epoch(START)) + 60 * k},click\n" for k in range(6)))
    source, store = SourceFolder(str(folder)), ArtifactStore(tmp_path / "artifacts")
    ingest_catalogue(source, store, START)
    first = ingest_day(source, store, 0, START, SEED, negatives_per_click=3)
    second = ingest_day(source, store, 0, START, SEED, negatives_per_click=3)
    assert first.report.flags["clicks_only"] and first.report.counts["sampled_negatives"] == 18
    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    frame = first.interactions
    negatives = frame[frame["impression_source"] == SOURCE_SAMPLED]
    assert (negatives["click"] == 0).all() and len(frame[frame["click"] == 1]) == 6
    assert not negatives["item_id"].isin([2]).any()  # SKU-003 is available from day 2 only
    for _, click in frame[frame["click"] == 1].iterrows():
        mine = negatives[(negatives["user_id"] == click["user_id"]) & (negatives["timestamp"] == click["timestamp"])]
        assert len(mine) == 3 and click["item_id"] not in set(mine["item_id"])


def test_sample_negatives_never_draws_the_clicked_item():
    clicks = pd.DataFrame({"user_id": [0] * 50, "item_id": np.arange(50) % 3, "click": 1, "timestamp": 0})
    negatives = sample_negatives(clicks, np.arange(3), per_click=20, seed=1, day=0)
    repeated = np.repeat(clicks["item_id"].to_numpy(), 20)
    assert len(negatives) == 1000 and not (negatives["item_id"].to_numpy() == repeated).any()
    assert set(negatives["item_id"]) == {0, 1, 2}


@pytest.mark.parametrize("file, text, column", [
    ("items.csv", "item_id,title,description,category\nA,t,d,c\n", "'price'"),
    ("items.csv", "item_id,title,description,price\nA,t,d,1\n", "'category'"),
    ("events/part-000.csv", "user_id,item_id,event\nu,A,click\n", "'timestamp'"),
    ("events/part-000.csv", "user_id,item_id,timestamp\nu,A,2026-01-01T00:00:00Z\n", "'event'"),
])
def test_errors_name_the_file_and_the_column(world, tmp_path, file, text, column):
    source, store = world
    ingest_catalogue(source, store, START)
    (tmp_path / "shop" / file).write_text(text)
    with pytest.raises(SourceError) as error:
        ingest_catalogue(source, store, START) if file == "items.csv" else ingest_day(source, store, 0, START, SEED)
    assert file in str(error.value) and column in str(error.value)


def test_the_setting_picks_the_source(tmp_path):
    assert configured_source(Settings.from_env({})) is None
    folder = configured_source(Settings.from_env({"RECSYS_SOURCE": str(_write_source(tmp_path / "shop"))}))
    assert folder.event_files() == ["events/part-000.csv", "events/part-001.parquet"]


def test_a_missing_folder_or_table_says_what_to_set(tmp_path):
    with pytest.raises(SourceError, match="RECSYS_SOURCE"):
        SourceFolder(str(tmp_path / "nowhere"))
    (tmp_path / "events").mkdir()
    with pytest.raises(SourceError, match="items.csv or items.parquet"):
        SourceFolder(str(tmp_path)).table("items")
    with pytest.raises(SourceError, match="no CSV or parquet files under events/"):
        SourceFolder(str(tmp_path)).event_files()


def test_an_s3_source_reads_through_s3fs(monkeypatch):
    """s3fs (in the lock) serves fsspec's s3 protocol; an environment without it is told what to install. No S3
    is reachable here, so nothing is listed: constructing the folder does not touch the network."""
    import s3fs

    folder = SourceFolder("s3://shop-bucket/exports/2026/")
    assert isinstance(folder.fs, s3fs.S3FileSystem) and folder.root == "shop-bucket/exports/2026"
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as in an environment without the package
    with pytest.raises(SourceError, match="s3fs"):
        SourceFolder("s3://shop-bucket/data")


def test_id_maps_are_append_only():
    first = IdMap("user").extended(["b", "", "a", "b"], day=0)
    assert first.source_ids == ("b", "a") and first.to_int(["a", "", "b"]).tolist() == [1, -1, 0]
    assert first.to_source([0, -1, 1]) == ["b", "", "a"]
    with pytest.raises(IdMapError, match="not mapped"):
        first.to_int(["zz"])
    with pytest.raises(IdMapError, match="outside"):
        first.to_source([2])
    assert first.extended(["a", "c"], day=3).first_days == (0, 0, 3)


def test_save_refuses_a_map_that_renumbers(tmp_path):
    store = ArtifactStore(tmp_path)
    assert save_id_map(store, paths.USER_ID_MAP, IdMap("user").extended(["a", "b"], 0))
    assert not save_id_map(store, paths.USER_ID_MAP, IdMap("user").extended(["a", "b"], 0))
    with pytest.raises(IdMapError, match="renumber"):
        save_id_map(store, paths.USER_ID_MAP, IdMap("user").extended(["b", "a", "c"], 0))
    assert load_id_map(store, paths.USER_ID_MAP, "user").source_ids == ("a", "b")


def test_a_users_file_adds_its_attributes_and_quarantines_what_it_cannot_use(world, tmp_path):
    source, store = world
    (tmp_path / "shop" / "users.csv").write_text(
        "user_id,age,gender,signup_date,segment\nu-alice,34,female,2026-01-02,x\nu-yan,n/a,,,x\n,40,M,,x\n"
        "u-alice,35,F,,x\n")
    _, _, report = _ingest(source, store, [0])
    users = load_id_map(store, paths.USER_ID_MAP, "user")
    assert users.source_ids == ("u-alice", "u-carol", "u-frank", "u-dave", "u-yan")  # events first, then the file
    table = store.read_parquet(paths.USERS).set_index("user_id")
    assert table.loc[0, ["age", "gender", "signup_day"]].tolist() == [34.0, "F", 1]
    assert np.isnan(table.loc[4, "age"]) and table.loc[4, "gender"] == "U" and table.loc[1, "gender"] == "U"
    quarantine = store.read_parquet(paths.USERS_QUARANTINE)
    assert quarantine[["row", "reason"]].values.tolist() == [[3, "missing value"],
                                                             [4, "duplicate user_id (the first row is kept)"]]
    metadata = report.metadata()
    assert metadata["users_age_unreadable"] == 1 and "segment" in metadata["notes"]


NOON = day_start(0, start_epoch(START)) + 12 * 3600


@pytest.mark.parametrize("values, seconds, reason", [
    (["2026-01-01T14:00:00+02:00"], NOON, ""),
    (["2026-01-01T12:00:00Z"], NOON, ""),
    ([str(NOON)], NOON, ""),
    ([str(NOON * 1000 + 999)], NOON, ""),  # milliseconds, the fraction floored
    ([NOON * 1000], NOON, ""),
    (pd.to_datetime([NOON * 10**6], unit="us", utc=True).as_unit("us"), NOON, ""),  # parquet keeps its unit
    (pd.to_datetime([NOON * 1000], unit="ms").as_unit("ms"), NOON, ""),  # no time zone: UTC (noted by the reader)
    (["2026-01-01T12:00:00"], 0, "timestamp without a UTC offset (add Z or +hh:mm)"),
    (["2026-13-01T12:00:00Z"], 0, "unparseable timestamp"),
    (["noon"], 0, "unparseable timestamp"),
    ([""], 0, "missing value"),
])
def test_timestamps_in_every_accepted_form(values, seconds, reason):
    parsed, reasons = parse_timestamps(pd.Series(values))
    assert reasons[0] == reason
    if not reason:
        assert parsed[0] == seconds


def test_item_images_are_copied_as_jpegs_and_a_missing_one_is_counted(tmp_path):
    from PIL import Image

    folder = tmp_path / "shop"
    (folder / "events").mkdir(parents=True)
    (folder / "img").mkdir()
    Image.new("RGBA", (8, 8), (200, 10, 10, 255)).save(folder / "img" / "kettle.png")
    (folder / "items.csv").write_text("item_id,title,description,category,price,image\n"
                                      "SKU-001,Kettle,,home/kitchen,1,img/kettle.png\n"
                                      "SKU-002,Shirt,,apparel,2,img/missing.jpg\nSKU-003,Hose,,outdoors,3,\n")
    store = ArtifactStore(tmp_path / "artifacts")
    catalogue = ingest_catalogue(SourceFolder(str(folder)), store, START)
    assert store.list(paths.ITEM_IMAGES) == [paths.item_image(0)]
    with Image.open(store.local_path(paths.item_image(0))) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    report = catalogue.report.metadata()
    assert report["has_images"] is True and report["images_written"] == 1 and report["images_unreadable"] == 1
    assert report["items_without_image"] == 1 and "img/missing.jpg" in report["notes"]
