"""One ONNX model run with onnxruntime, fed from a ``{feature name: array}`` mapping: the same feeder for the
serving stages (``query_tower``, ``dlrm_ranking``), a release's scorer and the training gates, so every one of
them feeds the models the same way.

Each graph input gets the feature of its name (``input_map`` renames where an export chose other names; with
``available`` given, the training side's ``image_pca``/``text_pca`` are understood as serving's
``image_embedding``/``text_embedding``), cast to the input's dtype and shaped [N, 1] or [N] as the graph declares.
An input that matches no available feature fails at load, naming what is available.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# The training side names the multimodal halves after their PCA (recsys_assets.ml.model_inputs); serving after
# their role. Always understood, on top of an input map.
ALIASES = {"image_pca": "image_embedding", "text_pca": "text_embedding"}
ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(double)": np.float64, "tensor(bool)": np.bool_}


class OnnxInputError(ValueError):
    """The model's inputs do not match the features it is given; the message names both."""


class OnnxModel:
    """An exported tower or ranker.

    ``available``: the feature names a caller can feed (None: every graph input is fed by its own name);
    ``threads``: onnxruntime's intra-op threads (one each keeps many models on few cores from oversubscribing
    the CPU); ``output``: the output to return (default the first); ``error``: the exception raised for a
    mismatch (the serving stages pass their ``StageConfigError``).
    """

    def __init__(self, path, input_map: Mapping[str, str] | None = None, available: set[str] | None = None,
                 threads: int = 1, output: str | None = None, error: type[Exception] = OnnxInputError) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.error = error
        input_map = dict(input_map or {})
        self.feeds: list[tuple[str, str, np.dtype, int, int | None]] = []
        problems = []
        for node in self.session.get_inputs():
            if available is None:
                feature = input_map.get(node.name, node.name)
            else:
                base = node.name.split(":")[0]
                feature = input_map.get(node.name, ALIASES.get(base, base))
                if feature not in available:
                    problems.append(f"{node.name!r} (looked for feature {feature!r})")
                    continue
            if node.type not in ORT_TYPES:
                problems.append(f"{node.name!r} has unsupported type {node.type}")
                continue
            shape = list(node.shape)
            width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
            self.feeds.append((node.name, feature, np.dtype(ORT_TYPES[node.type]), len(shape), width))
        if problems:
            raise error(f"{path}: ONNX inputs {', '.join(problems)} match no served feature; available: "
                        f"{sorted(available or ())}; map them with the INPUT_MAP parameter")
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise error(f"{path}: no output {output!r}; it has {outputs}")
        self.output = output or outputs[0]

    @property
    def features(self) -> list[str]:
        """The feature each graph input is fed from, in the graph's order."""
        return [feature for _, feature, *_ in self.feeds]

    @property
    def inputs(self) -> dict[str, np.dtype]:
        """Graph input name -> the dtype it is fed as."""
        return {name: dtype for name, _, dtype, *_ in self.feeds}

    def run(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """One batch through the model (the serving path: a request's rows)."""
        feed = {}
        for name, feature, dtype, rank, width in self.feeds:
            if feature not in features:
                raise self.error(f"the ONNX model needs features {self.features}; missing {feature!r}")
            value = np.ascontiguousarray(features[feature], dtype=dtype)  # group columns are strided views
            if rank == 2 and value.ndim == 1:
                value = value.reshape(-1, 1)
            elif rank == 1 and value.ndim == 2 and value.shape[1] == 1:
                value = value.reshape(-1)
            if width is not None and value.shape[-1] != width:
                raise self.error(f"ONNX input {name!r} wants width {width}, feature {feature!r} has "
                                 f"{value.shape[-1]}")
            feed[name] = value
        return self.session.run([self.output], feed)[0]

    def __call__(self, features: Mapping[str, np.ndarray], batch_size: int = 16384) -> np.ndarray:
        """Any number of rows, run in batches of ``batch_size`` (the evaluation path)."""
        missing = [f for f in self.features if f not in features]
        if missing:
            raise self.error(f"the ONNX model needs inputs {self.features}; missing {missing}")
        n = len(features[self.features[0]]) if self.feeds else 0
        outs = [self.run({f: np.asarray(features[f])[s:s + batch_size] for f in self.features})
                for s in range(0, n, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
