"""The Triton python-backend side of the executor: ``TritonPythonModel = python_model(SomeStage)``.

Every ``triton_repo/<model>/1/model.py`` is that one line plus its imports. ``initialize`` builds the stage from the
model configuration Triton hands over (parameters, the version directory ``<model>/<version>/`` holding the
artifacts) and the server's environment (runtime endpoints such as ``RECSYS_VALKEY_URL``); ``execute`` runs
:class:`~recsys_assets.serving.executor.Executor` per request. A :class:`BadRequest` becomes an INVALID_ARG error
(HTTP 400 from the ensemble), anything else an INTERNAL error with the message logged; either way only that request
fails and the model keeps serving. Counters go to Triton's metrics endpoint through ``pb_utils.MetricFamily``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

from recsys_assets.serving.executor import BadRequest, Executor, Metrics, Stage, StageContext, config_params


class TritonMetrics(Metrics):
    """Counters backed by ``pb_utils.MetricFamily`` (also kept in memory, so stages can read them back)."""

    def __init__(self, pb_utils) -> None:
        super().__init__()
        self._pb = pb_utils
        # A family must outlive its metrics (Triton refuses to increment otherwise): keep both.
        self._families: dict[str, object] = {}
        self._metrics: dict[tuple, object] = {}

    def increment(self, name, labels, amount=1.0, description=""):
        super().increment(name, labels, amount, description)
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            family = self._families.get(name)
            if family is None:
                family = self._pb.MetricFamily(name=name, description=description or name,
                                               kind=self._pb.MetricFamily.COUNTER)
                self._families[name] = family
            metric = self._metrics[key] = family.Metric(labels=dict(labels))
        metric.increment(amount)


def _logger(model_name: str) -> logging.Logger:
    """Stage logs go to stderr, which the stub shares with the server (its log file)."""
    log = logging.getLogger(f"recsys_assets.serving.{model_name}")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{model_name}] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def python_model(stage_cls: type[Stage]) -> type:
    """A ``TritonPythonModel`` class running ``stage_cls`` through the shared executor."""

    class TritonPythonModel:
        def initialize(self, args):
            import triton_python_backend_utils as pb_utils  # only exists inside Triton's python stub

            self._pb = pb_utils
            config = json.loads(args["model_config"])
            name = args["model_name"]
            # args["model_repository"] is this model's directory; artifacts sit in its version directory.
            model_dir = Path(args["model_repository"]) / str(args["model_version"])
            self._log = _logger(name)
            ctx = StageContext(model_name=name, params=config_params(config), model_dir=model_dir,
                               environ=dict(os.environ), metrics=TritonMetrics(pb_utils), log=self._log)
            self._executor = Executor(stage_cls, config, ctx)
            self._log.info("loaded version %s from %s", args["model_version"], model_dir)

        def execute(self, requests):
            pb = self._pb
            responses = []
            for request in requests:
                # One pass over the request's tensors (pb_utils.get_input_tensor_by_name scans them per name).
                given = {tensor.name(): tensor for tensor in request.inputs()}
                inputs = {}
                for spec in self._executor.input_specs:
                    tensor = given.get(spec.name)
                    inputs[spec.name] = None if tensor is None else tensor.as_numpy()
                try:
                    outputs = self._executor.run(inputs)
                except BadRequest as exc:
                    responses.append(pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG)))
                    continue
                except Exception as exc:  # a server fault: fail this request, log why, keep serving
                    self._log.error("request failed: %s\n%s", exc, traceback.format_exc())
                    responses.append(pb.InferenceResponse(
                        error=pb.TritonError(f"{type(exc).__name__}: {exc}", pb.TritonError.INTERNAL)))
                    continue
                responses.append(pb.InferenceResponse([pb.Tensor(n, a) for n, a in outputs.items()]))
            return responses

        def finalize(self):
            executor = getattr(self, "_executor", None)
            if executor is not None:
                executor.close()

    TritonPythonModel.__qualname__ = f"TritonPythonModel[{stage_cls.__name__}]"
    return TritonPythonModel
