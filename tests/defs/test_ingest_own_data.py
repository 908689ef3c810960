"""The ingest assets over a shop's own folder (``WorldResource.source``), through Dagster with real resources."""

import dagster as dg
import numpy as np
import pytest

from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.defs.ingest.sources import ID_MAP_POOL
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.sources.id_maps import load_id_map
from tests.lib.test_sources import ITEMS_CSV, SEED, _write_source

CATALOGUE = [ingest.items, ingest.item_descriptions, ingest.item_images]


@pytest.fixture()
def own(tmp_path):
    folder = _write_source(tmp_path / "shop")
    return {"artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")),
            "world": WorldResource(seed=SEED, source=str(folder))}, folder


def _checks(result):
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def _day(resources, key):
    result = dg.materialize([ingest.raw_interactions], resources=resources, partition_key=key,
                            selection=[ingest.raw_interactions])
    assert result.success
    checks = _checks(result)
    assert checks and all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items()}
    by_asset = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node(
        "raw_interactions")}
    assert by_asset["users"]["rows"].value > 0  # the day's users reached the users table (and its lineage)
    return by_asset["raw_interactions"]


def test_own_folder_through_the_ingest_assets(own):
    resources, folder = own
    store = ArtifactStore(resources["artifacts"].root)
    result = dg.materialize(CATALOGUE, resources=resources)
    assert result.success
    checks = _checks(result)
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items()}
    items_meta = result.asset_materializations_for_node("items")[0].metadata
    assert items_meta["quarantined: not a non-negative number"].value == 1
    assert items_meta["quarantine/items.parquet"].value.endswith("raw/quarantine/items.parquet")
    images_meta = result.asset_materializations_for_node("item_images")[0].metadata
    assert images_meta["images"].value == 0 and images_meta["has_images"].value is False
    assert "text embeddings only" in images_meta["notes"].value
    assert not store.exists(paths.ITEM_IMAGES)
    item_map = load_id_map(store, paths.ITEM_ID_MAP, "item")
    assert item_map.source_ids == ("SKU-001", "SKU-002", "SKU-003", "SKU-005")  # SKU-004 quarantined

    # Before any day (no users file), the users table is empty and says why; each day then adds its users.
    early = dg.materialize([ingest.users], resources=resources)
    assert early.success and all(c.passed for c in _checks(early).values())
    assert len(store.read_parquet(paths.USERS)) == 0

    day0 = _day(resources, "2026-01-01")
    assert len(store.read_parquet(paths.USERS)) == len(load_id_map(store, paths.USER_ID_MAP, "user")) > 0
    assert day0["duplicate_events"].value >= 1
    assert day0["events_for_unknown_items"].value == 1
    assert day0["rows_quarantined"].value == 1  # the unknown event type ("view")
    assert "mean_true_p_click" not in day0  # no truth for own data
    assert store.read_parquet(paths.quarantine(0))["column"].tolist() == ["event"]
    undated = store.read_parquet(paths.UNDATED_QUARANTINE)  # rows without a day: the malformed line, "yesterday"
    assert undated["reason"].str.contains("malformed line").any() and len(undated) == 2
    assert day0["quarantine/undated.parquet"].value.endswith(paths.UNDATED_QUARANTINE)
    ids_day0 = store.read_parquet(paths.raw_interactions(0))[["user_id", "item_id"]]
    assert (ids_day0["user_id"] == -1).any()  # anonymous rows stay, as -1
    users_before = load_id_map(store, paths.USER_ID_MAP, "user")

    _day(resources, "2026-01-02")
    users_after = load_id_map(store, paths.USER_ID_MAP, "user")
    assert users_after.source_ids[:len(users_before)] == users_before.source_ids and len(users_after) > len(users_before)

    result = dg.materialize([ingest.users], resources=resources)
    assert result.success and all(c.passed for c in _checks(result).values()), _checks(result)
    users = store.read_parquet(paths.USERS)
    assert len(users) == len(users_after) and users["age"].isna().all() and set(users["gender"]) == {"U"}
    assert result.asset_materializations_for_node("users")[0].metadata["has_users_table"].value is False

    # A re-run of day 0 and of the catalogue keeps every id.
    _day(resources, "2026-01-01")
    again = store.read_parquet(paths.raw_interactions(0))[["user_id", "item_id"]]
    np.testing.assert_array_equal(again.to_numpy(), ids_day0.to_numpy())
    assert dg.materialize(CATALOGUE, resources=resources).success
    assert load_id_map(store, paths.ITEM_ID_MAP, "item") == item_map
    assert load_id_map(store, paths.USER_ID_MAP, "user") == users_after


def test_a_missing_required_column_fails_naming_the_file(own):
    resources, folder = own
    (folder / "items.csv").write_text(ITEMS_CSV.replace("price", "cost", 1))
    result = dg.materialize([ingest.items], resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("items").error
    assert "items.csv" in failure.message and "price" in failure.message


def test_the_id_map_writers_share_one_pool():
    for asset in (ingest.items, ingest.users, ingest.raw_interactions):
        assert asset.op.pool == ID_MAP_POOL, asset.key


def test_own_days_reach_the_masked_interactions_and_the_feast_users_table(own):
    """Past ingest: top_category over the shop's categories, masking with no known ages, Feast's users table."""
    from recsys_assets.defs.feature_store import tables
    from recsys_assets.defs.features.assets import user_top_category
    from recsys_assets.defs.transforms.assets import masked_interactions
    from recsys_assets.lib import masking

    resources, _ = own
    store = ArtifactStore(resources["artifacts"].root)
    assert dg.materialize(CATALOGUE, resources=resources).success
    for key in ("2026-01-01", "2026-01-02"):
        _day(resources, key)
    assert dg.materialize([ingest.users], resources=resources).success
    for key in ("2026-01-01", "2026-01-02"):
        result = dg.materialize([user_top_category, masked_interactions], resources=resources, partition_key=key)
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations()), key
    users = store.read_parquet(paths.USERS)
    assert masking.training_mean_age(users, 8) == masking.NO_KNOWN_AGE  # no users file: no age known
    masked = store.read_parquet(paths.masked_interactions(0))
    assert (masked["age"] == masking.NO_KNOWN_AGE).all() and set(masked["gender"]) == {-1}
    assert set(masked["category_l1"]) <= {"home", "apparel", "outdoors"}
    top = store.read_parquet(paths.top_category(1))["top_category"]
    assert top.max() < 3  # codes of the shop's 3 categories, not the generator's 20
    feast_users = tables.users_table(users, masking.training_mean_age(users, 8))
    assert not tables.value_problems({"users": feast_users}, ("apparel", "home", "outdoors"))


def test_a_source_with_images_gets_them_copied_and_a_missing_one_noted(own):
    from PIL import Image

    resources, folder = own
    (folder / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "img" / "kettle.png")
    lines = ITEMS_CSV.splitlines()
    rows = [lines[0] + ",image"] + [line + (",img/kettle.png" if line.startswith("SKU-001") else
                                            ",img/missing.png" if line.startswith("SKU-002") else ",")
                                    for line in lines[1:]]
    (folder / "items.csv").write_text("\n".join(rows) + "\n")
    result = dg.materialize(CATALOGUE, resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("item_images")[0].metadata
    assert (meta["images"].value, meta["has_images"].value, meta["images_unreadable"].value) == (1, True, 1)
    assert "missing.png" in meta["notes"].value
    store = ArtifactStore(resources["artifacts"].root)
    assert store.list(paths.ITEM_IMAGES) == [paths.item_image(0)]
