"""The ingest assets through Dagster with real local resources (the tiny world, a temporary artifact root)."""

import dagster as dg
import pandas as pd

from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore

ALL = [ingest.items, ingest.item_descriptions, ingest.item_images, ingest.users, ingest.raw_interactions]


def _checks(result):
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def test_catalogue_assets(resources):
    result = dg.materialize([ingest.items, ingest.item_descriptions, ingest.item_images, ingest.users],
                            resources=resources)
    assert result.success
    checks = _checks(result)
    assert checks and all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items()}
    store = ArtifactStore(resources["artifacts"].root)
    assert len(store.read_parquet(paths.ITEMS)) == 2465
    assert len(store.list(paths.ITEM_IMAGES)) == 2465
    meta = result.asset_materializations_for_node("users")[0].metadata
    assert meta["rows"].value == len(store.read_parquet(paths.USERS))


def test_two_partitions_then_rerun_is_idempotent(resources):
    store = ArtifactStore(resources["artifacts"].root)
    for key in ("2026-01-01", "2026-01-02"):
        result = dg.materialize([ingest.raw_interactions], resources=resources, partition_key=key,
                                selection=[ingest.raw_interactions])
        assert result.success
        assert all(c.passed for c in _checks(result).values())
        meta = result.asset_materializations_for_node("raw_interactions")[0].metadata
        assert 0.04 < meta["ctr"].value < 0.12
    first = store.read_parquet(paths.raw_interactions(1))
    dg.materialize([ingest.raw_interactions], resources=resources, partition_key="2026-01-02",
                   selection=[ingest.raw_interactions])
    again = store.read_parquet(paths.raw_interactions(1))
    pd.testing.assert_frame_equal(first, again)  # replaced, not appended
    assert again["interaction_id"].is_unique
    assert sorted(store.list("raw/interactions")) == [paths.raw_interactions(0), paths.raw_interactions(1)]
    truth = store.read_parquet(paths.interactions_truth(1))
    assert len(truth) == len(again)


def test_broken_rows_fail_a_blocking_check_naming_file_and_column(resources, monkeypatch):
    from recsys_assets.lib.generator import World

    real = World.generate_day

    def broken(self, day):
        df, truth = real(self, day)
        df.loc[0, "item_id"] = 99_999
        return df, truth

    monkeypatch.setattr(World, "generate_day", broken)

    @dg.asset(deps=[ingest.raw_interactions], partitions_def=ingest.raw_interactions.partitions_def)
    def downstream():
        raise AssertionError("must not run on a partition whose blocking check failed")

    result = dg.materialize([ingest.raw_interactions, downstream], resources=resources, partition_key="2026-01-03",
                            raise_on_error=False)
    check = _checks(result)[("raw_interactions", "id_ranges")]
    assert not check.passed
    desc = check.metadata["description"].value
    assert "day_02.parquet" in desc and "item_id" in desc
    assert not result.asset_materializations_for_node("downstream")
