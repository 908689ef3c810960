"""The FAISS index over raw item ids: exact and approximate kinds, availability filters, no padding leaks, and
the build/search device (RECSYS_FAISS_DEVICE)."""

import faiss
import numpy as np
import pytest

from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib.settings import SettingsError


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


# -- device: RECSYS_FAISS_DEVICE ----------------------------------------------------------------------
# No GPU here (faiss-cpu): the GPU code path runs with CPU indexes in place of GPU copies (gpu_stand_in).
needs_cpu_only_faiss = pytest.mark.skipif(fx.gpu_available(), reason="this faiss sees a GPU")


@pytest.mark.parametrize("environ, device", [
    ({}, "auto"),
    ({"RECSYS_FAISS_DEVICE": ""}, "auto"),
    ({"RECSYS_FAISS_DEVICE": " CPU "}, "cpu"),
    ({"RECSYS_FAISS_DEVICE": "gpu"}, "gpu"),
])
def test_device_setting(environ, device):
    assert fx.device_setting(environ) == device


@pytest.mark.parametrize("raw", ["cuda", "gpu0", "tpu"])
def test_an_invalid_device_names_the_variable(raw):
    with pytest.raises(SettingsError, match=f"RECSYS_FAISS_DEVICE='{raw}': expected one of auto, cpu, gpu"):
        fx.resolve_device(environ={"RECSYS_FAISS_DEVICE": raw})
    with pytest.raises(SettingsError, match="RECSYS_FAISS_DEVICE"):
        fx.resolve_device(raw)


@needs_cpu_only_faiss
def test_auto_picks_the_cpu_without_a_gpu(catalogue):
    assert fx.resolve_device(environ={}) == "cpu"
    assert fx.resolve_device("auto") == "cpu"
    vectors, ids = catalogue
    built = fx.build(vectors, ids, device="auto")
    assert built.device == "cpu" and built.params["device"] == "cpu" and "device_note" not in built.params


@needs_cpu_only_faiss
def test_gpu_without_a_gpu_is_a_clear_error(catalogue, monkeypatch):
    with pytest.raises(SettingsError, match="RECSYS_FAISS_DEVICE=gpu but the installed faiss is a CPU-only"):
        fx.resolve_device(environ={"RECSYS_FAISS_DEVICE": "gpu"})
    vectors, ids = catalogue
    monkeypatch.setenv("RECSYS_FAISS_DEVICE", "gpu")
    with pytest.raises(SettingsError, match="or set RECSYS_FAISS_DEVICE=auto"):
        fx.build(vectors, ids)
    with pytest.raises(SettingsError, match="RECSYS_FAISS_DEVICE=gpu"):
        fx.for_search(fx.build(vectors, ids, device="cpu").index)


def _reference_build(vectors, ids, kind: str, nlist: int = 16, nprobe: int = 8, seed: int = 0):
    """The index as the CPU build made it before the device choice existed."""
    d = vectors.shape[1]
    if kind == "flat":
        inner = faiss.IndexFlatIP(d)
    else:
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.cp.seed = seed
        inner.train(vectors)
        inner.nprobe = nprobe
    index = faiss.IndexIDMap(inner)
    index.add_with_ids(vectors, ids)
    return faiss.serialize_index(index).tobytes()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_the_cpu_build_is_unchanged(catalogue, kind, monkeypatch):
    vectors, ids = catalogue
    monkeypatch.delenv("RECSYS_FAISS_DEVICE", raising=False)
    params = fx.IndexParams(kind=kind, nlist=16, nprobe=8)
    for device in ("cpu", None):
        built = fx.build(vectors, ids, params, device=device)
        if device is None and fx.gpu_available():
            continue
        assert built.device == "cpu"
        assert faiss.serialize_index(built.index).tobytes() == _reference_build(vectors, ids, kind)


class _GpuResources:
    """Stands in for faiss.StandardGpuResources."""


class _CountingIndex:
    """A stand-in GPU copy that counts its searches."""

    def __init__(self, index):
        self.index, self.searches = index, 0

    def search(self, q, k):
        self.searches += 1
        return self.index.search(q, k)


@pytest.fixture
def gpu_stand_in(monkeypatch):
    """faiss as a GPU build that sees one GPU, its GPU copies being CPU clones (the calls and the data flow
    are the real ones; only the device is not)."""
    monkeypatch.setattr(faiss, "StandardGpuResources", _GpuResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, device, index: faiss.clone_index(index),
                        raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", faiss.clone_index, raising=False)
    fx._gpu_resources.cache_clear()
    yield
    fx._gpu_resources.cache_clear()


def test_auto_picks_the_gpu_when_faiss_sees_one(gpu_stand_in):
    assert fx.gpu_available()
    assert fx.resolve_device(environ={}) == "gpu"
    assert fx.resolve_device(environ={"RECSYS_FAISS_DEVICE": "cpu"}) == "cpu"


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_gpu_build_comes_back_as_the_cpu_index(catalogue, gpu_stand_in, tmp_path, kind):
    vectors, ids = catalogue
    built = fx.build(vectors, ids, fx.IndexParams(kind=kind, nlist=16, nprobe=8), device="gpu")
    assert built.device == "gpu" and built.params["device"] == "gpu"
    # the stand-in trains like the CPU, so the bytes match; on a real GPU only the format and classes do
    assert faiss.serialize_index(built.index).tobytes() == _reference_build(vectors, ids, kind)
    fx.save(built.index, tmp_path / "i.faiss")
    assert fx.describe(fx.load(tmp_path / "i.faiss")) == fx.describe(built.index)


def test_hnsw_stays_on_the_cpu_and_says_so(catalogue, gpu_stand_in):
    vectors, ids = catalogue
    built = fx.build(vectors[:500], ids[:500], fx.IndexParams(kind="hnsw"), device="gpu")
    assert built.device == "cpu" and "no FAISS GPU implementation" in built.params["device_note"]
    assert fx.for_search(built.index, "gpu") is built.index


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_search_matches_the_cpu_search(catalogue, gpu_stand_in, kind):
    vectors, ids = catalogue
    index = fx.build(vectors, ids, fx.IndexParams(kind=kind, nlist=16, nprobe=8), device="cpu").index
    on_gpu = fx.for_search(index, "gpu")
    assert isinstance(on_gpu, fx.GpuSearchIndex) and on_gpu.cpu is index
    assert fx.for_search(index, "cpu") is index
    assert fx.describe(on_gpu) == fx.describe(index) and np.array_equal(fx.id_map(on_gpu), fx.id_map(index))
    on_gpu.gpu = _CountingIndex(on_gpu.gpu)
    q = vectors[:5]
    allowed = ids[::3]  # a third of the catalogue available: 2000 excluded, k + 2000 <= GPU_MAX_K for k = 40
    for k, filt in [(10, None), (40, allowed), (3000, None)]:
        got, want = fx.search(on_gpu, q, k, allowed_ids=filt), fx.search(index, q, k, allowed_ids=filt)
        for g, w in zip(got.ids, want.ids):
            assert g.tolist() == w.tolist()
    assert on_gpu.gpu.searches == 2  # k = 3000 is deeper than the GPU selects: the CPU copy answered


def test_a_filtered_search_deeper_than_the_gpu_runs_on_the_cpu(catalogue, gpu_stand_in):
    vectors, ids = catalogue
    index = fx.build(vectors, ids, device="cpu").index
    on_gpu = fx.for_search(index, "gpu")
    on_gpu.gpu = _CountingIndex(on_gpu.gpu)
    allowed = ids[:7]  # 2993 excluded: k + 2993 > GPU_MAX_K
    found = fx.search(on_gpu, vectors[:3], 300, allowed_ids=allowed)
    assert on_gpu.gpu.searches == 0
    assert all(set(row.tolist()) <= set(allowed.tolist()) and len(row) == 7 for row in found.ids)
