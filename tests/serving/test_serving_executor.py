"""The shared executor: configs bind to stages, requests are checked against dtypes and shapes, outputs cast."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.serving.executor import (
    BadRequest,
    Executor,
    Metrics,
    Stage,
    StageConfigError,
    StageContext,
    TensorSpec,
    config_params,
)


class Echo(Stage):
    inputs = ("x",)
    optional_inputs = ("scale",)
    outputs = ("y", "n")

    def __call__(self, x, scale=None):
        factor = 1 if scale is None else int(scale[0])
        return {"y": x * factor, "n": np.array([len(x)])}  # n: platform int, declared INT64


CONFIG = {
    "name": "echo",
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1"]},
              {"name": "scale", "data_type": "TYPE_INT64", "dims": [1], "optional": True}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1]},
               {"name": "n", "data_type": "TYPE_INT64", "dims": [1]}],
    "parameters": {"K": {"string_value": "7"}, "EMPTY": {"string_value": ""}},
}


def make(config=CONFIG, stage=Echo):
    return Executor(stage, config, StageContext("echo", params=config_params(config)))


def test_a_request_runs_through_the_stage_and_outputs_take_the_declared_dtypes():
    out = make().run({"x": np.array([1.5, 2.0], np.float32), "scale": np.array([2], np.int64)})
    assert out["y"].tolist() == [3.0, 4.0] and out["y"].dtype == np.float32
    assert out["n"].dtype == np.int64 and out["n"].tolist() == [2]


def test_an_input_is_left_unchecked_only_where_an_output_check_already_guarantees_it():
    executor = make()
    spec = lambda dtype, dims: TensorSpec("t", np.dtype(dtype), dims)  # noqa: E731
    assert executor.accepts("x", spec(np.float32, (-1,))) and executor.accepts("x", spec(np.float32, (3,)))
    assert executor.accepts("scale", spec(np.int64, (1,)))
    assert not executor.accepts("scale", spec(np.int64, (-1,)))  # [1] wanted: an output of any length may differ
    assert not executor.accepts("x", spec(np.float64, (-1,))) and not executor.accepts("x", spec(np.float32, (-1, 2)))
    assert not executor.accepts("other", spec(np.float32, (-1,)))
    # named as checked, an input is handed over as it is; not named, the same value is refused
    wrong = np.array([1, 2], np.int64)
    assert executor.run({"x": np.array([1.0], np.float32), "scale": wrong}, frozenset({"scale"}))["n"].tolist() == [1]
    with pytest.raises(BadRequest, match="has shape"):
        executor.run({"x": np.array([1.0], np.float32), "scale": wrong})


def test_optional_inputs_may_be_left_out():
    assert make().run({"x": np.array([1.0], np.float32)})["y"].tolist() == [1.0]


@pytest.mark.parametrize("inputs, message", [
    ({}, "input 'x' is required"),
    ({"x": np.array([1, 2], np.int64)}, "input 'x' must be FP32, got INT64"),
    ({"x": np.zeros((2, 2), np.float32)}, "has shape [2, 2], expected [-1]"),
    ({"x": np.zeros(2, np.float32), "scale": np.array([1, 2], np.int64)}, "has shape [2], expected [1]"),
    ({"x": np.zeros(2, np.float32), "other": np.zeros(1)}, "no inputs named ['other']"),
])
def test_bad_requests_say_what_is_wrong(inputs, message):
    with pytest.raises(BadRequest, match=None) as info:
        make().run(inputs)
    assert message in str(info.value)


@given(st.sampled_from([np.int8, np.int32, np.int64, np.float16, np.float64, np.bool_, np.uint8]),
       st.lists(st.integers(0, 4), min_size=0, max_size=3))
@settings(max_examples=60, deadline=None)
def test_any_dtype_or_rank_other_than_the_declared_one_is_rejected(dtype, shape):
    spec = TensorSpec("x", np.dtype(np.float32), (-1,))
    value = np.zeros(shape, dtype=dtype)
    with pytest.raises(BadRequest):
        spec.check_input(value)


@given(st.integers(0, 50))
@settings(max_examples=20, deadline=None)
def test_any_length_matches_a_dynamic_dimension(n):
    spec = TensorSpec("x", np.dtype(np.int64), (-1,))
    assert spec.check_input(np.arange(n, dtype=np.int64)).shape == (n,)


def test_a_config_that_does_not_match_the_stage_fails_the_load_naming_the_tensors():
    config = {**CONFIG, "output": CONFIG["output"][:1]}
    with pytest.raises(StageConfigError, match=r"outputs \['y'\] != the stage's \['n', 'y'\]"):
        make(config)
    required_made_optional = {**CONFIG, "input": [{**CONFIG["input"][0], "optional": True}, CONFIG["input"][1]]}
    with pytest.raises(StageConfigError, match="required by the stage but declared optional"):
        make(required_made_optional)
    with pytest.raises(StageConfigError, match=r"inputs \['scale'\] != the stage's"):
        make({**CONFIG, "input": CONFIG["input"][1:]})  # the required input left out
    unknown = {**CONFIG, "input": [*CONFIG["input"], {"name": "z", "data_type": "TYPE_FP32", "dims": [1]}]}
    with pytest.raises(StageConfigError, match=r"inputs \['scale', 'x', 'z'\] != the stage's"):
        make(unknown)


def test_a_config_from_before_an_optional_input_existed_still_loads_and_the_stage_gets_none():
    older = make({**CONFIG, "input": CONFIG["input"][:1]})
    assert older.run({"x": np.array([2.0], np.float32)})["y"].tolist() == [2.0]
    with pytest.raises(BadRequest, match=r"no inputs named \['scale'\]"):  # not declared: not accepted either
        older.run({"x": np.array([2.0], np.float32), "scale": np.array([3], np.int64)})


def test_a_stage_output_of_the_wrong_kind_is_a_server_fault_not_a_silent_cast():
    class Floats(Echo):
        def __call__(self, x, scale=None):
            return {"y": x, "n": np.array([1.5])}  # float where INT64 is declared

    with pytest.raises(StageConfigError, match="output 'n'"):
        make(stage=Floats).run({"x": np.zeros(1, np.float32)})


def test_bytes_inputs_arrive_as_object_arrays():
    spec = TensorSpec.from_config({"name": "s", "data_type": "TYPE_STRING", "dims": [-1]})
    assert spec.check_input(np.array([b"a", b"b"], dtype=object)).dtype == object
    with pytest.raises(BadRequest, match="must be BYTES"):
        spec.check_input(np.array([1, 2]))


@pytest.mark.parametrize("method, name, default, expected", [
    ("param_int", "K", None, 7),
    ("param_int", "EMPTY", 3, 3),
    ("param_float", "MISSING", 0.5, 0.5),
    ("param_bool", "MISSING", True, True),
    ("param_json", "MISSING", {"a": 1}, {"a": 1}),
])
def test_parameters_are_typed_with_defaults_for_empty_values(method, name, default, expected):
    ctx = StageContext("echo", params=config_params(CONFIG))
    assert getattr(ctx, method)(name, default) == expected


def test_a_required_parameter_left_empty_fails_the_load():
    ctx = StageContext("echo", params=config_params(CONFIG))
    with pytest.raises(StageConfigError, match="parameter 'EMPTY' is required"):
        ctx.param("EMPTY")
    with pytest.raises(StageConfigError, match="not an integer"):
        StageContext("m", params={"K": "x"}).param_int("K")


def test_degradation_counters_are_labelled_by_stage_and_reason():
    metrics = Metrics()
    ctx = StageContext("filter_seen_items", metrics=metrics)
    ctx.declare_degraded("valkey_unreachable")
    assert metrics.value("recsys_degraded_requests_total", stage="filter_seen_items") == 0
    ctx.degraded("valkey_unreachable")
    ctx.degraded("valkey_unreachable")
    assert metrics.value("recsys_degraded_requests_total", reason="valkey_unreachable") == 2
