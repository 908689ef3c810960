"""The Dagster entry point: every asset, check, job, schedule, sensor and resource of the project.

Definitions are found by Dagster's own ``dg.load_from_defs_folder`` (``[tool.dg]`` in ``pyproject.toml`` names
``recsys_assets.defs``): every module under ``defs/<domain>/`` is loaded, so adding a domain means adding a folder,
not editing this file. Resources are the one thing Dagster does not discover: each domain's ``resources.py`` has a
``build_resources(settings) -> dict``, filled from the ``RECSYS_*`` settings (``recsys_assets.lib.settings``) when
the code location loads, never at import time; tests build the same resources over temporary folders and their
own services.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from pathlib import Path

import dagster as dg

from recsys_assets import defs as defs_package
from recsys_assets.defs.resources import (
    ArtifactStoreResource,
    DeploymentProfileResource,
    MerlinRunner,
    WorldResource,
)
from recsys_assets.lib.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The jobs hold transformed_interactions (a backfill of many days is one run: BackfillPolicy.single_run) beside
# assets run per day. Dagster warns that a backfill of such a job runs one partition per run, which is what the job
# should do; an asset backfill still gives each asset its own policy.
warnings.filterwarnings("ignore", message=r"Asset job .* materializes assets with varying BackfillPolicies")


def build_resources(settings: Settings, merlin_log_dir: str = "") -> dict:
    """``merlin_log_dir``: where the merlin steps' own output goes (``MerlinRunner.log_dir``; the demo's quiet
    console); empty keeps it on the console for Dagster to capture."""
    resources = {
        "artifacts": ArtifactStoreResource(root=settings.artifacts),
        "world": WorldResource(seed=settings.seed, scale=settings.scale, start_date=settings.start_date.isoformat(),
                               source=settings.source),
        "profile": DeploymentProfileResource(profile=settings.profile),
        "merlin": MerlinRunner(profile=settings.profile, log_dir=merlin_log_dir),
    }
    for domain in sorted(m.name for m in pkgutil.iter_modules(defs_package.__path__) if m.ispkg):
        name = f"{defs_package.__name__}.{domain}.resources"
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            if hasattr(module, "build_resources"):
                resources.update(module.build_resources(settings))
    return resources


def build_definitions(settings: Settings | None = None, merlin_log_dir: str = "") -> dg.Definitions:
    settings = settings or Settings.from_env()
    return dg.Definitions.merge(dg.load_from_defs_folder(path_within_project=PROJECT_ROOT),
                                dg.Definitions(resources=build_resources(settings, merlin_log_dir)))


defs = build_definitions()
