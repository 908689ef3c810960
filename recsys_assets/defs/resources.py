"""Resources: where artifacts live, which synthetic world is generated, and how merlin-env steps run.

Every endpoint and path is a resource field; the definitions fill them from ``RECSYS_*`` settings so that
tests can build the same resources pointing at temporary folders.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.generator import World

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ArtifactStoreResource(dg.ConfigurableResource):
    """The artifact root: a local folder (default ``./artifacts``) or ``s3://bucket/prefix`` (same layout)."""

    root: str = "artifacts"

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root)


class WorldResource(dg.ConfigurableResource):
    """The synthetic world the ingest assets generate from (seed, scale profile, date of day 00)."""

    seed: int = 20260101
    scale: str = "demo"
    start_date: str = "2026-01-01"
    _world: World | None = PrivateAttr(default=None)

    def world(self) -> World:
        import datetime as dt

        if self._world is None:
            self._world = World(seed=self.seed, scale=self.scale, start_date=dt.date.fromisoformat(self.start_date))
        return self._world


class DeploymentProfileResource(dg.ConfigurableResource):
    """``local`` (a laptop: embedded services, subprocesses) or ``k8s`` (EKS: S3, ElastiCache, GPU pods)."""

    profile: str = "local"

    @property
    def is_k8s(self) -> bool:
        return self.profile == "k8s"


class MerlinRunner(dg.ConfigurableResource):
    """Runs a ``recsys_assets.ml.*`` entry point in the merlin environment through Dagster Pipes.

    ``local``: a subprocess of the merlin venv's Python (``PipesSubprocessClient``).
    ``k8s``: a pod of the merlin image with a GPU request (``PipesK8sClient``).
    Asset code calls :meth:`run` and does not know which.
    """

    profile: str = "local"
    python: str = str(PROJECT_ROOT / ".venv-merlin" / "bin" / "python")
    image: str = "recsys-merlin:latest"
    namespace: str = "recsys"
    service_account: str = "recsys-pipeline"
    gpu: int = 1
    node_selector: dict[str, str] = {"karpenter.sh/nodepool": "gpu"}
    env: dict[str, str] = {}

    def command(self, module: str, *args: str) -> list[str]:
        python = self.python if self.profile == "local" else "python"
        return [python, "-m", module, *args]

    def pod_spec(self) -> dict:
        """The pod spec the k8s profile launches (GPU request, node selection, service account for S3)."""
        return {
            "serviceAccountName": self.service_account,
            "nodeSelector": dict(self.node_selector),
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "merlin",
                    "resources": {"limits": {"nvidia.com/gpu": self.gpu}} if self.gpu else {},
                }
            ],
        }

    def run(self, context, module: str, *args: str, extras: dict | None = None):
        """Run ``python -m module args`` in the merlin env; returns the Pipes invocation result."""
        env = {**self.env, "PYTHONPATH": str(PROJECT_ROOT)}
        for key in ("RECSYS_ARTIFACTS", "RECSYS_SCALE", "RECSYS_START_DATE", "RECSYS_PROFILE"):
            if key in os.environ:
                env.setdefault(key, os.environ[key])
        if self.profile == "local":
            if not Path(self.python).exists():
                raise dg.Failure(
                    f"merlin env not found at {self.python}: run `make setup` (it creates .venv-merlin from "
                    "requirements/merlin.lock.txt)"
                )
            return dg.PipesSubprocessClient(env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).run(
                command=self.command(module, *args), context=context, extras=extras or {}, env=env
            )
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            image=self.image,
            command=self.command(module, *args),
            namespace=self.namespace,
            env=env,
            base_pod_spec=self.pod_spec(),
            extras=extras or {},
        )
