"""The candidate tower over the whole catalogue: one vector per raw item id (merlin env, through Pipes).

Contract
- Input: the catalogue (``raw/items.parquet``), the fitted item workflow (``transforms/workflows/item``), the
  raw-id-keyed multimodal table and each variant's saved candidate tower (``models/two_tower/<variant>``).
- Every catalogue item gets a vector, cold items included: the item workflow sends an id unseen at fit time to
  the OOV row, but its category, style, gender, price and its own image/text vectors still reach the tower.
- Output: ``<output>/<variant>.npy``, float32 (items, dim), row r = raw item id r; ``<output>/meta.json``.
  The FAISS index (pipeline env) is built from these files; FAISS is never imported here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from recsys_assets.lib.feature_spec import ITEM_INPUTS, OOV_INDEX, RAW_ITEM_ID
from recsys_assets.ml import model_inputs as mi


def catalogue_features(item_workflow_dir, items) -> object:
    """The item workflow applied to the catalogue (row order kept), with ``item_id_raw`` beside the index."""
    import nvtabular as nvt
    import pandas as pd

    missing = [c for c in ITEM_INPUTS if c not in items.columns]
    if missing:
        raise ValueError(f"the catalogue lacks columns {missing}: re-materialize items")
    items = items.sort_values("item_id").reset_index(drop=True)
    if not (items["item_id"].to_numpy() == np.arange(len(items))).all():
        raise ValueError("catalogue item ids are not 0..n-1 in order: re-materialize items")
    wf = nvt.Workflow.load(str(item_workflow_dir))
    out = wf.transform(nvt.Dataset(items[list(ITEM_INPUTS)], cpu=True)).to_ddf().compute()
    out = pd.DataFrame(out).reset_index(drop=True)
    out[RAW_ITEM_ID] = items["item_id"].to_numpy(np.int64)
    return out


def embed_catalogue(candidate_tower, features, table: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    arrays = mi.feature_arrays(features, mi.CANDIDATE_FEATURES, table)
    return mi.predict_batches(candidate_tower, arrays, batch_size).astype(np.float32)


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.ml.two_tower import CANDIDATE_TOWER, load_tower

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        import pandas as pd

        items = pd.read_parquet(store.local_path(pipes.get_extra("items")))
        table = mi.load_multimodal(store.local_path(pipes.get_extra("multimodal")), len(items))
        features = catalogue_features(store.local_path(pipes.get_extra("item_workflow")), items)
        models = pipes.get_extra("models")
        output = pipes.get_extra("output")
        meta = {"items": len(items), "oov_items": int((features["item_id"] == OOV_INDEX).sum()), "variants": {}}
        with store.writing(output) as tmp:
            Path(tmp).mkdir(parents=True)
            for variant in pipes.get_extra("variants"):
                t0 = time.perf_counter()
                tower = load_tower(store.local_path(f"{models}/{variant}/{CANDIDATE_TOWER}"))
                vectors = embed_catalogue(tower, features, table)
                np.save(Path(tmp) / f"{variant}.npy", vectors)
                norms = np.linalg.norm(vectors, axis=1)
                meta["variants"][variant] = {
                    "dim": int(vectors.shape[1]), "seconds": round(time.perf_counter() - t0, 2),
                    "finite": bool(np.isfinite(vectors).all()), "mean_norm": float(norms.mean()),
                    "min_norm": float(norms.min()), "max_norm": float(norms.max()),
                }
            (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=1))
        pipes.report_asset_materialization(metadata={
            "items": meta["items"], "oov_items": meta["oov_items"], "path": store.uri(output),
            **{f"{v}/{k}": val for v, m in meta["variants"].items() for k, val in m.items()},
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
