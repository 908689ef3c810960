"""The tiny pipeline end to end, run by :mod:`tests.integration.test_feature_spec_extension` inside a copy of the
project whose feature spec declares one more feature: upstream (masked days, NVTabular workflows fit and compiled,
transformed days), the Two-Tower and DLRM trained in the merlin env, both exported to ONNX, item embeddings and the
FAISS index, a repository built from them, then served by a real tritonserver with Valkey and Feast.

``python -m tests.integration.spec_extension_run WORK_DIR`` prints one JSON line: what the served release is made
of (compiled transform outputs, model inputs, Triton tensor widths) and what it answered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import numpy as np

DAY5_MORNING = 1767225600 + 5 * 86400 + 9 * 3600


def main(work: Path) -> dict:
    import onnxruntime as ort

    from recsys_assets.defs.index import assets as index_assets
    from recsys_assets.defs.release import assets as release_assets
    from recsys_assets.defs.training import assets as training
    from recsys_assets.lib import paths
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
    from recsys_assets.release.client import RecommendationClient
    from recsys_assets.release.repository import ServingDefaults, build_repository, parse_config
    from recsys_assets.release.tiny import TinyArtifacts, publish_online_state, serving_environ
    from recsys_assets.serving.transforms import CompiledTransforms
    from tests.defs.test_training_assets import SMALL, _resources, build_upstream

    root = work / "artifacts"
    store = build_upstream(root)
    run_config = {"ops": {
        "two_tower_model": {"config": {**SMALL, "variants": ["context"], "batch_size": 256, "epochs": 1}},
        "dlrm_model": {"config": {**SMALL, "batch_size": 256, "epochs": 1}},
        "query_tower_onnx": {"config": {"parity_rows": 64, "rows_day": SMALL["validation_days"][0]}},
        "dlrm_onnx": {"config": {"parity_rows": 64, "rows_day": SMALL["validation_days"][0]}},
    }}
    result = dg.materialize([training.two_tower_model, training.dlrm_model, training.query_tower_onnx,
                             training.dlrm_onnx, index_assets.item_embeddings, index_assets.faiss_index],
                            resources=_resources(root), run_config=run_config, raise_on_error=False)
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success or failed:
        raise SystemExit(f"training/export failed (success={result.success}, failed checks {failed})")

    trained = release_assets.trained_artifacts(store, release_assets.RepositoryConfig(variant="context"))
    repo = work / "repo"
    build_repository(repo, trained, ServingDefaults(sampling_seed=5), "2026-01-01", release=1)
    widths = {model: {t.name: list(t.dims) for t in [*config.input, *config.output]}
              for model in ("nvt_user_transform", "query_tower", "unroll_features", "dlrm_ranking")
              for config in [parse_config(repo / model / "config.pbtxt")]}
    onnx_inputs = {name: [i.name for i in ort.InferenceSession(str(path)).get_inputs()]
                   for name, path in (("query_tower", trained.query_tower), ("dlrm", trained.dlrm))}
    compiled = CompiledTransforms.load(trained.transforms_dir)

    users, items = store.read_parquet(paths.USERS), store.read_parquet(paths.ITEMS)
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", root)
        tiny = TinyArtifacts(folder=work, items=items, users=users, trained=trained, start_date="2026-01-01")
        publish_online_state(tiny, environ)
        server = TritonServer(repo, env=environ, exit_timeout=2, workdir=work / "triton")
        server.start(models=["ensemble_model"], timeout=900)
        with RecommendationClient(server.http_url, "http") as client:
            served = {str(user): [a.tolist() for a in client.recommend(user, 1, DAY5_MORNING, 10)]
                      for user in (int(users["user_id"].iloc[0]), -1)}
    finally:
        if server is not None:
            server.stop()
        valkey.stop()
    return {"user_outputs": list(compiled.outputs("user")), "widths": widths, "onnx_inputs": onnx_inputs,
            "served": served, "n_items": int(len(items)),
            "available": {str(k): int(v) for k, v in zip(items["item_id"], items["available_from_day"])}}


if __name__ == "__main__":
    report = main(Path(sys.argv[1]))
    print(json.dumps(report, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
