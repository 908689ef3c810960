"""A served release on disk (the ensemble runs ``<model>_v<n>`` aliases, as ``write_served`` leaves it): it
validates, and the seed-faithful builder rewrites what those aliases serve (the benchmark's set-up on a release
``make demo`` built). The benchmark itself on such a release: tests/integration/test_serving_benchmark.py."""

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
