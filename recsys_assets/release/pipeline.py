"""The served graph run in one process: the same stages, configs and artifacts as Triton, without the server.

:class:`InProcessPipeline` reads a built repository (or one model version per model), builds every stage through
the same :class:`~recsys_assets.serving.executor.Executor` Triton's python models use, and walks the ensemble's
steps in order, mapping tensors exactly as ``ensemble_model/config.pbtxt`` says. Uses: the in-process floor of
the serving benchmark (what the stages cost without IPC and scheduling), tests of the whole graph without a
server, and debugging a request stage by stage (:meth:`InProcessPipeline.trace`).

A served release's ensemble runs aliases (``<model>_v<n>``, :func:`~recsys_assets.release.repository.write_served`):
each step is loaded from the folder it names, as Triton does (the alias's config and version), and runs the stage
of the model the alias serves; steps, timings and :meth:`InProcessPipeline.stage` are keyed by that model. A
release served in the executor layout runs the graph its executor runs (``ensemble_model/<release>/graph.pbtxt``);
the walking itself is :class:`~recsys_assets.serving.graph.StageGraph`, shared with that executor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from recsys_assets.serving.executor import Metrics
from recsys_assets.serving.graph import StageGraph, served_graph


class InProcessPipeline:
    def __init__(self, repository: Path, environ: Mapping[str, str] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.repository = Path(repository)
        self.timings: dict[str, list[float]] = {}
        self.graph = StageGraph(self.repository, served_graph(self.repository),
                                environ=dict(os.environ if environ is None else environ), metrics=metrics,
                                on_step=lambda model, seconds: self.timings.setdefault(model, []).append(seconds))
        self.metrics, self.inputs, self.outputs = self.graph.metrics, self.graph.inputs, self.graph.outputs

    @property
    def steps(self):
        return self.graph.steps

    def stage(self, model: str):
        """The stage object of one model (to refresh a cache, read a counter ...)."""
        return self.graph.stage(model)

    def trace(self, **request) -> dict[str, np.ndarray]:
        """Every tensor of the graph for one request (ensemble inputs as numpy arrays of shape [1])."""
        for name in request:
            if name not in self.inputs:
                raise KeyError(f"the ensemble has no input {name!r}; inputs: {self.inputs}")
        return self.graph.run({name: np.asarray(v) for name, v in request.items() if v is not None})

    def __call__(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                 top_k: int | None = None, diversity: bool | None = None) -> dict[str, np.ndarray]:
        def arr(v, dtype):
            return None if v is None else np.array([v], dtype=dtype)

        tensors = self.trace(user_id=arr(user_id, np.int64), device_type=arr(device_type, np.int64),
                             timestamp=arr(timestamp, np.int64), top_k=arr(top_k, np.int64),
                             diversity=arr(diversity, np.bool_))
        return {name: tensors[name] for name in self.outputs}

    def close(self) -> None:
        self.graph.close()

    def __enter__(self) -> "InProcessPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
