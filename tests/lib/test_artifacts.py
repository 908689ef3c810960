import pandas as pd
import pytest

from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore


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
