"""Index: the candidate tower over the whole catalogue, and the FAISS index serving retrieves from.

- ``item_embeddings`` (merlin env, Pipes): every catalogue item, cold items included (their category, style,
  gender, price and own image/text vectors reach the tower even though their id is NVTabular's OOV row),
  through each variant's candidate tower: ``index/item_embeddings/<variant>.npy``, row r = raw item id r.
- ``faiss_index`` (pipeline env): an inner-product ``IndexIDMap`` over raw item ids per variant
  (``index/faiss/<variant>.faiss``); exact for thousands of items, IVF (or HNSW) for millions
  (``lib.faiss_index``). Metadata: build time, query latency and the ANN's recall against exact search.
  Blocking check ``ids_are_raw_items``: the index holds exactly the catalogue's raw ids, and a search never
  returns FAISS's -1 padding.
"""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.embeddings.assets import item_multimodal_embeddings
from recsys_assets.defs.ingest.assets import items
from recsys_assets.defs.resources import ArtifactStoreResource, MerlinRunner
from recsys_assets.defs.training.assets import MERLIN_TAGS, VARIANTS, two_tower_model
from recsys_assets.defs.transforms.assets import nvt_workflows
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore

GROUP = "index"



def _trained_variants(store: ArtifactStore) -> list:
    return [v for v in VARIANTS if store.exists(f"{paths.two_tower(v)}/candidate_tower")]


@dg.asset(group_name=GROUP, kinds={"tensorflow", "numpy"}, op_tags=MERLIN_TAGS,
          deps=[two_tower_model, nvt_workflows, item_multimodal_embeddings, items],
          check_specs=check_specs("item_embeddings", ("row_per_item", "finite")))
def item_embeddings(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource,
                    merlin: MerlinRunner) -> dg.MaterializeResult:
    """Candidate-tower vectors of every catalogue item (cold items through their content features), per variant."""
    store = artifacts.store()
    variants = _trained_variants(store)
    if not variants:
        raise dg.Failure(f"no trained candidate tower under {store.uri(paths.TWO_TOWER)}: materialize "
                         "two_tower_model first")
    for rel, asset in ((f"{paths.NVT_WORKFLOWS}/item", "nvt_workflows"),
                       (paths.MULTIMODAL_EMBEDDINGS, "item_multimodal_embeddings"), (paths.ITEMS, "items")):
        if not store.exists(rel):
            raise dg.Failure(f"{store.uri(rel)} is missing: materialize {asset} first")
    result = merlin.run(context, "recsys_assets.ml.item_embeddings", extras={
        "root": store.root, "items": paths.ITEMS, "item_workflow": f"{paths.NVT_WORKFLOWS}/item",
        "multimodal": paths.MULTIMODAL_EMBEDDINGS, "models": paths.TWO_TOWER, "variants": variants,
        "output": paths.ITEM_EMBEDDINGS,
    }).get_materialize_result()
    n_items = len(store.read_parquet(paths.ITEMS, columns=["item_id"]))
    shapes = {v: np.load(store.local_path(paths.item_embeddings(v)), mmap_mode="r").shape for v in variants}
    finite = {v: bool(np.isfinite(np.load(store.local_path(paths.item_embeddings(v)))).all()) for v in variants}
    return dg.MaterializeResult(
        metadata={**result.metadata, "variants": ", ".join(variants),
                  **{f"{v}/shape": str(s) for v, s in shapes.items()}},
        check_results=[
            check("row_per_item", all(s[0] == n_items for s in shapes.values()),
                   f"rows per variant { {v: s[0] for v, s in shapes.items()} } for {n_items} catalogue items"),
            check("finite", all(finite.values()), f"all values finite: {finite}"),
        ],
    )


class FaissIndexConfig(dg.Config):
    kind: str = "auto"
    """``auto`` (exact IndexFlatIP up to 100k items, IVF above), ``flat``, ``ivf`` or ``hnsw``."""
    nlist: int = 0
    """IVF cells; 0 = about 4 sqrt(items)."""
    nprobe: int = 32
    """IVF cells searched per query."""
    hnsw_m: int = 32
    ef_search: int = 128
    recall_k: int = 100
    """Depth at which the ANN's recall against exact search is measured."""
    recall_queries: int = 200
    """Catalogue vectors used as probe queries for the recall and latency measurements."""
    seed: int = 0


@dg.asset(group_name=GROUP, kinds={"faiss"}, deps=[item_embeddings, items],
          check_specs=check_specs("faiss_index", ("ids_are_raw_items",)))
def faiss_index(config: FaissIndexConfig, artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """An inner-product FAISS index over raw item ids per variant (``index/faiss/<variant>.faiss``)."""
    store = artifacts.store()
    n_items = len(store.read_parquet(paths.ITEMS, columns=["item_id"]))
    variants = [v for v in VARIANTS if store.exists(paths.item_embeddings(v))]
    if not variants:
        raise dg.Failure(f"no item vectors under {store.uri(paths.ITEM_EMBEDDINGS)}: materialize item_embeddings")
    params = fx.IndexParams(kind=config.kind, nlist=config.nlist, nprobe=config.nprobe, hnsw_m=config.hnsw_m,
                            ef_search=config.ef_search, seed=config.seed)
    rows, meta, problems = [], {}, []
    rng = np.random.default_rng(config.seed)
    for variant in variants:
        vectors = np.load(store.local_path(paths.item_embeddings(variant)))
        ids = np.arange(len(vectors), dtype=np.int64)  # row r = raw item id r
        built = fx.build(vectors, ids, params)
        probes = vectors[rng.choice(len(vectors), min(config.recall_queries, len(vectors)), replace=False)]
        recall = fx.recall_vs_exact(built, vectors, ids, probes, config.recall_k)
        found = fx.search(built.index, probes, min(300 + 50, len(vectors)))
        latency = _latency_ms(built.index, probes[:50], 300)
        with store.writing(paths.faiss_index(variant)) as tmp:
            fx.save(built.index, tmp)
        held = fx.id_map(built.index)
        if len(vectors) != n_items:
            problems.append(f"{variant}: {len(vectors)} vectors for {n_items} catalogue items")
        if not np.array_equal(np.sort(held), np.arange(n_items)):
            problems.append(f"{variant}: the index ids are not the catalogue's raw ids 0..{n_items - 1}")
        if any((row < 0).any() or (row >= n_items).any() for row in found.ids):
            problems.append(f"{variant}: a search returned ids outside the catalogue (padding leaked)")
        meta[variant] = {**fx.describe(built.index), **built.params, "build_seconds": built.build_seconds,
                         f"recall_at_{config.recall_k}_vs_exact": recall, "query_ms_k300": latency,
                         "bytes": store.size_bytes(paths.faiss_index(variant))}
        rows.append({"variant": variant, "kind": built.kind, "items": built.n_items, "dim": built.dim,
                     "build s": round(built.build_seconds, 4), f"recall@{config.recall_k} vs exact": recall,
                     "query ms (k=300)": latency, "bytes": meta[variant]["bytes"]})
    store.write_bytes(f"{paths.FAISS_INDEX}/meta.json", json.dumps(meta, indent=1, default=float).encode())
    ok = not problems
    return dg.MaterializeResult(
        metadata={"variants": ", ".join(variants), "items": n_items, "indexes": markdown_table(pd.DataFrame(rows)),
                  **{f"{v}/recall_vs_exact": m[f"recall_at_{config.recall_k}_vs_exact"] for v, m in meta.items()},
                  **{f"{v}/kind": m["kind"] for v, m in meta.items()},
                  "path": store.uri(paths.FAISS_INDEX)},
        check_results=[check("ids_are_raw_items", ok, "; ".join(problems) if problems else
                              f"every index holds exactly the raw ids 0..{n_items - 1}; searches returned no "
                              "padding and no id outside the catalogue")],
    )


def _latency_ms(index, queries: np.ndarray, k: int, repeats: int = 3) -> float:
    """Median single-query search latency in milliseconds."""
    samples = []
    for _ in range(repeats):
        for q in queries:
            t0 = time.perf_counter()
            fx.search(index, q[None, :], k)
            samples.append(time.perf_counter() - t0)
    return round(float(np.median(samples)) * 1e3, 4) if samples else 0.0
