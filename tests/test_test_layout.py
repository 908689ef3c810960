"""The suite's own layout: the modules ``tests/conftest.py`` keeps on one xdist worker because they share the tiny
trained world are exactly the ones whose tests use it (else the world is trained twice, or a module is split
from it and trains its own)."""

from pathlib import Path

from tests.conftest import SHARED_WORLD_MODULES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_the_modules_kept_together_are_the_ones_using_the_tiny_trained_world(request):
    users = {item.nodeid.split("::", 1)[0] for item in request.session.items
             if "tiny_upstream" in getattr(item, "fixturenames", ())}
    missing = sorted(users - set(SHARED_WORLD_MODULES))
    assert not missing, f"add {missing} to SHARED_WORLD_MODULES (tests/conftest.py)"
    for module in SHARED_WORLD_MODULES:
        assert "tiny_trained" in (PROJECT_ROOT / module).read_text(), f"{module} no longer uses the tiny world"
