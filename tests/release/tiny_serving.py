"""Shared helpers of the serving tests: the tiny serving artifacts, built once per test session (each test
module wraps :func:`tiny_artifacts` in its own session fixture), and the same with real NVTabular workflows
fitted (:func:`tiny_fitted_workflows`). Read-only: copy what you change."""

from __future__ import annotations

_CACHE: dict = {}


def tiny_artifacts(tmp_path_factory):
    """Real artifacts of every serving format (compiled transforms, ONNX, FAISS, embeddings) for the tiny world."""
    if "tiny" not in _CACHE:
        from recsys_assets.release.tiny import build_tiny_artifacts

        _CACHE["tiny"] = build_tiny_artifacts(tmp_path_factory.mktemp("tiny-serving"))
    return _CACHE["tiny"]


def tiny_fitted_workflows(tmp_path_factory):
    """``(tiny', workflows_dir)``: :func:`tiny_artifacts` with NVTabular workflows really fitted, compiled and
    parity-checked in the merlin env (``seed_faithful.fit_tiny_workflows``), once per session: the seed-faithful
    test and the serving benchmark's test each fitted the same workflows (a merlin-env process apiece)."""
    if "fitted" not in _CACHE:
        from recsys_assets.release.seed_faithful import fit_tiny_workflows

        _CACHE["fitted"] = fit_tiny_workflows(tiny_artifacts(tmp_path_factory),
                                              tmp_path_factory.mktemp("tiny-fitted") / "nvt")
    return _CACHE["fitted"]
