"""A new feature is one line of the feature spec: in a copy of the project whose ``lib/feature_spec.py`` gains a
continuous user feature (``age_log_norm``: the age, filled, log(1 + x), normalized) and no other file changes, the
tiny pipeline fits and compiles the workflows (parity checked), trains and exports both towers, builds a
repository and serves it with a real tritonserver (:mod:`tests.integration.spec_extension_run`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_assets.lib.feature_spec import CATEGORICAL, USER_HISTORY, names

pytestmark = [pytest.mark.merlin, pytest.mark.integration]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPEC = Path("recsys_assets") / "lib" / "feature_spec.py"
# Inserted before the first item feature: the user group's features end there.
ANCHOR = '    Feature("item_id", "item",'
NEW_FEATURE = ('    Feature("age_log_norm", "user", CONTINUOUS, "age", (Step("fill_mean_age"), Step("log1p"), '
               'Step("normalize")), _USER_MODELS),\n')
COPIED = ("recsys_assets", "triton_repo", "feature_repo", "tests", "pyproject.toml")


def _copy_with_extra_feature(target: Path) -> None:
    target.mkdir()
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)
    for venv in (".venv", ".venv-merlin"):
        (target / venv).symlink_to((PROJECT_ROOT / venv).resolve())
    spec = target / SPEC
    text = spec.read_text()
    assert text.count(ANCHOR) == 1, f"{SPEC} changed shape: update ANCHOR"
    spec.write_text(text.replace(ANCHOR, NEW_FEATURE + ANCHOR))


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    work = tmp_path_factory.mktemp("spec-extension")
    project = work / "project"
    _copy_with_extra_feature(project)
    changed = subprocess.run(["diff", "-rq", "-x", "__pycache__", "-x", ".venv", "-x", ".venv-merlin",
                              str(PROJECT_ROOT / "recsys_assets"), str(project / "recsys_assets")],
                             capture_output=True, text=True).stdout.splitlines()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(project)
    proc = subprocess.run([sys.executable, "-m", "tests.integration.spec_extension_run", str(work / "run")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=3000)
    if proc.returncode != 0:
        raise AssertionError(f"the pipeline with the extra feature failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), changed


def test_only_the_spec_file_differs(extended):
    _, changed = extended
    assert len(changed) == 1 and changed[0].endswith("feature_spec.py differ"), changed


def test_the_new_feature_is_computed_by_the_compiled_transform(extended):
    report, _ = extended
    assert report["user_outputs"] == ["user_id", "gender", *USER_HISTORY, "age_norm", "age_binned", "age_log_norm"]


def test_both_exported_models_read_the_new_feature(extended):
    report, _ = extended
    for model in ("query_tower", "dlrm"):
        assert any(name.split(":")[0] == "age_log_norm" for name in report["onnx_inputs"][model]), report


def test_the_triton_configs_carry_the_spec_widths(extended):
    widths = extended[0]["widths"]
    assert widths["nvt_user_transform"]["user_continuous"] == [1, 2]
    assert widths["query_tower"]["user_continuous"] == [1, 2]
    assert widths["unroll_features"]["unrolled_continuous"] == [-1, 6]
    assert widths["dlrm_ranking"]["unrolled_continuous"] == [-1, 6]
    # user and context categoricals: the spec's, unchanged by the extension (a continuous feature)
    categorical = len(names("user", CATEGORICAL)) + len(names("context", CATEGORICAL))
    assert categorical == 4 + len(USER_HISTORY) and widths["dlrm_ranking"]["unrolled_categorical"] == [-1, categorical]


def test_triton_serves_known_and_anonymous_users(extended):
    report, _ = extended
    for user, (ids, scores) in report["served"].items():
        assert len(ids) == 10 and len(set(ids)) == 10, user
        assert all(report["available"][str(i)] <= 5 for i in ids), user
        assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True), user
