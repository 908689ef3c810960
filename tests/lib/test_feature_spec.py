"""The feature spec: what derives from it agrees with it, and a malformed declaration is refused by name."""

import pytest

from recsys_assets.lib import feature_spec as spec
from recsys_assets.lib.feature_spec import CATEGORICAL, CATEGORIFY, CONTINUOUS, Feature, Step


def test_the_workflow_inputs_and_outputs_are_the_declared_sources_and_features():
    history = ("top_category", "interest_1", "interest_2", "interest_3")
    assert spec.WORKFLOW_INPUTS["user"] == ("user_id", "age", "gender", *history)
    assert spec.WORKFLOW_OUTPUTS["user"] == ("user_id", "gender", *history, "age_norm", "age_binned")
    assert spec.WORKFLOW_OUTPUTS["context"] == ("device_type", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
    for group in spec.GROUPS:
        assert {f.source for f in spec.features(group)} <= set(spec.WORKFLOW_INPUTS[group])
    assert [spec.group_id(g) for g in spec.GROUPS] == ["user_id", "item_id", None]


@pytest.mark.parametrize("model, group, expected", [
    (spec.QUERY, "user", True), (spec.QUERY, "item", False), (spec.CANDIDATE, "item", True),
    (spec.CANDIDATE, spec.MULTIMODAL, True), (spec.DLRM, "context", True), (spec.CANDIDATE, "context", False),
])
def test_which_models_read_which_groups(model, group, expected):
    assert bool(spec.features(group, model=model)) is expected


@pytest.mark.parametrize("declaration, message", [
    (lambda: Feature("x", "user", CATEGORICAL, "age", (Step("normalize"),), frozenset()), "must end with categorify"),
    (lambda: Feature("x", "user", CONTINUOUS, "age", (CATEGORIFY,), frozenset()), "categorify must be the last"),
    (lambda: Feature("x", "user", CONTINUOUS, "age", (Step("square"),), frozenset()), "unknown steps ['square']"),
])
def test_a_malformed_feature_is_refused_naming_the_problem(declaration, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        declaration()


def test_a_feature_over_a_column_of_another_group_is_refused(monkeypatch):
    monkeypatch.setattr(spec, "FEATURES", spec.FEATURES + (
        Feature("price_seen_by_user", "user", CONTINUOUS, "price", (Step("normalize"),), frozenset()),))
    with pytest.raises(ValueError, match="reads 'price', which is no raw user column"):
        spec._check()


def test_the_device_vocabulary_is_declared_once():
    from recsys_assets.api import events
    from recsys_assets.lib import validation
    from recsys_assets.serving.stages import context_preprocessor

    assert validation.VALID_DEVICES == tuple(spec.DEVICES) == (0, 1, 2)
    assert context_preprocessor.DEVICE_TYPES == (-1, 0, 1, 2)
    assert events.DEVICES is spec.DEVICE_NAMES


def test_a_scalar_feature_wider_than_one_column_is_refused():
    with pytest.raises(ValueError, match="one column of its group's matrix"):
        Feature("x", "user", CONTINUOUS, "age", (Step("normalize"),), frozenset(), width=3)
