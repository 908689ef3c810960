"""Trains the Two-Tower retrieval model (merlin-models ``TwoTowerModelV2``) in the merlin env, through Pipes.

Contract
- Input: the transformed train and validation days, and the raw-id-keyed multimodal table. Positive pairs of a
  query and an item are the clicked rows (``positives="clicks"``) or every logged impression with each click
  counted ``click_weight`` times (``positives="impressions"``, see :func:`positive_pairs`); validation pairs are
  the clicked rows either way. The query tower encodes user features (variant ``plain``) or user +
  request-context features (variant ``context``, context-aware retrieval); the candidate tower encodes item
  features plus the image and text vectors. Trained with in-batch negatives and a
  contrastive (softmax cross-entropy) loss; validation: loss and in-batch top-k metrics on the validation days.
- Output, per variant under ``<output>/<variant>/``: ``weights/`` + ``item_counts.npy`` + ``meta.json``
  (parameters, features, history, timings): what :func:`restore` rebuilds the whole model from (the query tower's
  ONNX export; daily fine-tuning, which then freezes its candidate tower), and ``candidate_tower/`` (a SavedModel,
  the item embeddings' graph). The whole folder is published atomically.
- Check ``reload_identical``: the rebuilt query tower and the reloaded candidate tower give bit-identical outputs
  on validation rows.

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

from recsys_assets.lib import paths
from recsys_assets.ml import model_inputs as mi

QUERY_TOWER, CANDIDATE_TOWER, META = "query_tower", "candidate_tower", "meta.json"
ITEM_COUNTS = "item_counts.npy"
"""A trained variant's folder: the whole model's weights (``model_inputs.WEIGHTS``) with ``META``'s parameters
and ``ITEM_COUNTS`` (the logQ correction's counts), which :func:`restore` rebuilds it from (ONNX export,
fine-tuning), and the candidate tower as a SavedModel (item embeddings). Folders trained before 2026-12-07 also
hold ``QUERY_TOWER`` as a SavedModel."""
# What a positive (query, item) pair is: a click, or every logged impression (clicked ones ``click_weight`` times).
POSITIVES = ("clicks", "impressions")


@dataclasses.dataclass
class TwoTowerParams:
    """The Two-Tower's hyperparameters, declared once: ``two_tower_model``'s Dagster config derives from them
    (``defs.params``). The defaults are what the pipeline trains with, chosen at demo scale with
    ``benchmarks/model_quality.py`` (README, "Model quality")."""

    variant: str = "plain"
    """``plain``: query tower on user features; ``context``: user + request context (set per trained variant)."""
    user_id_embedding_dim: int = 32
    item_id_embedding_dim: int = 8
    """Small id tables: ~3 clicks per user at demo scale; wide ones memorize the training pairs."""
    feature_embedding_dim: int = 16
    """Width of the other categorical embeddings (gender, top_category, category_l1/l2, device ...)."""
    embedding_l2: float = 0.0
    mlp: tuple[int, ...] = (128, 64)
    """Both towers' MLP; the last width is the retrieval embedding size."""
    dropout: float = 0.2
    batch_size: int = 256
    learning_rate: float = 3e-3
    """256 / 3e-3 learns at demo scale (1024 / 1e-3 did not learn in one short epoch, ENVIRONMENT.md s.6)."""
    optimizer: str = "lazyadam"
    """``ml.model_inputs.OPTIMIZERS``. LazyAdam updates the moments of the user rows a batch looks up only: the same
    recall at demo scale (warm recall@300 0.582-0.593 vs Adam's 0.592-0.593, new 0.415-0.418 vs 0.420-0.438,
    anonymous 0.339-0.341 vs 0.335-0.338; ``benchmarks/model_quality.py``), and a step that does not grow with the
    users (300k: 2.7 ms vs 271 ms; ``benchmarks/id_tables.py``)."""
    epochs: int = 2
    """Full-catalogue recall peaks at 2 epochs on impression positives at demo scale (3 epochs: warm recall@300
    0.570 vs 0.581); later epochs memorize the training pairs."""
    logq_correction: float = 1.0
    """Weight of the logQ correction of the in-batch softmax (0 turns it off; see :func:`build_model`)."""
    user_oov_rate: float = 0.1
    """Share of training user ids sent to the OOV row, so new users (OOV at serving) meet a trained row."""
    l2_normalize: bool = False
    temperature: float = 1.0
    positives: str = "impressions"
    """``impressions``: every logged impression is a positive pair, each click ``click_weight`` times (a user has
    ~40 impressions but ~3 clicks in the train days, and the impressions follow the hidden persona); ``clicks``:
    clicked rows only. Warm recall@300 0.44 -> 0.58 at demo scale (:func:`positive_pairs`)."""
    click_weight: int = 5
    """Copies of each clicked row among the impression positives (1: 0.568, 5: 0.581, 10: 0.525 warm recall@300)."""
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TwoTowerParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown two-tower parameters {unknown}: expected some of {sorted(known)}")
        out = cls(**d)
        out.mlp = tuple(int(x) for x in out.mlp)
        if out.positives not in POSITIVES:
            raise ValueError(f"unknown positives {out.positives!r}: expected one of {', '.join(POSITIVES)}")
        if out.click_weight < 1:
            raise ValueError(f"click_weight must be >= 1 (copies of each clicked row), got {out.click_weight}")
        mi.check_optimizer(out.optimizer, "two-tower optimizer")
        return out


def _encoder(schema, params: TwoTowerParams, name: str):
    import merlin.models.tf as mm
    from merlin.schema import Tags

    cats = schema.select_by_tag(Tags.CATEGORICAL)
    special = {"user_id": params.user_id_embedding_dim, "item_id": params.item_id_embedding_dim}
    dims = {c: special.get(c, params.feature_embedding_dim) for c in cats.column_names}
    branches = {"categorical": mm.Embeddings(cats, dim=dims,
                                             l2_batch_regularization_factor=params.embedding_l2 or 0.0)}
    if schema.select_by_tag(Tags.CONTINUOUS):
        branches["continuous"] = Tags.CONTINUOUS
    pretrained = schema.select_by_tag(Tags.EMBEDDING)
    branches["pretrained_embeddings"] = mm.PretrainedEmbeddings(pretrained) if pretrained else Tags.EMBEDDING
    inputs = mm.InputBlockV2(schema, **branches)
    mlp = mm.MLPBlock(list(params.mlp), no_activation_last_layer=True, dropout=params.dropout or None)
    post = mm.L2Norm() if params.l2_normalize else None
    return mm.Encoder(inputs, mlp, post=post, name=name) if post is not None else mm.Encoder(inputs, mlp, name=name)


def build_model(schema, params: TwoTowerParams, item_counts: np.ndarray | None = None):
    """The two towers over ``schema`` (the loader's output schema: features + multimodal columns).

    ``item_counts`` (clicks per NVTabular item index in the training rows) drives the logQ correction: in-batch
    negatives are drawn in proportion to click frequency, so without it the loss pushes popular items down and
    the dot product learns p(item | user) / p(item) instead of p(item | user). ``logq_correction`` scales it
    (0 turns it off).
    """
    import merlin.models.tf as mm
    from merlin.models.tf.outputs.base import DotProduct
    from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
    from merlin.schema import Tags

    query = schema.select_by_name(list(mi.query_features(params.variant)))
    candidate = schema.select_by_name(list(mi.CANDIDATE_FEATURES))
    id_schema = candidate.select_by_tag(Tags.ITEM_ID)
    post = None
    if params.logq_correction and item_counts is not None:
        # +1: every item gets a finite probability (an item absent from training is never sampled anyway)
        import tensorflow as tf

        # a tensor, not an array: the layer's get_config (SavedModel) calls .numpy() on it
        freq = tf.constant(np.asarray(item_counts, dtype=np.float32) + 1.0)
        post = PopularityLogitsCorrection(freq, schema=id_schema, reg_factor=float(params.logq_correction))
    output = mm.ContrastiveOutput(
        to_call=DotProduct(), negative_samplers="in-batch", schema=id_schema,
        logits_temperature=params.temperature, store_negative_ids=post is not None, post=post,
    )
    return mm.TwoTowerModelV2(_encoder(query, params, "query"), _encoder(candidate, params, "candidate"),
                              outputs=output)


def item_click_counts(split: mi.Split) -> np.ndarray:
    """How often each NVTabular item index is a positive in training: the in-batch sampling distribution.

    Item ids are never sent to the OOV row here (unlike user ids): the OOV "item" would stand for every dropped
    item at once, the softmax would learn its aggregate share and serving would rank all cold items on top.
    Cold items meet an untrained (small, random) id row and are placed by their content features.
    """
    col = split.schema["item_id"]
    cardinality = int(col.properties.get("embedding_sizes", {}).get("cardinality", 0))
    ids = split.rows["item_id"].to_numpy(np.int64)
    return np.bincount(ids, minlength=max(cardinality, int(ids.max(initial=0)) + 1)).astype(np.float64)


def positive_pairs(folders, features, params: TwoTowerParams) -> mi.Split:
    """The training pairs, shuffled: clicked rows, or every impression with each click ``click_weight`` times.

    Why impressions: retrieval is judged on the items a session clicked, which the earlier system first had to
    show; its impressions follow the user's hidden persona (about a third of them) and popularity. A user has ~40
    impressions but ~3 clicks in the training days, so the impression log says far more about who they are than
    the clicks do, and the extra click copies keep the click signal. The logQ correction then counts impressions.
    """
    if params.positives == "clicks":
        return mi.load_split(folders, features, with_target=False, clicked_only=True, shuffle_seed=params.seed)
    return weight_clicks(mi.load_split(folders, features, with_target=True), params.click_weight, params.seed)


def weight_clicks(split: mi.Split, click_weight: int, seed: int) -> mi.Split:
    """Impressions (with the target column) as positive pairs, each clicked row ``click_weight`` times, shuffled."""
    import pandas as pd

    rows = split.rows
    clicked = rows[rows[mi.TARGET] == 1]
    rows = pd.concat([rows] + [clicked] * (click_weight - 1), ignore_index=True)
    rows = rows.drop(columns=[mi.TARGET]).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return mi.Split(rows=rows, schema=split.schema.excluding_by_name([mi.TARGET]))


def features_of(params: TwoTowerParams) -> tuple[str, ...]:
    return mi.query_features(params.variant) + mi.CANDIDATE_FEATURES


def train(train_folders, valid_folders, table: np.ndarray, params: TwoTowerParams, log=print):
    """Fit one variant; returns ``(model, report, validation split, item counts)``; the report has the history,
    timings and validation metrics."""
    mi.set_seeds(params.seed)
    features = features_of(params)
    t0 = time.perf_counter()
    train_split = positive_pairs(train_folders, features, params)
    valid_split = mi.load_split(valid_folders, features, with_target=False, clicked_only=True)
    if len(train_split) < params.batch_size:
        raise ValueError(f"only {len(train_split)} training pairs for batch size {params.batch_size}: "
                         "use more train days or a smaller batch_size")
    load_seconds = time.perf_counter() - t0
    train_loader = mi.loader(train_split, table, params.batch_size, shuffle=True, seed=params.seed, drop_last=True,
                             oov_rates={"user_id": params.user_oov_rate})
    schema = train_loader.output_schema
    counts = item_click_counts(train_split)
    model = build_model(schema, params, counts)
    model.compile(optimizer=mi.optimizer(params.optimizer, params.learning_rate))
    timer = mi.EpochTimer(rows=(len(train_split) // params.batch_size) * params.batch_size, what="two-tower")
    t0 = time.perf_counter()
    model.fit(train_loader, epochs=params.epochs, callbacks=[timer], verbose=0)
    fit_seconds = time.perf_counter() - t0
    log(f"two-tower {params.variant}: {len(train_split)} {params.positives} pairs, {params.epochs} epochs in "
        f"{fit_seconds:.1f}s")
    valid = {}
    if len(valid_split) >= params.batch_size:
        valid_loader = mi.loader(valid_split, table, params.batch_size, shuffle=False, drop_last=True)
        valid = {k: float(v) for k, v in model.evaluate(valid_loader, return_dict=True, verbose=0).items()}
    report = {
        "variant": params.variant,
        "params": {**dataclasses.asdict(params), "mlp": list(params.mlp)},
        "query_features": list(mi.query_features(params.variant)),
        "candidate_features": list(mi.CANDIDATE_FEATURES),
        "train_rows": len(train_split),
        "validation_rows": len(valid_split),
        "load_seconds": round(load_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        # the first epoch includes graph tracing; steady-state throughput is the median of the others
        "rows_per_second": _steady_rate(timer.epochs),
        "epoch_seconds": _steady_seconds(timer.epochs),
        "history": timer.epochs,
        "validation": valid,
        # in-batch recall@10 of a random scorer: 10 of the batch's candidates
        "random_in_batch_recall_at_10": min(1.0, 10.0 / params.batch_size),
    }
    return model, report, valid_split, counts


def _steady_rate(epochs: list[dict]) -> float:
    rates = [e["rows_per_second"] for e in (epochs[1:] or epochs)]
    return float(np.median(rates)) if rates else 0.0


def _steady_seconds(epochs: list[dict]) -> float:
    secs = [e["seconds"] for e in (epochs[1:] or epochs)]
    return float(np.median(secs)) if secs else 0.0


def save(model, out_dir, item_counts: np.ndarray | None) -> None:
    """What :func:`restore` rebuilds the whole model from (``META`` is the caller's) and the candidate tower as a
    SavedModel (the item embeddings' graph). The query tower is rebuilt from the weights where it is needed (the
    ONNX export): its SavedModel took as long to save as the training's last epochs."""
    out_dir = Path(out_dir)
    mi.write_weights(model, out_dir / mi.WEIGHTS)
    if item_counts is not None:
        np.save(out_dir / ITEM_COUNTS, item_counts)
    model.candidate_encoder.save(str(out_dir / CANDIDATE_TOWER))


def saved_params(model_dir) -> TwoTowerParams:
    """The parameters a saved model was trained with (its ``META``). Older fine-tunes recorded only the variant and
    the positives, and models saved before that choice existed trained on clicks."""
    meta = Path(model_dir) / META
    params = json.loads(meta.read_text()).get("params", {}) if meta.exists() else {}
    known = {f.name for f in dataclasses.fields(TwoTowerParams)}
    return TwoTowerParams.from_dict({"positives": "clicks", "click_weight": 1,
                                     **{k: v for k, v in params.items() if k in known}})


def restore(model_dir, split: mi.Split, table: np.ndarray):
    """The whole model of ``model_dir``, for fine-tuning: :func:`build_model` with its saved parameters and item
    counts over ``split``'s schema, then its weights (every variable must match). A folder from before the weights
    existed holds the whole model as a SavedModel, loaded as such."""
    import merlin.models.tf  # noqa: F401  (registers the Merlin layers with Keras)
    import tensorflow as tf

    model_dir = Path(model_dir)
    if not mi.has_weights(model_dir / mi.WEIGHTS):
        return tf.keras.models.load_model(paths.restorable(str(model_dir))[1])
    params = saved_params(model_dir)
    counts = np.load(model_dir / ITEM_COUNTS) if (model_dir / ITEM_COUNTS).exists() else None
    model = build_model(mi.model_schema(split, table), params, counts)
    sample = split.rows.iloc[:8]
    query = mi.feature_arrays(sample, mi.query_features(params.variant), table)
    mi.predict_batches(model.query_encoder, query)  # creates the variables
    mi.predict_batches(model.candidate_encoder, mi.feature_arrays(sample, mi.CANDIDATE_FEATURES, table))
    mi.read_weights(model, model_dir / mi.WEIGHTS)
    if (model_dir / QUERY_TOWER).exists():  # an older folder: the rebuilt tower must answer as its saved one
        diff = np.max(np.abs(mi.predict_batches(model.query_encoder, query)
                             - mi.predict_batches(load_tower(model_dir / QUERY_TOWER), query)))
        if diff != 0.0:
            raise ValueError(f"the Two-Tower rebuilt from {model_dir} embeds queries {diff} away from its saved "
                             f"query tower: its {META} does not describe the saved model")
    return model


def load_tower(path):
    import merlin.models.tf  # noqa: F401  (registers the Merlin layers with Keras)
    import tensorflow as tf

    return tf.keras.models.load_model(str(path), compile=False)


def reload_check(model, out_dir, split: mi.Split, table, n: int = 512) -> dict:
    """Max abs difference between the in-memory towers and what serving is built from (0.0 expected) on ``n`` real
    rows: the query tower of the model rebuilt from ``out_dir``'s weights, the candidate tower's SavedModel."""
    sample = mi.Split(rows=split.rows.iloc[:n], schema=split.schema)
    params = saved_params(out_dir)
    q_in = mi.feature_arrays(sample.rows, mi.query_features(params.variant), table)
    c_in = mi.feature_arrays(sample.rows, mi.CANDIDATE_FEATURES, table)
    rebuilt = restore(out_dir, sample, table).query_encoder
    diffs = {}
    for name, live, reloaded, arrays in ((QUERY_TOWER, model.query_encoder, rebuilt, q_in),
                                         (CANDIDATE_TOWER, model.candidate_encoder,
                                          load_tower(Path(out_dir) / CANDIDATE_TOWER), c_in)):
        before = mi.predict_batches(live, arrays)
        after = mi.predict_batches(reloaded, arrays)
        diffs[name] = float(np.max(np.abs(before - after))) if len(before) else 0.0
    return diffs


def fine_tune_frozen_candidate(model, split: mi.Split, table: np.ndarray, params: TwoTowerParams,
                               epochs: int = 1, learning_rate: float | None = None):
    """Freeze the candidate tower of a restored ``model`` (:func:`restore` over ``split``, the
    :func:`positive_pairs` of the days) and train its query tower on ``split``.

    The daily fine-tuning recipe: item embeddings (and so the FAISS index) stay bit-identical.
    Returns the fine-tuned model.
    """
    freeze_candidate_tower(model, learning_rate or params.learning_rate / 3, params.optimizer)
    model.fit(mi.loader(split, table, params.batch_size, shuffle=True, seed=params.seed, drop_last=True),
              epochs=epochs, verbose=0)
    return model


def freeze_candidate_tower(model, learning_rate: float, optimizer: str = TwoTowerParams.optimizer) -> None:
    """Freeze the candidate tower (the served item vectors stay bit-identical) and compile for the query tower."""
    import tensorflow as tf

    # Pass the block's name (passing the object trips a merlin-models 23.12 bug). A model loaded from a SavedModel
    # names its towers encoder/encoder_1, so look the candidate tower up rather than assume its name.
    model.freeze_blocks([model.candidate_encoder.name])
    # The loss explicitly: a revived model's default loss takes the contrastive output's logits for probabilities
    # (clipped at 1e-7: a constant loss of ln(1e7) = 16.1 and no gradient on the tiny world).
    model.compile(optimizer=mi.optimizer(optimizer, learning_rate),
                  loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        train_folders = [store.local_path(p) for p in pipes.get_extra("train")]
        valid_folders = [store.local_path(p) for p in pipes.get_extra("validation")]
        table = mi.load_multimodal(store.local_path(pipes.get_extra("multimodal")), pipes.get_extra("n_items"))
        base = dict(pipes.get_extra("params"))
        variants = list(pipes.get_extra("variants"))
        output = pipes.get_extra("output")
        reports, diffs = {}, {}
        t_all = time.perf_counter()
        with store.writing(output) as tmp:
            for variant in variants:
                params = TwoTowerParams.from_dict({**base, "variant": variant})
                model, report, valid_split, counts = train(train_folders, valid_folders, table, params,
                                                           pipes.log.info)
                out = Path(tmp) / variant
                t0 = time.perf_counter()
                save(model, out, counts)
                report["save_seconds"] = round(time.perf_counter() - t0, 2)
                (out / META).write_text(json.dumps(report, indent=1))  # the parameters restore() rebuilds from
                split = valid_split if len(valid_split) else mi.load_split(
                    train_folders, features_of(params), with_target=False, clicked_only=True)
                diffs[variant] = reload_check(model, out, split, table)
                report["reload_max_abs_diff"] = diffs[variant]
                (out / META).write_text(json.dumps(report, indent=1))
                reports[variant] = report
        worst = max((d for v in diffs.values() for d in v.values()), default=0.0)
        pipes.report_asset_check(
            "reload_identical", passed=worst == 0.0,
            metadata={"description": f"query and candidate towers reloaded from disk: max abs difference {worst} "
                                     "on validation rows" + ("" if worst == 0.0 else " (expected exactly 0)"),
                      "max_abs_diff": worst},
        )
        metadata = {"variants": ", ".join(variants), "path": store.uri(output),
                    "seconds": round(time.perf_counter() - t_all, 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        for variant, r in reports.items():
            v = r["validation"]
            metadata.update({
                f"{variant}/train_rows": r["train_rows"],
                f"{variant}/epochs": r["params"]["epochs"],
                f"{variant}/rows_per_second": r["rows_per_second"],
                f"{variant}/epoch_seconds": r["epoch_seconds"],
                f"{variant}/final_loss": r["history"][-1]["loss"] if r["history"] else float("nan"),
                f"{variant}/validation_loss": v.get("loss", float("nan")),
                f"{variant}/validation_in_batch_recall_at_10": v.get("recall_at_10", float("nan")),
            })
        metadata["random_in_batch_recall_at_10"] = next(iter(reports.values()))["random_in_batch_recall_at_10"]
        pipes.report_asset_materialization(metadata=metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
