"""Resources: where artifacts live, which synthetic world is generated, and how merlin-env steps run.

Every endpoint and path is a resource field; the definitions fill them from ``RECSYS_*`` settings so that
tests can build the same resources pointing at temporary folders.
"""

from __future__ import annotations

import os
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
    """Where the data comes from: the synthetic world (seed, scale profile, date of day 00) or, when ``source``
    names a folder or ``s3://`` prefix (``RECSYS_SOURCE``), a shop's own data in the contract of
    ``lib.sources`` (docs/own-data.md). The ingest assets ask ``defs.ingest.sources.ingest_source`` which."""

    seed: int = 20260101
    scale: str = "demo"
    start_date: str = "2026-01-01"
    source: str = "generator"
    _world: World | None = PrivateAttr(default=None)

    @property
    def uses_generator(self) -> bool:
        from recsys_assets.lib.settings import GENERATOR_SOURCE

        return self.source == GENERATOR_SOURCE

    def world(self) -> World:
        import datetime as dt

        if self._world is None:
            self._world = World(seed=self.seed, scale=self.scale, start_date=dt.date.fromisoformat(self.start_date))
        return self._world

    def truth(self) -> World | None:
        """The world whose true click probabilities judge models, or None when the data is a shop's own
        (``RECSYS_SOURCE`` names a folder): own data has no ground truth, so only the logged measures apply."""
        from recsys_assets.lib.settings import Settings

        return self.world() if Settings.from_env().uses_generator else None


class DeploymentProfileResource(dg.ConfigurableResource):
    """``local`` (a laptop: embedded services, subprocesses) or ``k8s`` (EKS: S3, ElastiCache, GPU pods)."""

    profile: str = "local"

    @property
    def is_k8s(self) -> bool:
        return self.profile == "k8s"


# What a Merlin step inherits from the process that launches it (the code location or run pod).
MERLIN_FORWARDED_ENV = (
    "RECSYS_ARTIFACTS", "RECSYS_SCALE", "RECSYS_START_DATE", "RECSYS_PROFILE", "RECSYS_SEED", "RECSYS_SOURCE",
)
# On Kubernetes the step also needs the AWS region for S3 (IRSA supplies the role, not the region).
MERLIN_FORWARDED_ENV_K8S = ("AWS_REGION", "AWS_DEFAULT_REGION")
# The merlin image (infra/docker/merlin-triton.Dockerfile) unless the field or RECSYS_MERLIN_IMAGE names one.
DEFAULT_MERLIN_IMAGE = "recsys-merlin:0.1.0"


class MerlinRunner(dg.ConfigurableResource):
    """Runs a ``recsys_assets.ml.*`` entry point in the merlin environment through Dagster Pipes.

    ``local``: a subprocess of the merlin venv's Python (``PipesSubprocessClient``).
    ``k8s``: a pod of the merlin image with a GPU request (``PipesK8sClient``), on Karpenter's ``gpu``
    NodePool (node selector + toleration of its ``nvidia.com/gpu`` taint), under the ``recsys-pipeline``
    service account whose IRSA role reaches the S3 artifacts; ``/dev/shm`` is a memory volume (TensorFlow and
    NVTabular's dask workers use shared memory), and the pod is marked not to be disrupted by Karpenter.
    Asset code calls :meth:`run` and does not know which.

    Empty k8s fields are filled when a step runs: ``image`` from ``RECSYS_MERLIN_IMAGE`` (the Dagster Helm
    values set it on the code location and its runs), else ``DEFAULT_MERLIN_IMAGE``; ``namespace`` is the run
    pod's own namespace. :meth:`pod_body` shows the exact pod a step would create, without a cluster.
    """

    profile: str = "local"
    python: str = str(PROJECT_ROOT / ".venv-merlin" / "bin" / "python")
    image: str = ""
    namespace: str = ""
    service_account: str = "recsys-pipeline"
    gpu: int = 1
    cpu: str = "4"
    memory: str = "24Gi"
    shm_size: str = "8Gi"
    node_selector: dict[str, str] = {"karpenter.sh/nodepool": "gpu"}
    tolerations: list[dict[str, str]] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    env: dict[str, str] = {}
    log_dir: str = ""
    """``local``: when set, each step's own output (TensorFlow's, NVTabular's and Merlin's warnings) goes to
    ``<log_dir>/<module>.log`` (appended) instead of the run's console; a failed step's error names the file and
    repeats its last lines. Empty (the default, as in ``make dev``): the output stays on the console, where
    Dagster captures it per step."""

    def command(self, module: str, *args: str) -> list[str]:
        python = self.python if self.profile == "local" else "python"
        return [python, "-m", module, *args]

    def resolved_image(self) -> str:
        """The merlin image a k8s step runs: the field, else ``RECSYS_MERLIN_IMAGE``, else the default."""
        return self.image or os.environ.get("RECSYS_MERLIN_IMAGE") or DEFAULT_MERLIN_IMAGE

    def pod_spec(self) -> dict:
        """The pod spec the k8s profile launches (GPU request, node selection, service account for S3).

        PipesK8sClient adds the command and the Pipes bootstrap environment to the first container.
        """
        gpus = {"nvidia.com/gpu": self.gpu} if self.gpu else {}
        return {
            "serviceAccountName": self.service_account,
            "restartPolicy": "Never",
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [
                {
                    "name": "merlin",
                    "image": self.resolved_image(),
                    # Extended resources (GPUs) need request == limit; memory limit == request: the step
                    # cannot grow into memory the scheduler did not reserve for it on the node.
                    "resources": {
                        "requests": {"cpu": self.cpu, "memory": self.memory, **gpus},
                        "limits": {"memory": self.memory, **gpus},
                    },
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}}],
        }

    def pod_meta(self, module: str) -> dict:
        """Labels to find a step's pods by; the annotation that keeps Karpenter from evicting it mid-step."""
        step = module.rsplit(".", 1)[-1].replace("_", "-")[:63].strip("-")
        return {
            "labels": {"app.kubernetes.io/part-of": "recsys", "app.kubernetes.io/component": "merlin-step",
                       "recsys/step": step},
            "annotations": {"karpenter.sh/do-not-disrupt": "true"},
        }

    def step_env(self) -> dict[str, str]:
        """A step's environment: the resource's ``env`` and the forwarded ``RECSYS_*`` (k8s: also AWS_*)."""
        env = dict(self.env)
        if self.profile == "local":
            env["PYTHONPATH"] = str(PROJECT_ROOT)  # the merlin venv imports this checkout
        forwarded = MERLIN_FORWARDED_ENV + (MERLIN_FORWARDED_ENV_K8S if self.profile != "local" else ())
        for key in forwarded:
            if key in os.environ:
                env.setdefault(key, os.environ[key])
        return env

    def pod_body(self, module: str, *args: str, env: dict[str, str] | None = None) -> dict:
        """The pod (a plain Kubernetes manifest) that :meth:`run` would create for ``python -m module args``.

        Built by dagster-k8s's own ``build_pod_body`` from the same arguments :meth:`run` passes to
        PipesK8sClient, minus the per-run Pipes bootstrap variables; no cluster is contacted.
        """
        import kubernetes
        from dagster_k8s.pipes import build_pod_body

        name = "merlin-" + self.pod_meta(module)["labels"]["recsys/step"]
        pod = build_pod_body(
            pod_name=name,
            image=self.resolved_image(),
            command=self.command(module, *args),
            env_vars={**self.step_env(), **(env or {})},
            base_pod_meta=self.pod_meta(module),
            base_pod_spec=self.pod_spec(),
        )
        return {"apiVersion": "v1", "kind": "Pod",
                **kubernetes.client.ApiClient().sanitize_for_serialization(pod)}

    def run(self, context, module: str, *args: str, extras: dict | None = None):
        """Run ``python -m module args`` in the merlin env; returns the Pipes invocation result."""
        env = self.step_env()
        if self.profile == "local":
            if not Path(self.python).exists():
                raise dg.Failure(
                    f"merlin env not found at {self.python}: run `make setup` (it creates .venv-merlin from "
                    "requirements/merlin.lock.txt)"
                )
            parent_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            command = self.command(module, *args)
            if not self.log_dir:
                return dg.PipesSubprocessClient(env=parent_env).run(
                    command=command, context=context, extras=extras or {}, env=env)
            log = Path(self.log_dir) / f"{module.rsplit('.', 1)[-1]}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            # Pipes messages travel through a temporary file, not stdout, so redirecting the output loses nothing.
            try:
                return dg.PipesSubprocessClient(env=parent_env).run(
                    command=["sh", "-c", 'exec "$@" >>"$0" 2>&1', str(log), *command], context=context,
                    extras=extras or {}, env=env)
            except Exception as exc:  # the step exited non-zero (DagsterPipesExecutionError) or Pipes broke
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else ""
                raise dg.Failure(f"merlin step {module} failed ({exc}); its output is in {log}; the end of it:\n"
                                 f"{tail}") from exc
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            image=self.resolved_image(),
            command=self.command(module, *args),
            namespace=self.namespace or None,
            env=env,
            base_pod_meta=self.pod_meta(module),
            base_pod_spec=self.pod_spec(),
            extras=extras or {},
        )
