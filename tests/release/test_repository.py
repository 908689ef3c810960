"""Assembling the versioned repository from templates + trained artifacts: versions, manifests, rollback."""

import dataclasses

import pytest

from recsys_assets.release.repository import (
    ENSEMBLE,
    MODELS,
    Release,
    RepositoryError,
    ServingDefaults,
    build_repository,
    parse_config,
    restore_release,
    validate_repository,
)
from recsys_assets.release.tiny import TinySizes, write_onnx_models


@pytest.fixture()
def first(tmp_path, tiny):
    manifest = build_repository(tmp_path / "r1", tiny.trained, ServingDefaults(), tiny.start_date, release=1)
    return tmp_path / "r1", manifest


def test_a_first_build_is_servable_and_injects_trained_values_and_defaults(first, tiny):
    repo, manifest = first
    assert validate_repository(repo) == []
    assert manifest.models == {m: 1 for m in (*MODELS, ENSEMBLE)} and set(manifest.changed) == set(manifest.models)
    config = parse_config(repo / "feast_user_lookup" / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert float(params["MEAN_AGE"]) == pytest.approx(tiny.users["age"].mean())
    faiss = parse_config(repo / "faiss_retrieval" / "config.pbtxt")
    assert faiss.parameters["RETRIEVAL_TOPK"].string_value == "300"
    assert faiss.parameters["START_DATE"].string_value == "2026-01-01"
    assert list(faiss.version_policy.specific.versions) == [1]
    assert (repo / "query_tower" / "1" / "model.onnx").exists()
    assert (repo / "item_id_decoder" / "1" / "transforms" / "transforms.json").exists()
    assert list((repo / "softmax_sampling" / "1" / "__pycache__").glob("model.*.pyc"))  # precompiled
    assert manifest.inputs["dlrm"] and Release.from_json(manifest.to_json()) == manifest


def test_runtime_endpoints_are_never_written_into_the_repository(first):
    repo, _ = first
    text = "\n".join(p.read_text(errors="replace") for p in repo.rglob("*.pbtxt"))
    for endpoint in ("redis://", "rediss://", "127.0.0.1", "6390", "registry.db", "RECSYS_VALKEY_URL"):
        assert endpoint not in text


def test_a_rebuild_keeps_unchanged_versions_and_bumps_only_what_changed(first, tiny, tmp_path):
    repo, manifest = first
    same = build_repository(tmp_path / "r2", tiny.trained, ServingDefaults(), tiny.start_date, release=2,
                            previous=repo, previous_releases=[manifest])
    assert same.changed == [] and same.models == manifest.models
    retrained = tmp_path / "retrained"
    retrained.mkdir()
    write_onnx_models(retrained, TinySizes(users=3 + len(tiny.users), items=3 + len(tiny.items),
                                           categories=3 + tiny.items["category_l1"].nunique(), top_categories=23,
                                           seed=99))
    new = build_repository(tmp_path / "r3", dataclasses.replace(tiny.trained, dlrm=retrained / "dlrm.onnx"),
                           ServingDefaults(ranking_topk=50), tiny.start_date, release=3,
                           previous=tmp_path / "r2", previous_releases=[manifest, same])
    assert sorted(new.changed) == ["context_preprocessor", "dlrm_ranking", "softmax_sampling"]
    assert new.models["dlrm_ranking"] == 2 and new.models["query_tower"] == 1
    assert sorted(p.name for p in (tmp_path / "r3" / "dlrm_ranking").iterdir() if p.name.isdigit()) == ["1", "2"]
    restore_release(tmp_path / "r3", manifest)  # rollback: configs point at release 1's versions again
    config = parse_config(tmp_path / "r3" / "dlrm_ranking" / "config.pbtxt")
    assert list(config.version_policy.specific.versions) == [1]
    assert parse_config(tmp_path / "r3" / "softmax_sampling" / "config.pbtxt").parameters["RANKING_TOPK"].string_value \
        == "100"
    assert validate_repository(tmp_path / "r3") == []


def test_versions_older_than_the_kept_releases_are_removed(first, tiny, tmp_path):
    repo, manifest = first
    history, previous = [manifest], repo
    for release in (2, 3):
        target = tmp_path / f"k{release}"
        history.append(build_repository(target, tiny.trained, ServingDefaults(default_top_k=release),
                                        tiny.start_date, release=release, previous=previous,
                                        previous_releases=list(history), keep_releases=2))
        previous = target
    versions = sorted(p.name for p in (previous / "context_preprocessor").iterdir() if p.name.isdigit())
    assert versions == ["2", "3"]


def test_bad_defaults_and_unservable_builds_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="default_top_k"):
        ServingDefaults(default_top_k=200)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(RepositoryError, match="not empty"):
        build_repository(tmp_path / "busy", tiny.trained, ServingDefaults(), tiny.start_date, release=1)


def test_a_build_writes_the_feature_group_widths_of_the_spec(first):
    from recsys_assets.serving.features import TENSOR_WIDTHS, USER

    repo, _ = first
    seen = {}
    for model in MODELS:
        config = parse_config(repo / model / "config.pbtxt")
        seen.update({(model, t.name): t.dims[-1] for t in [*config.input, *config.output] if t.name in TENSOR_WIDTHS})
    assert set(name for _, name in seen) == set(TENSOR_WIDTHS)
    assert all(width == TENSOR_WIDTHS[name] for (_, name), width in seen.items()), seen
    assert seen[("query_tower", "user_categorical")] == len(USER.categorical)


def test_a_width_that_differs_from_the_spec_is_named(first):
    repo, _ = first
    path = repo / "unroll_features" / "config.pbtxt"
    config = parse_config(path)
    next(t for t in config.output if t.name == "unrolled_continuous").dims[-1] = 4
    from recsys_assets.release.repository import write_config

    write_config(config, path)
    problems = validate_repository(repo)
    assert any("unroll_features: tensor 'unrolled_continuous'" in p and "the feature spec says 5" in p
               for p in problems), problems
