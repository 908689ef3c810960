"""The served graph run in one process: the same stages, configs and artifacts as Triton, without the server.

:class:`InProcessPipeline` reads a built repository (or one model version per model), builds every stage through
the same :class:`~recsys_assets.serving.executor.Executor` Triton's python models use, and walks the ensemble's
steps in order, mapping tensors exactly as ``ensemble_model/config.pbtxt`` says. Uses: the in-process floor of
the serving benchmark (what the stages cost without IPC and scheduling), tests of the whole graph without a
server, and debugging a request stage by stage (:meth:`InProcessPipeline.trace`).

A served release's ensemble runs aliases (``<model>_v<n>``, :func:`~recsys_assets.release.repository.write_served`):
each step is loaded from the folder it names, as Triton does (the alias's config and version), and runs the stage
of the model the alias serves; steps, timings and :meth:`InProcessPipeline.stage` are keyed by that model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from recsys_assets.serving.executor import Executor, Metrics, StageContext, config_params
from recsys_assets.release.repository import ENSEMBLE, config_dict, model_of, parse_config, served_versions
from recsys_assets.serving.stages import stage_class


class InProcessPipeline:
    def __init__(self, repository: Path, environ: Mapping[str, str] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.repository = Path(repository)
        self.metrics = metrics or Metrics()
        environ = dict(os.environ if environ is None else environ)
        ensemble = parse_config(self.repository / ENSEMBLE / "config.pbtxt")
        self.inputs = [t.name for t in ensemble.input]
        self.outputs = [t.name for t in ensemble.output]
        self.steps: list[tuple[str, Executor, dict[str, str], dict[str, str]]] = []
        self.timings: dict[str, list[float]] = {}
        try:
            for step in ensemble.ensemble_scheduling.step:
                name, model = step.model_name, model_of(step.model_name)
                folder = self.repository / name
                if not (folder / "config.pbtxt").exists():
                    raise FileNotFoundError(f"the ensemble of {self.repository} runs {name!r}, which has no "
                                            f"{folder / 'config.pbtxt'}: rebuild the repository (or write the "
                                            "served release's aliases with release.repository.write_served)")
                config = parse_config(folder / "config.pbtxt")
                version = served_versions(config, folder)[-1]
                ctx = StageContext(model_name=name, params=config_params(config_dict(config)),
                                   model_dir=folder / str(version), environ=environ,
                                   metrics=self.metrics, log=logging.getLogger(f"recsys_assets.serving.{name}"))
                executor = Executor(stage_class(model), config_dict(config), ctx)
                self.steps.append((model, executor, dict(step.input_map), dict(step.output_map)))
        except BaseException:
            self.close()
            raise

    def stage(self, model: str):
        """The stage object of one model (to refresh a cache, read a counter ...)."""
        for name, executor, _, _ in self.steps:
            if name == model:
                return executor.stage
        raise KeyError(model)

    def trace(self, **request) -> dict[str, np.ndarray]:
        """Every tensor of the graph for one request (ensemble inputs as numpy arrays of shape [1])."""
        tensors: dict[str, np.ndarray] = {}
        for name, value in request.items():
            if name not in self.inputs:
                raise KeyError(f"the ensemble has no input {name!r}; inputs: {self.inputs}")
            if value is not None:
                tensors[name] = np.asarray(value)
        for model, executor, input_map, output_map in self.steps:
            start = time.perf_counter()
            outputs = executor.run({key: tensors.get(tensor) for key, tensor in input_map.items()})
            self.timings.setdefault(model, []).append(time.perf_counter() - start)
            for key, tensor in output_map.items():
                tensors[tensor] = outputs[key]
        return tensors

    def __call__(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                 top_k: int | None = None, diversity: bool | None = None) -> dict[str, np.ndarray]:
        def arr(v, dtype):
            return None if v is None else np.array([v], dtype=dtype)

        tensors = self.trace(user_id=arr(user_id, np.int64), device_type=arr(device_type, np.int64),
                             timestamp=arr(timestamp, np.int64), top_k=arr(top_k, np.int64),
                             diversity=arr(diversity, np.bool_))
        return {name: tensors[name] for name in self.outputs}

    def close(self) -> None:
        for _, executor, _, _ in self.steps:
            executor.close()
        self.steps = []

    def __enter__(self) -> "InProcessPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
