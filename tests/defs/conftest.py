import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, MerlinRunner, WorldResource


@pytest.fixture()
def resources(tmp_path):
    """Real local resources over a temporary artifact root and the tiny world."""
    return {
        "artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")),
        "world": WorldResource(seed=7, scale="tiny"),
        "merlin": MerlinRunner(profile="local"),
    }
