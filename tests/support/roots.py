"""Private copies of the session's artifact roots (the tiny trained world of ``tests/defs/conftest.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from recsys_assets.lib.artifacts import ArtifactStore


def copy_root(source: Path, tmp_path_factory, name: str) -> ArtifactStore:
    """A private copy of a session artifact root (a few MB), for one consumer to change as it likes."""
    target = tmp_path_factory.mktemp(name) / "artifacts"
    shutil.copytree(source, target)
    return ArtifactStore(target)
