"""The embedding assets through Dagster: real MiniLM and the reported random-CLIP fallback on the first items of
the catalogue (``max_items``: encoding all 2,465 texts takes minutes on 2 busy cores; benchmarks/embeddings.py
times the full catalogue)."""

import contextlib
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from recsys_assets.defs.embeddings import assets as E
from recsys_assets.defs.embeddings.resources import EmbeddingSettings, build_resources
from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.processes import exclusive_lock
from recsys_assets.lib.settings import Settings, SettingsError

EMBEDDINGS = [E.item_clip_embeddings, E.item_text_embeddings, E.item_multimodal_embeddings]
N_ITEMS = 120  # items 0..119, six of them cold (available from a later day)


def _first(n):
    return {"item_clip_embeddings": {"config": {"max_items": n}}, "item_text_embeddings": {"config": {"max_items": n}}}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    """The ingest outputs (catalogue, descriptions, 2,465 images) of the tiny world, made once for the module."""
    root = tmp_path_factory.mktemp("embeddings") / "raw-artifacts"
    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny")}
    assert dg.materialize([ingest.items, ingest.item_descriptions, ingest.item_images], resources=resources).success
    return root


@pytest.fixture()
def emb_resources(resources, raw_root):
    """The shared ``resources`` over a fresh artifact root holding a copy of the ingest outputs."""
    shutil.copytree(raw_root, resources["artifacts"].root)
    return {**resources, "embedding_settings": EmbeddingSettings(clip_offline_fallback=True, progress=False)}


def _meta(result, asset):
    return result.asset_materializations_for_node(asset)[0].metadata


def _run(resources, config, **kwargs):
    return dg.materialize(EMBEDDINGS, resources=resources, run_config={"ops": config}, **kwargs)


def test_embeddings_then_rerun_hits_the_cache(emb_resources):
    store = ArtifactStore(emb_resources["artifacts"].root)
    result = _run(emb_resources, _first(N_ITEMS))
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 9 and all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]

    clip, text, mm = (_meta(result, a.key.path[-1]) for a in EMBEDDINGS)
    assert clip["clip_fallback"].value is True and "no CLIP weights" not in clip["fallback_reason"].value
    assert "could not obtain pretrained CLIP weights" in clip["fallback_reason"].value
    assert clip["encoded"].value == clip["unique_inputs"].value <= N_ITEMS  # identical renders encoded once
    assert (text["items"].value, text["dim"].value, text["encoded"].value) == (N_ITEMS, 384, N_ITEMS)
    assert text["device"].value in ("cpu", "cuda")

    x_clip, x_text = np.load(store.uri(paths.CLIP_EMBEDDINGS)), np.load(store.uri(paths.TEXT_EMBEDDINGS))
    assert x_clip.shape == (N_ITEMS, 128) and x_text.shape == (N_ITEMS, 384)
    table = np.load(store.uri(paths.MULTIMODAL_EMBEDDINGS))
    assert table.shape == (N_ITEMS, 128) and table.dtype == np.float32

    items = store.read_parquet(paths.ITEMS).iloc[:N_ITEMS]
    cold = (items["available_from_day"] > 0).to_numpy()
    assert cold.sum() > 0
    assert mm["pca_fit_items"].value == int((~cold).sum()) and mm["projected_only_items"].value == int(cold.sum())
    assert mm["clip_fallback"].value is True and mm["pca_refit"].value is True
    assert 0 < mm["image_explained_variance"].value <= 1 + 1e-9
    assert 0.5 < mm["text_explained_variance"].value <= 1 + 1e-9
    assert np.abs(table[cold]).sum(axis=1).min() > 0  # cold items have their own content embeddings
    assert "data:image/png;base64," in mm["projection"].value
    assert store.read_bytes(paths.EMBEDDING_PROJECTION_PLOT)[:4] == b"\x89PNG"
    df = store.read_parquet(paths.MULTIMODAL_TABLE)
    assert df["item_id"].tolist() == list(range(N_ITEMS))
    np.testing.assert_allclose(np.stack(df["text_pca"].to_numpy()), table[:, 64:])

    again = _run(emb_resources, _first(N_ITEMS))
    assert again.success
    for asset in ("item_clip_embeddings", "item_text_embeddings"):
        meta = _meta(again, asset)
        assert (meta["cache_hits"].value, meta["encoded"].value) == (N_ITEMS, 0)
    assert _meta(again, "item_multimodal_embeddings")["pca_refit"].value is False
    np.testing.assert_array_equal(np.load(store.uri(paths.MULTIMODAL_EMBEDDINGS)), table)


def test_roots_sharing_a_cache_encode_each_input_once(emb_resources, raw_root, tmp_path):
    """``RECSYS_EMBEDDING_CACHE``: two artifact roots name one cache folder; the second encodes nothing, and the
    cache grows with what either root adds (here the second asks for more items)."""
    shared = tmp_path / "shared-cache"
    first = {**emb_resources, "embedding_settings": EmbeddingSettings(clip_offline_fallback=True, progress=False,
                                                                      cache=str(shared))}
    assert _run(first, _first(30)).success
    other_root = tmp_path / "other-artifacts"
    shutil.copytree(raw_root, other_root)
    second = {**first, "artifacts": ArtifactStoreResource(root=str(other_root))}
    result = _run(second, _first(40))
    assert result.success
    text = _meta(result, "item_text_embeddings")
    assert (text["cache_hits"].value, text["encoded"].value) == (30, 10)
    assert sorted(p.name.split("-")[0] for p in shared.glob("*.npz")) == ["clip", "text"]
    for root in (emb_resources["artifacts"].root, other_root):
        assert not (Path(root) / paths.EMBEDDING_CACHE_DIR).exists()
    again = _run(first, _first(40))  # the first root now finds the second's items too
    for asset in ("item_text_embeddings", "item_clip_embeddings"):
        assert _meta(again, asset)["encoded"].value == 0, asset


def test_a_root_waits_while_another_encodes_into_the_shared_cache(emb_resources, raw_root, tmp_path):
    """Two builds at once (make test's two full-world builds): while one root holds a shared cache's lock (it is
    encoding), the other waits for it, then finds the vectors the first wrote instead of encoding them again."""
    shared = tmp_path / "shared-cache"
    first = {**emb_resources, "embedding_settings": EmbeddingSettings(clip_offline_fallback=True, progress=False,
                                                                      cache=str(shared))}
    assert _run(first, _first(30)).success
    written = {path: path.read_bytes() for path in shared.glob("*.npz")}
    other_root = tmp_path / "other-artifacts"
    shutil.copytree(raw_root, other_root)
    second = {**first, "artifacts": ArtifactStoreResource(root=str(other_root))}
    outcome = {}
    with contextlib.ExitStack() as held:  # the first root, still encoding: locks held, nothing written yet
        for path in written:
            held.enter_context(exclusive_lock(f"{path}.lock"))
            path.unlink()
        worker = threading.Thread(target=lambda: outcome.update(result=_run(second, _first(30))))
        worker.start()
        time.sleep(5.0)
        assert worker.is_alive(), "the second root did not wait for the lock"
        for path, data in written.items():  # the first root's vectors land, then its locks go
            path.write_bytes(data)
    worker.join(timeout=600)
    assert outcome["result"].success
    for asset in ("item_text_embeddings", "item_clip_embeddings"):
        meta = _meta(outcome["result"], asset)
        assert (meta["cache_hits"].value, meta["encoded"].value) == (30, 0), asset


def test_grown_catalogue_encodes_new_items_only_and_keeps_the_pca(emb_resources):
    store = ArtifactStore(emb_resources["artifacts"].root)
    first = _run(emb_resources, _first(40))
    assert first.success
    assert _meta(first, "item_text_embeddings")["encoded"].value == 40
    mm = _meta(first, "item_multimodal_embeddings")
    assert mm["items"].value == 40 and mm["pca_refit"].value is True
    small = np.load(store.uri(paths.MULTIMODAL_EMBEDDINGS))

    grown = _run(emb_resources, _first(N_ITEMS))
    assert grown.success
    text = _meta(grown, "item_text_embeddings")
    assert (text["cache_hits"].value, text["encoded"].value) == (40, N_ITEMS - 40)
    mm = _meta(grown, "item_multimodal_embeddings")
    assert mm["pca_refit"].value is False  # the new items are projected with the saved PCA
    np.testing.assert_allclose(np.load(store.uri(paths.MULTIMODAL_EMBEDDINGS))[:40], small, atol=1e-6)


def test_missing_clip_weights_fail_with_instructions_unless_the_fallback_is_chosen(emb_resources):
    strict = {**emb_resources, "embedding_settings": EmbeddingSettings(clip_offline_fallback=False, progress=False)}
    result = dg.materialize([E.item_clip_embeddings], resources=strict, raise_on_error=False,
                            run_config={"ops": {"item_clip_embeddings": {"config": {"max_items": 5}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert "RECSYS_CLIP_OFFLINE_FALLBACK" in message and "RECSYS_CLIP_WEIGHTS" in message

    # the asset config can choose the fallback per run; it is reported, never silent
    result = dg.materialize([E.item_clip_embeddings], resources=strict, run_config={
        "ops": {"item_clip_embeddings": {"config": {"max_items": 5, "offline_fallback": True}}}})
    assert result.success and _meta(result, "item_clip_embeddings")["clip_fallback"].value is True


def test_build_resources_reads_the_environment_when_called():
    res = build_resources(Settings(), environ={"RECSYS_CLIP_OFFLINE_FALLBACK": "yes", "RECSYS_CLIP_WEIGHTS": "/w.bin"})
    settings = res["embedding_settings"]
    assert settings.clip_offline_fallback is True and settings.clip_weights_path == "/w.bin"
    assert build_resources(Settings(), environ={})["embedding_settings"].clip_offline_fallback is False
    assert build_resources(Settings(), environ={})["embedding_settings"].cache == ""
    assert build_resources(Settings(), environ={"RECSYS_EMBEDDING_CACHE": "/c"})["embedding_settings"].cache == "/c"
    with pytest.raises(SettingsError, match="RECSYS_CLIP_OFFLINE_FALLBACK='maybe'"):
        build_resources(Settings(), environ={"RECSYS_CLIP_OFFLINE_FALLBACK": "maybe"})


def test_a_catalogue_without_images_gets_zero_image_rows_and_text_only(emb_resources):
    """Own data without images (``item_images`` writes none): the image block is zero, the checks still pass."""
    store = ArtifactStore(emb_resources["artifacts"].root)
    store.delete(paths.ITEM_IMAGES)
    result = _run(emb_resources, _first(20))
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks if not c.passed]
    assert _meta(result, "item_clip_embeddings")["items_without_image"].value == 20
    assert _meta(result, "item_multimodal_embeddings")["image_explained_variance"].value == 0
    table = np.load(store.uri(paths.MULTIMODAL_EMBEDDINGS))
    assert not table[:, :64].any() and table[:, 64:].any()  # no image information, text only
