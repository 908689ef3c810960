"""The seed-faithful serving configuration: the same ensemble, with the seed's two per-request feature paths.

DESIGN.md: the seed spent ~195 ms of ~375 ms reading item features through Feast on every request and ~152 ms
running three NVTabular workflows per request. Our ensemble reads items from an in-memory cache and applies the
workflows *compiled* into numpy lookups. To measure that speed-up side by side (not claim it), this module (the
builder; the stages are in :mod:`recsys_assets.serving.seed_faithful`) turns a built repository into its
seed-faithful twin, same models and artifacts, different feature path:

* ``feast_item_lookup`` -> :class:`FeastItemsPerRequest`: ``FeatureStore.get_online_features`` for the request's
  candidates, every request (no cache);
* ``feast_user_lookup``: ``FEAST_READ=sdk`` (``get_online_features`` per request, as the seed did, instead of the
  provider's ``online_read``);
* ``nvt_user_transform``, ``nvt_context_transform``, ``nvt_item_transform`` -> :class:`UserWorkflowTransform` ...:
  the saved NVTabular workflows themselves (``Workflow.load`` at start, ``Workflow.transform`` on a one-request
  pandas frame per request), running in the **merlin env** through the python backend's per-model
  ``EXECUTION_ENV_PATH`` parameter (an unpacked environment directory: the backend sources its ``bin/activate``
  and starts the stub there).

Why the merlin venv works directly: the python backend's stub links one CPython (``libpython3.X``) and embeds it;
the interpreter then finds its ``site-packages`` from the ``python3`` the activated env puts first on ``PATH``.
``nvidia-pytriton`` ships stubs for 3.8-3.13, so any merlin env whose Python has a stub works; when its version
differs from the server's (the backend directory holds the server's), :func:`make_seed_faithful` puts the matching
stub into those model directories (the backend prefers a model's own stub) and asks for that Python's libdir on
``LD_LIBRARY_PATH``. The env must have numpy < 2 (the bundled stub corrupts tensors under numpy 2; the merlin lock
pins 1.23.5).

A served release's ensemble runs aliases (``<model>_v<n>``, whose version folders link to the model folders'):
:func:`make_seed_faithful` rewrites the version folders those aliases serve and sets the variant's parameters in
both the alias's config (what Triton loads) and the model's own config.

The standard and seed-faithful repositories are interchangeable for a client: same inputs and outputs, same
ranking (the compiled transforms equal NVTabular, the cache equals Feast), which the integration test checks.

Tiny artifacts (:mod:`recsys_assets.release.tiny`) have a hand-written transforms description and no workflows;
:func:`fit_tiny_workflows` fits real NVTabular workflows on rows of the tiny world (in the merlin env) and compiles
them, so both configurations serve the same fitted workflows, one compiled, one live.
"""

from __future__ import annotations

import compileall
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from recsys_assets.serving.seed_faithful import WORKFLOW_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MERLIN_ENV = PROJECT_ROOT / ".venv-merlin"
MERLIN_ENV_VAR = "RECSYS_MERLIN_ENV"  # an unpacked environment directory (a venv, a conda env) with NVTabular

# model -> (stage class of the shim, workflow group or None, what the variant does)
SEED_FAITHFUL_STAGES = {
    "feast_item_lookup": ("FeastItemsPerRequest", None, "item features through Feast's get_online_features "
                          "on every request (no cache)"),
    "nvt_user_transform": ("UserWorkflowTransform", "user", "the saved NVTabular user workflow per request"),
    "nvt_context_transform": ("ContextWorkflowTransform", "context",
                              "the saved NVTabular context workflow per request"),
    "nvt_item_transform": ("ItemWorkflowTransform", "item", "the saved NVTabular item workflow per request"),
}

SHIM = '''"""Triton model `{model}`, seed-faithful variant (written by recsys_assets.release.seed_faithful)."""

from recsys_assets.serving.seed_faithful import {cls}
from recsys_assets.serving.triton_model import python_model

TritonPythonModel = python_model({cls})
'''


# -- the repository rewrite (pipeline env) ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MerlinEnv:
    """An environment directory the NVTabular models run in, and what the server needs to start stubs there."""

    path: Path
    python: str          # "3.11"
    stub: Path | None    # a stub to put into the model directories (None: the server's own stub fits)
    environ: dict        # additions to the server's environment (libpython of another version)


def probe_merlin_env(path: Path | None = None) -> MerlinEnv:
    """Check ``path`` (default ``$RECSYS_MERLIN_ENV`` or ``.venv-merlin``) can host the stub: activate script,
    NVTabular, numpy < 2, and a python-backend stub for its Python version."""
    import sysconfig

    from recsys_assets.release.triton_server import pytriton_dir

    path = Path(path or os.environ.get(MERLIN_ENV_VAR) or DEFAULT_MERLIN_ENV).resolve()
    if not (path / "bin" / "activate").exists():
        raise FileNotFoundError(f"{path}/bin/activate not found: EXECUTION_ENV_PATH must be an environment "
                                f"directory with an activate script (run `make setup`, or set {MERLIN_ENV_VAR})")
    # Versions from the installed metadata: importing nvtabular (and TensorFlow with it) takes ~10-20 s here.
    probe = ("import json, sys, sysconfig; from importlib.metadata import version as v; print(json.dumps("
             "{'python': '%d.%d' % sys.version_info[:2], 'numpy': v('numpy'), 'nvtabular': v('nvtabular'), "
             "'libdir': sysconfig.get_config_var('LIBDIR')}))")
    proc = subprocess.run([str(path / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise RuntimeError(f"{path} has no numpy or nvtabular installed:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if int(info["numpy"].split(".")[0]) >= 2:
        raise RuntimeError(f"{path} has numpy {info['numpy']}: Triton's bundled python stub corrupts tensors under "
                           "numpy 2 (ENVIRONMENT.md section 2); the env needs numpy < 2")
    server_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if info["python"] == server_python:
        return MerlinEnv(path, info["python"], None, {})
    stub = pytriton_dir() / "tritonserver" / "python_backend_stubs" / info["python"] / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"{path} runs Python {info['python']} and nvidia-pytriton has no stub for it: build one "
                           "(python_backend, -DTRITON_ENABLE_GPU=OFF) for that Python")
    libdir = info["libdir"] or sysconfig.get_config_var("LIBDIR")
    return MerlinEnv(path, info["python"], stub, {"LD_LIBRARY_PATH": libdir})


def make_seed_faithful(source: Path, target: Path, workflows_dir: Path, merlin: MerlinEnv | None = None,
                       user_feast_read: str = "sdk") -> MerlinEnv:
    """Copy the built repository ``source`` to ``target`` and switch it to the seed's feature paths.

    ``workflows_dir``: the saved workflows (``user/``, ``item/``, ``context/``, as ``nvt_workflows`` writes them)
    the compiled transforms of ``source`` were made from. Returns the environment the NVTabular models use (merge
    its ``environ`` into the server's environment).
    """
    from recsys_assets.release.repository import (
        ENSEMBLE,
        RepositoryError,
        is_executor,
        model_of,
        parse_config,
        served_versions,
        validate_repository,
        write_config,
    )

    source, target, workflows_dir = Path(source), Path(target), Path(workflows_dir)
    merlin = merlin or probe_merlin_env()
    for group in ("user", "item", "context"):
        if not (workflows_dir / group / "workflow.pkl").exists():
            raise FileNotFoundError(f"{workflows_dir / group} holds no saved NVTabular workflow: materialize "
                                    "nvt_workflows (or fit_tiny_workflows for tiny artifacts)")
    if target.exists():
        raise FileExistsError(f"{target} exists: write the seed-faithful repository into a fresh folder")
    # symlinks=True: an alias's version folder links (relatively) to its model's, so in the copy it links to the
    # copy's, and one rewrite serves both names, leaving the source untouched.
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".tmp-*", ".staging"))
    ensemble = parse_config(target / ENSEMBLE / "config.pbtxt")
    if is_executor(ensemble):
        shutil.rmtree(target)
        raise RepositoryError(f"{source} serves the executor layout; the seed-faithful configuration swaps the "
                              "ensemble layout's models: write the release served in the ensemble layout first")
    served = {model_of(step.model_name): step.model_name for step in ensemble.ensemble_scheduling.step}
    for model in (*SEED_FAITHFUL_STAGES, "feast_user_lookup"):
        if model not in served:
            raise RepositoryError(f"{source}: the ensemble runs no {model!r} (steps: {sorted(served.values())}): "
                                  "not a repository this code builds; rebuild it")
    for model, (cls, group, what) in SEED_FAITHFUL_STAGES.items():
        folders = sorted({model, served[model]})  # the model's own folder and the alias Triton loads
        configs = {folder: parse_config(target / folder / "config.pbtxt") for folder in folders}
        version_dirs = {_inside(target / folder / str(version), target)
                        for folder, config in configs.items() for version in served_versions(config, target / folder)}
        for version_dir in sorted(version_dirs):
            shutil.rmtree(version_dir / "__pycache__", ignore_errors=True)
            (version_dir / "model.py").write_text(SHIM.format(model=model, cls=cls))
            if group is not None:
                shutil.rmtree(version_dir / "transforms", ignore_errors=True)
                shutil.copytree(workflows_dir / group, version_dir / WORKFLOW_DIR)
            compileall.compile_dir(str(version_dir), quiet=1)
        for folder, config in configs.items():
            if group is not None:
                config.parameters["EXECUTION_ENV_PATH"].string_value = str(merlin.path)
                if merlin.stub is not None:  # the backend looks for a model's own stub in its folder
                    shutil.copy2(merlin.stub, target / folder / "triton_python_backend_stub")
            header = f"# Seed-faithful variant: {what}.\n# Stage: recsys_assets/serving/seed_faithful.py ({cls}).\n"
            write_config(config, target / folder / "config.pbtxt", header)
    for folder in sorted({"feast_user_lookup", served["feast_user_lookup"]}):
        user = target / folder / "config.pbtxt"
        config = parse_config(user)
        config.parameters["FEAST_READ"].string_value = user_feast_read
        write_config(config, user, f"# Seed-faithful variant: FEAST_READ={user_feast_read} (sdk: get_online_features "
                                   "per request, as the seed).\n")
    # The seed-faithful stages declare the same tensors as the standard ones, so the standard checks apply.
    problems = validate_repository(target)
    if problems:
        raise RepositoryError("the seed-faithful repository is not servable:\n- " + "\n- ".join(problems))
    return merlin


def _inside(version_dir: Path, root: Path) -> Path:
    """The real folder behind ``version_dir``, made a copy inside ``root`` when it links outside (an absolute
    link to the source repository), so the rewrite never touches the source."""
    real = version_dir.resolve()
    if real.is_relative_to(root.resolve()):
        return real
    version_dir.unlink()
    shutil.copytree(real, version_dir)
    return version_dir


# -- tiny workflows ---------------------------------------------------------------------------------------------
def tiny_training_rows(tiny, seed: int = 7):
    """Interaction-like rows over the tiny world (every user, warm item, category, device, top category, gender and
    sentinel), in the ``masked_interactions`` columns the workflows are fit on."""
    import pandas as pd

    from recsys_assets.lib.feature_spec import SENTINEL, USER_HISTORY, encode_gender

    rng = np.random.default_rng(seed)
    items = tiny.items[tiny.items["available_from_day"] == 0].reset_index(drop=True)
    users = tiny.users
    n = max(len(items), 4 * len(users))
    user_rows = users.iloc[np.arange(n) % len(users)].reset_index(drop=True)
    item_rows = items.iloc[np.arange(n) % len(items)].reset_index(drop=True)
    masked = rng.random(n) < 0.05
    gender = np.asarray(encode_gender(user_rows["gender"].tolist()), dtype=np.int64)
    frame = pd.DataFrame({
        "interaction_id": np.arange(n, dtype=np.int64),
        "user_id": np.where(masked, SENTINEL, user_rows["user_id"].to_numpy(np.int64)),
        "item_id": item_rows["item_id"].to_numpy(np.int64),
        "timestamp": (1767225600 + rng.integers(0, 9 * 86400, n)).astype(np.int64),
        "device_type": np.where(rng.random(n) < 0.05, SENTINEL, np.arange(n) % 3).astype(np.int64),
        "click": (rng.random(n) < 0.08).astype(np.int64),
        "age": np.where(masked, np.nan, user_rows["age"].to_numpy(np.float64)),
        "gender": np.where(masked, SENTINEL, gender),
        **{name: np.where(masked | (np.arange(n) % (7 + k) == 0), SENTINEL, (np.arange(n) + k) % 20).astype(np.int64)
           for k, name in enumerate(USER_HISTORY)},
        "category_l1": item_rows["category_l1"].astype(str), "category_l2": item_rows["category_l2"].astype(str),
        "item_gender": item_rows["item_gender"].astype(str),
        "price": item_rows["price"].to_numpy(np.float64),
    })
    mean_age = float(users["age"].mean())
    frame["age"] = frame["age"].fillna(mean_age)  # masked rows carry the training mean age (DESIGN Contracts)
    return frame, mean_age


def fit_tiny_workflows(tiny, folder: Path, merlin: MerlinEnv | None = None):
    """Fit the pipeline's NVTabular workflows on :func:`tiny_training_rows` (in the merlin env) and compile them.

    Returns ``(tiny', workflows_dir)``: ``tiny'`` is ``tiny`` whose trained artifacts use the compiled transforms
    of those workflows (so the standard repository serves exactly what the seed-faithful one runs live).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merlin = merlin or probe_merlin_env()
    frame, mean_age = tiny_training_rows(tiny)
    frame.to_parquet(folder / "train.parquet", index=False)
    proc = subprocess.run(
        [str(merlin.path / "bin" / "python"), "-m", "recsys_assets.release.seed_faithful", "fit",
         str(folder / "train.parquet"), str(folder), repr(mean_age)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=900,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise RuntimeError(f"fitting the tiny NVTabular workflows in {merlin.path} failed:\n{proc.stderr[-3000:]}")
    trained = dataclasses.replace(tiny.trained, transforms_dir=folder / "compiled")
    return dataclasses.replace(tiny, trained=trained), folder / "workflows"


def _fit_and_compile(train_file: str, folder: str, mean_age: float) -> None:
    """Merlin env: fit + save the workflows, compile them, check parity (the pipeline's own functions)."""
    from recsys_assets.ml.nvt_compile import compile_workflows
    from recsys_assets.ml.nvt_parity import parity_report
    from recsys_assets.ml.nvt_workflows import fit_workflows

    folder_path = Path(folder)
    fit_workflows([train_file], folder_path / "workflows", mean_age, "16MB")
    compile_workflows(folder_path / "workflows", folder_path / "compiled")
    report = parity_report(folder_path / "workflows", folder_path / "compiled")
    if not report["identical"]:
        raise SystemExit(f"compiled transforms differ from NVTabular: {report['worst']}")


def server_environ(environ: Mapping[str, str], merlin: MerlinEnv) -> dict[str, str]:
    """The server environment of a seed-faithful repository: ``environ`` plus what its merlin stubs need."""
    env = dict(environ)
    for key, value in merlin.environ.items():
        env[key] = ":".join(p for p in (value, env.get(key, "")) if p)
    return env


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "fit":
        _fit_and_compile(argv[1], argv[2], float(argv[3]))
        return 0
    print("usage: python -m recsys_assets.release.seed_faithful fit TRAIN_PARQUET FOLDER MEAN_AGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
