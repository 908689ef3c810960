"""Gates that gate: a failed evaluation stops the release it judges, in the job that builds it and on the path the
promotion sensor follows; nothing new is served, and the failed check says why.

The repository and deployment are the real assets over the tiny world's trained artifacts (they would build and
serve it: the control below); the evaluations fail either for real (their validation days were never made, so the
blocking ``inputs_complete`` fails and the gates do not run) or, for a failed quality gate, through a stand-in with
the evaluation's key and blocking checks, because a real evaluation needs trained Merlin models on real days.
"""

import dagster as dg

from recsys_assets.definitions import build_definitions
from recsys_assets.defs.release import assets as release_assets
from recsys_assets.defs.release.sensors import promotion_request
from recsys_assets.defs.resources import ArtifactStoreResource, DeploymentProfileResource, WorldResource
from recsys_assets.defs.release.resources import TritonResource
from recsys_assets.lib import paths
from recsys_assets.release import records
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.settings import Settings
from tests.serving.test_serving_assets import place_trained_artifacts

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _nothing_released(store: ArtifactStore) -> None:
    assert not store.exists(paths.TRITON_REPOSITORY)
    assert not [p for p in store.list(paths.TRITON_RELEASES) if p.endswith(".json")]
    assert not store.exists(paths.SERVED_RELEASE)
    assert records.records(store) == {}


def test_a_failed_evaluation_stops_serving_job_and_says_why(tmp_path, tiny):
    root = tmp_path / "artifacts"
    store = place_trained_artifacts(root, tiny)
    defs = build_definitions(Settings(artifacts=str(root), scale="tiny", seed=7))
    result = defs.resolve_job_def("serving_job").execute_in_process(raise_on_error=False, run_config=QUIET)
    failed = {(c.asset_key.to_user_string(), c.check_name): c.description
              for c in result.get_asset_check_evaluations() if not c.passed}
    assert "transformed_interactions partition" in failed[("retrieval_evaluation", "inputs_complete")]
    assert failed[("retrieval_evaluation", "beats_popularity")] == "not run: inputs_complete failed"
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert "triton_model_repository" not in materialized and "triton_deployment" not in materialized
    _nothing_released(store)

    # the control: the same artifacts build a release when nothing judges them
    alone = dg.materialize([release_assets.triton_model_repository], raise_on_error=False, run_config=QUIET,
                           resources={"artifacts": ArtifactStoreResource(root=str(root)),
                                      "world": WorldResource(seed=7, scale="tiny")})
    assert alone.success and store.exists(paths.triton_release(1))


def _stand_in(name: str, failing: str | None):
    """An evaluation with the real one's key and blocking checks, whose gate ``failing`` fails with a reason."""
    checks = ("inputs_complete", "beats_popularity", "no_regression")

    @dg.asset(name=name, group_name="training",
              check_specs=[dg.AssetCheckSpec(c, asset=name, blocking=True) for c in checks])
    def evaluation() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[
            dg.AssetCheckResult(check_name=c, passed=c != failing,
                                description="recall@100 0.210 < popularity 0.250" if c == failing else "ok")
            for c in checks])

    return evaluation


def test_a_failed_quality_gate_stops_the_repository_and_the_deployment(tmp_path, tiny):
    root = tmp_path / "artifacts"
    store = place_trained_artifacts(root, tiny)
    result = dg.materialize(
        [_stand_in("retrieval_evaluation", "beats_popularity"), _stand_in("ranking_evaluation", None),
         release_assets.triton_model_repository, release_assets.triton_deployment],
        raise_on_error=False, run_config=QUIET,
        resources={"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
                   "profile": DeploymentProfileResource(profile="local"), "triton": TritonResource()})
    [failed] = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert (failed.asset_key.to_user_string(), failed.check_name) == ("retrieval_evaluation", "beats_popularity")
    assert failed.description == "recall@100 0.210 < popularity 0.250"
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert materialized == {"retrieval_evaluation", "ranking_evaluation"}
    _nothing_released(store)


def test_a_failed_evaluation_stops_the_weekly_retrain_before_its_release_so_the_sensor_promotes_nothing(tmp_path,
                                                                                                       tiny):
    root = tmp_path / "artifacts"
    store = place_trained_artifacts(root, tiny)
    defs = build_definitions(Settings(artifacts=str(root), scale="tiny", seed=7))
    result = defs.resolve_job_def("full_retrain_job").execute_in_process(
        raise_on_error=False, run_config=QUIET, asset_selection=[
            dg.AssetKey("retrieval_evaluation"), dg.AssetKey("ranking_evaluation"), dg.AssetKey("retrained_release")])
    failed = {(c.asset_key.to_user_string(), c.check_name): c.description
              for c in result.get_asset_check_evaluations() if not c.passed}
    assert "retrain window" in failed[("retrieval_evaluation", "inputs_complete")]
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert "retrained_release" not in materialized
    _nothing_released(store)
    request, cursor, reason = promotion_request(store, 0)
    assert request is None and reason.startswith("no release newer than 0")
