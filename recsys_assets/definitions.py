"""The Dagster entry point: every asset, check, job, schedule, sensor and resource of the project.

Each stage lives in ``defs/<stage>/`` and is discovered here by module name:
``assets.py`` and ``checks.py`` (assets and asset checks), ``jobs.py``, ``schedules.py`` and ``sensors.py``
(module-level definitions), and ``resources.py`` with a ``build_resources(settings) -> dict`` function for
the stage's own resources. Adding a stage means adding a folder, not editing this file.

Resources are filled from the ``RECSYS_*`` settings (``recsys_assets.lib.settings``) when the code location
loads; tests build the same resources over temporary folders and their own services.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import dagster as dg

from recsys_assets import defs as defs_package
from recsys_assets.defs.resources import (
    ArtifactStoreResource,
    DeploymentProfileResource,
    MerlinRunner,
    WorldResource,
)
from recsys_assets.lib.settings import Settings

DEFINITION_MODULES = ("assets", "checks", "jobs", "schedules", "sensors")
# define_asset_job returns a class Dagster does not export; take its type from a probe instance.
_ASSET_JOB_TYPE = type(dg.define_asset_job("_probe", selection=dg.AssetSelection.groups("_none")))


def stage_modules(kind: str) -> list[ModuleType]:
    """``defs/<stage>/<kind>.py`` of every stage that has one, in stage-name order."""
    found = []
    for stage in sorted(m.name for m in pkgutil.iter_modules(defs_package.__path__) if m.ispkg):
        name = f"{defs_package.__name__}.{stage}.{kind}"
        if importlib.util.find_spec(name) is not None:
            found.append(importlib.import_module(name))
    return found


def _collect(modules: list[ModuleType], types: tuple[type, ...]) -> list:
    out, seen = [], set()
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, types) and id(value) not in seen:
                seen.add(id(value))
                out.append(value)
    return out


def build_resources(settings: Settings) -> dict:
    resources = {
        "artifacts": ArtifactStoreResource(root=settings.artifacts),
        "world": WorldResource(seed=settings.seed, scale=settings.scale, start_date=settings.start_date.isoformat()),
        "profile": DeploymentProfileResource(profile=settings.profile),
        "merlin": MerlinRunner(profile=settings.profile),
    }
    for module in stage_modules("resources"):
        if hasattr(module, "build_resources"):
            resources.update(module.build_resources(settings))
    return resources


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    modules = {kind: stage_modules(kind) for kind in DEFINITION_MODULES}
    definition_modules = [m for kind in ("jobs", "schedules", "sensors", "assets") for m in modules[kind]]
    return dg.Definitions(
        assets=dg.load_assets_from_modules(modules["assets"]),
        asset_checks=dg.load_asset_checks_from_modules(modules["assets"] + modules["checks"]),
        jobs=_collect(definition_modules, (dg.JobDefinition, _ASSET_JOB_TYPE)),
        schedules=_collect(definition_modules, (dg.ScheduleDefinition,)),
        sensors=_collect(definition_modules, (dg.SensorDefinition,)),
        resources=build_resources(settings),
    )


defs = build_definitions()
