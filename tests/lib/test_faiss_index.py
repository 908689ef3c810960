"""The FAISS index over raw item ids: exact and approximate kinds, availability filters, no padding leaks."""

import numpy as np
import pytest

from recsys_assets.lib import faiss_index as fx


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    ids = np.arange(5000, 8000, dtype=np.int64)[rng.permutation(3000)]  # raw ids, not row positions
    return vectors, ids


def test_kind_is_chosen_by_catalogue_size():
    assert fx.choose_kind(2_465) == "flat"
    assert fx.choose_kind(1_000_000) == "ivf"
    assert fx.choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        fx.choose_kind(10, "annoy")


def test_exact_search_returns_raw_ids_best_first(catalogue):
    vectors, ids = catalogue
    built = fx.build(vectors, ids)
    assert built.kind == "flat" and built.n_items == 3000
    q = vectors[:4]
    found = fx.search(built.index, q, 10)
    exact = ids[np.argsort(-(q @ vectors.T), axis=1)[:, :10]]
    for got, want, scores in zip(found.ids, exact, found.scores):
        assert got.tolist() == want.tolist()
        assert (np.diff(scores) <= 1e-6).all()
    assert np.array_equal(np.sort(fx.id_map(built.index)), np.sort(ids))


def test_allowed_ids_filter_and_no_padding(catalogue):
    vectors, ids = catalogue
    allowed = ids[:7]
    for kind in ("flat", "ivf", "hnsw"):
        built = fx.build(vectors, ids, fx.IndexParams(kind=kind, nlist=16, nprobe=16))
        found = fx.search(built.index, vectors[:3], 300, allowed_ids=allowed)
        for row in found.ids:
            assert (row >= 0).all()
            assert set(row.tolist()) <= set(allowed.tolist())
        assert found.padded(10).shape == (3, 10) and (found.padded(10)[:, 7:] == -1).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_have_high_recall_against_exact(catalogue, kind):
    vectors, ids = catalogue
    built = fx.build(vectors, ids, fx.IndexParams(kind=kind, nlist=32, nprobe=16, ef_search=128))
    assert built.kind == kind
    assert fx.recall_vs_exact(built, vectors, ids, vectors[:50], k=20) > 0.8
    assert fx.describe(built.index)["n_items"] == 3000


def test_save_and_load_round_trip(tmp_path, catalogue):
    vectors, ids = catalogue
    built = fx.build(vectors, ids)
    fx.save(built.index, tmp_path / "i.faiss")
    loaded = fx.load(tmp_path / "i.faiss")
    assert fx.search(loaded, vectors[:2], 5).ids[0].tolist() == fx.search(built.index, vectors[:2], 5).ids[0].tolist()
    with pytest.raises(FileNotFoundError, match="materialize faiss_index"):
        fx.load(tmp_path / "missing.faiss")


@pytest.mark.parametrize("vectors, ids, message", [
    (np.zeros((0, 4)), np.zeros(0), "non-empty"),
    (np.ones((2, 4)), np.array([1, 1]), "unique"),
    (np.ones((2, 4)), np.array([-1, 1]), ">= 0"),
    (np.full((2, 4), np.nan), np.array([0, 1]), "NaN"),
    (np.ones((2, 4)), np.array([0]), "ids for"),
])
def test_bad_inputs_are_rejected(vectors, ids, message):
    with pytest.raises(ValueError, match=message):
        fx.build(vectors, ids)
