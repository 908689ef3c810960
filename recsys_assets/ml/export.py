"""Exports trained models to ONNX with tf2onnx and records TensorFlow's outputs for a parity check (merlin env).

Contract
- Each job names a trained model's folder (the DLRM, or a Two-Tower variant whose query tower is exported), rebuilt
  from its parameters and weights over the parity rows' schema, its input features and an output path. The ONNX
  graph's inputs are the feature columns by name, as serving feeds them: categorical indices ``int64 [batch]``,
  continuous values ``float32 [batch]``, multimodal vectors ``float32 [batch, 64]``. Outputs:
  ``query_embedding float32 [batch, dim]`` for a query tower, ``click_probability float32 [batch]`` for the DLRM.
- Beside each ``.onnx`` a ``.parity.npz`` holds real validation rows (the inputs, by feature name) and
  TensorFlow's outputs on them (``expected``); the pipeline env runs onnxruntime on the same inputs and compares
  (onnxruntime cannot join the merlin env: every release wants numpy >= 1.24.2).
- The models stay where they are (fine-tuning restores them); ONNX files are published atomically.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from recsys_assets.ml import model_inputs as mi

OUTPUT_NAMES = {"query_tower": "query_embedding", "dlrm": "click_probability"}
OPSET = 13


def input_signature(features, arrays: dict[str, np.ndarray]):
    import tensorflow as tf

    specs = []
    for name in features:
        a = arrays[name]
        dtype = tf.int64 if a.dtype.kind in "iu" else tf.float32
        specs.append(tf.TensorSpec([None] + list(a.shape[1:]), dtype, name=name))
    return specs


def export(model, kind: str, features, arrays: dict[str, np.ndarray], onnx_path) -> dict:
    """Convert ``model`` (called with a dict of features) to ONNX at ``onnx_path``; returns a summary."""
    import tensorflow as tf
    import tf2onnx

    if kind not in OUTPUT_NAMES:
        raise ValueError(f"unknown export kind {kind!r}: expected one of {sorted(OUTPUT_NAMES)}")
    features = list(features)
    signature = input_signature(features, arrays)
    out_name = OUTPUT_NAMES[kind]

    @tf.function(input_signature=signature)
    def serve(*tensors):
        out = model(dict(zip(features, tensors)))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if kind == "dlrm":
            out = tf.reshape(out, [-1])
        return {out_name: tf.cast(out, tf.float32)}

    t0 = time.perf_counter()
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET,
                                             output_path=str(onnx_path))
    seconds = time.perf_counter() - t0
    return {"inputs": [{"name": i.name, "elem_type": int(i.type.tensor_type.elem_type)} for i in proto.graph.input],
            "outputs": [o.name for o in proto.graph.output], "opset": OPSET, "convert_seconds": round(seconds, 2),
            "bytes": Path(onnx_path).stat().st_size}


def tf_outputs(model, kind: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    out = mi.predict_batches(model, arrays)
    return out.reshape(-1).astype(np.float32) if kind == "dlrm" else out.astype(np.float32)


def load(kind: str, model_dir, rows_folders, table: np.ndarray):
    """The TensorFlow model a job exports, rebuilt from its trained folder over the rows' schema: the DLRM, or the
    query tower of a Two-Tower variant."""
    from recsys_assets.ml import dlrm, two_tower

    if kind == "dlrm":
        split = mi.load_split(rows_folders, mi.DLRM_FEATURES, with_target=True)
        return dlrm.restore(model_dir, mi.model_schema(split, table), table, split.rows.iloc[:8])[0]
    features = two_tower.features_of(two_tower.saved_params(model_dir))
    return two_tower.restore(model_dir, mi.load_split(rows_folders, features, with_target=False), table).query_encoder


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        table = mi.load_multimodal(store.local_path(pipes.get_extra("multimodal")), pipes.get_extra("n_items"))
        rows_folders = [store.local_path(p) for p in pipes.get_extra("rows")]
        rows = mi.read_days(rows_folders).iloc[:pipes.get_extra("n_rows")]
        summaries = {}
        for job in pipes.get_extra("jobs"):
            kind, features = job["kind"], list(job["features"])
            model = load(kind, store.local_path(job["model"]), rows_folders, table)
            arrays = mi.feature_arrays(rows, features, table)
            expected = tf_outputs(model, kind, arrays)
            with store.writing(job["output"]) as tmp:
                summary = export(model, kind, features, arrays, tmp)
            with store.writing(job["parity"]) as tmp, open(tmp, "wb") as f:
                np.savez(f, expected=expected, **arrays)
            summaries[job["name"]] = {**summary, "parity_rows": len(rows), "path": store.uri(job["output"])}
            pipes.log.info(f"exported {job['name']} to {store.uri(job['output'])} ({summary['bytes']} bytes)")
        pipes.report_asset_materialization(metadata={
            "models": ", ".join(summaries),
            **{f"{n}/{k}": v for n, s in summaries.items() for k, v in s.items() if k != "inputs"},
            "inputs": {"raw_value": {n: s["inputs"] for n, s in summaries.items()}, "type": "json"},
        })
        sys.stdout.write(json.dumps({"exported": list(summaries)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
