"""The weekly retrain refits the NVTabular vocabularies on a sliding window and releases them with the models.

- Pure (no merlin env): the window is formed from the newest days, names the missing ones, and the retrain job
  holds the refit, the window's transform and the training as one unpartitioned run with ``window: true``.
- Merlin env + a real tritonserver, tiny world (models first trained on days 00-05, validated on 06-07; days 08
  and 09 arrive later): ``full_retrain_job``'s assets refit the workflows on days 02-07 (masked the way the
  original train days are) and validate on 08-09. A user and an item first seen after the original fit land on
  the OOV row in release 1's compiled transforms and on rows of their own in the retrained release 2, which
  changes the transforms, both towers, the ranker and the index together. Release 1 is still fine-tuned in its
  own vocabulary after the refit (its archived workflows: the item vectors stay bit-identical), the promotion
  switches the whole set (every answer from release 2, every changed model at release 2's version), and release
  2 is then fine-tuned in *its* vocabulary (days outside the window transformed with its snapshot workflows).
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.index import assets as index_assets
from recsys_assets.defs.release import releases
from recsys_assets.defs.resources import MerlinRunner
from recsys_assets.defs.training import assets as training
from recsys_assets.defs.training import jobs
from recsys_assets.defs.transforms import assets as transforms
from recsys_assets.lib import paths, retrain
from recsys_assets.release import records, repository
from recsys_assets.lib.feature_spec import FIRST_INDEX, OOV_INDEX, USER_HISTORY
from recsys_assets.release import deploy
from recsys_assets.release.repository import ENSEMBLE, MODELS
from recsys_assets.serving.transforms import CompiledTransforms
from tests.defs.test_finetune import FINETUNE, _checks, _ports, _promote, _resources, answers_of
from tests.support.roots import copy_root
from tests.support.runs import step_failures


# -- pure ------------------------------------------------------------------------------------------------------
def test_the_window_is_the_newest_days_and_names_what_is_missing():
    assert retrain.window_days(range(0, 14)) == (list(range(2, 11)), [11, 12, 13])
    assert retrain.window_days(range(0, 20), newest_day=15, train_days=4, validation_days=2) == \
        ([10, 11, 12, 13], [14, 15])
    with pytest.raises(retrain.WindowError, match="days 05, 06"):
        retrain.window_days([d for d in range(0, 14) if d not in (5, 6)])
    with pytest.raises(retrain.WindowError, match="before day 00"):
        retrain.window_days(range(0, 5))


def test_the_retrain_job_refits_transforms_and_trains_on_the_window_in_one_run():
    config = jobs.retrain_run_config(ops={"dlrm_model": {"epochs": 1}}, window_train_days=6)
    ops = config["ops"]
    assert ops["nvt_workflows"]["config"] == {"window": True, "window_train_days": 6}
    assert ops["dlrm_model"]["config"] == {"window": True, "epochs": 1}
    assert all(ops[name]["config"]["window"] for name in jobs.WINDOWED)
    assert {"nvt_workflows", "serving_transforms", "retrain_transformed_days", "retrained_release"} <= \
        set(jobs.FULL_RETRAIN_ASSETS)


def test_a_day_is_read_in_the_vocabulary_it_was_made_with(tmp_path):
    from recsys_assets.lib.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    store.write_bytes(f"{paths.transformed_interactions(3)}/schema.pbtxt", b"x")
    store.write_bytes(f"{paths.transformed_interactions(4)}/schema.pbtxt", b"x")
    retrain.record_day_vocabulary(store, 3, "old")
    assert retrain.record_unrecorded(store, "old") == [4]
    assert retrain.day_source(store, 3, "old") == {"transformed": paths.transformed_interactions(3)}
    # in another vocabulary: the retrain window's copy when it has one in that vocabulary, else the masked table
    assert retrain.day_source(store, 3, "new") == {"masked": paths.masked_interactions(3)}
    window = retrain.RetrainWindow(newest_day=4, train_days=[3], validation_days=[4], mean_age=30.0,
                                   masked={"3": "m3", "4": "m4"}, transforms_digest="new")
    store.write_bytes(paths.RETRAIN_WINDOW, window.to_json().encode())
    store.write_bytes(f"{paths.retrain_transformed(4)}/schema.pbtxt", b"x")
    assert retrain.day_source(store, 4, "new") == {"transformed": paths.retrain_transformed(4)}
    assert retrain.day_source(store, 3, "new") == {"masked": paths.masked_interactions(3)}  # no copy written


# -- the retrain end to end (merlin env, tritonserver) ---------------------------------------------------------
RETRAIN_OPS = {
    "two_tower_model": {"variants": ["plain"], "batch_size": 64, "epochs": 6},
    "dlrm_model": {"batch_size": 256, "epochs": 3},
    "query_tower_onnx": {"parity_rows": 128}, "dlrm_onnx": {"parity_rows": 128},
    "retrieval_evaluation": {"max_requests": 2000}, "ranking_evaluation": {"rerank_requests": 100},
    "nvt_workflows": {"part_size": "1MB"}, "retrain_transformed_days": {"part_size": "1MB"},
}
WINDOW = {"window_train_days": 6, "window_validation_days": 2, "window_newest_day": 9}
RETRAIN_ASSETS = [transforms.nvt_workflows, transforms.serving_transforms, transforms.retrain_transformed_days,
                  training.two_tower_model, training.dlrm_model, training.query_tower_onnx, training.dlrm_onnx,
                  index_assets.item_embeddings, index_assets.faiss_index, training.retrieval_evaluation,
                  training.ranking_evaluation, releases.retrained_release]


def _first_seen_after_fit(store, column: str, fit_days, later_days) -> int:
    seen = set(pd.concat([store.read_parquet(paths.raw_interactions(d), columns=[column]) for d in fit_days])[column])
    later = pd.concat([store.read_parquet(paths.raw_interactions(d), columns=[column]) for d in later_days])[column]
    new = [int(v) for v in later.value_counts().index if v >= 0 and v not in seen]
    assert new, f"no {column} first seen in days {list(later_days)}"
    return new[0]


def _user_index(transforms: CompiledTransforms, user_id: int) -> int:
    out = transforms.transform_user([user_id], [35.0], [1], *[[3]] * len(USER_HISTORY))
    return int(np.asarray(out["user_id"]).reshape(-1)[0])


def _item_index(transforms: CompiledTransforms, catalogue: pd.DataFrame, item_id: int) -> int:
    from recsys_assets.lib.feature_spec import ITEM_INPUTS

    row = catalogue.set_index("item_id").loc[[item_id]].reset_index()
    out = transforms.transform_item(*(row[c].to_numpy() for c in ITEM_INPUTS))
    return int(np.asarray(out["item_id"]).reshape(-1)[0])


def _release_transforms(store, release: int) -> CompiledTransforms:
    live = store.local_path(paths.TRITON_REPOSITORY)
    return CompiledTransforms.load(repository.version_dir(live, records.manifest(store, release), "nvt_user_transform") / "transforms")


def _finetune_day_9(resources):
    """Fine-tune the serving release on day 09; the checks that do not depend on the tiny gate must pass."""
    result = dg.materialize([releases.finetuned_models], resources=resources, partition_key="2026-01-10",
                            run_config={"ops": {"finetuned_models": {"config": {
                                **FINETUNE, "first_day": 9, "two_tower_learning_rate": 1e-5}}}},
                            raise_on_error=False)
    assert not step_failures(result), step_failures(result)
    checks = _checks(result, "finetuned_models")
    for name in ("inputs_complete", "item_vectors_unchanged", "onnx_parity"):
        assert checks[name].passed, (name, checks[name].description)
    return result


@pytest.mark.merlin
@pytest.mark.integration
def test_weekly_retrain_new_vocabularies_released_as_a_whole_and_finetunes_keep_their_parents(
        tiny_trained, tmp_path_factory, valkey, monkeypatch):
    from recsys_assets.release.tiny import TinyArtifacts, publish_online_state, serving_environ

    # the session's tiny trained world (tests/defs/conftest.py), copied: workflows fit on the masked days 00-05,
    # days 00-09 transformed with them, models trained on 00-05 and validated on 06-07
    store = copy_root(tiny_trained, tmp_path_factory, "retrain")
    root = Path(store.root)
    ports = _ports()
    # the merlin steps' output in a file: a failed step's error then ends with the last lines of it
    resources = {**_resources(root, ports), "merlin": MerlinRunner(log_dir=str(root.parent / "merlin-logs"))}
    result = dg.materialize([releases.retrained_release], resources=resources, run_config={"ops": {
        "retrained_release": {"config": {"variant": "plain", "eval_day": 9}}}}, raise_on_error=False)
    assert not step_failures(result), step_failures(result)
    assert records.manifest(store, 1) is not None
    original_vectors = np.load(store.local_path(paths.item_embeddings("plain")))

    url = f"redis://127.0.0.1:{valkey.port}"
    monkeypatch.setenv("RECSYS_VALKEY_URL", url)
    world = TinyArtifacts(folder=root, items=store.read_parquet(paths.ITEMS), users=store.read_parquet(paths.USERS),
                          trained=None, start_date="2026-01-01")
    publish_online_state(world, serving_environ(url, root))
    http = f"127.0.0.1:{ports['http_port']}"
    catalogue = store.read_parquet(paths.ITEMS)
    new_user = _first_seen_after_fit(store, "user_id", range(0, 6), (6, 7))
    new_item = _first_seen_after_fit(store, "item_id", range(0, 6), (6, 7))
    day_start = 1767225600 + 10 * 86400
    requests = [{"user_id": u, "device_type": 1, "timestamp": day_start + 3600} for u in (new_user, 1, 2, -1)]
    try:
        assert _promote(root, ports, run_config={"ops": {"served_release": {"config": {"release": 1,
                                                                                       "force": True}}}}).success
        release, answers_1 = answers_of(http, requests)
        assert release == 1
        old = _release_transforms(store, 1)
        assert _user_index(old, new_user) == OOV_INDEX and _item_index(old, catalogue, new_item) == OOV_INDEX

        # the weekly retrain, as full_retrain_job runs it: refit on 02-07, validate on 08-09, one release of it all
        result = dg.materialize(RETRAIN_ASSETS, resources=resources, run_config=jobs.retrain_run_config(
            ops={**RETRAIN_OPS, "retrained_release": {"variant": "plain"}}, **WINDOW), raise_on_error=False)
        assert not step_failures(result), step_failures(result)
        failed = {(e.asset_key.path[-1], e.check_name): e.description for e in result.get_asset_check_evaluations()
                  if not e.passed and e.asset_key.path[-1] != "retrained_release"}
        assert not failed, failed
        window = retrain.read_window(store)
        assert window.train_days == [2, 3, 4, 5, 6, 7] and window.validation_days == [8, 9]
        assert window.transforms_digest == retrain.transforms_digest(store)
        for d in (6, 7):  # validation days before, train days now: cold-start masked like the original ones
            masked = store.read_parquet(window.masked_path(d))
            assert window.masked_path(d) == paths.retrain_masked(d) and masked["masked_user"].mean() > 0.02
        assert retrain.parent_workflows(store, {}, records.manifest(store, 1).inputs["transforms_dir"]) == \
            paths.workflows_archive(records.manifest(store, 1).inputs["transforms_dir"])

        record = records.record(store, 2)
        assert record.kind == "full" and "retrain window" in record.lineage["trained_on"]
        manifest_2 = records.manifest(store, 2)
        changed = set(manifest_2.changed) - {ENSEMBLE}
        assert {"nvt_user_transform", "nvt_item_transform", "query_tower", "dlrm_ranking",
                "faiss_retrieval"} <= changed, changed
        new = _release_transforms(store, 2)
        assert _user_index(new, new_user) >= FIRST_INDEX and _item_index(new, catalogue, new_item) >= FIRST_INDEX
        assert answers_of(http, requests) == (1, answers_1)  # a candidate, not served yet

        # release 1 still serves: its fine-tune reads every day in release 1's vocabulary (archived workflows)
        result = _finetune_day_9(resources)
        assert records.record(store, 3).parent == 1
        assert set(records.manifest(store, 3).changed) - {ENSEMBLE} == {"query_tower", "dlrm_ranking"}
        assert np.array_equal(np.load(store.local_path(records.record(store, 3).lineage["item_vectors"])),
                              original_vectors)

        # the retrained release is promoted as a whole (forced: the tiny gate may go either way)
        assert _promote(root, ports, run_config={"ops": {"served_release": {"config": {"release": 2,
                                                                                       "force": True}}}}).success
        release, answers_2 = answers_of(http, requests)
        assert release == 2 and answers_2 != answers_1
        served = repository.parse_config(store.local_path(paths.TRITON_REPOSITORY) / ENSEMBLE / "config.pbtxt")
        steps = {repository.parse_alias(s.model_name) for s in served.ensemble_scheduling.step}
        assert steps == {(m, manifest_2.models[m]) for m in MODELS if (m, manifest_2.models[m]) in steps}
        assert {m for m, _ in steps} >= changed
        assert all(v == manifest_2.models[m] for m, v in steps)

        # ... and fine-tuned in its own vocabulary: days outside the window transformed with its snapshot
        result = _finetune_day_9(resources)
        meta = result.asset_materializations_for_node("finetuned_models")[0].metadata
        assert meta["days_transformed_in_finetune"].value == "[0, 1]"
        assert meta["workflows"].value.endswith("releases/models/0002/workflows")
        assert records.record(store, 4).parent == 2 and records.record(store, 4).lineage["workflows"] == \
            f"{paths.release_models(2)}/workflows"
    finally:
        deploy.stop_local(root)
