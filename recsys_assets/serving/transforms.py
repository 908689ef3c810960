"""The fitted NVTabular workflows as plain numpy lookups: what the serving path runs per request.

The merlin env compiles the saved user/item/context workflows (:mod:`recsys_assets.ml.nvt_compile`) into a folder:

* ``transforms.json``: per group (``user``, ``item``, ``context``) the input columns and, per output column, the
  steps that produce it from one input column: ``sentinel_to_null`` (-1 -> missing), ``fill_missing``,
  ``log1p`` (NVTabular's LogOp, in float32), ``normalize`` (mean/std), ``bucketize`` (edges), ``cyclical``
  (sin/cos of hour or weekday of a Unix timestamp, UTC), ``categorify`` (a vocabulary); plus the output dtype,
  the Merlin tags, the training mean age (the cold-start default) and the reserved Categorify rows;
* ``vocab/<group>.<column>.values.npy`` / ``.labels.npy``: every vocabulary, value -> row index.

:class:`CompiledTransforms` applies it to batches with numpy alone. Categorify semantics are NVTabular's: a
missing value (None, NaN, or the -1 sentinel once it has been turned into NaN) lands on row 1, a value unseen at
fit time on row 2, known values on rows 3 and up. A parity test in the merlin env holds these outputs equal to
NVTabular's on the same inputs (ints exactly, floats to 1e-6).

Only numpy and the standard library: this module runs in the pipeline env, inside Triton's python models and
under Python 3.10 / numpy < 2 in NVIDIA's images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from recsys_assets.lib.feature_spec import USER_HISTORY
from recsys_assets.lib.transform_files import (  # noqa: F401  (the file format, re-exported)
    DESCRIPTION_FILE,
    FORMAT,
    VERSION,
    VOCAB_DIR,
    read_description,
    vocab_files,
    write_description,
)


class TransformInputError(ValueError):
    """A batch handed to a compiled transform lacks a column or has columns of different lengths."""


# -- the steps ----------------------------------------------------------------------------------------------------
def _as_numeric(x) -> np.ndarray:
    """A numeric array; None in an object array becomes NaN."""
    arr = np.asarray(x)
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "O":
        return np.array([np.nan if v is None else v for v in arr.tolist()], dtype=np.float64)
    raise TransformInputError(f"expected numbers, got an array of dtype {arr.dtype}")


class _Categorify:
    """Value -> row index: missing -> ``null``, unseen -> ``oov``, known -> its label (>= 3)."""

    def __init__(self, values: np.ndarray, labels: np.ndarray, null: int, oov: int):
        self.null, self.oov = null, oov
        self.string = values.dtype.kind in "US"
        if self.string:
            self.table = dict(zip(values.tolist(), labels.tolist()))
            # The same vocabulary as sorted UTF-8 bytes, for text that arrives as an ``S<W>`` array (the
            # fixed-width text tensors of serving.common): one searchsorted instead of a dict lookup per value.
            encoded = np.char.encode(values.astype(str), "utf-8") if len(values) else np.zeros(0, dtype="S1")
            order = np.argsort(encoded, kind="stable")
            self.sorted_bytes = encoded[order]
            self.sorted_bytes_labels = labels[order].astype(np.int64)
        else:
            order = np.argsort(values, kind="stable")
            self.sorted_values = values[order]
            self.sorted_labels = labels[order].astype(np.int64)

    def __call__(self, x) -> np.ndarray:
        if self.string and isinstance(x, np.ndarray) and x.dtype.kind == "S":
            return self._lookup_sorted(self.sorted_bytes, self.sorted_bytes_labels, x)
        if self.string:
            items = np.asarray(x, dtype=object).tolist()
            get, null, oov = self.table.get, self.null, self.oov
            return np.fromiter(
                (null if (v is None or (isinstance(v, float) and math.isnan(v))) else get(v, oov) for v in items),
                dtype=np.int64, count=len(items))
        x = _as_numeric(x)
        out = self._lookup_sorted(self.sorted_values, self.sorted_labels, x)
        if x.dtype.kind == "f":
            out[np.isnan(x)] = self.null
        return out

    def _lookup_sorted(self, keys: np.ndarray, labels: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The label of every value of ``x`` found in the sorted ``keys``; OOV for the others."""
        out = np.full(x.shape, self.oov, dtype=np.int64)
        if len(keys) and x.size:
            idx = np.searchsorted(keys, x).clip(max=len(keys) - 1)
            found = keys[idx] == x
            out[found] = labels[idx[found]]
        return out


def _sentinel_to_null(value):
    def step(x):
        x = _as_numeric(x).astype(np.float64)
        return np.where(x != value, x, np.nan)
    return step


def _fill_missing(value):
    def step(x):
        x = _as_numeric(x)
        return np.where(np.isnan(x), value, x) if x.dtype.kind == "f" else x
    return step


def _log1p():
    def step(x):
        # NVTabular's LogOp: log(x + 1) computed in float32.
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(_as_numeric(x).astype(np.float32) + 1)
    return step


def _normalize(mean: float, std: float, dtype: str):
    def step(x):
        x = _as_numeric(x)
        out = (x - mean) / std if std > 0 else x - mean
        return out.astype(dtype)
    return step


def _bucketize(edges):
    edges = np.asarray(edges)

    def step(x):
        return np.digitize(_as_numeric(x), edges, right=False)
    return step


def _cyclical(unit: int, period: int, offset: int, fn: str, dtype: str):
    trig = np.sin if fn == "sin" else np.cos

    def step(x):
        k = (_as_numeric(x) // unit + offset) % period
        return trig(k.astype(np.float64) * (2.0 * math.pi / period)).astype(dtype)
    return step


def _build_step(spec: dict, vocabularies: dict, indices: dict) -> Callable:
    op = spec["op"]
    if op == "sentinel_to_null":
        return _sentinel_to_null(spec["value"])
    if op == "fill_missing":
        return _fill_missing(spec["value"])
    if op == "log1p":
        return _log1p()
    if op == "normalize":
        return _normalize(spec["mean"], spec["std"], spec["dtype"])
    if op == "bucketize":
        return _bucketize(spec["edges"])
    if op == "cyclical":
        return _cyclical(spec["unit"], spec["period"], spec["offset"], spec["fn"], spec["dtype"])
    if op == "categorify":
        values, labels = vocabularies[spec["vocab"]]
        return _Categorify(values, labels, indices["null"], indices["oov"])
    raise ValueError(f"unknown transform step {op!r}: this description needs a newer recsys_assets.serving")


# -- the compiled transforms ----------------------------------------------------------------------------------
class CompiledTransforms:
    """The user, item and context transforms of one compiled description, applied to batches with numpy."""

    def __init__(self, description: dict, vocabularies: Mapping[str, tuple[np.ndarray, np.ndarray]]):
        self.description = description
        indices = description["indices"]
        self._groups: dict[str, list[tuple[str, str, str, list[Callable]]]] = {}
        for group, spec in description["groups"].items():
            self._groups[group] = [
                (out["name"], out["input"], out["dtype"],
                 [_build_step(s, vocabularies, indices) for s in out["steps"]])
                for out in spec["outputs"]
            ]
        self._gender_codes = description.get("input_codes", {}).get("gender", {})

    @classmethod
    def load(cls, folder) -> CompiledTransforms:
        return cls(*read_description(folder))

    @property
    def mean_age(self) -> float:
        """The training mean age: what an unknown user's age is set to (as in the masked training rows)."""
        return float(self.description["mean_age"])

    def inputs(self, group: str) -> tuple[str, ...]:
        return tuple(self.description["groups"][group]["inputs"])

    def outputs(self, group: str) -> tuple[str, ...]:
        return tuple(name for name, *_ in self._groups[group])

    def transform(self, group: str, columns: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Apply one group's transform to a batch given as ``{input column: array}``; returns ``{output: array}``."""
        if group not in self._groups:
            raise TransformInputError(f"unknown transform group {group!r}: expected one of {', '.join(self._groups)}")
        missing = [c for c in self.inputs(group) if c not in columns]
        if missing:
            raise TransformInputError(f"the {group} transform needs columns {list(self.inputs(group))}; "
                                      f"missing {missing}")
        lengths = {c: len(columns[c]) for c in self.inputs(group)}
        if len(set(lengths.values())) > 1:
            raise TransformInputError(f"the {group} transform got columns of different lengths: {lengths}")
        out = {}
        for name, source, dtype, steps in self._groups[group]:
            x = columns[source]
            for step in steps:
                x = step(x)
            out[name] = np.asarray(x).astype(dtype, copy=False)
        return out

    def transform_user(self, *values, **columns) -> dict[str, np.ndarray]:
        """Users: the user group's raw columns, by name or in the order of ``inputs("user")`` (the spec's
        ``WORKFLOW_INPUTS["user"]``); ``gender`` as codes (0 F, 1 M, -1 unknown) or as ``"F"``/``"M"`` strings."""
        names = self.inputs("user")
        if len(values) > len(names):
            raise TransformInputError(f"the user transform takes {len(names)} columns ({', '.join(names)}), "
                                      f"got {len(values)} positional")
        columns = {**dict(zip(names, values)), **columns}
        if "gender" in columns:
            columns["gender"] = self._gender(columns["gender"])
        return self.transform("user", columns)

    def transform_item(self, item_id, category_l1, category_l2, item_gender, price) -> dict[str, np.ndarray]:
        return self.transform("item", {"item_id": item_id, "category_l1": category_l1,
                                       "category_l2": category_l2, "item_gender": item_gender, "price": price})

    def transform_context(self, device_type, timestamp) -> dict[str, np.ndarray]:
        return self.transform("context", {"device_type": device_type, "timestamp": timestamp})

    def unknown_user(self, n: int = 1) -> dict[str, np.ndarray]:
        """The raw inputs serving uses for ``n`` unknown users (the cold-start defaults)."""
        return {"user_id": np.full(n, -1, np.int64), "age": np.full(n, self.mean_age),
                "gender": np.full(n, -1, np.int64), **{name: np.full(n, -1, np.int64) for name in USER_HISTORY}}

    def _gender(self, gender):
        arr = np.asarray(gender)
        if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and any(isinstance(v, str) for v in arr.tolist())):
            codes = self._gender_codes
            return np.array([codes.get(v.upper(), -1) if isinstance(v, str) else
                             (-1 if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                             for v in arr.tolist()], dtype=np.float64)
        return arr
