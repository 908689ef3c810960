"""The model, index and evaluation assets on the tiny world: real (short) trainings in the merlin env through
the Pipes runner, ONNX parity, the FAISS index over raw ids, the frozen-candidate fine-tuning recipe, and the
deploy gates blocking a bad model.

The upstream (masked and transformed days, workflows, compiled transforms) is built once per session with the
transform stage's own functions (``build_upstream``, used by ``tiny_upstream`` in tests/defs/conftest.py); the
multimodal table is a deterministic stand-in keyed by raw item id (the embedding stage has its own tests and its
encoders take minutes). The DLRM and its ONNX export are the session's ``tiny_trained`` ones (same days, same
hyperparameters); this module trains, exports, indexes and evaluates its own Two-Tower variant.
"""

import json
import subprocess

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.index import assets as index_assets
from recsys_assets.defs.resources import PROJECT_ROOT, ArtifactStoreResource, MerlinRunner, WorldResource
from recsys_assets.defs.training import assets as training
from recsys_assets.lib import dataset, masking, paths, policy_value, prior
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.generator import World
from recsys_assets.lib.top_category import category_codes, history_codes
from tests.defs.test_finetune import TRAIN_CONFIG
from tests.support.roots import copy_root

pytestmark = pytest.mark.merlin

TRAIN, VALIDATION = [0, 1, 2, 3, 4, 5], [6, 7]
SEED = 7
MERLIN_PYTHON = PROJECT_ROOT / ".venv-merlin" / "bin" / "python"
SMALL = {"train_days": TRAIN, "validation_days": VALIDATION}
# One variant keeps the module to a few minutes; "context" takes every query input (user + context columns).
VARIANT = "context"
TWO_TOWER = {**SMALL, "variants": [VARIANT], "batch_size": 64, "epochs": 6}
DLRM = {**SMALL, "batch_size": 256, "epochs": 3}
EVALUATION = {"validation_days": VALIDATION, "train_days": TRAIN}
RUN_CONFIG = {"ops": {
    "two_tower_model": {"config": TWO_TOWER},
    "dlrm_model": {"config": DLRM},
    "query_tower_onnx": {"config": {"parity_rows": 256, "rows_day": VALIDATION[0]}},
    "dlrm_onnx": {"config": {"parity_rows": 256, "rows_day": VALIDATION[0]}},
    "retrieval_evaluation": {"config": EVALUATION},
    "ranking_evaluation": {"config": {**EVALUATION, "rerank_requests": 100}},
}}
ALL = [training.two_tower_model, training.dlrm_model, training.query_tower_onnx, training.dlrm_onnx,
       index_assets.item_embeddings, index_assets.faiss_index, training.retrieval_evaluation,
       training.ranking_evaluation]

_UPSTREAM_SCRIPT = """
import sys
from pathlib import Path
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.ml.nvt_compile import compile_workflows
from recsys_assets.ml.nvt_transform import transform_day
from recsys_assets.ml.nvt_workflows import fit_workflows
store = ArtifactStore(sys.argv[1]); train = [int(d) for d in sys.argv[2].split(",")]
days = [int(d) for d in sys.argv[3].split(",")]; mean_age = float(sys.argv[4])
with store.writing(paths.NVT_WORKFLOWS) as tmp:
    fit_workflows([store.local_path(paths.masked_interactions(d)) for d in train], tmp, mean_age, "1MB")
for d in days:
    with store.writing(paths.transformed_interactions(d)) as tmp:
        transform_day(store.local_path(paths.NVT_WORKFLOWS) / "full", store.local_path(paths.masked_interactions(d)),
                      tmp, "1MB", 1)
with store.writing(paths.SERVING_TRANSFORMS) as tmp:
    compile_workflows(store.local_path(paths.NVT_WORKFLOWS), tmp)
"""


def _multimodal_stand_in(items: pd.DataFrame) -> np.ndarray:
    """[image 64 | text 64] per raw item id: category and style directions plus item noise (deterministic)."""
    rng = np.random.default_rng(0)
    cats = items["category_l1"].astype("category").cat.codes.to_numpy()
    styles = items["category_l2"].astype("category").cat.codes.to_numpy()
    c_dirs, s_dirs = rng.normal(size=(cats.max() + 1, 128)), rng.normal(size=(styles.max() + 1, 128))
    table = 0.3 * c_dirs[cats] + 0.15 * s_dirs[styles] + 0.05 * rng.normal(size=(len(items), 128))
    return table.astype(np.float32)


def build_upstream(root, later_days=()) -> ArtifactStore:
    """Raw days, point-in-time top_category, masked days, workflows, transformed days, compiled transforms.

    ``later_days``: days after the validation days, arriving after the fit (``test_finetune.new_day_masked``:
    joined, unmasked), transformed with the saved workflows as the daily job does. They go through the same
    merlin-env process as the fit (after it, reading the saved workflows back), so the session pays the merlin
    env's start (TensorFlow's import, ~10 s) once instead of once per day."""
    store = ArtifactStore(root)
    world = World(seed=SEED, scale="tiny")
    items = dataset.write_items(store, world)
    users = dataset.write_users(store, world, 13)
    days = TRAIN + VALIDATION
    raws = [dataset.write_day(store, world, d)[0] for d in days]
    history = pd.concat(raws, ignore_index=True)
    category = category_codes(items["category_l1"])
    mean_age = masking.training_mean_age(users, TRAIN[-1])
    for d, raw in zip(days, raws):
        codes = history_codes(history, category, raw["user_id"], raw["timestamp"])
        joined = masking.join_day(raw, users, items, pd.DataFrame({"interaction_id": raw["interaction_id"], **codes}),
                                  mean_age)
        if d in TRAIN:
            joined, _ = masking.mask_day(joined, SEED, d, mean_age)
        store.write_parquet(paths.masked_interactions(d), joined)
    if later_days:
        from tests.defs.test_finetune import new_day_masked

        for d in later_days:
            new_day_masked(store, d)
    subprocess.run([str(MERLIN_PYTHON), "-c", _UPSTREAM_SCRIPT, store.root, ",".join(map(str, TRAIN)),
                    ",".join(map(str, [*days, *later_days])), repr(mean_age)], check=True, capture_output=True,
                   env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as f:
        np.save(f, _multimodal_stand_in(items))
    return store


def _resources(root) -> dict:
    return {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=SEED, scale="tiny"),
            "merlin": MerlinRunner(profile="local")}


def _checks_of(result, asset: str) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == asset}


def _meta(result, asset: str) -> dict:
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


class _Runs:
    """Several Dagster runs read as one result: check evaluations of all, an asset's materialization from the
    run that made it."""

    def __init__(self, *runs) -> None:
        self.runs = runs

    def get_asset_check_evaluations(self) -> list:
        return [e for run, assets in self.runs for e in run.get_asset_check_evaluations()
                if e.asset_key.path[-1] in assets]

    def asset_materializations_for_node(self, node: str) -> list:
        return next((found for run, assets in self.runs if node in assets
                     for found in [run.asset_materializations_for_node(node)]), [])


# The DLRM and its export are trained once per session, by ``tiny_trained`` (tests/defs/conftest.py), on the same
# upstream with the same days and hyperparameters as here (``DLRM``; the export's parity rows and day): this
# module reads that run's DLRM checks and metadata instead of training the same model again.
DLRM_ASSETS = ("dlrm_model", "dlrm_onnx")
OWN = [a for a in ALL if a.key.path[-1] not in DLRM_ASSETS]


@pytest.fixture(scope="module")
def trained(tiny_trained_run, tmp_path_factory):
    # the session's trained world (tests/defs/conftest.py: build_upstream plus days 08-09, which nothing here
    # reads, the plain Two-Tower and the DLRM), copied: this module trains its own variant (replacing the plain
    # one) and the gate test below breaks this module's item vectors
    root, dlrm_run = tiny_trained_run
    for name in DLRM_ASSETS:
        assert RUN_CONFIG["ops"][name] == TRAIN_CONFIG["ops"][name], f"{name}: not the session's configuration"
    store = copy_root(root, tmp_path_factory, "training")
    resources = _resources(store.root)
    own = dg.materialize(OWN, resources=resources, run_config={"ops": {
        name: op for name, op in RUN_CONFIG["ops"].items() if name not in DLRM_ASSETS}})
    return store, resources, _Runs((own, {a.key.path[-1] for a in OWN}), (dlrm_run, set(DLRM_ASSETS)))


def test_every_check_passes_and_models_are_saved(trained):
    store, _, result = trained
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata.get("description"))
              for e in result.get_asset_check_evaluations() if not e.passed]
    assert not failed
    two_tower = store.local_path(paths.two_tower(VARIANT))
    assert (two_tower / "candidate_tower" / "saved_model.pb").exists()  # the item embeddings' graph
    assert not (two_tower / "query_tower").exists()  # the ONNX export rebuilds it from the weights
    assert (store.local_path(paths.DLRM) / paths.WEIGHTS / "ckpt.index").exists()
    assert not (store.local_path(paths.DLRM) / "model").exists()  # rebuilt from its weights, no SavedModel
    # what fine-tuning restores: each model's weights, rebuilt from the parameters in its meta.json
    for folder in (two_tower, store.local_path(paths.DLRM)):
        assert (folder / paths.WEIGHTS / "ckpt.index").exists() and (folder / "meta.json").exists()
    assert (two_tower / "item_counts.npy").exists()


def test_models_learn_beyond_random_on_held_out_days(trained):
    store, _, result = trained
    tt = _meta(result, "two_tower_model")
    assert tt[f"{VARIANT}/validation_in_batch_recall_at_10"] > tt["random_in_batch_recall_at_10"]
    table = pd.read_parquet(store.local_path(f"{paths.RETRIEVAL_EVALUATION}/table.parquet"))
    row = table.set_index(["method", "split"])
    assert row.loc[(VARIANT, "all"), "recall@100"] > row.loc[("random", "all"), "recall@100"]
    dlrm = _meta(result, "dlrm_model")
    assert dlrm["validation_auc"] > 0.55
    ranking = _meta(result, "ranking_evaluation")
    assert ranking["auc"] > 0.55 and ranking["oracle_auc"] > ranking["auc"] - 0.02
    assert 0.5 < ranking["oracle_no_taste_auc"] < 1.0  # the realistic AUC ceiling, beside the oracle's
    splits = pd.read_parquet(store.local_path(f"{paths.RANKING_EVALUATION}/table.parquet"))
    assert set(splits[splits["method"] == "oracle (no taste)"]["split"]) == {"all", "warm", "new", "cold_items"}


def test_save_reload_is_identical(trained):
    _, _, result = trained
    for asset in ("two_tower_model", "dlrm_model"):
        check = _checks_of(result, asset)["reload_identical"]
        assert check.passed and check.metadata["max_abs_diff"].value == 0.0


def test_onnx_matches_tensorflow_with_feature_names_as_inputs(trained):
    store, _, result = trained
    from recsys_assets.lib.evaluation import OnnxModel, onnx_parity
    from recsys_assets.ml.model_inputs import DLRM_FEATURES, query_features

    onnx = store.local_path(paths.query_tower_onnx(VARIANT))
    assert list(OnnxModel(onnx).inputs) == list(query_features(VARIANT))
    parity = onnx_parity(onnx, store.local_path(paths.onnx_parity(paths.query_tower_onnx(VARIANT))))
    assert parity["rows"] == 256 and parity["max_abs_diff"] < 1e-5
    dlrm = OnnxModel(store.local_path(paths.DLRM_ONNX))
    assert list(dlrm.inputs) == list(DLRM_FEATURES)
    assert dlrm.inputs["image_pca"] == np.float32 and dlrm.inputs["user_id"] == np.int64
    for asset in ("query_tower_onnx", "dlrm_onnx"):
        assert _checks_of(result, asset)["onnx_parity"].passed


def test_faiss_returns_raw_ids_never_padding_and_covers_cold_items(trained):
    store, _, _ = trained
    items = store.read_parquet(paths.ITEMS).sort_values("item_id")
    vectors = np.load(store.local_path(paths.item_embeddings(VARIANT)))
    assert vectors.shape[0] == len(items)
    index = fx.load(store.local_path(paths.faiss_index(VARIANT)))
    assert np.array_equal(np.sort(fx.id_map(index)), items["item_id"].to_numpy())
    # cold items (unseen at fit time: the NVTabular OOV row) still get their own, distinct vectors
    cold = items.loc[items["available_from_day"] > TRAIN[-1], "item_id"].to_numpy()
    assert len(cold) > 1 and len(np.unique(vectors[cold].round(5), axis=0)) == len(cold)
    # a search restricted to a handful of allowed ids returns only those, without -1 padding
    allowed = cold[:5]
    found = fx.search(index, vectors[:3], 50, allowed_ids=allowed)
    for row in found.ids:
        assert len(row) == len(allowed) and set(row.tolist()) == set(allowed.tolist())
    exact = fx.search(index, vectors[:1], 1).ids[0]
    assert exact.dtype == np.int64 and (exact >= 0).all()


def test_frozen_candidate_fine_tuning_keeps_item_vectors_bit_identical(trained):
    store, resources, _ = trained

    @dg.asset(name="frozen_candidate_probe",
              check_specs=[dg.AssetCheckSpec("item_vectors_unchanged", asset="frozen_candidate_probe")])
    def probe(context: dg.AssetExecutionContext, merlin: MerlinRunner):
        return merlin.run(context, "recsys_assets.ml.frozen_candidate", extras={
            "root": store.root, "variant": VARIANT, "model": paths.two_tower(VARIANT), "items": paths.ITEMS,
            "multimodal": paths.MULTIMODAL_EMBEDDINGS, "item_workflow": f"{paths.NVT_WORKFLOWS}/item",
            "item_vectors": paths.item_embeddings(VARIANT), "params": {"batch_size": 64, "seed": 1},
            "days": [paths.transformed_interactions(VALIDATION[-1])], "epochs": 2,
        }).get_materialize_result()

    result = dg.materialize([probe], resources=resources)
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "item_vectors_unchanged" and check.passed
    meta = _meta(result, "frozen_candidate_probe")
    assert meta["item_vectors_max_abs_diff"] == 0.0
    assert meta["query_tower_max_abs_change"] > 0.0  # the query tower did train


def test_evaluation_reports_references_and_context_sensitivity(trained):
    store, _, _ = trained
    summary = json.loads(store.read_bytes(f"{paths.RETRIEVAL_EVALUATION}/summary.json"))
    assert summary["selected_variant"] == VARIANT
    table = pd.read_parquet(store.local_path(f"{paths.RETRIEVAL_EVALUATION}/table.parquet"))
    assert {"popularity", "random", "oracle", VARIANT} <= set(table["method"])
    assert {"all", "warm", "new", "anonymous", "cold_items"} <= set(table["split"])
    oracle = table[(table["method"] == "oracle") & (table["split"] == "all")]["recall@300"].iloc[0]
    random = table[(table["method"] == "random") & (table["split"] == "all")]["recall@300"].iloc[0]
    assert oracle > random
    ranking = json.loads(store.read_bytes(f"{paths.RANKING_EVALUATION}/summary.json"))
    assert 0.0 <= ranking["context_sensitivity"]["final_all_contexts"] <= 1.0
    # the primary measure: true expected clicks of the top 10 with capture per split, beside the references
    for out, method in ((paths.RETRIEVAL_EVALUATION, VARIANT), (paths.RANKING_EVALUATION, "dlrm")):
        true = pd.read_parquet(store.local_path(f"{out}/true_table.parquet"))
        assert {method, "popularity", "oracle", "oracle_no_taste", "heuristic"} <= set(true["method"])
        rows = true[true["method"] == method]
        assert len(rows) and rows["capture"].notna().all() and rows["value"].between(0, 1).all()
    assert summary["measure"] == ranking["measure"] == policy_value.TRUTH_MEASURE
    # the prior: the weight from the sweep, then the coefficients searched from the defaults (never worse)
    chosen = ranking["prior"]
    assert chosen["terms"] == list(prior.TERMS) and len(chosen["coefficients"]) == len(prior.TERMS)
    best = max(row["value"] for row in chosen["sweep"])
    assert chosen["weight"] in [row["weight"] for row in chosen["sweep"] if row["value"] == best]
    if chosen["weight"] > 0:
        assert chosen["search"][0]["coefficients"] == prior.format_coefficients(prior.DEFAULT_COEFFICIENTS)
        assert chosen["search"][0]["value"] == pytest.approx(best)
        assert prior.format_coefficients(chosen["coefficients"]) == chosen["search"][-1]["coefficients"]
        true = pd.read_parquet(store.local_path(f"{paths.RANKING_EVALUATION}/true_table.parquet"))
        served = true[(true["method"] == "served") & true["split"].isin(["warm", "new"])]
        pooled = (served["value"] * served["requests"]).sum() / served["requests"].sum()
        assert pooled == pytest.approx(chosen["search"][-1]["value"], rel=1e-6)
    lists = pd.read_parquet(store.local_path(f"{paths.RANKING_EVALUATION}/context_lists.parquet"))
    assert len(lists) == 3 * 4 * 10 and lists["item_id"].between(0, 2464).all()


def test_gate_blocks_a_regression_and_a_bad_model(trained):
    store, resources, _ = trained
    evaluations = {"ops": {name: RUN_CONFIG["ops"][name] for name in ("retrieval_evaluation", "ranking_evaluation")}}
    # A regression against the deployed release on the same rows: its record claims better numbers.
    retrieval = json.loads(store.read_bytes(f"{paths.RETRIEVAL_EVALUATION}/summary.json"))["record"]
    ranking = json.loads(store.read_bytes(f"{paths.RANKING_EVALUATION}/summary.json"))["record"]
    assert training.TRUE_METRIC in ranking["metrics"]  # the gate's measure: true expected clicks of the top 10
    deployed = {"retrieval": {**retrieval, "metrics": {m: v + 0.05 for m, v in retrieval["metrics"].items()}},
                "ranking": {**ranking, "metrics": {m: v + 0.05 for m, v in ranking["metrics"].items()}}}
    store.write_bytes(paths.DEPLOYED_EVALUATION, json.dumps(deployed).encode())
    try:
        result = dg.materialize([training.ranking_evaluation], resources=resources, run_config={"ops": {
            "ranking_evaluation": evaluations["ops"]["ranking_evaluation"]}}, raise_on_error=False)
        regression = _checks_of(result, "ranking_evaluation")["no_regression"]
        assert not regression.passed and "drops" in regression.metadata["description"].value
        assert regression.metadata["description"].value.startswith(training.TRUE_METRIC)
        assert _checks_of(result, "ranking_evaluation")["beats_popularity"].passed
    finally:
        store.delete(paths.DEPLOYED_EVALUATION)

    # A deliberately bad retriever: random item vectors in place of the trained ones (the module's last use
    # of the trained artifacts: they stay broken).
    good = np.load(store.local_path(paths.item_embeddings(VARIANT)))
    with store.writing(paths.item_embeddings(VARIANT)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.random.default_rng(1).normal(size=good.shape).astype(np.float32))
    result = dg.materialize([index_assets.faiss_index, training.retrieval_evaluation, training.ranking_evaluation],
                            resources=resources, run_config=evaluations, raise_on_error=False)
    gate = _checks_of(result, "retrieval_evaluation")["beats_popularity"]
    assert not gate.passed and "not deployable" in gate.metadata["description"].value
    # blocking: nothing downstream of the failed gate ran in the same run
    assert not result.asset_materializations_for_node("ranking_evaluation")


def test_missing_inputs_fail_the_blocking_check_without_starting_merlin(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    result = dg.materialize([training.dlrm_model], resources=_resources(store.root),
                            run_config={"ops": {"dlrm_model": {"config": DLRM}}}, raise_on_error=False)
    check = _checks_of(result, "dlrm_model")["inputs_complete"]
    assert not check.passed
    assert "transformed_interactions partition 2026-01-01" in check.metadata["description"].value
