"""The towers rewritten to take the feature-group tensors (for Triton's onnxruntime backend) score exactly as the
python stages do, fed the same tensors."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from recsys_assets.serving.executor import StageContext
from recsys_assets.serving.features import CONTEXT, UNROLLED, USER
from recsys_assets.release.onnx_groups import group_inputs
from recsys_assets.serving.stages.onnx_models import DlrmRanking, QueryTower
from tests.serving.test_serving_stages import version_dir


def _run(path, stage, feeds):
    rewritten = group_inputs(onnx.load(str(path)), stage)
    assert {i.name for i in rewritten.graph.input} == set(feeds)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_dlrm_on_feature_groups_scores_as_the_python_stage(tmp_path, tiny):  # noqa: F811
    folder = version_dir(tmp_path, tiny, "dlrm.onnx")
    rng = np.random.default_rng(0)
    n = 9
    feeds = {"unrolled_categorical": rng.integers(1, 4, (n, len(UNROLLED.categorical))),
             "unrolled_continuous": rng.normal(size=(n, len(UNROLLED.continuous))).astype(np.float32),
             "item_index": rng.integers(3, 40, n), "item_categorical": rng.integers(1, 5, (n, 3)),
             "item_continuous": rng.normal(size=(n, 1)).astype(np.float32),
             "image_embedding": rng.normal(size=(n, 64)).astype(np.float32),
             "text_embedding": rng.normal(size=(n, 64)).astype(np.float32)}
    expected = DlrmRanking(StageContext("dlrm_ranking", model_dir=folder))(**feeds)["scores"]
    got = _run(folder / "model.onnx", "dlrm_ranking", feeds).reshape(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_query_tower_on_feature_groups_embeds_as_the_python_stage(tmp_path, tiny):  # noqa: F811
    folder = version_dir(tmp_path, tiny, "query.onnx")
    columns = {n: np.array([3]) for n in USER.categorical + CONTEXT.categorical}
    columns.update({n: np.array([0.25], np.float32) for n in USER.continuous + CONTEXT.continuous})
    feeds = {**USER.pack(columns), **CONTEXT.pack(columns)}
    expected = QueryTower(StageContext("query_tower", model_dir=folder))(**feeds)["query_embedding"]
    got = _run(folder / "model.onnx", "query_tower", feeds).reshape(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_an_input_no_tensor_carries_is_named(tmp_path, tiny):  # noqa: F811
    folder = version_dir(tmp_path, tiny, "dlrm.onnx")
    with pytest.raises(ValueError, match="not carried by query_tower"):
        group_inputs(onnx.load(str(folder / "model.onnx")), "query_tower")
