"""The one executor every Triton python model delegates to: validate the request, run one stage, validate the reply.

A *stage* (one module per model in this package) is a plain class over numpy arrays::

    class FaissRetrieval(Stage):
        inputs = ("query_embedding", "timestamp")
        outputs = ("candidate_ids", "candidate_scores")
        def __init__(self, ctx: StageContext): ...            # load artifacts from ctx.model_dir, read ctx.params
        def __call__(self, query_embedding, timestamp): ...   # -> {"candidate_ids": ..., "candidate_scores": ...}

:class:`Executor` binds a stage to its model configuration (the JSON Triton hands to ``initialize``, or a parsed
``config.pbtxt``): at load time it checks that the configuration declares exactly the tensors the stage reads and
writes; per request it checks every input's dtype and shape against the configuration, calls the stage, and casts
and checks every output. So the same code path runs inside Triton (``serving.triton_model``), in the in-process
pipeline (``release.pipeline``) and in unit tests.

Errors: a stage raises :class:`BadRequest` for anything the client got wrong (Triton answers INVALID_ARG with the
message and keeps serving); any other exception is a server fault (INTERNAL, logged with its traceback).
Imports only the standard library and numpy (runs in Triton's python stub under Python 3.10+ and numpy < 2).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

# Triton config dtypes -> numpy. BYTES tensors (TYPE_STRING) arrive as object arrays of bytes.
TRITON_DTYPES: dict[str, np.dtype] = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
    "TYPE_STRING": np.dtype(object),
}


class BadRequest(ValueError):
    """The request itself is wrong (a value out of range, a missing input): the client's fault, said plainly."""


class StageConfigError(RuntimeError):
    """A model's configuration or artifacts do not fit its stage: the model fails to load, naming what is wrong."""


# -- tensors ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model configuration (``dims`` as in config.pbtxt, -1 = any size)."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    optional: bool = False

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> "TensorSpec":
        data_type = entry.get("data_type", "TYPE_INVALID")
        if data_type not in TRITON_DTYPES:
            raise StageConfigError(f"tensor {entry.get('name')!r}: unsupported data_type {data_type}")
        return cls(name=str(entry["name"]), dtype=TRITON_DTYPES[data_type],
                   dims=tuple(int(d) for d in entry.get("dims", ())), optional=bool(entry.get("optional", False)))

    def check_input(self, value: Any) -> np.ndarray:
        """The value as an array of this spec, or :class:`BadRequest` saying what differs."""
        array = value if type(value) is np.ndarray else np.asarray(value)
        if array.dtype == self.dtype and self._shape_ok(array.shape):  # the common case, checked cheaply
            return array
        if self.dtype == np.dtype(object):
            if array.dtype.kind not in "OSU":
                raise BadRequest(f"input {self.name!r} must be BYTES (strings), got {array.dtype}")
            array = array.astype(object)
        elif array.dtype != self.dtype:
            raise BadRequest(f"input {self.name!r} must be {_triton_name(self.dtype)}, got {_triton_name(array.dtype)}")
        self._check_shape(array, BadRequest, "input")
        return array

    def check_output(self, value: Any) -> np.ndarray:
        """Cast a stage's output to the declared dtype; a wrong shape is a bug in the stage (StageConfigError)."""
        array = value if type(value) is np.ndarray else np.asarray(value)
        if array.dtype == self.dtype and self._shape_ok(array.shape) and array.flags.c_contiguous:
            return array
        if self.dtype == np.dtype(object):
            array = array.astype(object)
        elif array.dtype != self.dtype:
            if array.dtype.kind in "OSU" or (self.dtype.kind in "iub" and array.dtype.kind == "f"):
                raise StageConfigError(f"output {self.name!r}: the stage produced {array.dtype}, the config declares "
                                       f"{_triton_name(self.dtype)}")
            array = array.astype(self.dtype)
        self._check_shape(array, StageConfigError, "output")
        return np.ascontiguousarray(array)

    def _shape_ok(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.dims):
            return False
        for d, size in zip(self.dims, shape):
            if d != -1 and d != size:
                return False
        return True

    def _check_shape(self, array: np.ndarray, error: type[Exception], what: str) -> None:
        shape = array.shape
        if not self._shape_ok(shape):
            expected = "[" + ", ".join("-1" if d == -1 else str(d) for d in self.dims) + "]"
            raise error(f"{what} {self.name!r} has shape {list(shape)}, expected {expected} (-1 = any size)")


def _triton_name(dtype: np.dtype) -> str:
    for name, dt in TRITON_DTYPES.items():
        if dt == dtype:
            return name[len("TYPE_"):].replace("STRING", "BYTES")
    return str(dtype)


# -- metrics ----------------------------------------------------------------------------------------------------
class Metrics:
    """Counters a stage increments; Triton exposes them on its metrics port, tests read them in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def increment(self, name: str, labels: Mapping[str, str], amount: float = 1.0, description: str = "") -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def observe(self, name: str, labels: Mapping[str, str], value: float, buckets: tuple[float, ...] = (),
                description: str = "") -> None:
        """One observation of a histogram; kept in memory as ``<name>_count`` and ``<name>_sum``."""
        self.histogram(name, labels, buckets, description)(value)

    def histogram(self, name: str, labels: Mapping[str, str], buckets: tuple[float, ...] = (),
                  description: str = "") -> Callable[[float], None]:
        """The recorder of one histogram series: ``record(value)`` is :meth:`observe` with the series' keys made
        once (the executor records every stage of every request)."""
        key = tuple(sorted(labels.items()))
        count, total = (name + "_count", key), (name + "_sum", key)
        values, lock = self._values, self._lock

        def record(value: float) -> None:
            with lock:
                values[count] = values.get(count, 0.0) + 1.0
                values[total] = values.get(total, 0.0) + float(value)
        return record

    def value(self, name: str, **labels: str) -> float:
        """The sum over every counter of ``name`` whose labels include ``labels``."""
        with self._lock:
            return sum(v for (n, lab), v in self._values.items() if n == name and set(labels.items()) <= set(lab))


STAGE_LATENCY_METRIC = "recsys_stage_duration_us"
STAGE_LATENCY_HELP = "Time one stage of the executor layout took for one request, microseconds, by stage"
STAGE_LATENCY_BUCKETS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0,
                         250000.0)
# Stage times are aggregated in the executor and sent to Triton at most this often: each call of the python backend's
# metrics API is a round trip to the server (about 115 µs in the executor, 1.6 ms a request for 14 stages).
STAGE_LATENCY_FLUSH_S = 1.0
DEGRADED_METRIC = "recsys_degraded_requests_total"
DEGRADED_HELP = "Requests a stage served in degraded mode (dependency unreachable), by stage and reason"


# -- the context a stage is built from --------------------------------------------------------------------------
@dataclasses.dataclass
class StageContext:
    """What a stage may read when it is built: config parameters, its version directory, the environment."""

    model_name: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    model_dir: Path | None = None
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    log: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("recsys_assets.serving"))

    def param(self, name: str, default: str | None = None) -> str:
        value = self.params.get(name)
        if value is None or value == "":
            if default is None:
                raise StageConfigError(f"model {self.model_name!r}: config parameter {name!r} is required")
            return default
        return str(value)

    def param_int(self, name: str, default: int | None = None) -> int:
        raw = self.param(name, None if default is None else str(default))
        try:
            return int(raw)
        except ValueError:
            raise StageConfigError(f"model {self.model_name!r}: parameter {name}={raw!r} is not an integer") from None

    def param_float(self, name: str, default: float | None = None) -> float:
        raw = self.param(name, None if default is None else repr(float(default)))
        try:
            return float(raw)
        except ValueError:
            raise StageConfigError(f"model {self.model_name!r}: parameter {name}={raw!r} is not a number") from None

    def param_bool(self, name: str, default: bool | None = None) -> bool:
        raw = self.param(name, None if default is None else str(default)).strip().lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise StageConfigError(f"model {self.model_name!r}: parameter {name}={raw!r} is not a boolean")

    def param_json(self, name: str, default: Any = None) -> Any:
        raw = self.params.get(name)
        if raw is None or raw == "":
            if default is None:
                raise StageConfigError(f"model {self.model_name!r}: config parameter {name!r} is required")
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StageConfigError(f"model {self.model_name!r}: parameter {name} is not valid JSON: {exc}") from None

    def artifact(self, filename: str) -> Path:
        """A file of this model version (``<model>/<version>/<filename>``), or a load error naming it."""
        if self.model_dir is None:
            raise StageConfigError(f"model {self.model_name!r} needs {filename!r} but has no version directory")
        path = Path(self.model_dir) / filename
        if not path.exists():
            raise StageConfigError(f"model {self.model_name!r}: {path} is missing; rebuild the repository "
                                   "(materialize triton_model_repository)")
        return path

    def declare_degraded(self, *reasons: str) -> None:
        """Create the stage's degradation counters at 0, so dashboards see them before the first incident."""
        for reason in reasons:
            self.degraded(reason, 0.0)

    def degraded(self, reason: str, amount: float = 1.0) -> None:
        self.metrics.increment(DEGRADED_METRIC, {"stage": self.model_name, "reason": reason}, amount,
                               description=DEGRADED_HELP)


# -- stages -----------------------------------------------------------------------------------------------------
class Stage:
    """Base class of the serving stages: declare ``inputs`` / ``optional_inputs`` / ``outputs``, implement call."""

    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def __call__(self, **inputs: np.ndarray | None) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads (Triton's ``finalize``)."""


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """``parameters { key: "X" value: { string_value: "1" } }`` as a plain dict."""
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        out[key] = value.get("string_value", "") if isinstance(value, Mapping) else str(value)
    return out


class Executor:
    """One stage bound to one model configuration (see the module docstring)."""

    def __init__(self, stage_cls: type[Stage], config: Mapping[str, Any], ctx: StageContext) -> None:
        self.config = config
        self.name = str(config.get("name") or ctx.model_name)
        self.input_specs = [TensorSpec.from_config(e) for e in config.get("input", [])]
        self.output_specs = [TensorSpec.from_config(e) for e in config.get("output", [])]
        self._check_declared(stage_cls)
        self._names = frozenset(s.name for s in self.input_specs)
        self._undeclared = tuple(n for n in stage_cls.optional_inputs if n not in self._names)
        self.stage = stage_cls(ctx)

    def _check_declared(self, stage_cls: type[Stage]) -> None:
        declared_in = {s.name: s for s in self.input_specs}
        wanted_in = set(stage_cls.inputs) | set(stage_cls.optional_inputs)
        problems = []
        # An optional input may be left out of the config (a release built before the stage gained it: the stage
        # then runs without it); a required one may not, nor may the config declare one the stage does not know.
        if not set(stage_cls.inputs) <= set(declared_in) <= wanted_in:
            problems.append(f"inputs {sorted(declared_in)} != the stage's {sorted(wanted_in)}"
                            + (f" (of which {sorted(stage_cls.optional_inputs)} optional)"
                               if stage_cls.optional_inputs else ""))
        for name in stage_cls.inputs:
            if name in declared_in and declared_in[name].optional:
                problems.append(f"input {name!r} is required by the stage but declared optional")
        declared_out = [s.name for s in self.output_specs]
        if set(declared_out) != set(stage_cls.outputs):
            problems.append(f"outputs {sorted(declared_out)} != the stage's {sorted(stage_cls.outputs)}")
        if problems:
            raise StageConfigError(f"model {self.name!r} ({stage_cls.__name__}): " + "; ".join(problems))

    def run(self, inputs: Mapping[str, Any], checked: frozenset = frozenset()) -> dict[str, np.ndarray]:
        """The stage on ``inputs``, each checked against its spec but those named in ``checked``: tensors another
        stage's :meth:`run` produced under an output spec that already guarantees this input's (the graph knows,
        :meth:`accepts`)."""
        args: dict[str, np.ndarray | None] = dict.fromkeys(self._undeclared)
        for spec in self.input_specs:
            value = inputs.get(spec.name)
            if value is None:
                if not spec.optional:
                    raise BadRequest(f"input {spec.name!r} is required by model {self.name!r}")
                args[spec.name] = None
                continue
            args[spec.name] = value if spec.name in checked else spec.check_input(value)
        unknown = inputs.keys() - self._names
        if unknown:
            raise BadRequest(f"model {self.name!r} has no inputs named {sorted(unknown)}")
        produced = self.stage(**args)
        missing = [s.name for s in self.output_specs if s.name not in produced]
        if missing:
            raise StageConfigError(f"model {self.name!r} produced no {missing}")
        return {s.name: s.check_output(produced[s.name]) for s in self.output_specs}

    def accepts(self, name: str, produced: TensorSpec) -> bool:
        """Whether every tensor that passed the output check of ``produced`` passes this stage's input ``name``
        unchanged: the same dtype, and each fixed dimension of the input fixed to the same size in the output."""
        spec = next((s for s in self.input_specs if s.name == name), None)
        return (spec is not None and spec.dtype == produced.dtype and len(spec.dims) == len(produced.dims)
                and all(d == -1 or d == p for d, p in zip(spec.dims, produced.dims)))

    def close(self) -> None:
        self.stage.close()
