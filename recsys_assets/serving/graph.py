"""The served graph run in one process: the ensemble's steps walked in order, each stage through its Executor.

Two layouts serve a release (``release.repository``, a release's ``layout``):

* ``ensemble``: the 14 python models, each loaded by Triton, wired by ``ensemble_model/config.pbtxt``;
* ``executor``: one Triton python model named ``ensemble_model`` (same inputs, outputs, version = the release)
  runs the same stages in its own process (``serving.triton_model.executor_model``): the graph it walks is the
  served ensemble config, kept in its version folder as :data:`GRAPH_FILE`. No tensor crosses a process
  boundary between stages, which is what costs the ensemble layout ~0.3 ms of server CPU per hop.

Both, and the in-process pipeline of the tests and benchmarks (``release.pipeline``), build the graph here with
:class:`StageGraph`: each step's stage is loaded from the folder its step names (a model, or a served release's
alias ``<model>_v<n>``: that folder's config and served version, as Triton does) and run through the same
:class:`~recsys_assets.serving.executor.Executor` as in its own Triton model, so validation, parameters and
artifacts are identical in every layout.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from recsys_assets.lib.ensemble_request import ENSEMBLE  # the name clients call, whatever the layout
from recsys_assets.serving.executor import Executor, Metrics, StageConfigError, StageContext, config_params
from recsys_assets.serving.stages import MODELS, stage_class

GRAPH_FILE = "graph.pbtxt"    # the executor's version folder: the served ensemble config it walks
LAYOUTS = ("ensemble", "executor")
_ALIAS = re.compile(r"^(?P<model>.+)_v(?P<version>\d+)$")


# -- names ------------------------------------------------------------------------------------------------------
def alias(model: str, version: int) -> str:
    """The Triton model name serving ``version`` of ``model`` (``query_tower_v3``)."""
    return f"{model}_v{int(version)}"


def parse_alias(name: str) -> tuple[str, int] | None:
    """``(model, version)`` of an alias name, None for anything else (canonical names, the ensemble)."""
    m = _ALIAS.match(name)
    if m is None or m.group("model") not in MODELS:
        return None
    return m.group("model"), int(m.group("version"))


def model_of(name: str) -> str:
    """The model a Triton model name runs: the model of an alias (``query_tower_v3`` -> ``query_tower``), else the
    name itself (a plain build's ensemble steps name the model folders)."""
    parsed = parse_alias(name)
    return parsed[0] if parsed is not None else name


# -- configs ----------------------------------------------------------------------------------------------------
def parse_config_text(text: str, where: str = "config"):
    """Triton's ``ModelConfig`` protobuf of a ``config.pbtxt`` text; :class:`StageConfigError` if it is not one."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise StageConfigError(f"{where}: not a valid Triton model config: {exc}") from exc


def config_dict(config) -> dict:
    """The config as the JSON-like dict Triton hands a python model's ``initialize`` (field names kept)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def versions(model_dir: Path) -> list[int]:
    """The version folders of a model, ascending."""
    if not model_dir.exists():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def served_versions(config, model_dir: Path) -> list[int]:
    """The versions Triton would load for ``config``'s version policy."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    existing = versions(model_dir)
    if which == "specific":
        return list(policy.specific.versions)
    if which == "all":
        return existing
    n = policy.latest.num_versions if which == "latest" else 1
    return existing[-max(n, 1):]


def is_executor(config) -> bool:
    """Whether an ``ensemble_model`` config is the executor layout's (a python model) rather than an ensemble."""
    return config.platform != "ensemble" and config.backend == "python"


def served_graph(repository: Path):
    """The ensemble config ``repository`` serves: ``ensemble_model/config.pbtxt`` itself, or in the executor
    layout the graph in the served version's folder."""
    path = Path(repository) / ENSEMBLE / "config.pbtxt"
    config = parse_config_text(path.read_text(), str(path))
    if not is_executor(config):
        return config
    version = served_versions(config, path.parent)[-1]
    graph = path.parent / str(version) / GRAPH_FILE
    if not graph.exists():
        raise StageConfigError(f"{path} serves the executor layout, but {graph} is missing: write the served "
                               "release again (release.repository.write_served)")
    return parse_config_text(graph.read_text(), str(graph))


# -- the graph --------------------------------------------------------------------------------------------------
class StageGraph:
    """Every step of an ensemble config as a built stage, run in order on a dict of tensors.

    ``repository``: the folder the steps' model names resolve in. ``logger``: the logger of a step's model
    (default: ``recsys_assets.serving.<model>``). ``on_step(model, seconds)`` is called after every step.
    """

    def __init__(self, repository: Path, graph, environ: Mapping[str, str], metrics: Metrics | None = None,
                 logger: Callable[[str], logging.Logger] | None = None,
                 on_step: Callable[[str, float], None] | None = None) -> None:
        self.repository = Path(repository)
        self.metrics = metrics or Metrics()
        self.inputs = [t.name for t in graph.input]
        self.outputs = [t.name for t in graph.output]
        self.on_step = on_step
        logger = logger or (lambda name: logging.getLogger(f"recsys_assets.serving.{name}"))
        self.steps: list[tuple[str, Executor, dict[str, str], dict[str, str]]] = []
        self._checked: list[frozenset] = []  # per step: the inputs an earlier step's output check already covers
        produced = {}  # graph tensor -> the output spec of the step that produced it
        try:
            for step in graph.ensemble_scheduling.step:
                name, model = step.model_name, model_of(step.model_name)
                folder = self.repository / name
                path = folder / "config.pbtxt"
                if not path.exists():
                    raise StageConfigError(f"the graph runs {name!r}, which has no {path}: rebuild the repository "
                                           "(or write the served release's aliases with "
                                           "release.repository.write_served)")
                config = parse_config_text(path.read_text(), str(path))
                version = served_versions(config, folder)[-1]
                ctx = StageContext(model_name=name, params=config_params(config_dict(config)),
                                   model_dir=folder / str(version), environ=dict(environ), metrics=self.metrics,
                                   log=logger(name))
                try:
                    executor = Executor(stage_class(model), config_dict(config), ctx)
                except Exception as exc:  # name the step: in the executor layout Triton only names ensemble_model
                    raise StageConfigError(f"model {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
                self.steps.append((model, executor, dict(step.input_map), dict(step.output_map)))
                self._checked.append(frozenset(
                    key for key, tensor in step.input_map.items()
                    if tensor in produced and executor.accepts(key, produced[tensor])))
                specs = {spec.name: spec for spec in executor.output_specs}
                produced.update({tensor: specs[key] for key, tensor in step.output_map.items() if key in specs})
        except BaseException:
            self.close()
            raise

    def stage(self, model: str):
        """The stage object of one model (to refresh a cache, read a counter ...)."""
        for name, executor, _, _ in self.steps:
            if name == model:
                return executor.stage
        raise KeyError(model)

    def run(self, tensors: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """Every tensor of the graph for one request (the graph's inputs; absent or None = not given)."""
        unknown = set(tensors) - set(self.inputs)
        if unknown:
            from recsys_assets.serving.executor import BadRequest

            raise BadRequest(f"the graph has no inputs named {sorted(unknown)}; inputs: {self.inputs}")
        out = {name: value for name, value in tensors.items() if value is not None}
        on_step = self.on_step
        for (model, executor, input_map, output_map), checked in zip(self.steps, self._checked):
            start = time.perf_counter()
            produced = executor.run({key: out.get(tensor) for key, tensor in input_map.items()}, checked)
            if on_step is not None:
                on_step(model, time.perf_counter() - start)
            for key, tensor in output_map.items():
                out[tensor] = produced[key]
        return out

    def close(self) -> None:
        for _, executor, _, _ in self.steps:
            executor.close()
        self.steps, self._checked = [], []
