"""Training: the Two-Tower retriever and the DLRM ranker, their ONNX exports, and the evaluation gates.

- ``two_tower_model`` (merlin env, Pipes): ``TwoTowerModelV2`` on the impressions (clicks weighted up) of the
  train days, one model per variant (``plain``: user features; ``context``: user + request context), in-batch
  negatives with logQ correction. Saves the weights the ONNX export and fine-tuning rebuild it from, and the
  candidate tower as a SavedModel (``models/two_tower/<variant>/``). Blocking check ``reload_identical``.
- ``dlrm_model`` (merlin env): ``DLRMModel`` on every labelled impression of the train days; user, item,
  context and the two multimodal vectors take part in the dot-product interaction. AUC on the validation days.
- ``query_tower_onnx`` / ``dlrm_onnx``: tf2onnx exports (merlin env) with a blocking ``onnx_parity`` check run
  here with onnxruntime on the real rows whose TensorFlow outputs the merlin env saved.
- ``retrieval_evaluation`` / ``ranking_evaluation`` (pipeline env): the served artifacts (ONNX towers, FAISS
  index, compiled transforms) scored on the validation days: first by the true expected clicks of their top 10
  (retrieval's, and retrieval 300 -> DLRM) with capture of the ceiling (``lib.policy_value``), then by logged
  recall/NDCG/AUC (exposure-biased) beside popularity, random and the generator's oracle; blocking gates
  ``beats_popularity`` and ``no_regression`` (DESIGN.md "Gates") on true expected clicks, on the logged measures
  where there is no truth (own data). The retrieval evaluation also selects the served query-tower variant.

Inputs are checked before a merlin process starts: a missing transformed day or table fails the blocking
``inputs_complete`` check, naming what to materialize.
"""

import base64
import dataclasses
import json
import time
import types

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.params import config_from_params, params_of
from recsys_assets.defs.embeddings.assets import item_multimodal_embeddings
from recsys_assets.defs.ingest.assets import items, raw_interactions
from recsys_assets.defs.partitions import START_DATE, TRAIN_DAYS, VALIDATION_DAYS
from recsys_assets.defs.resources import ArtifactStoreResource, MerlinRunner, WorldResource
from recsys_assets.defs.transforms.assets import (
    retrain_transformed_days,
    serving_transforms,
    transformed_interactions,
)
from recsys_assets.lib import evaluation as ev
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib import paths, policy_value, retrain
from recsys_assets.release.repository import ServingDefaults
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.settings import partition_key
from recsys_assets.lib.feature_spec import ITEM_INPUTS
from recsys_assets.lib.prior import TERMS as PRIOR_TERMS
from recsys_assets.ml.dlrm import DlrmParams
from recsys_assets.ml.two_tower import TwoTowerParams

GROUP = "training"
MERLIN_TAGS = {"recsys/merlin": "true"}
VARIANTS = ("plain", "context")
MULTIMODAL = ("image_pca", "text_pca")
MODEL_DAYS = sorted(set(TRAIN_DAYS) | set(VALIDATION_DAYS))
MODEL_KEYS = [partition_key(d, START_DATE) for d in MODEL_DAYS]
TRANSFORMED_DEP = dg.AssetDep(transformed_interactions,
                              partition_mapping=dg.SpecificPartitionsPartitionMapping(MODEL_KEYS))
RAW_DEP = dg.AssetDep(raw_interactions, partition_mapping=dg.SpecificPartitionsPartitionMapping(MODEL_KEYS))


# -- helpers ---------------------------------------------------------------------------------------------------

def _blocked(problems: list, others: tuple) -> dg.MaterializeResult:
    """An asset whose inputs are missing: ``inputs_complete`` fails naming them, the other checks do not run."""
    description = "; ".join(problems)
    why = "not run: inputs_complete failed"
    return dg.MaterializeResult(
        metadata={"blocked_by": "inputs_complete", "problems": description},
        check_results=[check("inputs_complete", False, description), *(check(n, False, why) for n in others)],
    )


class _Resolved(types.SimpleNamespace):
    """An asset's config with the days it reads resolved (``window``: the retrain window's)."""

    def dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "window"}


def _windowed(store: ArtifactStore, config) -> tuple:
    """``(config with days resolved, where(day) -> transformed folder, problems)``.

    ``window: false``: the configured days, read from the daily ``transformed_interactions`` partitions.
    ``window: true`` (the weekly retrain): the retrain window's train and validation days, read from the
    window's own transformed days (``retrain_transformed_days``), which must be in the current fit.
    """
    resolved = _Resolved(**config.model_dump())
    if not getattr(config, "window", False):
        return resolved, paths.transformed_interactions, []
    try:
        window = retrain.read_window(store)
    except retrain.WindowError as exc:
        return resolved, paths.retrain_transformed, [str(exc)]
    problems = []
    fit = retrain.current_fit(store)
    if not window.transforms_digest or window.transforms_digest != fit:
        problems.append("the retrain window's transformed days are not in the current fit of the workflows: "
                        "materialize retrain_transformed_days after nvt_workflows and serving_transforms")
    for name, days in (("train_days", window.train_days), ("validation_days", window.validation_days)):
        if hasattr(resolved, name):
            setattr(resolved, name, list(days))
    if hasattr(resolved, "rows_day"):
        resolved.rows_day = window.validation_days[0]
    return resolved, paths.retrain_transformed, problems


def _missing(store: ArtifactStore, days=(), files=(), where=paths.transformed_interactions) -> list:
    problems = []
    for d in days:
        if not store.exists(f"{where(d)}/schema.pbtxt"):
            what = ("transformed_interactions partition" if where is paths.transformed_interactions
                    else "retrain_transformed_days day")
            problems.append(f"{what} {partition_key(d, START_DATE)} (day {d:02d}) is "
                            f"missing ({store.uri(where(d))}): materialize it first")
    for rel, asset in files:
        if not store.exists(rel):
            problems.append(f"{asset} output {store.uri(rel)} is missing: materialize {asset} first")
    return problems


def _read_json(store: ArtifactStore, rel: str) -> dict:
    return json.loads(store.read_bytes(rel))


def _plot(store: ArtifactStore, rel: str, draw) -> dg.MetadataValue:
    """Draw a PNG into the artifact store (``draw(path)``) and return it as inline markdown for the UI."""
    with store.writing(rel) as tmp:
        draw(tmp)
    png = store.read_bytes(rel)
    return dg.MetadataValue.md(f"![{rel}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _trained_variants(store: ArtifactStore) -> list:
    """The variants of the current two_tower_model (its folder is replaced whole, so no stale variant stays)."""
    return [v for v in VARIANTS if store.exists(f"{paths.two_tower(v)}/{paths.WEIGHTS}")]


def _n_items(store: ArtifactStore) -> int:
    return len(store.read_parquet(paths.ITEMS, columns=["item_id"]))


def _days_config_problems(train_days, validation_days) -> list:
    problems = []
    if not train_days:
        problems.append("no train days configured")
    if not validation_days:
        problems.append("no validation days configured")
    overlap = sorted(set(train_days) & set(validation_days))
    if overlap:
        problems.append(f"days {overlap} are both train and validation days")
    return problems


# -- two_tower_model -------------------------------------------------------------------------------------------
class TwoTowerConfig(config_from_params(TwoTowerParams, exclude=("variant",))):
    """The Two-Tower's hyperparameters (``ml.two_tower.TwoTowerParams``, declared there) and what the asset reads."""

    window: bool = False
    """Read the weekly retrain's window (days and transformed copies, ``retrain_transformed_days``) instead of
    the configured days; ``full_retrain_job`` sets it."""
    variants: list[str] = list(VARIANTS)  # noqa: RUF012 (pydantic copies field defaults)
    """``plain``: query tower on user features; ``context``: user + request context (context-aware retrieval)."""
    train_days: list[int] = list(TRAIN_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    validation_days: list[int] = list(VALIDATION_DAYS)  # noqa: RUF012 (pydantic copies field defaults)


TWO_TOWER_CHECKS = ("inputs_complete", "reload_identical")


@dg.asset(group_name=GROUP, kinds={"tensorflow"}, op_tags=MERLIN_TAGS,
          deps=[TRANSFORMED_DEP, retrain_transformed_days, item_multimodal_embeddings, items],
          check_specs=check_specs("two_tower_model", TWO_TOWER_CHECKS))
def two_tower_model(context: dg.AssetExecutionContext, config: TwoTowerConfig, artifacts: ArtifactStoreResource,
                    merlin: MerlinRunner) -> dg.MaterializeResult:
    """Two-Tower retrieval (``TwoTowerModelV2``), one model per variant, under ``models/two_tower/<variant>/``.

    Trained on the impressions of the train days, clicks weighted up (or on the clicked rows alone, ``positives``),
    with in-batch negatives and a contrastive loss with logQ correction;
    validation loss and in-batch recall on the validation days. Saves the whole model's weights (what the ONNX
    export and fine-tuning rebuild it from) and the candidate tower as a SavedModel (the item embeddings').
    """
    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    unknown = sorted(set(config.variants) - set(VARIANTS))
    problems = [f"unknown variants {unknown}: expected {list(VARIANTS)}"] if unknown else []
    problems += [] if config.variants else ["no variants configured"]
    problems += window_problems + _days_config_problems(config.train_days, config.validation_days)
    problems += _missing(store, [*config.train_days, *config.validation_days],
                         [(paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings"), (paths.ITEMS, "items")], where)
    if problems:
        return _blocked(problems, TWO_TOWER_CHECKS[1:])
    params = params_of(config, TwoTowerParams, exclude=("variant",))
    result = merlin.run(context, "recsys_assets.ml.two_tower", extras={
        "root": store.root, "output": paths.TWO_TOWER, "variants": list(config.variants), "params": params,
        "train": [where(d) for d in config.train_days],
        "validation": [where(d) for d in config.validation_days],
        "multimodal": paths.MULTIMODAL_EMBEDDINGS, "n_items": _n_items(store),
    }).get_materialize_result()
    reports = {v: _read_json(store, f"{paths.two_tower(v)}/meta.json") for v in config.variants}
    summary = pd.DataFrame([{
        "variant": v, "train pairs": r["train_rows"], "epochs": r["params"]["epochs"],
        "rows/s": r["rows_per_second"], "epoch s": r["epoch_seconds"],
        "final loss": r["history"][-1]["loss"], "val loss": r["validation"].get("loss", float("nan")),
        "val in-batch recall@10": r["validation"].get("recall_at_10", float("nan")),
        "random in-batch recall@10": r["random_in_batch_recall_at_10"],
    } for v, r in reports.items()])
    plot = _plot(store, f"{paths.TWO_TOWER}/loss.png", lambda p: ev.history_plot(
        {v: r["history"] for v, r in reports.items()}, p, title="Two-Tower training loss"))
    return dg.MaterializeResult(
        metadata={**result.metadata, "summary": markdown_table(summary, ".4f"), "loss_curve": plot,
                  "train_days": str(config.train_days), "validation_days": str(config.validation_days)},
        check_results=[check("inputs_complete", True, f"transformed days {config.train_days} + "
                              f"{config.validation_days}, multimodal table and catalogue present"),
                       *result.check_results],
    )


# -- dlrm_model ------------------------------------------------------------------------------------------------
class DlrmConfig(config_from_params(DlrmParams)):
    """The DLRM's hyperparameters (``ml.dlrm.DlrmParams``, declared there) and what the asset reads."""

    window: bool = False
    """Read the weekly retrain's window (days and transformed copies, ``retrain_transformed_days``) instead of
    the configured days; ``full_retrain_job`` sets it."""
    train_days: list[int] = list(TRAIN_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    validation_days: list[int] = list(VALIDATION_DAYS)  # noqa: RUF012 (pydantic copies field defaults)


DLRM_CHECKS = ("inputs_complete", "reload_identical")


@dg.asset(group_name=GROUP, kinds={"tensorflow"}, op_tags=MERLIN_TAGS,
          deps=[TRANSFORMED_DEP, retrain_transformed_days, item_multimodal_embeddings, items],
          check_specs=check_specs("dlrm_model", DLRM_CHECKS))
def dlrm_model(context: dg.AssetExecutionContext, config: DlrmConfig, artifacts: ArtifactStoreResource,
               merlin: MerlinRunner) -> dg.MaterializeResult:
    """The DLRM ranker (``DLRMModel``) on every labelled impression of the train days (``models/dlrm/``).

    Embedding dim 64, bottom MLP [128, 64], top MLP [128, 64, 32]; the multimodal vectors are projected to 64
    and join the dot-product interaction. Reports validation AUC and log-loss.
    """
    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    problems = window_problems + _days_config_problems(config.train_days, config.validation_days)
    problems += _missing(store, [*config.train_days, *config.validation_days],
                         [(paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings"), (paths.ITEMS, "items")], where)
    if problems:
        return _blocked(problems, DLRM_CHECKS[1:])
    params = params_of(config, DlrmParams)
    result = merlin.run(context, "recsys_assets.ml.dlrm", extras={
        "root": store.root, "output": paths.DLRM, "params": params,
        "train": [where(d) for d in config.train_days],
        "validation": [where(d) for d in config.validation_days],
        "multimodal": paths.MULTIMODAL_EMBEDDINGS, "n_items": _n_items(store),
    }).get_materialize_result()
    report = _read_json(store, f"{paths.DLRM}/meta.json")
    plot = _plot(store, f"{paths.DLRM}/loss.png", lambda p: ev.history_plot(
        {"dlrm": report["history"]}, p, title="DLRM training loss"))
    return dg.MaterializeResult(
        metadata={**result.metadata, "loss_curve": plot, "train_ctr": report["train_ctr"],
                  "train_days": str(config.train_days), "validation_days": str(config.validation_days)},
        check_results=[check("inputs_complete", True, f"transformed days {config.train_days} + "
                              f"{config.validation_days}, multimodal table and catalogue present"),
                       *result.check_results],
    )


# -- ONNX exports ----------------------------------------------------------------------------------------------
class OnnxExportConfig(dg.Config):
    window: bool = False
    """Read the weekly retrain's window (days and transformed copies, ``retrain_transformed_days``) instead of
    the configured days; ``full_retrain_job`` sets it."""
    parity_rows: int = 1024
    """Real validation rows on which TensorFlow and onnxruntime are compared."""
    tolerance: float = 1e-5
    """Largest absolute difference allowed between the two runtimes."""
    rows_day: int = VALIDATION_DAYS[0]
    """The transformed day the parity rows come from."""


EXPORT_CHECKS = ("inputs_complete", "onnx_parity")


def _export(context, config: OnnxExportConfig, store: ArtifactStore, merlin: MerlinRunner, jobs: list,
            where=paths.transformed_interactions):
    """Run the merlin-env export of ``jobs``, then check each ONNX file against TensorFlow's saved outputs."""
    result = merlin.run(context, "recsys_assets.ml.export", extras={
        "root": store.root, "jobs": jobs, "rows": [where(config.rows_day)],
        "n_rows": config.parity_rows, "multimodal": paths.MULTIMODAL_EMBEDDINGS, "n_items": _n_items(store),
    }).get_materialize_result()
    rows, worst = [], 0.0
    latency = {}
    for job in jobs:
        parity = ev.onnx_parity(store.local_path(job["output"]), store.local_path(job["parity"]))
        worst = max(worst, parity["max_abs_diff"])
        rows.append({"model": job["name"], "rows": parity["rows"], "max abs diff": parity["max_abs_diff"],
                     "mean abs diff": parity["mean_abs_diff"], "bytes": store.size_bytes(job["output"]),
                     "inputs": ", ".join(f"{n}:{t}" for n, t in parity["inputs"].items()),
                     "output": parity["output"]})
        latency.update(_onnx_latency(store, job))
    ok = worst <= config.tolerance
    return dg.MaterializeResult(
        metadata={**result.metadata, "parity": markdown_table(pd.DataFrame(rows), ".2e"),
                  "max_abs_diff": worst, **latency},
        check_results=[
            check("inputs_complete", True, "trained models and parity rows present"),
            check("onnx_parity", ok, f"onnxruntime vs TensorFlow on {config.parity_rows} real rows: max abs "
                   f"difference {worst:.3e} (tolerance {config.tolerance:.0e})", max_abs_diff=worst)],
    )


def _onnx_latency(store: ArtifactStore, job: dict, repeats: int = 50) -> dict:
    """Median onnxruntime latency for one request's batch (1 query, or 300 candidates for the ranker)."""
    data = np.load(store.local_path(job["parity"]))
    model = ev.OnnxModel(store.local_path(job["output"]))
    batch = 1 if job["kind"] == "query_tower" else 300
    n = len(data["expected"])
    feed = {name: np.resize(data[name], (batch,) + data[name].shape[1:]) for name in model.inputs} if n else {}
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(feed)
        samples.append(time.perf_counter() - t0)
    return {f"{job['name']}/latency_ms_batch_{batch}": round(float(np.median(samples)) * 1e3, 3)}


@dg.asset(group_name=GROUP, kinds={"onnx", "tensorflow"}, op_tags=MERLIN_TAGS, deps=[two_tower_model],
          check_specs=check_specs("query_tower_onnx", EXPORT_CHECKS))
def query_tower_onnx(context: dg.AssetExecutionContext, config: OnnxExportConfig, artifacts: ArtifactStoreResource,
                     merlin: MerlinRunner) -> dg.MaterializeResult:
    """Each trained query tower as ONNX (``models/onnx/query_tower_<variant>.onnx``), inputs = feature columns.

    Inputs: user features (+ context features for the context variant); output ``query_embedding``.
    """
    from recsys_assets.ml.model_inputs import query_features

    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    variants = _trained_variants(store)
    problems = [] if variants else [(f"no trained query tower under {store.uri(paths.TWO_TOWER)}: materialize "
                                     "two_tower_model first")]
    problems += window_problems + _missing(store, [config.rows_day],
                                           [(paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings")], where)
    if problems:
        return _blocked(problems, EXPORT_CHECKS[1:])
    jobs = [{"name": f"query_tower_{v}", "kind": "query_tower", "model": paths.two_tower(v),
             "features": list(query_features(v)), "output": paths.query_tower_onnx(v),
             "parity": paths.onnx_parity(paths.query_tower_onnx(v))} for v in variants]
    return _export(context, config, store, merlin, jobs, where)


@dg.asset(group_name=GROUP, kinds={"onnx", "tensorflow"}, op_tags=MERLIN_TAGS, deps=[dlrm_model],
          check_specs=check_specs("dlrm_onnx", EXPORT_CHECKS))
def dlrm_onnx(context: dg.AssetExecutionContext, config: OnnxExportConfig, artifacts: ArtifactStoreResource,
              merlin: MerlinRunner) -> dg.MaterializeResult:
    """The DLRM as ONNX (``models/onnx/dlrm.onnx``): user, item, context columns and the two multimodal vectors
    in, ``click_probability`` out."""
    from recsys_assets.ml.model_inputs import DLRM_FEATURES

    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    problems = window_problems + _missing(store, [config.rows_day], [
        (f"{paths.DLRM}/{paths.WEIGHTS}", "dlrm_model"), (paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings")],
        where)
    if problems:
        return _blocked(problems, EXPORT_CHECKS[1:])
    jobs = [{"name": "dlrm", "kind": "dlrm", "model": paths.DLRM, "features": list(DLRM_FEATURES),
             "output": paths.DLRM_ONNX, "parity": paths.onnx_parity(paths.DLRM_ONNX)}]
    return _export(context, config, store, merlin, jobs, where)


# -- evaluation data -------------------------------------------------------------------------------------------
def _validation_rows(store: ArtifactStore, days, columns, where=paths.transformed_interactions) -> pd.DataFrame:
    """Raw validation impressions joined (by interaction_id) with their transformed columns."""
    from recsys_assets.ml.model_inputs import read_days

    frames = []
    for d in days:
        raw = store.read_parquet(paths.raw_interactions(d), columns=[
            "interaction_id", "session_id", "user_id", "item_id", "timestamp", "device_type", "click"])
        tr = read_days([store.local_path(where(d))],
                       columns=["interaction_id", *columns])
        tr = tr.rename(columns={"user_id": "user_index", "item_id": "item_index"})
        tr = tr.rename(columns={c: f"q_{c}" for c in columns if c not in ("user_id", "item_id")})
        if len(tr) != len(raw) or not np.array_equal(tr["interaction_id"].to_numpy(), raw["interaction_id"].to_numpy()):
            tr = tr.set_index("interaction_id").reindex(raw["interaction_id"].to_numpy()).reset_index()
            if tr.isna().any().any():
                raise dg.Failure(f"transformed_interactions day {d:02d} does not hold every raw interaction: "
                                 "re-materialize masked_interactions and transformed_interactions for it")
        frames.append(pd.concat([raw.reset_index(drop=True).assign(day=d),
                                 tr.drop(columns=["interaction_id"]).reset_index(drop=True)], axis=1))
    return pd.concat(frames, ignore_index=True)


def _train_clicks(store: ArtifactStore, days, n_items: int) -> tuple:
    """Clicks and impressions per raw item over ``days`` (the popularity reference's window)."""
    clicks = np.zeros(n_items)
    shown = np.zeros(n_items)
    for d in days:
        raw = store.read_parquet(paths.raw_interactions(d), columns=["item_id", "click"])
        ids = raw["item_id"].to_numpy(np.int64)
        clicks += np.bincount(ids[raw["click"].to_numpy() == 1], minlength=n_items)
        shown += np.bincount(ids, minlength=n_items)
    return clicks, shown


def _query_columns(variant_features, frame: pd.DataFrame, prefix: str = "q_") -> dict:
    """``{feature: array}`` from request columns (``q_<name>``; ``user_id`` comes as ``user_index``)."""
    out = {}
    for name in variant_features:
        col = "user_index" if name == "user_id" else f"{prefix}{name}"
        out[name] = frame[col].to_numpy()
    return out


def _deployed(store: ArtifactStore, section: str) -> dict | None:
    if not store.exists(paths.DEPLOYED_EVALUATION):
        return None
    return _read_json(store, paths.DEPLOYED_EVALUATION).get(section)


def _gates(metric: str, candidate: float, popularity: float, deployed, fingerprint: str, config) -> list:
    """The deploy gates; in the retrain window the validation days move every week, so a deployed record of other
    rows cannot be compared here: ``retrained_release`` compares candidate and served release on the same rows."""
    gates = ev.gate(metric, candidate, popularity, deployed, fingerprint, config.tolerance)
    if getattr(config, "window", False) and deployed is not None and deployed.get("fingerprint") != fingerprint:
        gates = [g if g.name != "no_regression" else dataclasses.replace(
            g, passed=True, description=f"{metric}: retrain window (validation days {list(config.validation_days)}): "
            "the deployed release was evaluated on other days, so the comparison is retrained_release's gate, which "
            "scores the candidate and the served release on the same held-out rows") for g in gates]
    return gates


TRUE_METRIC = f"true_expected_clicks@{policy_value.K}"
ORACLE_NO_TASTE = "oracle (no taste)"  # ranks by p without the hidden terms: the AUC ceiling of any model


def _true_gates(result, method: str, logged: tuple, deployed, fingerprint: str, config) -> list:
    """The deploy gates by true expected clicks of ``method``'s top 10 over the users' requests (warm and new).

    A deployed record written before true values were recorded has only the logged metric (``logged``: its name,
    the candidate's value and popularity's): ``no_regression`` then compares that one, and says so."""
    candidate = policy_value.pooled_value(result, method)
    popularity = policy_value.pooled_value(result, "popularity")
    if deployed is None or TRUE_METRIC in deployed.get("metrics", {}):
        return _gates(TRUE_METRIC, candidate, popularity, deployed, fingerprint, config)
    name, value, reference = logged
    regression = [dataclasses.replace(g, description=f"{g.description} (the deployed record predates true "
                                                     f"expected clicks: compared on logged {name})")
                  for g in _gates(name, value, reference, deployed, fingerprint, config) if g.name == "no_regression"]
    return [g for g in _gates(TRUE_METRIC, candidate, popularity, None, fingerprint, config)
            if g.name == "beats_popularity"] + regression


def _true_table(result) -> pd.DataFrame:
    columns = ["split", "method", "requests", "value", "value_low", "value_high", "capture", "capture_low",
               "capture_high", f"recall@{policy_value.K}", f"ndcg@{policy_value.K}"]
    return result.table[[c for c in columns if c in result.table.columns]]


# -- retrieval_evaluation --------------------------------------------------------------------------------------
class RetrievalEvaluationConfig(dg.Config):
    window: bool = False
    """Read the weekly retrain's window (days and transformed copies, ``retrain_transformed_days``) instead of
    the configured days; ``full_retrain_job`` sets it."""
    validation_days: list[int] = list(VALIDATION_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    train_days: list[int] = list(TRAIN_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    """The popularity reference counts clicks over these days (the models' training window)."""
    k: int = ServingDefaults.retrieval_topk
    """Retrieval depth: what a release hands the ranker (``RETRIEVAL_TOPK``; DESIGN.md: 300)."""
    max_requests: int = 20_000
    """Requests scored (a seeded sample when there are more; the oracle scores every item for each)."""
    true_requests: int = 2_000
    """Requests (a seeded sample) whose top-10 are judged by true expected clicks, each also sent anonymously."""
    bootstrap_samples: int = 1000
    seed: int = 0
    tolerance: float = ev.GATE_TOLERANCE


RETRIEVAL_CHECKS = ("inputs_complete", "beats_popularity", "no_regression")


@dg.asset(group_name=GROUP, kinds={"faiss", "onnx"},
          deps=[query_tower_onnx, dg.AssetKey("faiss_index"), serving_transforms, TRANSFORMED_DEP, retrain_transformed_days,
                RAW_DEP, items],
          check_specs=check_specs("retrieval_evaluation", RETRIEVAL_CHECKS))
def retrieval_evaluation(context: dg.AssetExecutionContext, config: RetrievalEvaluationConfig,
                         artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """For each query tower variant (ONNX + FAISS, as served): the true expected clicks of its top 10 for the
    true user in the request's context (warm, new, and the same requests sent anonymously), with capture of the
    ceiling, beside ``lib.policy_value``'s references; and, exposure-biased, recall@10/100/300 and NDCG@10 of the
    clicked items of validation sessions beside popularity, random and the oracle.

    Selects the served variant (highest true expected clicks over the users' requests; without truth, highest
    recall@100) and gates it on the same measure: it must beat popularity and not drop more than ``tolerance``
    below the deployed release.
    """
    from recsys_assets.ml.model_inputs import CONTEXT_FEATURES, USER_FEATURES, query_features
    from recsys_assets.serving.transforms import CompiledTransforms

    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    variants = _trained_variants(store)
    problems = [] if variants else [(f"no trained query tower under {store.uri(paths.TWO_TOWER)}: materialize "
                                     "two_tower_model first")]
    for v in variants:
        for rel, asset in ((paths.query_tower_onnx(v), "query_tower_onnx"), (paths.faiss_index(v), "faiss_index")):
            if not store.exists(rel):
                problems.append(f"variant {v} is trained but {store.uri(rel)} is missing: materialize {asset}")
    problems += window_problems + _missing(store, config.validation_days, [
        (paths.ITEMS, "items"), (paths.SERVING_TRANSFORMS, "serving_transforms")], where)
    problems += [f"raw_interactions day {d:02d} is missing: materialize it" for d in
                 [*config.train_days, *config.validation_days] if not store.exists(paths.raw_interactions(d))]
    if problems:
        return _blocked(problems, RETRIEVAL_CHECKS[1:])

    t0 = time.perf_counter()
    catalogue = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"]).sort_values("item_id")
    n_items = len(catalogue)
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    rows = _validation_rows(store, config.validation_days, list(USER_FEATURES) + list(CONTEXT_FEATURES) + ["item_id"],
                            where)
    feature_cols = [f"q_{c}" for c in USER_FEATURES + CONTEXT_FEATURES if c != "user_id"]
    requests = ev.build_requests(rows, feature_cols)
    if len(requests) > config.max_requests:
        pick = np.sort(np.random.default_rng(config.seed).choice(len(requests), config.max_requests, replace=False))
        requests = requests.iloc[pick].reset_index(drop=True)
    days = requests["day"].to_numpy(np.int64)
    allowed = ev.available_mask(available_from, days)
    clicks, _ = _train_clicks(store, config.train_days, n_items)
    from recsys_assets.lib.popularity import tie_broken_scores

    k = config.k
    rankings = {"popularity": ev.popularity_top_k(tie_broken_scores(clicks, np.arange(n_items), n_items), allowed, k),
                "random": ev.random_top_k(allowed, k, config.seed)}
    t_oracle = time.perf_counter()
    truth = world.truth()  # None for own data: no oracle, the logged measures decide
    if truth is not None:
        rankings["oracle"] = ev.oracle_top_k(truth.click_probability, requests, n_items, allowed, k)
    oracle_seconds = time.perf_counter() - t_oracle

    transforms = CompiledTransforms.load(store.local_path(paths.SERVING_TRANSFORMS))
    anon_user = transforms.transform_user(**transforms.unknown_user(len(requests)))
    anonymous, timing = {}, {}
    for variant in variants:
        model = ev.OnnxModel(store.local_path(paths.query_tower_onnx(variant)))
        index = fx.for_search(fx.load(store.local_path(paths.faiss_index(variant))))  # the GPU where there is one
        features = query_features(variant)
        real = _query_columns(features, requests)
        anon = {**real, **{c: anon_user[c] for c in USER_FEATURES}}
        t1 = time.perf_counter()
        rankings[variant] = _retrieve(model, index, real, days, available_from, k)
        anonymous[variant] = _retrieve(model, index, anon, days, available_from, k)
        timing[f"{variant}/retrieve_ms_per_request"] = round(
            (time.perf_counter() - t1) * 1e3 / max(2 * len(requests), 1), 3)

    table = ev.retrieval_table(rankings, requests, anonymous)
    fingerprint = ev.rows_fingerprint(rows["interaction_id"].to_numpy())
    true = None
    if truth is not None:
        true_requests, picked = policy_value.evaluation_requests(requests, config.true_requests, config.seed,
                                                                 anonymous_copies=True)
        identified = np.isin(requests["split"].to_numpy()[picked], ["warm", "new"])
        top = policy_value.K
        true = policy_value.evaluate_logged(store, truth, true_requests, {
            v: np.vstack([rankings[v][picked, :top], anonymous[v][picked[identified], :top]]) for v in variants},
            config.seed, config.bootstrap_samples)
        selected = max(variants, key=lambda v: policy_value.pooled_value(true, v))
    else:
        selected = max(variants, key=lambda v: ev.metric(table, v, "all", "recall@100"))
    candidate = ev.metric(table, selected, "all", "recall@100")
    popularity = ev.metric(table, "popularity", "all", "recall@100")
    deployed = _deployed(store, "retrieval")
    if true is not None:
        gates = _true_gates(true, selected, ("recall@100", candidate, popularity), deployed, fingerprint, config)
    else:
        gates = _gates("recall@100", candidate, popularity, deployed, fingerprint, config)
    true_metrics = {} if true is None else {TRUE_METRIC: policy_value.pooled_value(true, selected)}

    out = paths.RETRIEVAL_EVALUATION
    store.write_parquet(f"{out}/table.parquet", table)
    if true is not None:
        store.write_parquet(f"{out}/true_table.parquet", true.table)
    store.write_parquet(f"{out}/requests.parquet", requests.assign(
        relevant=[r.tolist() for r in requests["relevant"]],
        cold_relevant=[r.tolist() for r in requests["cold_relevant"]]))
    with store.writing(f"{out}/candidates.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, session_id=requests["session_id"].to_numpy(np.int64), candidates=rankings[selected],
                 **({"oracle": rankings["oracle"]} if "oracle" in rankings else {}))
    summary = {
        "selected_variant": selected, "variants": variants, "fingerprint": fingerprint,
        "validation_days": list(config.validation_days), "requests": len(requests),
        "splits": requests["split"].value_counts().to_dict(),
        "measure": policy_value.TRUTH_MEASURE if true is not None else policy_value.LOGGED_MEASURE,
        "record": {"fingerprint": fingerprint, "metrics": {"recall@100": candidate, **true_metrics},
                   "variant": selected},
        "metrics": table.to_dict(orient="records"),
        **({"true": policy_value.record(true)} if true is not None else {}),
        "gates": [{"name": g.name, "passed": g.passed, "description": g.description} for g in gates],
    }
    store.write_bytes(f"{out}/summary.json", json.dumps(summary, indent=1, default=float).encode())

    methods = [*variants, "popularity", "random", *(["oracle"] if "oracle" in rankings else [])]
    plots = {name: _plot(store, f"{out}/{name.replace('@', '_at_')}.png",
                         lambda p, m=name: ev.recall_plot(table, p, methods, m, f"{m} of clicked items by split"))
             for name in ("recall@100", "recall@300")}
    wide = table.pivot_table(index="method", columns="split", values="recall@300").reindex(methods).reset_index()
    return dg.MaterializeResult(
        metadata={
            "requests": len(requests),
            "selected_variant": selected,
            "measure": policy_value.TRUTH_MEASURE if true is not None else policy_value.LOGGED_MEASURE,
            **({f"{v}/{TRUE_METRIC}/users": policy_value.pooled_value(true, v) for v in [*variants, "popularity"]}
               if true is not None else {}),
            **({f"{v}/capture/{s}": policy_value.value(true.table, v, s, "capture") for v in variants
                for s in policy_value.SPLITS if ((true.table["method"] == v) & (true.table["split"] == s)).any()}
               if true is not None else {}),
            **({"true_expected_clicks": markdown_table(_true_table(true), ".4f")} if true is not None else {}),
            "recall_at_100": candidate,
            "popularity_recall_at_100": popularity,
            **{f"{v}/recall_at_300/{s}": ev.metric(table, v, s, "recall@300")
               for v in [*variants, "popularity", *(["oracle"] if "oracle" in rankings else [])]
               for s in ("warm", "new", "anonymous")},
            "recall_at_300_by_split": markdown_table(wide, ".4f"),
            "all_metrics": markdown_table(table, ".4f"),
            "recall_at_100_plot": plots["recall@100"],
            "recall_at_300_plot": plots["recall@300"],
            "oracle_seconds": round(oracle_seconds, 2),
            "seconds": round(time.perf_counter() - t0, 2),
            "fingerprint": fingerprint,
            **timing,
            "path": store.uri(out),
        },
        check_results=[check("inputs_complete", True, f"{len(variants)} variant(s), validation days "
                              f"{config.validation_days}, serving transforms present"),
                       *[check(g.name, g.passed, g.description, **g.metadata,
                               **({"true_expected_clicks": markdown_table(_true_table(true), ".4f")}
                                  if true is not None else {})) for g in gates]],
    )


def _retrieve(model, index, features: dict, days: np.ndarray, available_from: np.ndarray, k: int) -> np.ndarray:
    """Top-k raw ids per request from the ONNX query tower + FAISS, among the items available that day."""
    vectors = model(features)
    out = np.full((len(days), k), -1, dtype=np.int64)
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        allowed = np.flatnonzero(available_from <= day)
        out[rows] = fx.search(index, vectors[rows], k, allowed_ids=allowed).padded(k)
    return out


# -- ranking_evaluation ----------------------------------------------------------------------------------------
class RankingEvaluationConfig(dg.Config):
    window: bool = False
    """Read the weekly retrain's window (days and transformed copies, ``retrain_transformed_days``) instead of
    the configured days; ``full_retrain_job`` sets it."""
    validation_days: list[int] = list(VALIDATION_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    train_days: list[int] = list(TRAIN_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    """The popularity references count clicks and impressions over these days."""
    max_rows: int = 2_000_000
    """Validation impressions scored (a seeded sample when there are more)."""
    rerank_requests: int = 2_000
    """Retrieval requests re-ranked by the DLRM for the end-to-end top-10 metrics."""
    prior_weights: list[float] = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0]  # noqa: RUF012 (pydantic copies field defaults)
    """Weights of the ordering prior tried (lib/prior.py, default coefficients); the best by true expected clicks
    is served, with its terms' coefficients then searched on the same requests."""
    context_hours: list[int] = [2, 8, 13, 20]  # noqa: RUF012 (pydantic copies field defaults)
    """Hours (UTC) of the anonymous-user context grid (with devices 0, 1, 2)."""
    top_k: int = 10
    bootstrap_samples: int = 1000
    seed: int = 0
    tolerance: float = ev.GATE_TOLERANCE


RANKING_CHECKS = ("inputs_complete", "beats_popularity", "no_regression")


@dg.asset(group_name=GROUP, kinds={"onnx"},
          deps=[dlrm_onnx, retrieval_evaluation, serving_transforms, item_multimodal_embeddings, TRANSFORMED_DEP,
                retrain_transformed_days, RAW_DEP, items],
          check_specs=check_specs("ranking_evaluation", RANKING_CHECKS))
def ranking_evaluation(context: dg.AssetExecutionContext, config: RankingEvaluationConfig,
                       artifacts: ArtifactStoreResource, world: WorldResource) -> dg.MaterializeResult:
    """The end-to-end top-10 (retrieval 300 -> DLRM, as served) judged by true expected clicks for the true user
    in the request's context, with capture of the ceiling, beside ``lib.policy_value``'s references and
    retrieval's own top 10; AUC and log-loss of the DLRM (ONNX) on every validation impression, per split, beside
    popularity and the oracle's true probabilities (AUC against logged clicks is exposure-biased); and how much
    an anonymous user's final top-10 changes across devices and hours. Gates the DLRM on the end-to-end true
    expected clicks (without truth: on AUC).
    """
    from recsys_assets.ml.model_inputs import DLRM_FEATURES, split_multimodal
    from recsys_assets.serving.transforms import CompiledTransforms

    store = artifacts.store()
    config, where, window_problems = _windowed(store, config)
    problems = window_problems + _missing(store, config.validation_days, [
        (paths.DLRM_ONNX, "dlrm_onnx"), (f"{paths.RETRIEVAL_EVALUATION}/summary.json", "retrieval_evaluation"),
        (paths.SERVING_TRANSFORMS, "serving_transforms"), (paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings"),
        (paths.ITEMS, "items")], where)
    problems += [f"raw_interactions day {d:02d} is missing: materialize it" for d in
                 [*config.train_days, *config.validation_days] if not store.exists(paths.raw_interactions(d))]
    has_truth = world.truth() is not None  # own data: no truth tables, no oracle column (logged measures only)
    problems += [f"truth for day {d:02d} is missing: re-materialize raw_interactions" for d in
                 config.validation_days if has_truth and not store.exists(paths.interactions_truth(d))]
    if problems:
        return _blocked(problems, RANKING_CHECKS[1:])

    t0 = time.perf_counter()
    catalogue = store.read_parquet(paths.ITEMS).sort_values("item_id").reset_index(drop=True)
    n_items = len(catalogue)
    table = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS)).astype(np.float32)
    dlrm = ev.OnnxModel(store.local_path(paths.DLRM_ONNX))
    model_cols = [c for c in DLRM_FEATURES if c not in MULTIMODAL]
    rows = _validation_rows(store, config.validation_days, model_cols, where)
    if has_truth:
        truth = pd.concat([store.read_parquet(paths.interactions_truth(d)) for d in config.validation_days],
                          ignore_index=True)
        rows = rows.merge(truth[["interaction_id", "p_click"]], on="interaction_id", how="left")
    if len(rows) > config.max_rows:
        rows = rows.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
    features = {c: rows["user_index" if c == "user_id" else "item_index" if c == "item_id" else f"q_{c}"].to_numpy()
                for c in model_cols}
    features.update(split_multimodal(table, rows["item_id"].to_numpy()))
    t1 = time.perf_counter()
    scores = dlrm(features).reshape(-1)
    score_seconds = time.perf_counter() - t1
    clicks, shown = _train_clicks(store, config.train_days, n_items)
    item = rows["item_id"].to_numpy(np.int64)
    labels = rows["click"].to_numpy()
    user_index = rows["user_index"].to_numpy()
    from recsys_assets.lib.feature_spec import FIRST_INDEX, OOV_INDEX

    masks = {"all": np.ones(len(rows), bool), "warm": user_index >= FIRST_INDEX, "new": user_index == OOV_INDEX,
             "cold_items": rows["item_index"].to_numpy() == OOV_INDEX}
    method_scores = {"dlrm": scores, "popularity (clicks)": clicks[item],
                     "popularity (ctr)": ev.smoothed_ctr(clicks, shown)[item]}
    if has_truth:  # the oracle, and the AUC any model without the hidden taste term can reach at best
        method_scores["oracle"] = rows["p_click"].to_numpy()
        method_scores[ORACLE_NO_TASTE] = policy_value.probabilities(
            world.truth(), rows["user_id"].to_numpy(np.int64), item, rows["device_type"].to_numpy(np.int64),
            rows["timestamp"].to_numpy(np.int64))[1]
    ranking = ev.ranking_table(labels, method_scores, masks,
                               probabilistic=("dlrm", "popularity (ctr)", "oracle", ORACLE_NO_TASTE))
    candidate = ev.metric(ranking, "dlrm", "all", "auc")
    popularity = max(ev.metric(ranking, "popularity (clicks)", "all", "auc"),
                     ev.metric(ranking, "popularity (ctr)", "all", "auc"))
    fingerprint = ev.rows_fingerprint(rows["interaction_id"].to_numpy())

    # Everything a request needs, as serving computes it: compiled transforms and the raw-id multimodal table.
    transforms = CompiledTransforms.load(store.local_path(paths.SERVING_TRANSFORMS))
    item_features = transforms.transform_item(*(catalogue[c].to_numpy() for c in ITEM_INPUTS))
    item_features.update(split_multimodal(table, np.arange(n_items)))
    retrieval = _read_json(store, f"{paths.RETRIEVAL_EVALUATION}/summary.json")
    variant = retrieval["selected_variant"]
    end_to_end, reranked = _end_to_end(store, dlrm, item_features, variant, config)
    sweep, terms = _prior_sweep(store, reranked, catalogue, config)
    truth, true = world.truth(), None
    deployed = _deployed(store, "ranking")
    true_requests = true_p = None
    if truth is not None and len(reranked["requests"]):
        true_requests, _ = policy_value.evaluation_requests(reranked["requests"], len(reranked["requests"]),
                                                            config.seed, anonymous_copies=False)
        true_p = policy_value.truth(truth, true_requests)  # once, for the choice and the evaluation
    chosen = _choose_prior(true_p, true_requests, reranked, sweep, terms, config)
    if sweep:  # "served": the order serving applies, the DLRM blended with the chosen weight and coefficients
        reranked["lists"]["served"] = chosen["lists"]
    if true_requests is not None:
        true = policy_value.evaluate_logged(store, truth, true_requests, {**reranked["lists"], **sweep},
                                            config.seed, config.bootstrap_samples, truth_=true_p)
    prior_weight, prior_rows = chosen["weight"], chosen["sweep"]
    judged = "served" if sweep else "dlrm"
    if true is not None:
        gates = _true_gates(true, judged, ("auc", candidate, popularity), deployed, fingerprint, config)
    else:
        gates = _gates("auc", candidate, popularity, deployed, fingerprint, config)
    true_metrics = {} if true is None else {TRUE_METRIC: policy_value.pooled_value(true, judged)}
    sensitivity, lists = _context_sensitivity(store, dlrm, transforms, item_features, catalogue, variant, config)

    out = paths.RANKING_EVALUATION
    store.write_parquet(f"{out}/table.parquet", ranking)
    if true is not None:
        store.write_parquet(f"{out}/true_table.parquet", true.table)
    store.write_parquet(f"{out}/context_lists.parquet", lists)
    summary = {
        "fingerprint": fingerprint, "rows": len(rows),
        "measure": policy_value.TRUTH_MEASURE if true is not None else policy_value.LOGGED_MEASURE,
        "record": {"fingerprint": fingerprint, "metrics": {"auc": candidate, **true_metrics}},
        **({"true": policy_value.record(true)} if true is not None else {}),
        "metrics": ranking.to_dict(orient="records"), "end_to_end": end_to_end, "context_sensitivity": sensitivity,
        "prior": {"weight": prior_weight, "coefficients": list(chosen["coefficients"]), "terms": list(PRIOR_TERMS),
                  "sweep": prior_rows, "search": chosen["search"]},
        "gates": [{"name": g.name, "passed": g.passed, "description": g.description} for g in gates],
    }
    store.write_bytes(f"{out}/summary.json", json.dumps(summary, indent=1, default=float).encode())
    oracle_auc = ev.metric(ranking, "oracle", "all", "auc") if has_truth else float("nan")
    no_taste_auc = ev.metric(ranking, ORACLE_NO_TASTE, "all", "auc") if has_truth else float("nan")
    auc_plot = _plot(store, f"{out}/auc.png", lambda p: ev.recall_plot(
        ranking, p, list(method_scores), "auc", "ranking AUC of validation impressions by split"))
    categories = (lists.groupby(["device_type", "hour"])["category_l1"]
                  .agg(lambda s: ", ".join(f"{c} x{n}" for c, n in s.value_counts().head(3).items()))
                  .reset_index().rename(columns={"category_l1": "top categories of the final top-10"}))
    return dg.MaterializeResult(
        metadata={
            "rows": len(rows),
            "measure": policy_value.TRUTH_MEASURE if true is not None else policy_value.LOGGED_MEASURE,
            **({f"{m}/{TRUE_METRIC}/users": policy_value.pooled_value(true, m) for m in (
                "dlrm", *(["served"] if sweep else []), "retrieval", "heuristic", "popularity")}
               if true is not None else {}),
            **({f"{m}/capture/{s}": policy_value.value(true.table, m, s, "capture")
                for m in ("dlrm", *(["served"] if sweep else [])) for s in sorted(set(true.table["split"]))}
               if true is not None else {}),
            "prior_weight": prior_weight,
            "prior_coefficients": dg.MetadataValue.json(dict(zip(PRIOR_TERMS, chosen["coefficients"]))),
            "prior_sweep": markdown_table(pd.DataFrame(prior_rows), ".4f") if prior_rows else "no requests",
            "prior_search": (markdown_table(pd.DataFrame(chosen["search"]), ".4f") if chosen["search"]
                             else "not searched (no truth, or the prior is off)"),
            **({"true_expected_clicks": markdown_table(_true_table(true), ".4f")} if true is not None else {}),
            "auc": candidate,
            "oracle_auc": oracle_auc,
            "gap_to_oracle": oracle_auc - candidate,
            "oracle_no_taste_auc": no_taste_auc,
            "popularity_auc": popularity,
            "log_loss": ev.metric(ranking, "dlrm", "all", "log_loss"),
            "metrics": markdown_table(ranking, ".4f"),
            "auc_plot": auc_plot,
            "end_to_end": markdown_table(pd.DataFrame(end_to_end["table"]), ".4f"),
            "selected_variant": variant,
            **{f"context_sensitivity/{k}": v for k, v in sensitivity.items()},
            "anonymous_lists": markdown_table(categories),
            "dlrm_rows_per_second": round(len(rows) / max(score_seconds, 1e-9), 1),
            "seconds": round(time.perf_counter() - t0, 2),
            "fingerprint": fingerprint,
            "path": store.uri(out),
        },
        check_results=[check("inputs_complete", True, f"DLRM ONNX, retrieval evaluation and validation days "
                              f"{config.validation_days} present"),
                       *[check(g.name, g.passed, g.description, **g.metadata,
                               **({"true_expected_clicks": markdown_table(_true_table(true), ".4f")}
                                  if true is not None else {})) for g in gates]],
    )


def _dlrm_scores(dlrm, user: dict, context: dict, item_features: dict, candidates: np.ndarray) -> np.ndarray:
    """DLRM scores of ``candidates`` (raw ids, -1 = none) for one request's user and context features."""
    valid = candidates[candidates >= 0]
    feed = {name: np.repeat(np.asarray(value).reshape(-1)[:1], len(valid)) for name, value in
            {**user, **context}.items()}
    feed.update({name: values[valid] for name, values in item_features.items()})
    out = np.full(len(candidates), -np.inf)
    out[candidates >= 0] = dlrm(feed).reshape(-1) if len(valid) else []
    return out


def _end_to_end(store: ArtifactStore, dlrm, item_features: dict, variant: str, config) -> tuple:
    """Top-10 recall/NDCG of retrieval alone vs retrieval re-ranked by the DLRM, on a sample of requests; and
    the sampled requests with both lists (``{"requests": ..., "lists": {"dlrm": ..., "retrieval": ...}}``)."""
    from recsys_assets.ml.model_inputs import CONTEXT_FEATURES, USER_FEATURES

    out = paths.RETRIEVAL_EVALUATION
    requests = store.read_parquet(f"{out}/requests.parquet")
    data = np.load(store.local_path(f"{out}/candidates.npz"))
    candidates = data["candidates"]
    oracle = data["oracle"] if "oracle" in data.files else None  # own data: no oracle list
    n = min(config.rerank_requests, len(requests))
    pick = np.sort(np.random.default_rng(config.seed).choice(len(requests), n, replace=False)) if n else []
    scores = np.full((n, candidates.shape[1]), -np.inf)
    for r, i in enumerate(pick):
        row = requests.iloc[i]
        user = {c: np.array([row["user_index" if c == "user_id" else f"q_{c}"]]) for c in USER_FEATURES}
        ctx = {c: np.array([row[f"q_{c}"]]) for c in CONTEXT_FEATURES}
        scores[r] = _dlrm_scores(dlrm, user, ctx, item_features, candidates[i])
    picked_candidates = candidates[pick] if n else np.zeros((0, candidates.shape[1]), np.int64)
    ranked = _top(scores, picked_candidates, config.top_k)
    relevant = [np.asarray(requests.iloc[i]["relevant"], dtype=np.int64) for i in pick]
    rows = []
    compared = [("retrieval top-10", candidates[pick, :config.top_k] if n else ranked),
                ("retrieval 300 -> dlrm top-10", ranked)]
    if oracle is not None:
        compared.append(("oracle top-10", oracle[pick, :config.top_k] if n else ranked))
    for name, lists in compared:
        rows.append({"list": name, "requests": int(n), **(ev.retrieval_metrics(lists, relevant, (config.top_k,))
                                                         if n else {})})
    reranked = {"requests": requests.iloc[pick].reset_index(drop=True), "scores": scores,
                "candidates": picked_candidates, "relevant": relevant,
                "lists": {"dlrm": ranked, "retrieval": candidates[pick, :config.top_k] if n else ranked}}
    return {"variant": variant, "table": rows}, reranked


def _top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(requests, k) raw ids of the ``k`` best finite scores per row (-1 padded)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)),
                    np.take_along_axis(candidates, top, axis=1), -1)


def _prior_sweep(store: ArtifactStore, reranked: dict, catalogue: pd.DataFrame, config) -> tuple[dict, object]:
    """The re-ranked requests' lists under ``logit(DLRM) + w x prior`` (the default coefficients) for every w of
    ``config.prior_weights``, and the prior's terms of every candidate ((requests, candidates, terms), for
    :func:`_choose_prior`). The prior of the training days' impressions, as the first release's popularity tables
    publish it; each user's interest codes as of the start of the request's day, as the feature store serves them;
    the registered user's gender and age, as ``feast_user_lookup`` reads them."""
    from recsys_assets.lib import popularity as pop
    from recsys_assets.lib import prior, served_evaluation, top_category
    from recsys_assets.lib.feature_spec import encode_gender

    requests = reranked["requests"]
    if not len(requests):
        return {}, None
    users = (store.read_parquet(paths.USERS, columns=["user_id", "age", "gender"]).set_index("user_id")
             if store.exists(paths.USERS) else None)
    window = served_evaluation.logged_days(store, config.train_days)
    table = pop.window_prior(window, catalogue, users)
    last = int(requests["day"].max())
    events = served_evaluation.logged_days(store, range(0, last + 1))
    days = requests["day"].to_numpy(np.int64)
    interests = top_category.point_in_time_interests(
        events["user_id"], events["timestamp"], table.item_category[events["item_id"].to_numpy(np.int64)],
        events["click"], requests["user_id"], np.array([world_day_start(int(d)) for d in days]))
    profile = None if users is None else users.reindex(requests["user_id"].to_numpy(np.int64))
    terms = table.terms(reranked["candidates"], requests["device_type"].to_numpy(np.int64),
                        requests["timestamp"].to_numpy(np.int64), interests,
                        gender=None if profile is None else np.asarray(encode_gender(profile["gender"]), np.int64),
                        age=None if profile is None else profile["age"].fillna(table.age_mean).to_numpy(np.float64))
    base = terms @ np.asarray(prior.DEFAULT_COEFFICIENTS)
    return {_prior_method(w): _top(prior.blend(reranked["scores"], base, w), reranked["candidates"], config.top_k)
            for w in config.prior_weights}, terms


def _prior_method(weight: float) -> str:
    return f"dlrm + {weight:g} x prior"


def _choose_prior(truth, true_requests, reranked: dict, sweep: dict, terms, config) -> dict:
    """The weight whose lists earn the most (true expected clicks of the users' requests, or without truth the
    recall@k against the logged clicks: exposure-biased, said so in the table; ties to the smaller weight), then,
    with truth and a weight > 0, the terms' coefficients by coordinate ascent on the same measure
    (``lib.prior.search_coefficients``). Returns the weight, the coefficients, the sweep's rows, the search's kept
    moves and the served lists."""
    from recsys_assets.lib import prior

    rows, search = [], []
    if not sweep:
        return {"weight": 0.0, "coefficients": prior.DEFAULT_COEFFICIENTS, "sweep": rows, "search": search,
                "lists": reranked["lists"].get("dlrm")}
    if true_requests is not None:  # truth: policy_value.truth of those requests
        users = np.isin(true_requests["split"].to_numpy(), list(policy_value.USERS))

        def pooled(lists) -> float:
            values, _ = policy_value.list_values(truth.p, lists, truth.allowed, config.top_k)
            return float(values[users].mean()) if users.any() else float("nan")

        measure = "true expected clicks (users)"
    else:
        def pooled(lists) -> float:
            return ev.retrieval_metrics(lists, reranked.get("relevant", []), (config.top_k,))[f"recall@{config.top_k}"]

        measure = f"logged recall@{config.top_k} (exposure-biased)"
    rows = [{"weight": w, "measure": measure, "value": pooled(sweep[_prior_method(w)])} for w in config.prior_weights]
    weight = float(max(rows, key=lambda r: (r["value"], -r["weight"]))["weight"])
    coefficients = prior.DEFAULT_COEFFICIENTS

    def lists_of(c):
        return _top(prior.blend(reranked["scores"], terms @ np.asarray(c), weight), reranked["candidates"],
                    config.top_k)

    if true_requests is not None and weight > 0:
        coefficients, search = prior.search_coefficients(lambda c: pooled(lists_of(c)))
    return {"weight": weight, "coefficients": coefficients, "sweep": rows, "search": search,
            "lists": lists_of(coefficients)}


def _context_sensitivity(store: ArtifactStore, dlrm, transforms, item_features: dict, catalogue: pd.DataFrame,
                         variant: str, config) -> tuple:
    """An anonymous user's final top-k on every (device, hour) of the grid; how much the lists differ."""
    from recsys_assets.ml.model_inputs import USER_FEATURES

    day = int(config.validation_days[0])
    day_start = int(world_day_start(day))
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    allowed = np.flatnonzero(available_from <= day)
    query = ev.OnnxModel(store.local_path(paths.query_tower_onnx(variant)))
    index = fx.load(store.local_path(paths.faiss_index(variant)))
    user = transforms.transform_user(**transforms.unknown_user(1))
    user = {c: user[c] for c in USER_FEATURES}
    finals, retrieved, records = {}, {}, []
    for device in (0, 1, 2):
        for hour in config.context_hours:
            ctx = transforms.transform_context(np.array([device]), np.array([day_start + hour * 3600 + 1800]))
            q = query({**user, **ctx})  # the plain tower takes the user columns only
            cands = fx.search(index, q, 300, allowed_ids=allowed).ids[0]
            s = _dlrm_scores(dlrm, user, ctx, item_features, cands)
            top = cands[np.argsort(-s, kind="stable")[:config.top_k]]
            finals[(device, hour)] = top
            retrieved[(device, hour)] = cands[:config.top_k]
            records += [{"device_type": device, "hour": hour, "rank": r + 1, "item_id": int(i),
                         "category_l1": catalogue["category_l1"].iloc[int(i)]} for r, i in enumerate(top)]
    by_device = np.mean([ev.list_change({d: finals[(d, h)] for d in (0, 1, 2)}) for h in config.context_hours])
    by_hour = np.mean([ev.list_change({h: finals[(d, h)] for h in config.context_hours}) for d in (0, 1, 2)])
    sensitivity = {"final_all_contexts": ev.list_change(finals), "final_across_devices": float(by_device),
                   "final_across_hours": float(by_hour), "retrieval_all_contexts": ev.list_change(retrieved)}
    return sensitivity, pd.DataFrame(records)


def world_day_start(day: int) -> int:
    """Unix seconds of 00:00 UTC on ``day`` (day 00 = RECSYS_START_DATE)."""
    from recsys_assets.lib.settings import day_start, start_epoch

    return day_start(int(day), start_epoch(START_DATE))
