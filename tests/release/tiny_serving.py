"""Shared helpers of the serving tests: the tiny serving artifacts, built once per test session (each test
module wraps :func:`tiny_artifacts` in its own session fixture)."""

from __future__ import annotations

_CACHE: dict = {}


def tiny_artifacts(tmp_path_factory):
    """Real artifacts of every serving format (compiled transforms, ONNX, FAISS, embeddings) for the tiny world."""
    if "tiny" not in _CACHE:
        from recsys_assets.release.tiny import build_tiny_artifacts

        _CACHE["tiny"] = build_tiny_artifacts(tmp_path_factory.mktemp("tiny-serving"))
    return _CACHE["tiny"]
