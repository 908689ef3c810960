import dagster as dg

from recsys_assets.definitions import build_definitions, defs
from recsys_assets.lib.settings import Settings

EXPECTED_ASSETS = {"items", "item_descriptions", "item_images", "users", "raw_interactions", "merlin_environment"}


def test_definitions_load_and_name_every_asset():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert EXPECTED_ASSETS <= keys


def test_raw_interactions_is_daily_partitioned_from_the_start_date():
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("raw_interactions"))
    partitions = node.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.get_first_partition_key() == "2026-01-01"


def test_ingest_checks_are_blocking():
    checks = {(c.asset_key.to_user_string(), c.name): c for c in defs.resolve_asset_graph().asset_check_keys}
    assert ("raw_interactions", "schema") in checks
    spec = next(s for a in defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.check_specs
                if s.asset_key == dg.AssetKey("raw_interactions") and s.name == "schema")
    assert spec.blocking


def test_daily_schedule_targets_the_partitioned_job():
    schedule = defs.resolve_schedule_def("daily_ingest_schedule")
    assert schedule.job_name == "daily_ingest_job"


def test_k8s_profile_builds_the_same_graph_with_gpu_pods():
    k8s = build_definitions(Settings(profile="k8s", artifacts="s3://bucket/recsys"))
    assert {k.to_user_string() for k in k8s.resolve_asset_graph().get_all_asset_keys()} >= EXPECTED_ASSETS
    merlin = k8s.resources["merlin"]
    spec = merlin.pod_spec()
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert merlin.command("recsys_assets.ml.env_report")[0] == "python"
    assert k8s.resources["artifacts"].root == "s3://bucket/recsys"
