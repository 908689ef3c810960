"""The embeddings' daily variant: content embeddings of the items that become available on a day.

``daily_item_content[day]`` (``daily_job``): the day's new items have content embeddings that are the saved PCA's
projection of their encoder vectors (projected, never fitted); rows the multimodal table lacks are projected and
added. Idempotent per partition.
"""


import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check, check_specs
from recsys_assets.defs.ingest.assets import items
from recsys_assets.defs.partitions import daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import paths
from recsys_assets.lib import embeddings as emb


GROUP = "embeddings"


# -- content embeddings of new items ---------------------------------------------------------------------------
CONTENT_CHECKS = ("rows_present", "projected_with_saved_pca")


@dg.asset(group_name=GROUP, kinds={"numpy"}, partitions_def=daily_partitions,
          deps=[items, "item_multimodal_embeddings"], check_specs=check_specs("daily_item_content", CONTENT_CHECKS))
def daily_item_content(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """The items available from this day have image and text PCA embeddings, projected with the saved PCAs.

    The embedding assets encode every catalogue item through their content-hash cache (a grown catalogue encodes
    only its new items) and fit the PCA on day-0 items only. Here, for the day's new items: their multimodal
    rows must equal the saved PCA applied to their encoder vectors (so they were projected, not fitted); rows
    the multimodal table lacks while the encoder tables have them are projected now and written. Items without
    encoder vectors fail ``rows_present``: materialize the embedding assets (cache: only the new items encode).
    """
    day = partition_day(context)
    store = artifacts.store()
    catalogue = store.read_parquet(paths.ITEMS, columns=["item_id", "available_from_day"]).sort_values("item_id")
    new = catalogue.loc[catalogue["available_from_day"] == day, "item_id"].to_numpy(np.int64)
    available = catalogue.loc[catalogue["available_from_day"] <= day, "item_id"].to_numpy(np.int64)
    needed = [paths.CLIP_EMBEDDINGS, paths.TEXT_EMBEDDINGS, paths.MULTIMODAL_EMBEDDINGS,
              paths.embedding_pca("clip"), paths.embedding_pca("text")]
    absent = [rel for rel in needed if not store.exists(rel)]
    if absent:
        description = (f"{absent} missing: materialize item_clip_embeddings, item_text_embeddings and "
                       "item_multimodal_embeddings first")
        return dg.MaterializeResult(metadata={"missing": str(absent)}, check_results=[
            check("rows_present", False, description),
            check("projected_with_saved_pca", False, "not evaluated: embeddings missing")])
    raw = {"clip": np.load(store.local_path(paths.CLIP_EMBEDDINGS)),
           "text": np.load(store.local_path(paths.TEXT_EMBEDDINGS))}
    pcas = {k: emb.Pca.load(store.local_path(paths.embedding_pca(k))) for k in raw}
    table = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS))
    encoded = min(len(raw["clip"]), len(raw["text"]))
    no_vectors = available[available >= encoded]
    if len(no_vectors):
        description = (f"{len(no_vectors)} available items have no encoder vectors (first: {no_vectors[:5].tolist()}):"
                       " materialize item_clip_embeddings, item_text_embeddings and item_multimodal_embeddings "
                       "(their cache encodes only the new items; the saved PCA is reused, not refitted)")
        return dg.MaterializeResult(metadata={"items_without_vectors": len(no_vectors)}, check_results=[
            check("rows_present", False, description),
            check("projected_with_saved_pca", False, "not evaluated: encoder vectors missing")])

    def project(ids: np.ndarray) -> np.ndarray:
        return np.hstack([pcas["clip"].transform(raw["clip"][ids]), pcas["text"].transform(raw["text"][ids])])

    added = 0
    if len(table) < encoded:  # the encoders saw a grown catalogue the multimodal table has not caught up with
        grow = np.arange(len(table), encoded, dtype=np.int64)
        table = np.vstack([table, project(grow).astype(table.dtype)])
        with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, table)
        added = len(grow)
    expected = project(new) if len(new) else np.zeros((0, table.shape[1]), np.float32)
    worst = float(np.abs(table[new] - expected).max()) if len(new) else 0.0
    fit_through = {k: p.meta.get("fit_through_day") for k, p in pcas.items()}
    fitted_on_new = [k for k, d in fit_through.items() if d is not None and d >= day and len(new)]
    ok = worst < 1e-4 and not fitted_on_new
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "new_items": len(new),
            "new_item_ids": str(new[:20].tolist()),
            "available_items": len(available),
            "rows_added": added,
            "max_abs_diff_vs_saved_pca": worst,
            "pca_fit_through_day": dg.MetadataValue.json(fit_through),
            "pca_fit_items": dg.MetadataValue.json({k: p.meta.get("fit_items") for k, p in pcas.items()}),
            "path": store.uri(paths.MULTIMODAL_EMBEDDINGS),
        },
        check_results=[
            check("rows_present", True, f"all {len(available)} items available by day {day:02d} have content rows"
                                         + (f" ({added} projected now)" if added else "")),
            check("projected_with_saved_pca", ok,
                   f"the {len(new)} new items' rows equal the saved PCAs' projection (max |diff| {worst:.1e}); the "
                   f"PCAs were fitted on items available by day {fit_through}" if ok else
                   f"new items' rows differ from the saved PCA projection by {worst:.1e} or the PCA was fitted on "
                   f"days including {day:02d} ({fitted_on_new}): re-materialize item_multimodal_embeddings with "
                   "refit_pca off"),
        ],
    )
