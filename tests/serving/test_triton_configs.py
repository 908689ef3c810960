"""The triton_repo/ templates: every config parses with Triton's protobufs, names match directories, the ensemble
wiring is complete, every model.py is a thin shim over the shared executor, and a built repository validates."""

import ast
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from recsys_assets.release.repository import ENSEMBLE, MODELS, TEMPLATES, parse_config, validate_repository
from recsys_assets.serving.stages import STAGE_CLASSES, stage_class

ALL = (*MODELS, ENSEMBLE)


def test_the_templates_hold_the_14_models_and_the_ensemble():
    assert len(MODELS) == 14
    assert sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()) == sorted(ALL)
    assert set(STAGE_CLASSES) == set(MODELS)


@pytest.mark.parametrize("model", ALL)
def test_config_parses_and_its_name_is_its_directory(model):
    config = text_format.Parse((TEMPLATES / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == model
    if model == ENSEMBLE:
        assert config.platform == "ensemble"
        return
    assert config.backend == "python" and config.max_batch_size == 0
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    for tensor in [*config.input, *config.output]:
        assert tensor.name and tensor.data_type != model_config_pb2.TYPE_INVALID and len(tensor.dims) >= 1


@pytest.mark.parametrize("model", MODELS)
def test_model_py_is_a_thin_shim_over_the_shared_executor(model):
    source = (TEMPLATES / model / "1" / "model.py").read_text()
    tree = ast.parse(source)
    code_lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code_lines) <= 4
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For))]
    assert "python_model(" in source and stage_class(model).__name__ in source


@pytest.mark.parametrize("model", MODELS)
def test_config_tensors_are_exactly_the_stages(model):
    config = parse_config(TEMPLATES / model / "config.pbtxt")
    stage = stage_class(model)
    assert {t.name for t in config.input} == set(stage.inputs) | set(stage.optional_inputs)
    assert {t.name for t in config.input if t.optional} == set(stage.optional_inputs)
    assert {t.name for t in config.output} == set(stage.outputs)


def test_the_ensemble_takes_the_request_and_returns_raw_ids_and_scores():
    # user_id is required but declared optional, so that context_preprocessor can reject its absence clearly
    config = parse_config(TEMPLATES / ENSEMBLE / "config.pbtxt")
    inputs = {t.name: (model_config_pb2.DataType.Name(t.data_type), t.optional) for t in config.input}
    assert inputs == {"user_id": ("TYPE_INT64", True), "device_type": ("TYPE_INT64", True),
                      "timestamp": ("TYPE_INT64", True), "top_k": ("TYPE_INT64", True),
                      "diversity": ("TYPE_BOOL", True)}
    outputs = {t.name: model_config_pb2.DataType.Name(t.data_type) for t in config.output}
    assert outputs == {"ordered_ids": "TYPE_INT64", "ordered_scores": "TYPE_FP32"}
    assert [s.model_name for s in config.ensemble_scheduling.step] == list(MODELS)


def test_templates_are_wired_completely_except_the_values_the_build_injects():
    problems = validate_repository(TEMPLATES, require_parameters=False)
    assert problems == []
    missing = validate_repository(TEMPLATES)
    assert sorted(missing) == sorted([
        "feast_user_lookup: parameter MEAN_AGE is empty (the repository build injects it)",
        "faiss_retrieval: parameter START_DATE is empty (the repository build injects it)",
        "filter_seen_items: parameter START_DATE is empty (the repository build injects it)"])


@pytest.fixture()
def broken(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(TEMPLATES, repo)
    return repo


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("model, old, new, problem", [
    (ENSEMBLE, 'input_map { key: "candidate_ids" value: "candidate_ids" }',
     'input_map { key: "candidate_ids" value: "candidates" }',
     "reads 'candidates', which no earlier step or ensemble input provides"),
    (ENSEMBLE, 'key: "scores" value: "selected_scores"', 'key: "score" value: "selected_scores"',
     "the model has no input 'score'"),
    ("query_tower", 'name: "query_tower"', 'name: "query"', "differs from its directory"),
    ("dlrm_ranking", "data_type: TYPE_FP32\n    dims: [ -1 ]\n  }\n]\ninstance",
     "data_type: TYPE_FP64\n    dims: [ -1 ]\n  }\n]\ninstance", "dtype"),
    (ENSEMBLE, 'output_map { key: "ordered_ids" value: "ordered_ids" }', "",
     "ensemble output 'ordered_ids' is produced by no step"),
])
def test_broken_wiring_is_found_and_named(broken, model, old, new, problem):
    _edit(broken / model / "config.pbtxt", old, new)
    problems = validate_repository(broken, require_parameters=False)
    assert any(problem in p for p in problems), problems


def test_a_missing_shim_or_version_is_found(broken):
    (broken / "softmax_sampling" / "1" / "model.py").unlink()
    shutil.rmtree(broken / "unroll_features" / "1")
    problems = validate_repository(broken, require_parameters=False)
    assert "softmax_sampling/1: no model.py" in problems
    assert "unroll_features: no version directory to serve" in problems
