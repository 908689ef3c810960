"""The code location as Dagster loads it: a snapshot of asset keys, jobs, schedules and sensors, and the gates.

A change to any of these sets is a change to what people run and see in the UI: update the snapshot on purpose.
"""

import dagster as dg

from recsys_assets.definitions import build_definitions, defs
from recsys_assets.lib.settings import Settings

ASSETS = {
    "platform": {"merlin_environment"},
    "ingest": {"items", "item_descriptions", "item_images", "users", "raw_interactions"},
    "features": {"user_top_category"},
    "transforms": {"masked_interactions", "nvt_workflows", "serving_transforms", "transformed_interactions",
                   "retrain_transformed_days"},
    "embeddings": {"item_clip_embeddings", "item_text_embeddings", "item_multimodal_embeddings", "daily_item_content"},
    "feature_store": {"offline_features", "online_features", "popularity_tables", "daily_online_features",
                      "daily_popularity_tables"},
    "training": {"two_tower_model", "dlrm_model", "query_tower_onnx", "dlrm_onnx", "retrieval_evaluation",
                 "ranking_evaluation"},
    "index": {"item_embeddings", "faiss_index", "daily_retrieval_index"},
    "release": {"triton_model_repository", "triton_deployment", "finetuned_models", "retrained_release",
                "served_release", "served_list_evaluation"},
    "events": {"live_interactions"},
}
JOBS = {"full_build_job", "backfill_days_job", "daily_job", "full_retrain_job", "serving_job", "promote_release_job",
        "rollback_release_job", "live_interactions_job"}
SCHEDULES = {"daily_schedule": "daily_job", "weekly_retrain_schedule": "full_retrain_job"}
SENSORS = {"new_day_sensor": "daily_job", "live_events_sensor": "live_interactions_job",
           "release_promotion_sensor": "promote_release_job"}
GATES = ("retrieval_evaluation", "ranking_evaluation")


def _job_assets(name: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}


def test_asset_keys_and_groups_are_the_snapshot():
    graph = defs.resolve_asset_graph()
    groups = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == ASSETS


def test_jobs_schedules_and_sensors_are_the_snapshot():
    assert {j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")} == JOBS
    assert {s.name: s.job_name for s in defs.schedules} == SCHEDULES
    assert {s.name: s.job_name for s in defs.sensors} == SENSORS


def test_the_full_build_is_every_layer_and_the_days_are_partitioned():
    from recsys_assets.defs.platform.jobs import BUILD_LAYERS

    assert _job_assets("full_build_job") == {a for layer in BUILD_LAYERS for a in layer.assets}
    graph = defs.resolve_asset_graph()
    for layer in BUILD_LAYERS:  # a layer is all daily-partitioned (run per day) or all unpartitioned (run once)
        partitioned = {graph.get(dg.AssetKey(a)).partitions_def is not None for a in layer.assets}
        assert partitioned == {layer.days is not None}, layer.name


def test_the_evaluation_gates_are_upstream_of_the_releases_they_judge_in_the_same_job():
    """A blocking check stops only what runs after it in the same run: the gates must be parents AND selected."""
    graph = defs.resolve_asset_graph()
    for release, jobs in (("triton_model_repository", ("serving_job", "full_build_job")),
                          ("retrained_release", ("full_retrain_job",))):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(release)).parent_keys}
        assert set(GATES) <= parents, release
        for job in jobs:
            assert set(GATES) | {release} <= _job_assets(job), job
    specs = {(s.asset_key.to_user_string(), s.name): s for a in defs.assets if isinstance(a, dg.AssetsDefinition)
             for s in a.check_specs}
    for gate in GATES:
        for check in ("inputs_complete", "beats_popularity", "no_regression"):
            assert specs[(gate, check)].blocking, (gate, check)


def test_raw_interactions_is_daily_partitioned_from_the_start_date():
    node = defs.resolve_asset_graph().get(dg.AssetKey("raw_interactions"))
    assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
    assert node.partitions_def.get_first_partition_key() == "2026-01-01"


def test_ingest_checks_are_blocking():
    spec = next(s for a in defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.check_specs
                if s.asset_key == dg.AssetKey("raw_interactions") and s.name == "schema")
    assert spec.blocking


def test_k8s_profile_builds_the_same_graph_with_gpu_pods():
    k8s = build_definitions(Settings(profile="k8s", artifacts="s3://bucket/recsys"))
    assert {k.to_user_string() for k in k8s.resolve_asset_graph().get_all_asset_keys()} == set().union(
        *ASSETS.values())
    merlin = k8s.resources["merlin"]
    spec = merlin.pod_spec()
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert merlin.command("recsys_assets.ml.env_report")[0] == "python"
    assert k8s.resources["artifacts"].root == "s3://bucket/recsys"


def test_every_asset_check_and_job_has_a_description():
    """The UI shows these beside every check and job; "No description provided" helps nobody."""
    graph = defs.resolve_asset_graph()
    checks = [graph.get_check_spec(key) for key in graph.asset_check_keys]
    assert len(checks) > 60 and not [s.key.to_user_string() for s in checks if not (s.description or "").strip()]
    assert not [name for name in JOBS if not (defs.resolve_job_def(name).description or "").strip()]
