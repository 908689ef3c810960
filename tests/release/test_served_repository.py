"""A served release on disk (the ensemble runs ``<model>_v<n>`` aliases, as ``write_served`` leaves it): it
validates, and the seed-faithful builder rewrites what those aliases serve (the benchmark's set-up on a release
``make demo`` built). The benchmark itself on such a release: tests/integration/test_seed_scale.py."""

import json

import pytest

from recsys_assets.release import repository
from recsys_assets.release.repository import (
    ENSEMBLE,
    RepositoryError,
    ServingDefaults,
    build_repository,
    parse_config,
    validate_repository,
)
from recsys_assets.release.seed_faithful import SEED_FAITHFUL_STAGES, MerlinEnv, make_seed_faithful


@pytest.fixture()
def served(tmp_path, tiny):
    """Release 2 served through its aliases: only a default changed, so most aliases link to version 1."""
    repo = tmp_path / "repo"
    first = build_repository(repo, tiny.trained, ServingDefaults(), tiny.start_date, release=1)
    ensemble_text = (repo / ENSEMBLE / "config.pbtxt").read_text()
    second = build_repository(repo, tiny.trained, ServingDefaults(default_top_k=5), tiny.start_date, release=2,
                              previous=repo, previous_releases=[first])
    repository.write_served(repo, second, ensemble_text)
    return repo, second


def test_a_served_release_validates_and_a_missing_alias_is_named(served):
    repo, release = served
    steps = [s.model_name for s in parse_config(repo / ENSEMBLE / "config.pbtxt").ensemble_scheduling.step]
    assert "context_preprocessor_v2" in steps and "nvt_user_transform_v1" in steps
    assert [repository.model_of(name) for name in steps] == list(repository.MODELS)
    assert validate_repository(repo) == []

    (repo / "query_tower_v1" / "config.pbtxt").unlink()
    assert "ensemble step 4 (query_tower_v1): no model 'query_tower_v1' in the repository" in validate_repository(repo)


def test_model_of_resolves_aliases_and_leaves_other_names():
    assert repository.model_of("nvt_item_transform_v12") == "nvt_item_transform"
    assert repository.model_of("nvt_item_transform") == "nvt_item_transform"
    assert repository.model_of(ENSEMBLE) == ENSEMBLE
    assert repository.model_of("not_a_model_v3") == "not_a_model_v3"


def _workflows(folder):
    for group in ("user", "item", "context"):
        (folder / group).mkdir(parents=True)
        (folder / group / "workflow.pkl").write_bytes(b"saved workflow " + group.encode())
    return folder


def test_the_seed_faithful_twin_of_a_served_release_rewrites_what_its_aliases_serve(served, tmp_path):
    repo, release = served
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    merlin_dir = tmp_path / "merlin-env"
    merlin_dir.mkdir()
    target = tmp_path / "repo-seed"
    make_seed_faithful(repo, target, _workflows(tmp_path / "workflows"), MerlinEnv(merlin_dir, "3.11", None, {}))

    steps = {repository.model_of(s.model_name): s.model_name
             for s in parse_config(target / ENSEMBLE / "config.pbtxt").ensemble_scheduling.step}
    for model, (cls, group, _) in SEED_FAITHFUL_STAGES.items():
        name = steps[model]
        assert repository.parse_alias(name) == (model, release.models[model])
        version = target / name / str(release.models[model])
        assert f"import {cls}" in (version / "model.py").read_text()
        config = parse_config(target / name / "config.pbtxt")
        if group is not None:
            assert (version / "workflow" / "workflow.pkl").read_bytes() == b"saved workflow " + group.encode()
            assert config.parameters["EXECUTION_ENV_PATH"].string_value == str(merlin_dir)
    user = parse_config(target / steps["feast_user_lookup"] / "config.pbtxt")
    assert user.parameters["FEAST_READ"].string_value == "sdk"
    # the standard repository is untouched (the copy's alias links point into the copy)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_a_repository_whose_ensemble_lacks_a_rewritten_model_is_refused(served, tmp_path):
    repo, _ = served
    config = parse_config(repo / ENSEMBLE / "config.pbtxt")
    del config.ensemble_scheduling.step[8]  # nvt_item_transform
    repository.write_config(config, repo / ENSEMBLE / "config.pbtxt")
    merlin_dir = tmp_path / "merlin-env"
    merlin_dir.mkdir()
    with pytest.raises(RepositoryError, match="the ensemble runs no 'nvt_item_transform'"):
        make_seed_faithful(repo, tmp_path / "repo-seed", _workflows(tmp_path / "workflows"),
                           MerlinEnv(merlin_dir, "3.11", None, {}))


def test_a_release_served_in_the_executor_layout_validates_and_runs_the_same_graph(served, tiny, valkey, tmp_path):
    import dataclasses

    from recsys_assets.release.pipeline import InProcessPipeline
    from recsys_assets.release.tiny import publish_online_state, serving_environ
    from recsys_assets.serving.graph import GRAPH_FILE, served_graph

    repo, release = served
    environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", tmp_path / "artifacts")
    publish_online_state(tiny, environ)
    requests = [(-1, 1, 1767225600 + 5 * 86400 + 9 * 3600), (3, 0, 1767225600 + 6 * 86400), (7, None, None)]
    ensemble_steps = [s.model_name for s in parse_config(repo / ENSEMBLE / "config.pbtxt").ensemble_scheduling.step]
    with InProcessPipeline(repo, environ=environ) as pipeline:
        expected = [pipeline(*r) for r in requests]

    text = repository.canonical_ensemble(repo)
    repository.write_served(repo, dataclasses.replace(release, layout="executor", executor_instances=3), text)
    config = parse_config(repo / ENSEMBLE / "config.pbtxt")
    assert config.backend == "python" and not config.platform and not config.ensemble_scheduling.step
    assert list(config.version_policy.specific.versions) == [release.release]
    assert config.instance_group[0].count == 3
    folder = repo / ENSEMBLE / str(release.release)
    assert (folder / "model.py").read_text() == repository.EXECUTOR_SHIM.read_text()
    assert [s.model_name for s in served_graph(repo).ensemble_scheduling.step] == ensemble_steps
    assert validate_repository(repo) == []
    assert repository.served_release_of(repo) == release.release
    assert repository.canonical_ensemble(repo) == text  # the served executor is not mistaken for a build's graph
    with InProcessPipeline(repo, environ=environ) as pipeline:
        for want, got in zip(expected, (pipeline(*r) for r in requests)):
            assert want["ordered_ids"].tolist() == got["ordered_ids"].tolist()
            assert want["ordered_scores"].tolist() == got["ordered_scores"].tolist()

    (folder / GRAPH_FILE).unlink()
    assert any(GRAPH_FILE in p for p in validate_repository(repo))
    repository.write_served(repo, release, text)  # back to the ensemble layout: a promotion like any other
    assert parse_config(repo / ENSEMBLE / "config.pbtxt").platform == "ensemble"
    assert not (folder / "model.py").exists() and validate_repository(repo) == []


def test_the_layout_is_a_checked_serving_default_recorded_by_the_release(tmp_path, tiny):
    with pytest.raises(ValueError, match="layout 'graph': expected one of ensemble, executor"):
        ServingDefaults(layout="graph")
    built = build_repository(tmp_path / "repo", tiny.trained, ServingDefaults(layout="executor"), tiny.start_date,
                             release=1)
    assert built.layout == "executor" and built.executor_instances == ServingDefaults.executor_instances
    assert repository.Release.from_json(built.to_json()) == built
    old = {k: v for k, v in json.loads(built.to_json()).items() if k not in ("layout", "executor_instances")}
    assert repository.Release(**old).layout == "ensemble"  # a manifest written before layouts existed
    assert repository.defaults_from_release(tmp_path / "repo", built).layout == "executor"
