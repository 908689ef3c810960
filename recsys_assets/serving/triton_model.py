"""The Triton python-backend side of the executor: ``TritonPythonModel = python_model(SomeStage)``.

Every ``triton_repo/<model>/1/model.py`` is that one line plus its imports. ``initialize`` builds the stage from the
model configuration Triton hands over (parameters, the version directory ``<model>/<version>/`` holding the
artifacts) and the server's environment (runtime endpoints such as ``RECSYS_VALKEY_URL``); ``execute`` runs
:class:`~recsys_assets.serving.executor.Executor` per request. A :class:`BadRequest` becomes an INVALID_ARG error
(HTTP 400 from the ensemble), anything else an INTERNAL error with the message logged; either way only that request
fails and the model keeps serving. Counters go to Triton's metrics endpoint through ``pb_utils.MetricFamily``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from recsys_assets.serving.executor import BadRequest, Executor, Metrics, Stage, StageContext, config_params


class TritonMetrics(Metrics):
    """Metrics backed by ``pb_utils.MetricFamily`` (also kept in memory, so stages can read them back).

    Counters (the degradation counters: rare) go to Triton at once. Histograms (a stage's time, every request) are
    aggregated here and sent by :meth:`flush` at most every ``flush_s`` seconds, as the three counter series of a
    Prometheus histogram: ``<name>_bucket{le}`` (cumulative), ``<name>_sum`` and ``<name>_count``, which
    ``histogram_quantile`` reads as it reads any histogram. Each call of the metrics API is a round trip to the
    server; one a stage and request cost the executor 1.6 ms a request (docs/measurements.md), one flush a second
    costs nothing a request sees at p50.
    """

    def __init__(self, pb_utils, flush_s: float = 0.0) -> None:
        super().__init__()
        self._pb = pb_utils
        # A family must outlive its metrics (Triton refuses to increment otherwise): keep both.
        self._families: dict[str, object] = {}
        self._metrics: dict[tuple, object] = {}
        self.flush_s = flush_s
        self._next_flush = time.monotonic() + flush_s
        self._pending: dict[tuple, _PendingHistogram] = {}

    def _metric(self, name, labels, kind: str, description: str, **options):
        """The metric of ``name`` with ``labels``, its family (of ``kind``) created on first use."""
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            family = self._families.get(name)
            if family is None:
                family = self._pb.MetricFamily(name=name, description=description or name,
                                               kind=getattr(self._pb.MetricFamily, kind))
                self._families[name] = family
            metric = self._metrics[key] = family.Metric(labels=dict(labels), **options)
        return metric

    def increment(self, name, labels, amount=1.0, description=""):
        super().increment(name, labels, amount, description)
        self._metric(name, labels, "COUNTER", description).increment(amount)

    def histogram(self, name, labels, buckets=(), description=""):
        in_memory = super().histogram(name, labels, buckets, description)
        key = (name, tuple(sorted(labels.items())))
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _PendingHistogram(tuple(buckets), description)

        def record(value: float) -> None:
            in_memory(value)
            pending.add(float(value))
        return record

    def flush(self) -> None:
        """Send the histograms' observations since the last flush, if ``flush_s`` has passed."""
        now = time.monotonic()
        if now < self._next_flush:
            return
        self._next_flush = now + self.flush_s
        for (name, labels), pending in self._pending.items():
            if not pending.n:
                continue
            labels = dict(labels)
            for bound, cumulative in pending.cumulative():
                # every bucket exists from the first flush on, as in a histogram; later only the ones that grew
                if cumulative or not pending.sent:
                    self._metric(f"{name}_bucket", {**labels, "le": bound}, "COUNTER",
                                 pending.description).increment(float(cumulative))
            self._metric(f"{name}_sum", labels, "COUNTER", pending.description).increment(pending.total)
            self._metric(f"{name}_count", labels, "COUNTER", pending.description).increment(float(pending.n))
            pending.reset()
            pending.sent = True


class _PendingHistogram:
    """One histogram's observations since the last flush: a count per bucket (the last: above every bound)."""

    def __init__(self, buckets: tuple[float, ...], description: str) -> None:
        self.buckets, self.description = buckets, description
        self.bounds = (*map(repr, map(float, buckets)), "+Inf")
        self.sent = False  # whether a flush sent this histogram (and so created its buckets) already
        self.reset()

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
        self.n += 1
        self.total += value

    def cumulative(self):
        """``(le, observations at or below it)`` per bound, as a Prometheus histogram counts them."""
        running = 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            yield bound, running

    def reset(self) -> None:
        self.counts, self.n, self.total = [0] * len(self.bounds), 0, 0.0


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


def _respond(pb, log, run, inputs: dict):
    """One response: ``run(inputs)``'s tensors, or the error a client or a server fault gets."""
    try:
        outputs = run(inputs)
    except BadRequest as exc:
        return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
    except Exception as exc:  # a server fault: fail this request, log why, keep serving
        log.error("request failed: %s\n%s", exc, traceback.format_exc())
        return pb.InferenceResponse(error=pb.TritonError(f"{type(exc).__name__}: {exc}", pb.TritonError.INTERNAL))
    return pb.InferenceResponse([pb.Tensor(n, a) for n, a in outputs.items()])


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
                responses.append(_respond(pb, self._log, self._executor.run, inputs))
            return responses

        def finalize(self):
            executor = getattr(self, "_executor", None)
            if executor is not None:
                executor.close()

    TritonPythonModel.__qualname__ = f"TritonPythonModel[{stage_cls.__name__}]"
    return TritonPythonModel


def executor_model() -> type:
    """The ``TritonPythonModel`` of the executor layout: the whole graph of ``<version>/graph.pbtxt`` (the served
    ensemble config, steps on the release's aliases) run in this one model (:class:`~recsys_assets.serving.graph.
    StageGraph`), with the same request and response as the ensemble. Each stage's time goes to the histogram
    ``recsys_stage_duration_us{stage=...}`` (sent once a second, :class:`TritonMetrics`) and the stages'
    degradation counters to Triton's metrics endpoint."""
    from recsys_assets.serving.executor import (STAGE_LATENCY_BUCKETS, STAGE_LATENCY_FLUSH_S, STAGE_LATENCY_HELP,
                                                STAGE_LATENCY_METRIC)
    from recsys_assets.serving.graph import GRAPH_FILE, StageGraph, parse_config_text

    class TritonPythonModel:
        def initialize(self, args):
            import triton_python_backend_utils as pb_utils

            self._pb = pb_utils
            config = json.loads(args["model_config"])
            folder = Path(args["model_repository"])  # <repository>/ensemble_model
            version_dir = folder / str(args["model_version"])
            self._log = _logger(args["model_name"])
            metrics = self._metrics = TritonMetrics(pb_utils, flush_s=STAGE_LATENCY_FLUSH_S)
            recorders = {}  # stage -> its histogram series' recorder

            def on_step(model: str, seconds: float) -> None:
                record = recorders.get(model)
                if record is None:
                    record = recorders[model] = metrics.histogram(STAGE_LATENCY_METRIC, {"stage": model},
                                                                  STAGE_LATENCY_BUCKETS, STAGE_LATENCY_HELP)
                record(seconds * 1e6)

            graph = parse_config_text((version_dir / GRAPH_FILE).read_text(), str(version_dir / GRAPH_FILE))
            self._graph = StageGraph(folder.parent, graph, environ=dict(os.environ), metrics=metrics,
                                     logger=_logger, on_step=on_step)
            self._inputs = [entry["name"] for entry in config.get("input", [])]
            self._outputs = [entry["name"] for entry in config.get("output", [])]
            if self._inputs != self._graph.inputs or self._outputs != self._graph.outputs:
                raise RuntimeError(f"{folder}/config.pbtxt declares {self._inputs} -> {self._outputs}, its graph "
                                   f"{self._graph.inputs} -> {self._graph.outputs}: write the served release again")
            self._log.info("executor: release %s, %d stages from %s", args["model_version"],
                           len(self._graph.steps), folder.parent)

        def _run(self, inputs):
            tensors = self._graph.run(inputs)
            return {name: tensors[name] for name in self._outputs}

        def execute(self, requests):
            pb = self._pb
            responses = []
            for request in requests:
                given = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
                responses.append(_respond(pb, self._log, self._run, given))
            self._metrics.flush()
            return responses

        def finalize(self):
            graph = getattr(self, "_graph", None)
            if graph is not None:
                graph.close()

    TritonPythonModel.__qualname__ = "TritonPythonModel[executor]"
    return TritonPythonModel
