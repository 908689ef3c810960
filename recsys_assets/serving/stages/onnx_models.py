"""``query_tower`` and ``dlrm_ranking``: the exported towers (``<version>/model.onnx``) run with onnxruntime.

Both receive the transformed features as feature-group matrices (:mod:`recsys_assets.serving.features`), read
them back by their workflow names and feed the ONNX model the ones it declares: an
ONNX input named like a feature gets that feature (``INPUT_MAP``, a JSON object, renames where the export chose
other names; ``image_pca``/``text_pca``, the training side's names, are always understood); each value is cast
to the input's dtype and shaped [N, 1] for per-row scalars. A model input that matches no feature fails the
load, naming what is available. So the plain and the context-aware query tower are served by the same
configuration.

``query_tower``: the user and context groups (one row each) -> ``query_embedding`` FP32 [D].
``dlrm_ranking``: the user and context features unrolled to the N candidates (``unrolled_*``), ``item_index``
[N], the item group [N, .] and the two multimodal embeddings [N, 64] -> ``scores`` FP32 [N] (the click
probability). The derived feature
``multimodal_embedding`` ([image | text], [N, 128]) is there for exports that take one concatenated input.

On Triton's GPU image the same ``model.onnx`` can be served by the onnxruntime backend instead (README). In the
executor layout the stage then calls that model through BLS (``ONNX_BLS_MODEL``, :class:`BlsModel`): the model is
the export rewritten to take the stage's own tensors (``release.onnx_groups``), so the stage sends its inputs as
they are and reads the one output back.
"""

from __future__ import annotations

import numpy as np

from recsys_assets.lib.onnx_model import OnnxModel
from recsys_assets.serving.executor import BadRequest, Stage, StageConfigError, StageContext
from recsys_assets.serving.features import CONTEXT, ITEM, ITEM_INDEX, UNROLLED, USER

MODEL_FILE = "model.onnx"
USER_FEATURES = USER.features
CONTEXT_FEATURES = CONTEXT.features
ITEM_FEATURES = ("item_id",) + ITEM.features
EMBEDDINGS = ("image_embedding", "text_embedding")
class BlsModel:
    """Another Triton model called from inside this one (business logic scripting): the executor layout on NVIDIA's
    GPU image, where the towers run on the onnxruntime backend (``<model>_onnx``, written by
    ``release.onnx_groups.write_bls_variant``) and the executor's stages hand them their tensors."""

    def __init__(self, model_name: str, version: int, output: str) -> None:
        try:
            import triton_python_backend_utils as pb
        except ImportError:
            raise StageConfigError(f"ONNX_BLS_MODEL={model_name!r}: a BLS call exists only inside Triton's python "
                                   "backend; unset it to run the model in process") from None
        self.pb, self.model_name, self.version, self.output = pb, model_name, version, output

    def run(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        pb = self.pb
        request = pb.InferenceRequest(
            model_name=self.model_name, model_version=self.version, requested_output_names=[self.output],
            inputs=[pb.Tensor(name, np.ascontiguousarray(value)) for name, value in tensors.items()],
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"BLS call to {self.model_name!r} (version {self.version}) failed: "
                               f"{response.error().message()}")
        return pb.get_output_tensor_by_name(response, self.output).as_numpy()


class _OnnxStage(Stage):
    features: tuple[str, ...] = ()  # the feature names the stage can feed (read from its input tensors)
    derived: tuple[str, ...] = ()

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        available = set(self.features) | set(self.derived)
        self.bls = None
        bls_model = ctx.params.get("ONNX_BLS_MODEL") or ""
        if bls_model:  # the groups graph's output is the export's: named by OUTPUT_NAME or its first output
            self.bls = BlsModel(bls_model, ctx.param_int("ONNX_BLS_VERSION", -1),
                                ctx.params.get("OUTPUT_NAME") or _first_output(ctx.artifact(MODEL_FILE)))
            return
        self.model = OnnxModel(ctx.artifact(MODEL_FILE), ctx.param_json("INPUT_MAP", {}), available,
                               threads=ctx.param_int("ONNX_THREADS", 1), output=ctx.params.get("OUTPUT_NAME") or None,
                               error=StageConfigError)


def _first_output(path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.output[0].name


class QueryTower(_OnnxStage):
    inputs = USER.tensors + CONTEXT.tensors
    outputs = ("query_embedding",)
    features = USER_FEATURES + CONTEXT_FEATURES

    def __call__(self, user_categorical, user_continuous, context_categorical, context_continuous):
        if self.bls is not None:
            out = self.bls.run(dict(zip(self.inputs, (user_categorical, user_continuous, context_categorical,
                                                      context_continuous))))
            return {"query_embedding": np.asarray(out, dtype=np.float32).reshape(-1)}
        features = {**USER.unpack(user_categorical, user_continuous),
                    **CONTEXT.unpack(context_categorical, context_continuous)}
        out = np.asarray(self.model.run(features), dtype=np.float32)
        return {"query_embedding": out.reshape(-1)}


class DlrmRanking(_OnnxStage):
    inputs = UNROLLED.tensors + (ITEM_INDEX,) + ITEM.tensors + EMBEDDINGS
    outputs = ("scores",)
    features = USER_FEATURES + CONTEXT_FEATURES + ITEM_FEATURES + EMBEDDINGS
    derived = ("multimodal_embedding",)

    def __call__(self, unrolled_categorical, unrolled_continuous, item_index, item_categorical, item_continuous,
                 image_embedding, text_embedding):
        n = len(item_index)
        features = {**UNROLLED.unpack(unrolled_categorical, unrolled_continuous),
                    **ITEM.unpack(item_categorical, item_continuous), "item_id": item_index,
                    "image_embedding": image_embedding, "text_embedding": text_embedding}
        if any(len(v) != n for v in features.values()):
            raise BadRequest(f"dlrm_ranking needs every candidate feature with {n} rows, got "
                             f"{ {k: len(v) for k, v in features.items() if len(v) != n} }")
        if n == 0:
            return {"scores": np.zeros(0, np.float32)}
        if self.bls is not None:
            out = self.bls.run(dict(zip(self.inputs, (unrolled_categorical, unrolled_continuous, item_index,
                                                      item_categorical, item_continuous, image_embedding,
                                                      text_embedding))))
            return {"scores": np.asarray(out, dtype=np.float32).reshape(n, -1)[:, 0]}
        if "multimodal_embedding" in self.model.features:
            features["multimodal_embedding"] = np.concatenate(
                [features["image_embedding"], features["text_embedding"]], axis=1)
        out = np.asarray(self.model.run(features), dtype=np.float32).reshape(n, -1)
        return {"scores": out[:, 0]}
