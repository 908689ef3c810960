"""Shared fixtures. Services (Valkey, Triton) are started by fixtures of the tests that need them."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_world():
    from recsys_assets.lib.generator import World

    return World(seed=7, scale="tiny")


@pytest.fixture()
def store(tmp_path):
    from recsys_assets.lib.artifacts import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")
