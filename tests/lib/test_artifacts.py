import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from recsys_assets.lib import artifacts
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore, ArtifactUnreadable


def test_parquet_round_trip_and_replace(store):
    store.write_parquet("raw/x.parquet", pd.DataFrame({"a": [1, 2, 3]}))
    store.write_parquet("raw/x.parquet", pd.DataFrame({"a": [4]}))  # replaces, never appends
    assert store.read_parquet("raw/x.parquet")["a"].tolist() == [4]
    assert store.list("raw") == ["raw/x.parquet"]


def test_failed_write_publishes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.writing("raw/y.parquet") as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed mid-write")
    assert not store.exists("raw/y.parquet")
    assert store.list("raw") == []


def test_folder_artifact_is_swapped_whole(store):
    for n in (3, 1):
        with store.writing("models/m") as tmp:
            tmp.mkdir()
            for k in range(n):
                (tmp / f"f{k}").write_text(str(k))
    assert store.list("models/m") == ["models/m/f0"]


def test_missing_artifact_says_what_to_do(store):
    with pytest.raises(ArtifactNotFound, match="materialize its asset first"):
        store.local_path("raw/nothing.parquet")


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a/../../b"])
def test_rejects_paths_outside_the_root(store, bad):
    with pytest.raises(ValueError):
        store.uri(bad)


def test_s3_root_is_parsed_without_touching_the_network():
    s3 = ArtifactStore("s3://bucket/some/prefix")
    assert s3.is_s3 and s3.bucket == "bucket" and s3.prefix == "some/prefix"
    assert s3.uri("raw/items.parquet") == "s3://bucket/some/prefix/raw/items.parquet"
    assert s3._key("raw/items.parquet") == "some/prefix/raw/items.parquet"


def test_a_damaged_parquet_file_is_reported_by_its_path_with_what_to_do(store):
    store.write_parquet("raw/interactions/day_00.parquet", pd.DataFrame({"a": range(100)}))
    path = store.local_path("raw/interactions/day_00.parquet")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactUnreadable, match=r"'raw/interactions/day_00.parquet'.*re-materialize"):
        store.read_parquet("raw/interactions/day_00.parquet")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_or_long_gone_writers_are_swept_and_live_ones_kept(store):
    store.write_parquet("raw/x.parquet", pd.DataFrame({"a": [1]}))
    folder = store.local_path("raw/x.parquet").parent
    mine = folder / artifacts._temporary_name("x.parquet")                      # this process: writing
    dead = folder / mine.name.replace(f".{os.getpid()}-", f".{_dead_pid()}-")   # this machine, process gone
    dead_folder = folder / artifacts._temporary_name("m", "old-").replace(f".{os.getpid()}-", f".{_dead_pid()}-")
    elsewhere_fresh = folder / ".tmp-otherhost_1.42-0123abcd-x.parquet"           # another machine: by age only
    elsewhere_old = folder / ".tmp-otherhost_1.42-4567cdef-x.parquet"
    unnamed_old = folder / ".tmp-89abcdef-x.parquet"                             # written before owners were named
    for path in (mine, dead, elsewhere_fresh, elsewhere_old, unnamed_old):
        path.write_bytes(b"half a file")
    (dead_folder / "part").mkdir(parents=True)
    week_ago = time.time() - 7 * 86_400
    for path in (elsewhere_old, unnamed_old):
        os.utime(path, (week_ago, week_ago))

    assert store.list("raw") == ["raw/x.parquet"]                               # listing the folder sweeps it
    assert sorted(p.name for p in folder.iterdir()) == sorted([mine.name, elsewhere_fresh.name, "x.parquet"])


def test_a_read_sweeps_what_a_writer_killed_since_the_last_look_left_behind(store):
    store.write_parquet("raw/x.parquet", pd.DataFrame({"a": [1]}))
    assert store.read_parquet("raw/x.parquet")["a"].tolist() == [1]
    folder = store.local_path("raw/x.parquet").parent
    leftover = folder / artifacts._temporary_name("x.parquet").replace(f".{os.getpid()}-", f".{_dead_pid()}-")
    leftover.write_bytes(b"half a file")
    assert store.read_parquet("raw/x.parquet")["a"].tolist() == [1]
    assert not leftover.exists()
