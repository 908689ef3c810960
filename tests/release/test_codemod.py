"""scripts/codemods/release_package.py: the map old module/symbol -> new, applied to sources as other branches
hold them (it is re-run over them after their merge).

codemod: leave this file (it quotes the old layout on purpose)
"""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "codemods" / "release_package.py"


@pytest.fixture(scope="module")
def codemod():
    spec = importlib.util.spec_from_file_location("release_package", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BEFORE = '''"""Uses :mod:`recsys_assets.lib.releases` and ``serving.deploy``."""
from recsys_assets.lib import releases as rl
from recsys_assets.serving import deploy
from recsys_assets.serving.repository import ENSEMBLE, _input_digest
from tests.serving.tiny_serving import tiny_artifacts


def go(store, lineage):
    from recsys_assets.serving import seed_faithful

    state = rl.served_state(store)
    lineage = rl.lineage_of(store, rl.manifest(store, state.release))
    seed_faithful.make_seed_faithful(1, 2, 3)
    deploy.running_server("x")
    return rl.version_dir("x", state, ENSEMBLE), _input_digest("p"), "python -m recsys_assets.serving.serve stop"
'''


def test_a_module_of_the_old_layout_is_rewritten_once(codemod):
    after = codemod.rewrite_strings(codemod.rewrite_python(BEFORE))
    assert "from recsys_assets.release import lineage as release_lineage, records, repository" in after
    assert "from recsys_assets.release import deploy\n" in after
    assert "from recsys_assets.release.repository import ENSEMBLE" in after
    assert "from recsys_assets.lib.digests import path_sha256" in after
    assert "from tests.release.tiny_serving import tiny_artifacts" in after
    assert "    from recsys_assets.release import seed_faithful\n" in after  # only builder functions used
    assert "state = records.served_state(store)" in after
    assert "lineage = release_lineage.lineage_of(store, records.manifest(store, state.release))" in after
    assert 'repository.version_dir("x", state, ENSEMBLE), path_sha256("p")' in after
    assert "python -m recsys_assets.release.serve stop" in after and ":mod:`recsys_assets.release`" in after
    assert " rl" not in after and "rl." not in after
    compile(after, "after.py", "exec")
    assert codemod.rewrite_strings(codemod.rewrite_python(after)) == after  # re-runnable


def test_stages_left_in_serving_keep_their_imports(codemod):
    source = "from recsys_assets.serving.seed_faithful import FeastItemsPerRequest, make_seed_faithful\n"
    after = codemod.rewrite_python(source)
    assert "from recsys_assets.release.seed_faithful import make_seed_faithful" in after
    assert "from recsys_assets.serving.seed_faithful import FeastItemsPerRequest" in after
