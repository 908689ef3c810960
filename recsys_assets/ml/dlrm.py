"""Trains the DLRM ranker (merlin-models ``DLRMModel``) on labelled impressions, in the merlin env through Pipes.

Contract
- Input: the transformed train days (every impression with its ``click`` label) and validation days, and the
  raw-id-keyed multimodal table.
- Features: user, item and context columns of the transformed days plus ``image_pca`` and ``text_pca``. Every
  categorical feature gets a ``embedding_dim`` embedding; the continuous ones go through the bottom MLP (whose
  last layer has ``embedding_dim`` units); each multimodal vector is projected (linear) to ``embedding_dim`` and
  joins the categorical embeddings and the bottom-MLP output in the pairwise dot-product interaction; the top
  MLP and a sigmoid give p(click).
- Output: ``<output>/weights/`` (a checkpoint of every variable), ``<output>/meta.json`` (parameters, features,
  history, timings, validation AUC / log-loss), ``<output>/validation_scores.parquet`` (interaction_id, score,
  click). The model is rebuilt from ``meta.json``'s parameters and the weights (:func:`restore`) by whatever needs
  it (the ONNX export, fine-tuning): no SavedModel, whose save took longer than the training at demo scale.
- Check ``reload_identical``: the model rebuilt from disk gives bit-identical scores on validation rows.

Imports dagster_pipes, the merlin stack and pure ``recsys_assets.lib`` / ``ml`` modules only.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from recsys_assets.lib.metrics import auc, log_loss
from recsys_assets.lib.feature_spec import TARGET
from recsys_assets.ml import model_inputs as mi

MODEL, META, SCORES = "model", "meta.json", "validation_scores.parquet"


@dataclasses.dataclass
class DlrmParams:
    """The DLRM's hyperparameters, declared once: ``dlrm_model``'s Dagster config derives from them
    (``defs.params``). The defaults are what the pipeline trains with; at demo scale no change of epochs, L2,
    dropout or OOV rate moved validation AUC beyond seed noise (``benchmarks/model_quality.py``, README)."""

    embedding_dim: int = 64
    """Width of every categorical embedding and of the projected multimodal vectors (the interaction width)."""
    bottom_mlp: tuple[int, ...] = (128, 64)
    top_mlp: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.0
    embedding_l2: float = 0.0
    id_l2: float = 1e-4
    """L2 weight decay on the user_id / item_id tables: at ~40 impressions per user they memorize pairs."""
    id_l2_scope: str = "table"
    """``table``: the decay covers every row of the id tables each step (a dense gradient: a step costs O(rows));
    ``batch``: only the rows the batch looks up (``id_l2`` x their squared sum), which keeps a lazy optimizer
    lazy."""
    optimizer: str = "adam"
    """``ml.model_inputs.OPTIMIZERS``. With the table-wide ``id_l2`` the gradient of the id tables is dense, so
    LazyAdam gains nothing (the same values); LazyAdam with ``id_l2_scope="batch"`` makes a seed-scale step ~100x
    cheaper but lost true expected clicks at demo scale (warm 0.2479 -> 0.2330 at the best decay, 1e-3;
    ``benchmarks/model_quality.py``), so the default stays Adam over the table."""
    oov_rate: float = 0.1
    """Share of training user/item ids sent to the OOV row (new users and cold items use it at serving)."""
    batch_size: int = 1024
    min_steps_per_epoch: int = 100
    """A smaller training set trains with a smaller batch, so that an epoch still takes this many optimizer steps
    (:func:`batch_size_for`): a shop's 28k impressions made 27 steps an epoch at 1024 and learned nothing."""
    learning_rate: float = 1e-3
    epochs: int = 2
    """Validation AUC peaks after 2 epochs at demo scale; later epochs memorize the training impressions."""
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> DlrmParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DLRM parameters {unknown}: expected some of {sorted(known)}")
        out = cls(**d)
        out.bottom_mlp = tuple(int(x) for x in out.bottom_mlp)
        out.top_mlp = tuple(int(x) for x in out.top_mlp)
        mi.check_optimizer(out.optimizer, "DLRM optimizer")
        if out.id_l2_scope not in ("table", "batch"):
            raise ValueError(f"id_l2_scope {out.id_l2_scope!r}: expected 'table' or 'batch'")
        if out.bottom_mlp[-1] != out.embedding_dim:
            raise ValueError(f"the bottom MLP must end in embedding_dim={out.embedding_dim} units (it joins the "
                             f"embeddings in the dot-product interaction), got {list(out.bottom_mlp)}")
        return out


def build_model(schema, params: DlrmParams):
    import merlin.models.tf as mm
    from merlin.schema import Tags

    cats = schema.select_by_tag(Tags.CATEGORICAL).excluding_by_tag(Tags.TARGET)
    pretrained = schema.select_by_tag(Tags.EMBEDDING)
    # One interaction input per categorical feature and per multimodal vector (projected to the same width).
    ids = [c for c in ("user_id", "item_id") if c in cats.column_names]
    regularizers, batch_l2 = None, params.embedding_l2 or 0.0
    if params.id_l2 and params.id_l2_scope == "table":
        import tensorflow as tf

        # Weight decay on the id tables only: with ~40 impressions per user they memorize (user, item) pairs.
        regularizers = {c: tf.keras.regularizers.L2(params.id_l2) for c in ids}
    elif params.id_l2:  # the same decay on the looked-up rows only (a sparse gradient)
        batch_l2 = {c: (params.id_l2 if c in ids else params.embedding_l2 or 0.0) for c in cats.column_names}
    embeddings = mm.ParallelBlock(
        {"categorical": mm.Embeddings(cats, dim=params.embedding_dim, embeddings_regularizer=regularizers,
                                       l2_batch_regularization_factor=batch_l2),
         "multimodal": mm.PretrainedEmbeddings(pretrained, output_dims=params.embedding_dim)},
        is_input=True,
    )
    return mm.DLRMModel(
        schema,
        embeddings=embeddings,
        bottom_block=mm.MLPBlock(list(params.bottom_mlp)),
        top_block=mm.MLPBlock(list(params.top_mlp), dropout=params.dropout or None),
        prediction_tasks=mm.BinaryOutput(TARGET),
    )


def batch_size_for(rows: int, params: DlrmParams) -> int:
    """``batch_size``, or less when ``rows`` would give fewer than ``min_steps_per_epoch`` steps an epoch."""
    return max(1, min(params.batch_size, rows // max(params.min_steps_per_epoch, 1)))


def train(train_folders, valid_folders, table: np.ndarray, params: DlrmParams, log=print):
    """Fit the ranker; returns ``(model, report, validation split, validation scores)``."""
    import tensorflow as tf

    mi.set_seeds(params.seed)
    t0 = time.perf_counter()
    train_split = mi.load_split(train_folders, mi.DLRM_FEATURES, with_target=True, shuffle_seed=params.seed)
    valid_split = mi.load_split(valid_folders, mi.DLRM_FEATURES + ("interaction_id",), with_target=True)
    load_seconds = time.perf_counter() - t0
    batch_size = batch_size_for(len(train_split), params)
    train_loader = mi.loader(train_split, table, batch_size, shuffle=True, seed=params.seed,
                             oov_rates={"user_id": params.oov_rate, "item_id": params.oov_rate})
    model = build_model(train_loader.output_schema, params)
    model.compile(optimizer=mi.optimizer(params.optimizer, params.learning_rate),
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    timer = mi.EpochTimer(rows=len(train_split), what="dlrm")
    t0 = time.perf_counter()
    model.fit(train_loader, epochs=params.epochs, callbacks=[timer], verbose=0)
    fit_seconds = time.perf_counter() - t0
    log(f"dlrm: {len(train_split)} impressions, {params.epochs} epochs of batch {batch_size} in {fit_seconds:.1f}s")
    t0 = time.perf_counter()
    scores = score(model, valid_split.rows, table)
    predict_seconds = time.perf_counter() - t0
    labels = valid_split.rows[TARGET].to_numpy()
    report = {
        "params": {**dataclasses.asdict(params), "bottom_mlp": list(params.bottom_mlp),
                   "top_mlp": list(params.top_mlp)},
        "features": list(mi.DLRM_FEATURES),
        "train_rows": len(train_split),
        "batch_size": batch_size,
        "train_ctr": float(train_split.rows[TARGET].mean()),
        "validation_rows": len(valid_split),
        "load_seconds": round(load_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "rows_per_second": _steady(timer.epochs, "rows_per_second"),
        "epoch_seconds": _steady(timer.epochs, "seconds"),
        "predict_rows_per_second": round(len(labels) / max(predict_seconds, 1e-9), 1),
        "history": timer.epochs,
        "validation_auc": auc(labels, scores),
        "validation_log_loss": log_loss(labels, scores),
    }
    return model, report, valid_split, scores


def _steady(epochs: list[dict], key: str) -> float:
    values = [e[key] for e in (epochs[1:] or epochs)]
    return float(np.median(values)) if values else 0.0


def score(model, rows, table: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """p(click) for ``rows`` (transformed columns + ``item_id_raw``) from a live or reloaded model."""
    arrays = mi.feature_arrays(rows, mi.DLRM_FEATURES, table)
    return mi.predict_batches(model, arrays, batch_size).reshape(-1).astype(np.float64)


def load_model(path):
    import merlin.models.tf  # noqa: F401  (registers the Merlin layers with Keras)
    import tensorflow as tf

    return tf.keras.models.load_model(str(path), compile=False)


def restore(model_dir, schema, table: np.ndarray, probe) -> tuple:
    """The DLRM of ``model_dir`` rebuilt from its ``meta.json`` parameters over ``schema`` (``model_inputs.
    model_schema`` of any transformed rows), with its weights: ``(model, params, scores of the probe rows)``.

    A folder from before the weights existed has only the SavedModel (``model/``); a merlin-models 23.12 DLRM
    loaded from one cannot be saved and loaded again (its top MLP then expects another input width), so its
    variables are copied into the rebuilt model through a checkpoint, and the two must score the probe rows
    identically.
    """
    import atexit
    import shutil
    import tempfile

    model_dir = Path(model_dir)
    params = DlrmParams.from_dict(json.loads((model_dir / META).read_text())["params"])
    fresh = build_model(schema, params)
    mi.predict_batches(fresh, mi.feature_arrays(probe.iloc[:8], mi.DLRM_FEATURES, table))  # creates the variables
    if mi.has_weights(model_dir / mi.WEIGHTS):
        mi.read_weights(fresh, model_dir / mi.WEIGHTS)
        return fresh, params, score(fresh, probe, table)
    saved = load_model(model_dir / MODEL)
    # The checkpoint must outlive this call: variables created later (metrics, at fit) restore from it lazily.
    tmp = tempfile.mkdtemp(prefix="recsys-dlrm-")
    atexit.register(shutil.rmtree, tmp, True)
    mi.write_weights(saved, tmp)
    mi.read_weights(fresh, tmp)
    before = score(saved, probe, table)
    diff = float(np.max(np.abs(before - score(fresh, probe, table)))) if len(probe) else 0.0
    if diff != 0.0:
        raise ValueError(f"the DLRM rebuilt from {model_dir} scores {diff} away from the saved one: its parameters "
                         f"({model_dir / META}) do not describe the saved model")
    return fresh, params, before


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        train_folders = [store.local_path(p) for p in pipes.get_extra("train")]
        valid_folders = [store.local_path(p) for p in pipes.get_extra("validation")]
        table = mi.load_multimodal(store.local_path(pipes.get_extra("multimodal")), pipes.get_extra("n_items"))
        params = DlrmParams.from_dict(dict(pipes.get_extra("params")))
        output = pipes.get_extra("output")
        t_all = time.perf_counter()
        model, report, valid_split, scores = train(train_folders, valid_folders, table, params, pipes.log.info)
        with store.writing(output) as tmp:
            out = Path(tmp)
            t0 = time.perf_counter()
            mi.write_weights(model, out / mi.WEIGHTS)  # what the export and fine-tuning rebuild the model from
            report["save_seconds"] = round(time.perf_counter() - t0, 2)
            (out / META).write_text(json.dumps(report, indent=1))
            sample = valid_split.rows.iloc[:2048]
            diff = 0.0
            if len(sample):
                # the same rows in the same batches on both sides: batch shape may change float summation order
                live = score(model, sample, table)
                _, _, rebuilt = restore(out, mi.model_schema(valid_split, table), table, sample)
                diff = float(np.max(np.abs(rebuilt - live)))
            report["reload_max_abs_diff"] = diff
            import pandas as pd

            pd.DataFrame({"interaction_id": valid_split.rows["interaction_id"].to_numpy(np.int64),
                          "score": scores, TARGET: valid_split.rows[TARGET].to_numpy(np.int64)}
                         ).to_parquet(out / SCORES, index=False)
            (out / META).write_text(json.dumps(report, indent=1))
        pipes.report_asset_check(
            "reload_identical", passed=diff == 0.0,
            metadata={"description": f"DLRM rebuilt from its weights on disk: max abs score difference {diff} on "
                                     f"{len(sample)} validation rows" + ("" if diff == 0.0 else " (expected 0)"),
                      "max_abs_diff": diff},
        )
        pipes.report_asset_materialization(metadata={
            "train_rows": report["train_rows"],
            "validation_rows": report["validation_rows"],
            "epochs": params.epochs,
            "rows_per_second": report["rows_per_second"],
            "epoch_seconds": report["epoch_seconds"],
            "final_loss": report["history"][-1]["loss"] if report["history"] else float("nan"),
            "validation_auc": report["validation_auc"],
            "validation_log_loss": report["validation_log_loss"],
            "seconds": round(time.perf_counter() - t_all, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "path": store.uri(output),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
