"""The retrieval index's daily variant: the items available by a day added to the served index.

``daily_retrieval_index[day]`` (``daily_job``): the trained FAISS index (or yesterday's grown one) with the
candidate-tower vectors of the items available by the day that it lacks, added with ``add_with_ids``: nothing
else is rebuilt. ``lib.daily.served_index`` tells a release build which index to package. Idempotent per partition.
"""

import datetime as dt
import json
import time

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.embeddings.daily import daily_item_content
from recsys_assets.defs.ingest.assets import items
from recsys_assets.defs.partitions import daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import daily, digests, paths
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib.artifacts import ArtifactStore


GROUP = "index"


# -- new items into the retrieval index ------------------------------------------------------------------------
class DailyRetrievalIndexConfig(dg.Config):
    probe_k: int = 300
    """A new item counts as retrievable when a search with its own vector finds it among this many."""


INDEX_CHECKS = ("new_items_retrievable", "existing_items_kept")


def _variants(store: ArtifactStore) -> list:
    return sorted(p.rsplit("/", 1)[1][: -len(".faiss")] for p in store.list(paths.FAISS_INDEX)
                  if p.endswith(".faiss"))


@dg.asset(group_name=GROUP, kinds={"faiss"}, partitions_def=daily_partitions,
          deps=[items, "item_embeddings", "faiss_index", daily_item_content],
          check_specs=check_specs("daily_retrieval_index", INDEX_CHECKS))
def daily_retrieval_index(context: dg.AssetExecutionContext, config: DailyRetrievalIndexConfig,
                          artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """Each variant's index grown by the items available by the day that it lacks (``add_with_ids``).

    Starts from yesterday's grown index (``index/daily/<variant>.faiss``) when that grew the trained index that
    exists now, else from the trained one (a full retrain restarts the growth). The new items' vectors are rows
    of ``index/item_embeddings/<variant>.npy`` (the frozen candidate tower over the whole catalogue, cold items
    included). Nothing already indexed is rebuilt or moved.
    """
    day = partition_day(context)
    store = artifacts.store()
    variants = _variants(store)
    if not variants:
        raise dg.Failure(f"no trained index under {store.uri(paths.FAISS_INDEX)}: materialize faiss_index first")
    catalogue = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"]).sort_values("item_id")
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    rows, problems, retrievable = [], [], []
    for variant in variants:
        t0 = time.perf_counter()
        trained = store.local_path(paths.faiss_index(variant))
        base_digest = digests.file_sha256(trained)
        source = daily.served_index(store, variant)
        index = fx.load(store.local_path(source))
        before = fx.id_map(index)
        todo = daily.items_to_index(before, available_from, day)
        vectors_rel = paths.item_embeddings(variant)
        if len(todo):
            if not store.exists(vectors_rel):
                raise dg.Failure(f"{store.uri(vectors_rel)} is missing: materialize item_embeddings (the frozen "
                                 "candidate tower over the catalogue) first")
            vectors = np.load(store.local_path(vectors_rel), mmap_mode="r")
            if len(vectors) <= int(todo.max()):
                raise dg.Failure(f"{store.uri(vectors_rel)} has {len(vectors)} rows but item {int(todo.max())} is "
                                 "available: materialize item_embeddings for the grown catalogue (the candidate "
                                 "tower is frozen, so existing vectors do not change)")
            growth = daily.extend_index(index, np.asarray(vectors[todo]), todo)
        else:
            growth = daily.extend_index(index, np.zeros((0, index.d), np.float32), [])
        with store.writing(paths.daily_index(variant)) as tmp:
            fx.save(index, tmp)
        manifest = {"variant": variant, "day": day, "base": paths.faiss_index(variant), "base_digest": base_digest,
                    "grown_from": source, "added": growth.added.tolist(), "items": growth.after,
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        store.write_bytes(daily.daily_index_manifest(variant), json.dumps(manifest, indent=1).encode())
        seconds = time.perf_counter() - t0

        after = fx.id_map(index)
        if not np.isin(before, after).all() or growth.after != growth.before + len(growth.added):
            problems.append(f"{variant}: items held before are missing after growing, or the count is off")
        if len(growth.added):
            vectors = np.load(store.local_path(vectors_rel), mmap_mode="r")
            found = fx.search(index, np.asarray(vectors[growth.added]), min(config.probe_k, growth.after))
            lost = [int(i) for i, row in zip(growth.added, found.ids) if i not in set(row.tolist())]
            if lost:
                problems.append(f"{variant}: new items {lost[:5]} are not found by a search with their own vector "
                                f"in the top {config.probe_k}")
            retrievable.append(len(growth.added) - len(lost))
        unindexed = daily.items_to_index(after, available_from, day)
        if len(unindexed):
            problems.append(f"{variant}: {len(unindexed)} available items still not indexed ({unindexed[:5]})")
        rows.append({"variant": variant, "grown from": source, "before": growth.before, "added": len(growth.added),
                     "after": growth.after, "seconds": round(seconds, 3)})
    added_total = sum(r["added"] for r in rows)
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "variants": ", ".join(variants),
            "items_added": added_total,
            "rebuilt": False,
            "indexes": markdown_table(pd.DataFrame(rows)),
            "path": store.uri(paths.DAILY_INDEX),
        },
        check_results=[
            check("new_items_retrievable", not [p for p in problems if "not found" in p or "not indexed" in p],
                   "; ".join(p for p in problems if "not found" in p or "not indexed" in p) or
                   f"{added_total} new items added; each is found by a search with its own vector; every item "
                   f"available by day {day:02d} is indexed"),
            check("existing_items_kept", not [p for p in problems if "before" in p],
                   "; ".join(p for p in problems if "before" in p) or
                   "every item indexed before is still indexed; nothing was rebuilt"),
        ],
    )
