"""Daily fine-tuning of the served models on a new day (merlin env, through Pipes).

Contract
- Input: the parent release's models (each rebuilt from its ``meta.json`` parameters with its ``weights/``
  checkpoint; an older folder's whole SavedModel otherwise), the new day's transformed rows (already transformed
  with the saved workflows: no refit, unseen ids on the OOV row), older transformed days for replay, the
  interaction ids held out for evaluation (never trained on), the raw-id-keyed multimodal table, and the item
  vectors the served FAISS index was built from.
- Two-Tower: the model is restored, its candidate tower frozen (``freeze_blocks([<candidate name>])``) and only
  the query tower trained, on the new day's pairs plus a ``replay_fraction`` sample of the older days' pairs,
  where a pair is what it was when the parent trained (clicks, or impressions with clicks weighted, read from the
  parent's ``meta.json``). The catalogue is then embedded with the fine-tuned candidate tower and compared with
  the served item vectors: they must be bit-identical (check ``item_vectors_unchanged``), so the served FAISS
  index stays valid.
- DLRM: restored the same way and every layer trained on the new day's impressions plus the replay sample, at
  the given (lower) learning rate for the given (fewer) epochs.
- Output (published atomically under ``output``): ``two_tower/<variant>/`` and ``dlrm/``, each ``weights/`` +
  ``meta.json`` (what the next fine-tune restores; the Two-Tower's candidate tower is the served one, with the
  parent's ``item_counts.npy``), ``onnx/query_tower.onnx`` and ``onnx/dlrm.onnx``, each with a ``.parity.npz``
  (TensorFlow's outputs on held-out rows; onnxruntime runs in the pipeline env), ``meta.json`` (rows, phase
  timings, losses).

Imports dagster_pipes, the merlin stack and pure ``recsys_assets`` modules only.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys_assets.ml import model_inputs as mi
from recsys_assets.ml.dlrm import DlrmParams
from recsys_assets.ml.two_tower import TwoTowerParams

INTERACTION_ID = "interaction_id"


@dataclasses.dataclass
class FineTuneParams:
    """The daily fine-tune's training hyperparameters, declared once: ``finetuned_models``'s Dagster config
    derives from them (``defs.params``) and adds what the pipeline side needs (days, gate, hold-out)."""

    variant: str = "plain"
    """The parent release's query-tower variant (set from the release's lineage)."""
    replay_fraction: float = 0.2
    """Share of the replay days' rows added to the new day's (keeps the models from forgetting)."""
    two_tower_epochs: int = 1
    two_tower_learning_rate: float = 1e-3
    """A third of the full training's rate: the query tower moves, it does not start over."""
    two_tower_batch_size: int = 256
    dlrm_epochs: int = 1
    """Fewer than the full training's 2."""
    dlrm_learning_rate: float = 1e-4
    """A tenth of the full training's rate; every layer trains."""
    dlrm_batch_size: int = 1024
    two_tower_optimizer: str = TwoTowerParams.optimizer
    dlrm_optimizer: str = DlrmParams.optimizer
    parity_rows: int = 512
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "FineTuneParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning parameters {unknown}: expected some of {sorted(known)}")
        out = cls(**d)
        if not 0.0 <= out.replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction {out.replay_fraction}: expected a fraction in [0, 1]")
        mi.check_optimizer(out.two_tower_optimizer, "fine-tuning two_tower_optimizer")
        mi.check_optimizer(out.dlrm_optimizer, "fine-tuning dlrm_optimizer")
        return out


def rows_for(new_day, replay_days, features, with_target: bool, clicked_only: bool, exclude: set,
             replay_fraction: float, seed: int) -> tuple["mi.Split", dict]:
    """The new day's rows (minus ``exclude``) plus a ``replay_fraction`` sample of the replay days' rows."""
    import pandas as pd

    def load(folders):
        split = mi.load_split(folders, list(features) + [INTERACTION_ID], with_target=with_target,
                              clicked_only=clicked_only)
        return split.rows, split.schema

    new_rows, schema = load([new_day])
    held = new_rows[INTERACTION_ID].isin(exclude)
    new_rows = new_rows[~held]
    replay = new_rows.iloc[:0]
    if replay_days and replay_fraction > 0:
        older, _ = load(list(replay_days))
        replay = older.sample(frac=replay_fraction, random_state=seed)
    rows = pd.concat([new_rows, replay], ignore_index=True).sample(frac=1.0, random_state=seed)
    rows = rows.drop(columns=[INTERACTION_ID]).reset_index(drop=True)
    counts = {"new_day_rows": int(len(new_rows)), "held_out_rows": int(held.sum()), "replay_rows": int(len(replay))}
    return mi.Split(rows=rows, schema=schema.select_by_name(list(rows.columns))), counts


def day_folder(store, source, workflow, scratch: Path) -> Path:
    """A transformed day folder from ``source``: a relative path or ``{"transformed": rel}`` (already in the
    parent's vocabulary), or ``{"masked": rel}``, transformed here with ``workflow`` (the parent's full workflow)."""
    if isinstance(source, str):
        return store.local_path(source)
    if "transformed" in source:
        return store.local_path(source["transformed"])
    if not workflow:
        raise ValueError(f"{source['masked']} must be transformed but no workflow was given")
    from recsys_assets.ml.nvt_transform import transform_day

    scratch.mkdir(parents=True, exist_ok=True)
    transform_day(store.local_path(workflow), store.local_path(source["masked"]), scratch, "128MB", 1)
    return scratch


def fine_tune_two_tower(model_dir, split: "mi.Split", table: np.ndarray, params: FineTuneParams, probe: dict,
                        log=print):
    """Restore the Two-Tower model, freeze its candidate tower, train the query tower on ``split``.

    ``probe``: query features whose embeddings are returned from before the training (to show it moved)."""
    from recsys_assets.ml import two_tower

    mi.set_seeds(params.seed)
    if len(split) < params.two_tower_batch_size:
        raise ValueError(f"only {len(split)} pairs to fine-tune the query tower on, fewer than one batch of "
                         f"{params.two_tower_batch_size}: lower two_tower_batch_size or raise replay_fraction")
    t0 = time.perf_counter()
    model = two_tower.restore(model_dir, split, table)
    before = mi.predict_batches(model.query_encoder, probe)
    load_seconds = time.perf_counter() - t0
    two_tower.freeze_candidate_tower(model, params.two_tower_learning_rate, params.two_tower_optimizer)
    timer = mi.EpochTimer(rows=(len(split) // params.two_tower_batch_size) * params.two_tower_batch_size,
                          what="fine-tune two-tower")
    t0 = time.perf_counter()
    model.fit(mi.loader(split, table, params.two_tower_batch_size, shuffle=True, seed=params.seed, drop_last=True),
              epochs=params.two_tower_epochs, callbacks=[timer], verbose=0)
    seconds = time.perf_counter() - t0
    log(f"query tower fine-tuned on {len(split)} pairs in {seconds:.1f}s (candidate tower frozen)")
    return model, before, {"rows": len(split), "seconds": round(seconds, 2), "history": timer.epochs,
                           "load_seconds": round(load_seconds, 2),
                           "trainable_weights": len(model.trainable_weights)}


def fine_tune_dlrm(parent_dir, split: "mi.Split", table: np.ndarray, params: FineTuneParams, probe, log=print):
    """Restore the DLRM and train all its layers on ``split`` at the fine-tuning learning rate."""
    import tensorflow as tf

    mi.set_seeds(params.seed)
    t0 = time.perf_counter()
    schema = mi.loader(split, table, params.dlrm_batch_size, shuffle=False).output_schema
    from recsys_assets.ml import dlrm

    model, architecture, before = dlrm.restore(parent_dir, schema, table, probe)
    load_seconds = time.perf_counter() - t0
    model.compile(optimizer=mi.optimizer(params.dlrm_optimizer, params.dlrm_learning_rate),
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    timer = mi.EpochTimer(rows=len(split), what="fine-tune dlrm")
    t0 = time.perf_counter()
    model.fit(mi.loader(split, table, params.dlrm_batch_size, shuffle=True, seed=params.seed),
              epochs=params.dlrm_epochs, callbacks=[timer], verbose=0)
    seconds = time.perf_counter() - t0
    log(f"DLRM fine-tuned on {len(split)} impressions in {seconds:.1f}s")
    return model, architecture, before, {"rows": len(split), "seconds": round(seconds, 2), "history": timer.epochs,
                                         "load_seconds": round(load_seconds, 2)}


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    import pandas as pd

    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.ml import export as onnx_export
    from recsys_assets.ml.dlrm import META as DLRM_META
    from recsys_assets.ml.dlrm import score
    from recsys_assets.ml.item_embeddings import catalogue_features, embed_catalogue
    from recsys_assets.ml.two_tower import ITEM_COUNTS as TWO_TOWER_COUNTS
    from recsys_assets.ml.two_tower import META as TWO_TOWER_META
    from recsys_assets.ml.two_tower import saved_params, weight_clicks

    with open_dagster_pipes() as pipes:
        t_all = time.perf_counter()
        store = ArtifactStore(pipes.get_extra("root"))
        params = FineTuneParams.from_dict(dict(pipes.get_extra("params")))
        # Days come transformed in the parent's vocabulary, or as masked tables this process transforms with the
        # parent's own workflows (the served fit may be newer than the parent's: a weekly retrain refit it).
        scratch = Path(tempfile.mkdtemp(prefix="recsys-finetune-"))
        workflow = pipes.extras.get("workflow")
        sources = {"new": pipes.get_extra("new_day"), **{f"replay_{i}": r
                                                         for i, r in enumerate(pipes.get_extra("replay"))}}
        t_transform = time.perf_counter()
        folders = {name: day_folder(store, source, workflow, scratch / name) for name, source in sources.items()}
        transformed_here = sum(isinstance(src, dict) and "masked" in src for src in sources.values())
        transform_seconds = time.perf_counter() - t_transform
        new_day = folders.pop("new")
        replay = list(folders.values())
        held_out = set(pd.read_parquet(store.local_path(pipes.get_extra("held_out")))[INTERACTION_ID].tolist())
        items = pd.read_parquet(store.local_path(pipes.get_extra("items")))
        table = mi.load_multimodal(store.local_path(pipes.get_extra("multimodal")), len(items))
        parent_two_tower = store.local_path(pipes.get_extra("two_tower"))
        parent_dlrm = store.local_path(pipes.get_extra("dlrm"))
        served_vectors = np.load(store.local_path(pipes.get_extra("item_vectors")))
        output = pipes.get_extra("output")
        query_features = mi.query_features(params.variant)
        two_tower_features = query_features + mi.CANDIDATE_FEATURES

        # The query tower learns from the same kind of pairs as the training that made its parent: clicks, or
        # every impression with clicks weighted (ml.two_tower); other pairs pull it away from what it learned.
        tt_architecture = dataclasses.replace(saved_params(parent_two_tower), variant=params.variant)
        positives, click_weight = tt_architecture.positives, tt_architecture.click_weight
        tt_split, tt_counts = rows_for(new_day, replay, two_tower_features, with_target=positives != "clicks",
                                       clicked_only=positives == "clicks", exclude=held_out,
                                       replay_fraction=params.replay_fraction, seed=params.seed)
        if positives != "clicks":
            tt_split = weight_clicks(tt_split, click_weight, params.seed)
        tt_counts.update(positives=positives, click_weight=click_weight)
        dlrm_split, dlrm_counts = rows_for(new_day, replay, mi.DLRM_FEATURES, with_target=True, clicked_only=False,
                                           exclude=held_out, replay_fraction=params.replay_fraction,
                                           seed=params.seed)
        # parity and change probes: held-out rows of the new day (never trained on)
        probe = mi.read_days([new_day])
        probe = probe[probe[INTERACTION_ID].isin(held_out)].iloc[:params.parity_rows]
        if probe.empty:
            probe = mi.read_days([new_day]).iloc[:params.parity_rows]
        q_in = mi.feature_arrays(probe, query_features, table)
        t_data = time.perf_counter()

        two_tower, before_query, tt_report = fine_tune_two_tower(parent_two_tower, tt_split, table, params, q_in,
                                                                 pipes.log.info)
        t0 = time.perf_counter()
        vectors = embed_catalogue(two_tower.candidate_encoder, catalogue_features(
            store.local_path(pipes.get_extra("item_workflow")), items), table)
        same_shape = vectors.shape == served_vectors.shape
        identical = bool(same_shape and np.array_equal(vectors, served_vectors))
        item_diff = float(np.max(np.abs(vectors - served_vectors))) if same_shape else float("inf")
        verify_seconds = time.perf_counter() - t0
        dlrm, architecture, before_dlrm, dlrm_report = fine_tune_dlrm(parent_dlrm, dlrm_split, table, params, probe,
                                                                      pipes.log.info)
        after_query = mi.predict_batches(two_tower.query_encoder, q_in)
        after_dlrm = score(dlrm, probe, table)

        exports = {}
        with store.writing(output) as tmp:
            out = Path(tmp)
            t0 = time.perf_counter()
            # What the next fine-tune restores: both models' weights with the parameters they are rebuilt from
            # (the Two-Tower's candidate tower is the served one, frozen; its item counts are the parent's).
            tt_out = out / "two_tower" / params.variant
            mi.write_weights(two_tower, tt_out / mi.WEIGHTS)
            counts = Path(parent_two_tower) / TWO_TOWER_COUNTS
            if counts.exists():
                shutil.copy2(counts, tt_out / TWO_TOWER_COUNTS)
            (tt_out / TWO_TOWER_META).write_text(json.dumps({"params": {
                **dataclasses.asdict(tt_architecture), "mlp": list(tt_architecture.mlp)}}, indent=1))
            mi.write_weights(dlrm, out / "dlrm" / mi.WEIGHTS)
            (out / "dlrm" / DLRM_META).write_text(json.dumps({"params": {
                **dataclasses.asdict(architecture), "bottom_mlp": list(architecture.bottom_mlp),
                "top_mlp": list(architecture.top_mlp)}, "parent": str(parent_dlrm)}, indent=1))
            save_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            (out / "onnx").mkdir(parents=True)
            for kind, model, features in (("query_tower", two_tower.query_encoder, query_features),
                                          ("dlrm", dlrm, mi.DLRM_FEATURES)):
                arrays = mi.feature_arrays(probe, features, table)
                expected = onnx_export.tf_outputs(model, kind, arrays)
                exports[kind] = onnx_export.export(model, kind, features, arrays, out / "onnx" / f"{kind}.onnx")
                with open(out / "onnx" / f"{kind}.parity.npz", "wb") as f:
                    np.savez(f, expected=expected, **arrays)
            export_seconds = time.perf_counter() - t0
            phases = {"transform_days": round(transform_seconds, 2), "read_rows": round(t_data - t_all, 2),
                      "two_tower_restore": tt_report["load_seconds"],
                      "two_tower_fit": tt_report["seconds"], "item_vectors_check": round(verify_seconds, 2),
                      "dlrm_restore": dlrm_report["load_seconds"], "dlrm_fit": dlrm_report["seconds"],
                      "save": round(save_seconds, 2), "onnx_export": round(export_seconds, 2)}
            report = {
                "params": dataclasses.asdict(params), "two_tower": {**tt_report, **tt_counts},
                "dlrm": {**dlrm_report, **dlrm_counts}, "item_vectors_max_abs_diff": item_diff,
                "query_tower_max_abs_change": float(np.max(np.abs(after_query - before_query))),
                "dlrm_max_abs_change": float(np.max(np.abs(after_dlrm - before_dlrm))),
                "exports": exports, "probe_rows": int(len(probe)), "phase_seconds": phases,
                "seconds": round(time.perf_counter() - t_all, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
            (out / "meta.json").write_text(json.dumps(report, indent=1, default=float))
        pipes.report_asset_check(
            "item_vectors_unchanged", passed=identical,
            metadata={"description": f"catalogue vectors of the fine-tuned candidate tower against the served ones: "
                                     f"max abs difference {item_diff} (expected exactly 0, so the FAISS index "
                                     "stays valid)", "max_abs_diff": item_diff},
        )
        pipes.report_asset_materialization(metadata={
            "variant": params.variant,
            "two_tower/rows": tt_report["rows"], "two_tower/replay_rows": tt_counts["replay_rows"],
            "two_tower/seconds": tt_report["seconds"],
            "two_tower/final_loss": tt_report["history"][-1]["loss"] if tt_report["history"] else float("nan"),
            "dlrm/rows": dlrm_report["rows"], "dlrm/replay_rows": dlrm_counts["replay_rows"],
            "dlrm/seconds": dlrm_report["seconds"],
            "dlrm/final_loss": dlrm_report["history"][-1]["loss"] if dlrm_report["history"] else float("nan"),
            "held_out_rows": dlrm_counts["held_out_rows"],
            "item_vectors_max_abs_diff": item_diff,
            "query_tower_max_abs_change": report["query_tower_max_abs_change"],
            "dlrm_max_abs_change": report["dlrm_max_abs_change"],
            "merlin_seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"],
            "days_transformed_with_parent_workflows": transformed_here,
            **{f"phase_seconds/{k}": v for k, v in phases.items()},
            "path": store.uri(output),
        })
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
