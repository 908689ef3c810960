"""The ensemble over the REAL trained artifacts of an artifact root (``RECSYS_ARTIFACTS``, default ./artifacts,
as ``make demo`` leaves it): repository built from them, Valkey restored from that root's append-only file on a
free port (the root's own server is left alone), Feast's registry of that root, a real tritonserver.

Skipped, naming what is missing, until the pipeline has produced every trained artifact (the compiled
transforms, the exported query tower and DLRM, the FAISS index, the multimodal embeddings, the online features).
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.release import assets as release_assets
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.release.triton_server import TritonServer
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from recsys_assets.release.client import RecommendationClient
from recsys_assets.release.repository import ServingDefaults, build_repository
from recsys_assets.serving.runtime import server_environ

pytestmark = pytest.mark.integration
ROOT = Path(os.environ.get("RECSYS_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
NEEDED = {"compiled transforms (serving_transforms)": paths.SERVING_TRANSFORMS,
          "query tower ONNX": release_assets.QUERY_TOWER_ONNX, "DLRM ONNX": release_assets.DLRM_ONNX,
          "FAISS index": release_assets.FAISS_INDEX, "multimodal embeddings": paths.MULTIMODAL_EMBEDDINGS,
          "catalogue": paths.ITEMS, "users": paths.USERS, "Feast registry (online_features)": paths.FEAST_REGISTRY,
          "Valkey data (online_features, popularity_tables)": paths.VALKEY_DATA}


def _missing() -> list[str]:
    store = ArtifactStore(ROOT) if "://" not in str(ROOT) else None
    if store is None:
        return ["a local artifact root"]
    return [f"{what} ({rel})" for what, rel in NEEDED.items() if not store.exists(rel)]


@pytest.fixture(scope="module")
def served_release(tmp_path_factory):
    missing = _missing()
    if missing:
        pytest.skip(f"trained artifacts not under {ROOT} yet: {', '.join(missing)}; run the pipeline (make demo)")
    work = tmp_path_factory.mktemp("release")
    store = ArtifactStore(ROOT)
    shutil.copytree(ROOT / paths.VALKEY_DATA, work / "valkey",
                    ignore=shutil.ignore_patterns("*.pid", "*.lock", "*.log", "nodes.conf"))
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = None
    try:
        trained = release_assets.trained_artifacts(store, release_assets.RepositoryConfig())
        start_date = os.environ.get("RECSYS_START_DATE", "2026-01-01")
        build_repository(work / "repo", trained, ServingDefaults(sampling_seed=1), start_date, release=1)
        environ = server_environ(f"redis://127.0.0.1:{valkey.port}", str(ROOT / paths.FEAST_REGISTRY))
        server = TritonServer(work / "repo", env=environ, exit_timeout=2, workdir=work / "triton")
        server.start(models=["ensemble_model"], timeout=900)
        with RecommendationClient(server.http_url) as client:
            yield client, store
    finally:
        if server is not None:
            server.stop()
        valkey.stop()


def test_real_release_answers_valid_raw_ids_descending(served_release):
    client, store = served_release
    items = store.read_parquet(paths.ITEMS).set_index("item_id")
    users = store.read_parquet(paths.USERS)["user_id"]
    ts = 1767225600 + 12 * 86400 + 20 * 3600
    for user in (int(users.iloc[0]), int(users.iloc[len(users) // 2]), -1, 10**7):
        ids, scores = client.recommend(user, 1, ts)
        assert len(ids) == 10 and len(set(ids.tolist())) == 10
        assert set(ids.tolist()) <= set(items.index)
        assert (items.loc[ids, "available_from_day"] <= 12).all()
        assert (np.diff(scores) <= 0).all() and ((scores >= 0) & (scores <= 1)).all()


def test_real_release_gives_anonymous_users_context_dependent_lists(served_release):
    client, _ = served_release
    ts = 1767225600 + 12 * 86400
    lists = {(d, h): tuple(client.recommend(-1, d, ts + h * 3600)[0].tolist()) for d in (0, 1, 2) for h in (9, 21)}
    assert len(set(lists.values())) > 1, pd.Series(lists)
