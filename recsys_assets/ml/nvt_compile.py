"""Compiles the saved NVTabular workflows into the numpy description serving applies (runs in the merlin env).

Reads ``user/``, ``item/`` and ``context/`` (and ``meta.json``) written by :mod:`recsys_assets.ml.nvt_workflows`,
walks each output column back through the operator graph to its input column and emits one step per operator
(format: :mod:`recsys_assets.serving.transforms`): vocabularies from Categorify's unique-value files, the reserved
null/OOV rows, Normalize's means/stds, FillMissing/FillMedian values, LogOp, Bucketize edges and the cyclical
timestamp encodings. An operator it does not know is an error, never a silent skip: the serving transform must
compute exactly what the workflow computes. Then the parity check (:mod:`recsys_assets.ml.nvt_parity`) runs
NVTabular and the compiled description on the same edge-case inputs and reports the result to Dagster.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from recsys_assets.lib import feature_spec as spec
from recsys_assets.lib.feature_spec import (
    FIRST_INDEX,
    GENDER_CODES,
    GROUPS,
    NULL_INDEX,
    OOV_INDEX,
    PAD_INDEX,
    WORKFLOW_INPUTS,
)
from recsys_assets.ml import without_tensorflow
from recsys_assets.ml.nvt_ops import Cyclical, SentinelToNull
from recsys_assets.serving import transforms as compiled

# The compiled step each spec step becomes (both fills are a fill_missing with the fitted value).
COMPILED_OP = {"fill_mean_age": "fill_missing", "fill_median": "fill_missing"}


class CompileError(RuntimeError):
    """The workflow holds something the numpy transforms cannot reproduce."""


def _categorify_vocab(op, column: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if op.freq_threshold or op.max_size or op.num_buckets or op.encode_type != "joint" or op.single_table:
        raise CompileError(f"Categorify on {column!r} uses frequency limits, hashing or single_table: only the "
                           "plain vocabulary (null 1, one OOV row 2) is compiled")
    path = op.categories.get(column)
    if path is None:
        raise CompileError(f"Categorify has no unique-value file for {column!r}: was the workflow fit?")
    table = pd.read_parquet(path)
    table = table[table[column].notna()]
    labels = table.index.to_numpy(np.int64)
    if len(labels) and labels.min() < FIRST_INDEX:
        raise CompileError(f"{path}: vocabulary rows start at {labels.min()}, expected >= {FIRST_INDEX}")
    values = table[column].to_numpy()
    if values.dtype == object:
        values = values.astype(str)
    return values, labels


def _step(op, column: str, group: str, vocabularies: dict) -> dict | None:
    from merlin.dag.ops.concat_columns import ConcatColumns
    from merlin.dag.ops.selection import SelectionOp
    from nvtabular import ops

    if op is None or isinstance(op, (SelectionOp, ConcatColumns, ops.AddTags, ops.AddMetadata, ops.Rename)):
        return None
    if isinstance(op, ops.LambdaOp):
        f = op.f
        if isinstance(f, SentinelToNull):
            return {"op": "sentinel_to_null", "value": f.value}
        if isinstance(f, Cyclical):
            return {"op": "cyclical", "unit": f.unit, "period": f.period, "offset": f.offset, "fn": f.fn,
                    "dtype": np.dtype(op.output_dtype).name}
        raise CompileError(f"LambdaOp {getattr(f, '__name__', f)!r} on {column!r} cannot be compiled: use the "
                           "named functions of recsys_assets.ml.nvt_ops")
    if isinstance(op, ops.Categorify):
        name = f"{group}.{column}"
        vocabularies[name] = _categorify_vocab(op, column)
        return {"op": "categorify", "vocab": name, "size": len(vocabularies[name][0])}
    if isinstance(op, ops.Normalize):
        return {"op": "normalize", "mean": float(op.means[column]), "std": float(op.stds[column]),
                "dtype": np.dtype(op.output_dtype).name}
    if isinstance(op, ops.FillMissing):
        if op.add_binary_cols:
            raise CompileError(f"FillMissing(add_binary_cols=True) on {column!r} is not compiled")
        return {"op": "fill_missing", "value": float(op.fill_val)}
    if isinstance(op, ops.FillMedian):
        if op.add_binary_cols:
            raise CompileError(f"FillMedian(add_binary_cols=True) on {column!r} is not compiled")
        return {"op": "fill_missing", "value": float(op.medians[column])}
    if isinstance(op, ops.LogOp):
        return {"op": "log1p"}
    if isinstance(op, ops.Bucketize):
        return {"op": "bucketize", "edges": [float(b) if isinstance(b, float) else int(b)
                                             for b in op.boundaries(column)]}
    raise CompileError(f"operator {type(op).__name__} on {column!r} has no numpy equivalent here")


def _trace(node, column: str, group: str, vocabularies: dict) -> tuple[str, list[dict]]:
    """(input column, steps) that produce ``column`` at ``node``."""
    from merlin.dag import ColumnSelector

    parents = node.parents_with_dependencies
    if not parents:
        return column, []
    source = column
    if node.op is not None:
        mapping = node.op.column_mapping(ColumnSelector(node.input_schema.column_names))
        sources = mapping.get(column, [column])
        if len(sources) != 1:
            raise CompileError(f"{column!r} is computed from several columns {sources}: not compiled")
        source = sources[0]
    parent = next((p for p in parents if source in p.output_schema.column_names), None)
    if parent is None:
        raise CompileError(f"cannot find where {source!r} comes from in the workflow graph")
    root, steps = _trace(parent, source, group, vocabularies)
    step = _step(node.op, source, group, vocabularies)
    return root, steps + ([step] if step else [])


def _check_against_spec(group: str, outputs: list[dict]) -> None:
    """The fitted workflow computes what the feature spec declares: same features, sources and steps."""
    declared = spec.features(group)
    if [o["name"] for o in outputs] != [f.name for f in declared]:
        raise CompileError(f"the {group} workflow produces {[o['name'] for o in outputs]}, the feature spec "
                           f"declares {[f.name for f in declared]}: refit nvt_workflows with this code version")
    for out, feature in zip(outputs, declared):
        wanted = [COMPILED_OP.get(s.op, s.op) for s in feature.steps]
        got = [s["op"] for s in out["steps"]]
        if out["input"] != feature.source or got != wanted:
            raise CompileError(f"{group}.{feature.name}: the workflow computes {out['input']} -> {got}, the "
                               f"feature spec declares {feature.source} -> {wanted}: refit nvt_workflows")


def compile_workflows(workflows_dir, out_dir) -> dict:
    """Write the compiled description of the saved workflows into ``out_dir``; returns the description."""
    import nvtabular as nvt

    workflows_dir, out_dir = Path(workflows_dir), Path(out_dir)
    meta = json.loads((workflows_dir / "meta.json").read_text())
    vocabularies: dict = {}
    groups = {}
    for group in GROUPS:
        wf = nvt.Workflow.load(str(workflows_dir / group))
        outputs = []
        for col in wf.output_schema:
            source, steps = _trace(wf.output_node, col.name, group, vocabularies)
            outputs.append({"name": col.name, "input": source, "dtype": np.dtype(col.dtype.to_numpy).name,
                            "tags": sorted(getattr(t, "value", str(t)) for t in col.tags), "steps": steps})
        _check_against_spec(group, outputs)
        inputs = list(wf.input_schema.column_names)
        if sorted(inputs) != sorted(WORKFLOW_INPUTS[group]):
            raise CompileError(f"the {group} workflow reads {inputs}, expected {list(WORKFLOW_INPUTS[group])}")
        groups[group] = {"inputs": list(WORKFLOW_INPUTS[group]), "outputs": outputs}
    description = {
        "format": compiled.FORMAT,
        "version": compiled.VERSION,
        "mean_age": float(meta["mean_age"]),
        "indices": {"pad": PAD_INDEX, "null": NULL_INDEX, "oov": OOV_INDEX, "first": FIRST_INDEX},
        "input_codes": {"gender": dict(GENDER_CODES)},
        "groups": groups,
        "vocabularies": {name: {"size": len(v)} for name, (v, _) in vocabularies.items()},
        "source": {"workflows": str(workflows_dir), "nvtabular": nvt.__version__, "fit_rows": meta.get("rows"),
                   "compiled_at": int(time.time())},
    }
    compiled.write_description(out_dir, description, vocabularies)
    return description


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.ml.nvt_parity import parity_report

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        workflows = store.local_path(pipes.get_extra("workflows"))
        output = pipes.get_extra("output")
        import nvtabular  # noqa: F401  (the import is the env's cost, not the compile's)

        t0 = time.perf_counter()
        with store.writing(output) as tmp:
            description = compile_workflows(workflows, tmp)
        seconds = time.perf_counter() - t0
        report = parity_report(workflows, store.local_path(output))
        worst = report["worst"]
        pipes.report_asset_check(
            "parity", passed=bool(report["identical"]),
            metadata={"description": ("compiled transforms equal NVTabular on " if report["identical"] else
                                      "compiled transforms DIFFER from NVTabular on ")
                      + f"{report['rows']} edge-case and vocabulary rows (worst: {worst})",
                      "rows": report["rows"], "mismatched_columns": report["mismatched_columns"],
                      "max_float_abs_diff": report["max_float_abs_diff"]},
        )
        lines = ["| group | output | input | steps |", "|---|---|---|---|"]
        for group, spec in description["groups"].items():
            for out in spec["outputs"]:
                lines.append(f"| {group} | {out['name']} | {out['input']} | "
                             + " -> ".join(s["op"] for s in out["steps"]) + " |")
        pipes.report_asset_materialization(metadata={
            "mean_age": description["mean_age"],
            "vocabularies": len(description["vocabularies"]),
            **{f"vocab_size/{k}": v["size"] for k, v in description["vocabularies"].items()},
            "compile_seconds": round(seconds, 2),
            "bytes": store.size_bytes(output),
            "steps": {"raw_value": "\n".join(lines), "type": "md"},
            "parity_rows": report["rows"],
            "path": store.uri(output),
        })
    return 0


if __name__ == "__main__":
    without_tensorflow()  # NVTabular only: 3 s less of the step's start
    sys.exit(main())
