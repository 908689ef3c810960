import contextlib

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib import popularity as pop
from recsys_assets.lib.valkey_server import EmbeddedValkey, KeyLayout, free_port

ITEMS = pd.DataFrame({
    "item_id": [0, 1, 2, 3, 4, 5],
    "category_l1": ["books", "books", "beauty", "beauty", "books", "beauty"],
    "category_l2": ["novel", "atlas", "soap", "soap", "novel", "cream"],
    "available_from_day": [0, 0, 0, 5, 0, 2],
})
# clicks: item 3 x4 (cold until day 5), item 1 x3, items 0 and 2 x2 (tie), item 5 x1, item 4 never
CLICKS = np.array([3, 3, 3, 3, 1, 1, 1, 0, 2, 2, 0, 5])


@pytest.fixture()
def tables():
    return pop.build_tables(CLICKS, ITEMS, window=range(9))


@pytest.mark.parametrize(
    "day, l1, l2, expected",
    [
        (None, None, None, [3, 1, 0, 2, 5, 4]),  # the 0/2 tie goes to the lower id
        (4, None, None, [1, 0, 2, 5, 4]),        # item 3 is not available before day 5
        (1, None, None, [1, 0, 2, 4]),
        (9, "beauty", None, [3, 2, 5]),
        (9, None, "novel", [0, 4]),
    ],
)
def test_ranking(tables, day, l1, l2, expected):
    assert pop.ranking(tables, day=day, category_l1=l1, category_l2=l2) == expected


def test_scores_keep_click_counts_in_their_integer_part(tables):
    df = tables.items
    assert (np.floor(df["score"]).astype(int) == df["clicks"]).all()
    assert df["score"].is_unique
    assert tables.clicks == len(CLICKS)


@pytest.mark.parametrize(
    "clicks, items, message",
    [
        (np.array([0, 9]), ITEMS, "outside the catalogue"),
        (CLICKS, ITEMS.drop(columns="category_l2"), "category_l2"),
        (CLICKS, ITEMS.iloc[::-1], "0..n-1"),
    ],
)
def test_bad_inputs_are_named(clicks, items, message):
    with pytest.raises(ValueError, match=message):
        pop.build_tables(clicks, items, window=[0])


def _roundtrip(client, prefix, tables):
    version = pop.publish(client, prefix, tables)
    assert pop.current_version(client, prefix) == version
    for day, l1, l2 in [(9, None, None), (4, None, None), (9, "beauty", None), (3, None, "soap")]:
        expected = pop.ranking(tables, day=day, category_l1=l1, category_l2=l2)
        assert pop.top_items(client, prefix, 10, day, l1, l2) == expected
        assert pop.top_items(client, prefix, 2, day, l1, l2) == expected[:2]
    return version


def test_publish_and_read_back_in_order(valkey, tables):
    layout = KeyLayout.make()
    with contextlib.closing(valkey.endpoint.client(db=layout.popularity.db)) as client:
        _roundtrip(client, layout.popularity.prefix, tables)
        meta = pop.metadata(client, layout.popularity.prefix)
        assert meta["clicks"] == len(CLICKS) and meta["items"] == 6 and meta["window"] == list(range(9))
        with pytest.raises(pop.PopularityNotPublished, match="unknown category"):
            pop.top_items(client, layout.popularity.prefix, 3, 9, category_l1="tools")
    # other databases stay untouched
    with contextlib.closing(valkey.endpoint.client(db=0)) as client:
        assert client.dbsize() == 0


def test_a_new_version_replaces_the_old_one_and_old_versions_are_dropped(valkey, tables):
    prefix = KeyLayout.make().popularity.prefix
    with contextlib.closing(valkey.endpoint.client(db=3)) as client:
        with pytest.raises(pop.PopularityNotPublished, match="materialize popularity_tables"):
            pop.top_items(client, prefix, 3, 9)
        v1 = pop.publish(client, prefix, tables)
        newer = pop.build_tables(np.array([4, 4, 4, 4, 4, 4, 4, 4, 4]), ITEMS, window=[8])
        v2 = pop.publish(client, prefix, newer)
        assert pop.top_items(client, prefix, 1, 9) == [4]
        assert client.exists(f"{prefix}v{v1}:global"), "the previous version stays for readers mid-switch"
        pop.publish(client, prefix, tables)
        assert not client.keys(f"{prefix}v{v1}:*"), "versions older than the previous one are dropped"
        assert client.exists(f"{prefix}v{v2}:global")
        assert pop.top_items(client, prefix, 3, 9) == [3, 1, 0]


def test_cluster_layout_on_a_single_node_cluster(tmp_path, tables):
    layout = KeyLayout.make(cluster=True)
    with EmbeddedValkey(tmp_path / "cluster", port=free_port(cluster=True), cluster=True) as server:
        assert server.endpoint.is_cluster()
        with contextlib.closing(server.endpoint.client(cluster=True)) as client:
            _roundtrip(client, layout.popularity.prefix, tables)
            assert all(k.startswith(layout.popularity.prefix.encode()) for k in client.keys("*"))
