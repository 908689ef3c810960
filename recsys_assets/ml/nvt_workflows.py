"""Fits the NVTabular workflows on the masked training days (runs in the merlin env through Dagster Pipes).

Three workflows, fit separately on the same training rows and saved side by side, plus the full workflow
composed from the three fitted graphs (no second fit) with the target and the pass-through columns. Each
workflow holds one graph per feature of its group in the feature spec (:mod:`recsys_assets.lib.feature_spec`):
``[source] >> operators of its steps >> Rename(feature) >> Categorify (categorical features) >> AddTags``, e.g.
``age`` -> fill with the training mean age -> Normalize -> ``age_norm``; ``full/`` adds ``click`` (TARGET) and,
untagged, ``interaction_id`` and ``item_id_raw``.

Columns are tagged USER_ID / ITEM_ID / USER / ITEM / CONTEXT / TARGET so merlin-models builds its towers from
the schema. ``meta.json`` records the training mean age (the cold-start default), the train files and the fit.
Imports only dagster_pipes, the merlin stack and pure ``recsys_assets.lib`` / ``ml`` modules.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys_assets.lib import feature_spec as spec
from recsys_assets.lib.feature_spec import (
    AGE_BUCKETS,
    CATEGORICAL,
    CYCLES,
    FULL_WORKFLOW_INPUTS,
    GROUPS,
    NULL_INDEX,
    OOV_INDEX,
    PASSTHROUGH,
    RAW_ITEM_ID,
    SENTINEL,
    TARGET,
    USER_HISTORY,
    WORKFLOW_OUTPUTS,
)
from recsys_assets.ml import without_tensorflow
from recsys_assets.ml.nvt_ops import Cyclical, SentinelToNull

META_FILE = "meta.json"


def _steps_to_ops(feature, mean_age: float) -> list:
    """The NVTabular operators of one spec feature, in order (``lib.feature_spec.Step`` -> operator)."""
    from merlin.schema import Tags
    from nvtabular import ops

    out = []
    for step in feature.steps:
        if step.op == "sentinel_to_null":
            out.append(ops.LambdaOp(SentinelToNull(SENTINEL), dtype=np.float64))
        elif step.op == "fill_mean_age":
            out.append(ops.FillMissing(fill_val=float(mean_age)))
        elif step.op == "fill_median":
            out.append(ops.FillMedian())
        elif step.op == "log1p":
            out.append(ops.LogOp())
        elif step.op == "normalize":
            out.append(ops.Normalize(out_dtype=np.float32))
        elif step.op == "bucketize":
            out.append(ops.Bucketize(list(step.edges)))
        elif step.op == "cyclical":
            out.append(ops.LambdaOp(Cyclical(fn=step.fn, **CYCLES[step.cycle]), dtype=np.float32,
                                    tags=[Tags.CONTINUOUS]))
        elif step.op == "categorify":
            continue  # feature_node adds it after the rename, so the vocabulary is named after the feature
        else:
            raise ValueError(f"feature {feature.name!r}: no NVTabular operator for step {step.op!r}")
    return out


def _closed_vocabulary(feature) -> dict | None:
    """Categorify's ``vocabs`` for a feature with a closed vocabulary in the spec (None: fit on the data), in the
    dtype the column has when it reaches Categorify (float64 after ``sentinel_to_null``)."""
    import pandas as pd

    if not feature.vocabulary:
        return None
    dtype = np.float64 if spec.TO_NULL in feature.steps else None
    return {feature.name: pd.Series(np.asarray(feature.vocabulary, dtype=dtype), name=feature.name)}


def feature_node(feature, mean_age: float, categories_dir: str):
    """``[source] >> operators >> Rename(feature) >> Categorify >> AddTags``: one spec feature's graph."""
    from merlin.schema import Tags
    from nvtabular import ops

    from recsys_assets.ml.nvt_categorify import NullSafeCategorify

    node = [feature.source]
    for op in _steps_to_ops(feature, mean_age):
        node = node >> op
    if feature.name != feature.source:
        node = node >> ops.Rename(name=feature.name)
    if feature.kind == CATEGORICAL:
        node = node >> NullSafeCategorify(out_path=categories_dir, vocabs=_closed_vocabulary(feature))
    group_tag = {"user": Tags.USER, "item": Tags.ITEM, "context": Tags.CONTEXT}[feature.group]
    id_tag = {"user": [Tags.USER_ID], "item": [Tags.ITEM_ID]}.get(feature.group, []) if feature.is_id else []
    return node >> ops.AddTags([*id_tag, group_tag])


def build_graphs(mean_age: float, categories_dir: str) -> dict:
    """The unfitted output nodes of the three workflows (keyed by group) and of the extra full-workflow columns,
    built from the feature spec."""
    from merlin.schema import Tags
    from nvtabular import ops

    graphs = {}
    for group in GROUPS:
        nodes = [feature_node(f, mean_age, categories_dir) for f in spec.features(group)]
        # `a + b` returns a new concatenation node for two plain nodes, then appends to it in place: ours.
        combined = nodes[0]
        for node in nodes[1:]:
            combined = combined + node
        graphs[group] = combined
    graphs["target"] = [TARGET] >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
    graphs["passthrough"] = [*PASSTHROUGH] + (["item_id"] >> ops.Rename(name=RAW_ITEM_ID))
    return graphs


def dataset(paths, part_size: str):
    """A CPU NVTabular dataset over parquet files, read in Dask partitions of about ``part_size``."""
    import nvtabular as nvt

    return nvt.Dataset([str(p) for p in paths], engine="parquet", part_size=part_size, cpu=True)


def fit_workflows(train_files, out_dir, mean_age: float, part_size: str = "128MB") -> dict:
    """Fit user/item/context on ``train_files``, compose the full workflow, save all four under ``out_dir``."""
    import nvtabular as nvt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = dataset(train_files, part_size)
    missing = sorted(set(FULL_WORKFLOW_INPUTS) - set(ds.schema.column_names))
    if missing:
        raise ValueError(f"training data lacks columns {missing}: re-materialize masked_interactions")
    timings = {}
    with tempfile.TemporaryDirectory(prefix="nvt-fit-") as work:
        graphs = build_graphs(mean_age, work)
        workflows = {}
        for group in GROUPS:
            t0 = time.perf_counter()
            workflows[group] = nvt.Workflow(graphs[group])
            workflows[group].fit(ds)
            timings[group] = time.perf_counter() - t0
            produced = workflows[group].output_schema.column_names
            if list(produced) != list(WORKFLOW_OUTPUTS[group]):
                raise RuntimeError(f"{group} workflow produces {produced}, expected {WORKFLOW_OUTPUTS[group]}")
        # The full workflow reuses the fitted operators: only its schema is derived, nothing is refit.
        # (`a + b` appends to `a` in place when `a` is already a concatenation: start from the target node, which
        # is not, so the three fitted graphs stay as they are.)
        full = nvt.Workflow(graphs["target"] + graphs["user"] + graphs["item"] + graphs["context"]
                            + graphs["passthrough"])
        full.fit_schema(ds.schema)
        workflows["full"] = full
        for name, wf in workflows.items():
            wf.save(str(out_dir / name))
    rows = int(ds.num_rows)
    schema = workflows["full"].output_schema
    cardinalities = {
        col.name: int(col.properties.get("embedding_sizes", {}).get("cardinality", 0))
        for col in schema if "embedding_sizes" in col.properties
    }
    stats = _fitted_stats(workflows)
    meta = {
        "mean_age": float(mean_age),
        "age_buckets": list(AGE_BUCKETS),
        "train_files": [str(p) for p in train_files],
        "rows": rows,
        "fit_seconds": timings,
        "cardinalities": cardinalities,
        "stats": stats,
        "outputs": {g: list(workflows[g].output_schema.column_names) for g in (*GROUPS, "full")},
        "tags": {col.name: sorted(str(t.value) if hasattr(t, "value") else str(t) for t in col.tags)
                 for col in schema},
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def _fitted_stats(workflows) -> dict:
    from merlin.dag import Graph
    from nvtabular import ops

    out = {}
    for group in GROUPS:
        for node in Graph.get_nodes_by_op_type([workflows[group].output_node], ops.Normalize):
            for col, mean in node.op.means.items():
                out[f"{col}_mean"] = mean
                out[f"{col}_std"] = node.op.stds[col]
        for node in Graph.get_nodes_by_op_type([workflows[group].output_node], ops.FillMedian):
            for col, median in node.op.medians.items():
                out[f"{col}_median"] = float(median)
    return out


def probe_null_and_oov(workflow_dir) -> dict:
    """Transform a masked row, an unknown user and a known user with the saved user workflow: where do they land?"""
    import nvtabular as nvt
    import pandas as pd

    wf = nvt.Workflow.load(str(Path(workflow_dir) / "user"))
    vocab = pd.read_parquet(Path(workflow_dir) / "user" / "categories" / "unique.user_id.parquet")
    known = int(vocab["user_id"].dropna().iloc[0])
    probe = pd.DataFrame({"user_id": np.array([SENTINEL, 10**12, known], dtype=np.int64),
                          "age": [40.0, 40.0, 40.0], "gender": np.array([SENTINEL, 0, 1], dtype=np.int64),
                          **{name: np.array([SENTINEL, 99, 0], dtype=np.int64) for name in USER_HISTORY}})
    out = wf.transform(probe)
    return {
        "masked_user_index": int(out["user_id"].iloc[0]),
        "unseen_user_index": int(out["user_id"].iloc[1]),
        "known_user_index": int(out["user_id"].iloc[2]),
        "masked_gender_index": int(out["gender"].iloc[0]),
        "unseen_top_category_index": int(out["top_category"].iloc[1]),
    }


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        files = [store.local_path(p) for p in pipes.get_extra("train_paths")]
        output = pipes.get_extra("output")
        t0 = time.perf_counter()
        import nvtabular  # noqa: F401  (the Merlin stack's import, timed apart from the fit)

        import_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        with store.writing(output) as tmp:
            meta = fit_workflows(files, tmp, pipes.get_extra("mean_age"), pipes.get_extra("part_size"))
        seconds = time.perf_counter() - t0
        fit_seconds = sum(meta["fit_seconds"].values())
        probe = probe_null_and_oov(store.local_path(output))
        ok = (probe["masked_user_index"] == NULL_INDEX and probe["unseen_user_index"] == OOV_INDEX
              and probe["masked_gender_index"] == NULL_INDEX and probe["unseen_top_category_index"] == OOV_INDEX
              and probe["known_user_index"] > OOV_INDEX)
        pipes.report_asset_check(
            "null_and_oov_rows", passed=bool(ok),
            metadata={"description": f"sentinel -1 -> row {probe['masked_user_index']} (expected {NULL_INDEX}), "
                                     f"unseen user -> row {probe['unseen_user_index']} (expected {OOV_INDEX})",
                      **probe},
        )
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        table = "\n".join(["| column | rows in table |", "|---|---|"]
                          + [f"| {k} | {v} |" for k, v in meta["cardinalities"].items()])
        pipes.report_asset_materialization(metadata={
            "rows": meta["rows"],
            "train_files": len(files),
            "mean_age": meta["mean_age"],
            "fit_seconds": round(fit_seconds, 2),
            "fit_compose_save_seconds": round(seconds, 2),
            "import_seconds": round(import_seconds, 2),
            "rows_per_second": round(meta["rows"] / max(fit_seconds, 1e-9), 1),
            "peak_rss_mb": round(peak_mb, 1),
            **{f"fit_seconds/{g}": round(s, 2) for g, s in meta["fit_seconds"].items()},
            **{f"stat/{k}": float(v) for k, v in meta["stats"].items()},
            "embedding_tables": {"raw_value": table, "type": "md"},
            "outputs": {"raw_value": meta["outputs"], "type": "json"},
            "path": store.uri(output),
        })
    return 0


if __name__ == "__main__":
    without_tensorflow()  # NVTabular only: 3 s less of the step's start
    sys.exit(main())
