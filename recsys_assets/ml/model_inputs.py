"""What the models read: the transformed days, their Merlin schema, and the multimodal vectors (merlin env).

Shared by the Two-Tower, DLRM, item-embedding and export entry points, so every model sees the same features
under the same names, and those names are what serving feeds (the compiled transforms' outputs plus the
multimodal vectors). Which model reads which feature is the feature spec's ``models``
(:mod:`recsys_assets.lib.feature_spec`): the query tower the user features (+ the context features in its
``context`` variant), the candidate tower the item and multimodal features, the DLRM all of them.

Multimodal vectors are looked up by the RAW item id (``item_id_raw``, row r of ``embeddings/multimodal.npy`` =
item r), never by the NVTabular index: cold items share the OOV index but keep their own content vectors.
:class:`MultimodalLookup` does it inside the Merlin dataloader and drops the raw id, so the models never see it.

Imports only numpy/pandas at module level; the Merlin stack is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from recsys_assets.lib import feature_spec as spec
from recsys_assets.lib import paths
from recsys_assets.lib.feature_spec import OOV_INDEX, RAW_ITEM_ID, TARGET

MULTIMODAL_FEATURES = spec.names(spec.MULTIMODAL)  # [image PCA | text PCA] halves of the multimodal table
USER_FEATURES = spec.names("user")
ITEM_FEATURES = spec.names("item")
CONTEXT_FEATURES = spec.names("context")
VARIANTS = ("plain", "context")  # query tower on user features only, or user + request context


def query_features(variant: str) -> tuple[str, ...]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown two-tower variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return tuple(f.name for f in spec.features(model=spec.QUERY) if variant == "context" or f.group != "context")


CANDIDATE_FEATURES = spec.names(model=spec.CANDIDATE)
# In the order the DLRM has always been fed (user, item, context, multimodal): its tables follow it.
DLRM_FEATURES = tuple(f.name for g in ("user", "item", "context", spec.MULTIMODAL)
                      for f in spec.features(g, model=spec.DLRM))


# -- the multimodal table ------------------------------------------------------------------------------------
def load_multimodal(path, n_items: int | None = None) -> np.ndarray:
    """The raw-id-keyed multimodal table (float32, even width); checks it covers ``n_items`` catalogue items."""
    table = np.load(path)
    if table.ndim != 2 or table.shape[1] % 2 or table.shape[1] == 0:
        raise ValueError(f"{path}: expected a (items, 2 x dims) matrix [image PCA | text PCA], got {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"{path}: the multimodal table holds NaN/inf: re-materialize item_multimodal_embeddings")
    if n_items is not None and len(table) < n_items:
        raise ValueError(f"{path} holds {len(table)} items but the catalogue has {n_items}: materialize "
                         "item_multimodal_embeddings over the whole catalogue (max_items=0)")
    return np.ascontiguousarray(table, dtype=np.float32)


def split_multimodal(table: np.ndarray, raw_ids) -> dict[str, np.ndarray]:
    """``{image_pca: (n, d), text_pca: (n, d)}`` for the raw item ids ``raw_ids``."""
    ids = np.asarray(raw_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
        bad = ids[(ids < 0) | (ids >= len(table))][:5].tolist()
        raise ValueError(f"raw item ids {bad} are outside the multimodal table (items 0..{len(table) - 1})")
    rows = table[ids]
    width = table.shape[1] // 2
    return {MULTIMODAL_FEATURES[0]: np.ascontiguousarray(rows[:, :width]),
            MULTIMODAL_FEATURES[1]: np.ascontiguousarray(rows[:, width:])}


def multimodal_lookup(table: np.ndarray, key: str = RAW_ITEM_ID):
    """A Merlin dataloader transform adding ``image_pca``/``text_pca`` by raw item id and dropping the raw id.

    Built lazily (the class derives from Merlin's ``BaseOperator``, which needs the Merlin stack).
    """
    from merlin.dag import BaseOperator
    from merlin.schema import ColumnSchema, Schema, Tags
    from merlin.table import TensorColumn

    class MultimodalLookup(BaseOperator):
        def __init__(self):
            super().__init__()
            self.table = table
            self.width = table.shape[1] // 2

        def transform(self, col_selector, transformable):
            ids = np.asarray(transformable[key].cpu().values, dtype=np.int64).reshape(-1)
            for name, values in split_multimodal(self.table, ids).items():
                transformable[name] = TensorColumn(values)
            transformable.pop(key)
            return transformable

        def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
            cols = [c for name, c in input_schema.column_schemas.items() if name != key]
            cols += [ColumnSchema(name, tags=[Tags.EMBEDDING, Tags.ITEM], dtype=np.float32, dims=(None, self.width))
                     for name in MULTIMODAL_FEATURES]
            return Schema(cols)

    return MultimodalLookup()


def id_dropout(rates: dict, seed: int = 0):
    """A dataloader transform sending a random share of ids to NVTabular's OOV row (training only).

    New users and cold items reach the models as the OOV index, a row no training id ever hits, so its
    embedding would stay at its random initial value. Replacing ``rates[column]`` of the training ids with it
    teaches that row what an unknown user (item) with these attributes looks like.
    """
    from merlin.dag import BaseOperator
    from merlin.table import TensorColumn

    rng = np.random.default_rng(seed)

    class IdDropout(BaseOperator):
        def transform(self, col_selector, transformable):
            for column, rate in rates.items():
                if rate <= 0 or column not in transformable.columns:
                    continue
                values = np.asarray(transformable[column].cpu().values).copy()
                values[rng.random(values.shape) < rate] = OOV_INDEX
                transformable[column] = TensorColumn(values)
            return transformable

        def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
            return input_schema

    return IdDropout()


# -- the transformed days ------------------------------------------------------------------------------------
def read_schema(folder):
    """The Merlin schema NVTabular wrote beside a transformed day (``schema.pbtxt``)."""
    from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

    folder = Path(folder)
    if not (folder / "schema.pbtxt").exists():
        raise FileNotFoundError(f"{folder} has no schema.pbtxt: re-materialize transformed_interactions")
    return TensorflowMetadata.from_proto_text_file(str(folder)).to_merlin_schema()


def read_days(folders: Sequence, columns: Iterable[str] | None = None, clicked_only: bool = False):
    """The part files of transformed days, concatenated in day order (a pandas DataFrame)."""
    import pandas as pd

    frames = []
    for folder in folders:
        parts = sorted(Path(folder).glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(f"{folder} holds no parquet part files: re-materialize transformed_interactions")
        for part in parts:
            df = pd.read_parquet(part, columns=list(columns) if columns else None)
            if clicked_only:
                df = df[df[TARGET] == 1]
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


@dataclasses.dataclass
class Split:
    """Rows of one split (train or validation) with the Merlin schema of the transformed days."""

    rows: object  # pandas DataFrame
    schema: object  # merlin.schema.Schema

    def __len__(self) -> int:
        return len(self.rows)


def load_split(folders: Sequence, features: Sequence[str], with_target: bool, clicked_only: bool = False,
               shuffle_seed: int | None = None) -> Split:
    """Rows with ``features`` (+ the raw item id when the multimodal vectors are wanted, + the target)."""
    if not folders:
        raise ValueError("no transformed days given")
    schema = read_schema(folders[0])
    stored = [f for f in features if f not in MULTIMODAL_FEATURES]
    wanted = stored + ([RAW_ITEM_ID] if any(f in MULTIMODAL_FEATURES for f in features) else [])
    wanted += [TARGET] if (with_target or clicked_only) else []
    missing = [c for c in wanted if c not in schema.column_names]
    if missing:
        raise ValueError(f"transformed days lack columns {missing}: re-materialize nvt_workflows and "
                         "transformed_interactions with this code version")
    rows = read_days(folders, columns=wanted, clicked_only=clicked_only)
    if not with_target and TARGET in rows:
        rows = rows.drop(columns=[TARGET])
        wanted.remove(TARGET)
    if shuffle_seed is not None:
        rows = rows.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    return Split(rows=rows, schema=schema.select_by_name(wanted))


def loader(split: Split, table: np.ndarray | None, batch_size: int, shuffle: bool, seed: int = 0,
           drop_last: bool = False, oov_rates: dict | None = None):
    """A Merlin TF dataloader over the split, adding the multimodal vectors when ``table`` is given.

    ``oov_rates`` ({column: share}) turns on :func:`id_dropout` (for training loaders only).
    """
    import merlin.models.tf as mm
    from merlin.io import Dataset

    ds = Dataset(split.rows, schema=split.schema, cpu=True)
    transforms = [multimodal_lookup(table)] if table is not None else []
    if oov_rates and any(r > 0 for r in oov_rates.values()):
        transforms.append(id_dropout(oov_rates, seed))
    transforms = transforms or None
    return mm.Loader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, transforms=transforms,
                     seed_fn=(lambda: seed) if shuffle else None)


def model_schema(split: Split, table: np.ndarray | None):
    """The schema the model is built from: the split's features, plus the multimodal columns, minus raw id."""
    return loader(split, table, batch_size=max(1, min(len(split), 16)), shuffle=False).output_schema


def feature_arrays(rows, features: Sequence[str], table: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Column arrays for a direct model call: int64 categoricals, float32 continuous and vectors."""
    out = {}
    for name in features:
        if name in MULTIMODAL_FEATURES:
            continue
        values = rows[name].to_numpy()
        out[name] = values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(np.float32)
    if any(f in MULTIMODAL_FEATURES for f in features):
        if table is None:
            raise ValueError("multimodal features requested without the multimodal table")
        out.update(split_multimodal(table, rows[RAW_ITEM_ID].to_numpy()))
    return out


def predict_batches(fn, arrays: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Apply a Keras model/function to ``arrays`` in batches; returns the concatenated numpy output."""
    import tensorflow as tf

    n = len(next(iter(arrays.values())))
    outs = []
    for start in range(0, n, batch_size):
        batch = {k: tf.constant(v[start:start + batch_size]) for k, v in arrays.items()}
        out = fn(batch)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        outs.append(np.asarray(out))
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


OPTIMIZERS = ("adam", "lazyadam")
"""``adam``: Keras' Adam, whose moment updates run over every row of an embedding table each step, so a step costs
O(rows) of the id tables (300k users: ~270 ms a step, 4k: ~3 ms; ``benchmarks/id_tables.py``). ``lazyadam``:
merlin-models' LazyAdam, which updates the moments of the rows a batch looks up only (~3 ms at either size)."""


def optimizer(name: str, learning_rate: float):
    """The Keras optimizer ``name`` (one of :data:`OPTIMIZERS`) at ``learning_rate``."""
    import tensorflow as tf

    if name == "lazyadam":
        import merlin.models.tf as mm

        return mm.LazyAdam(learning_rate=learning_rate)
    if name == "adam":
        # TF's fused Adam kernel (ResourceApplyAdam): the same update as ``tf.keras.optimizers.Adam``, 1.6x faster
        # on a dense 300k x 64 table (``benchmarks/id_tables.py``), which the DLRM's table-wide id decay makes
        return tf.keras.optimizers.legacy.Adam(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def check_optimizer(name: str, what: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"{what} {name!r}: expected one of {', '.join(OPTIMIZERS)}")


PROGRESS_SECONDS = 60.0
"""How often a training prints its step within an epoch."""


class EpochTimer:
    """A Keras callback recording each epoch's wall time and loss (throughput = rows / seconds), and printing a
    line per epoch to the step's log (``<artifacts>/logs/merlin/<step>.log`` under the demo), and the step reached
    every :data:`PROGRESS_SECONDS` within one: a long training shows its progress."""

    def __new__(cls, rows: int, what: str = "training"):
        import tensorflow as tf

        class _Timer(tf.keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.rows, self.epochs = rows, []
                self._t0 = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = self._said = time.perf_counter()
                self._epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if now - self._said >= PROGRESS_SECONDS:  # an epoch of the seed's data takes minutes
                    self._said = now
                    steps = self.params.get("steps")
                    print(f"{what}: epoch {self._epoch + 1}, step {batch + 1}{f'/{steps}' if steps else ''} after "
                          f"{now - self._t0:.0f} s ({(now - self._t0) / (batch + 1):.3f} s a step)", flush=True)

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.perf_counter() - self._t0
                record = {"epoch": epoch + 1, "seconds": round(seconds, 3),
                          "rows_per_second": round(self.rows / max(seconds, 1e-9), 1)}
                record.update({k: float(v) for k, v in (logs or {}).items()})
                self.epochs.append(record)
                print(f"{what}: epoch {epoch + 1}/{self.params.get('epochs', '?')} in {seconds:.1f} s "
                      f"({record['rows_per_second']:,.0f} rows/s), "
                      + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in
                                  ("epoch", "seconds", "rows_per_second")), flush=True)

        return _Timer()


def set_seeds(seed: int) -> None:
    import random

    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


# -- what fine-tuning restores ------------------------------------------------------------------------------------
WEIGHTS = paths.WEIGHTS
"""``weights/ckpt.*`` (``lib.paths.WEIGHTS``). Written in well under a second, where the whole Two-Tower as a
SavedModel took 50 s on the tiny world (its save traces every Merlin layer) and 14 s to load. The ONNX exports
rebuild each model from them too; only the candidate tower is kept as a SavedModel (the item embeddings')."""


def _variables_of(model):
    """``model``'s checkpoint dependencies minus its optimizer and compiled functions: a fine-tune compiles its own
    optimizer, and one restored from the training would bring back the training's learning rate and step count."""
    import tensorflow as tf

    view = tf.__internal__.tracking.AutoTrackable()
    for name, child in model._trackable_children("checkpoint").items():
        if name != "optimizer" and not isinstance(child, tf.types.experimental.GenericFunction):
            setattr(view, name, child)
    return view


def write_weights(model, folder) -> None:
    """Checkpoint every variable of ``model`` (not its optimizer's) into ``folder`` (:data:`WEIGHTS`)."""
    import tensorflow as tf

    tf.train.Checkpoint(model=_variables_of(model)).write(str(Path(folder) / "ckpt"))


def has_weights(folder) -> bool:
    return (Path(folder) / "ckpt.index").exists()


def read_weights(model, folder) -> None:
    """Read a :func:`write_weights` checkpoint into ``model`` (built, with its variables created); every variable
    the model has must come from the checkpoint (a different architecture or vocabulary fails here, by name).
    Variables the model creates later (at its first training step) are restored then, from the same files."""
    import tensorflow as tf

    tf.train.Checkpoint(model=_variables_of(model)).read(str(Path(folder) / "ckpt")).assert_existing_objects_matched()
