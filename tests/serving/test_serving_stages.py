"""Every serving stage on its own, with real artifacts of the real formats (tiny world)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.lib.feature_spec import USER_HISTORY
from recsys_assets.serving.common import pack_text, unpack_text
from recsys_assets.serving.executor import BadRequest, StageConfigError, StageContext
from recsys_assets.serving.features import CONTEXT, ITEM, UNROLLED, USER
from recsys_assets.serving.stages.context_preprocessor import ContextPreprocessor
from recsys_assets.serving.stages.faiss_retrieval import FaissRetrieval
from recsys_assets.serving.stages.feast_item_lookup import FeastItemLookup, ItemTable
from recsys_assets.serving.stages.item_id_decoder import IdSpaceError, ItemIdDecoder
from recsys_assets.serving.stages.multimodal_embedding_lookup import MultimodalEmbeddingLookup
from recsys_assets.serving.stages.nvt_transforms import ContextTransform, ItemTransform, UserTransform
from recsys_assets.serving.stages.onnx_models import DlrmRanking, QueryTower
from recsys_assets.serving.stages.softmax_sampling import SoftmaxSampling, greedy
from recsys_assets.serving.stages.unroll_features import UnrollFeatures


DAY0 = 1767225600  # 2026-01-01, the tiny world's day 00


def one(v, dtype=np.int64):
    return np.array([v], dtype=dtype)


# -- context_preprocessor ---------------------------------------------------------------------------------------
@pytest.fixture()
def pre():
    stage = ContextPreprocessor(StageContext("context_preprocessor", params={"RANKING_TOPK": "100",
                                                                               "DEFAULT_TOP_K": "10"}))
    stage.clock = lambda: 1_767_300_000.7
    return stage


def test_missing_context_is_imputed(pre):
    out = pre(user_id=one(5))
    assert out["request_device_type"].tolist() == [-1]
    assert out["request_timestamp"].tolist() == [1_767_300_000]
    assert out["request_top_k"].tolist() == [10] and out["request_diversity"].tolist() == [False]


@pytest.mark.parametrize("request_, message", [
    ({"device_type": one(1)}, "user_id is required: a user id >= 0, or -1 for an anonymous visitor"),
    ({"user_id": one(-2)}, "user_id -2 is negative: -1 (anonymous) is the only negative id accepted"),
    ({"user_id": one(1), "device_type": one(7)}, "unknown device_type 7: expected 0 (desktop), 1 (mobile)"),
    ({"user_id": one(1), "timestamp": one(-5)}, "timestamp -5 is negative"),
    ({"user_id": one(1), "top_k": one(0)}, "top_k 0 is out of range: expected 1..100"),
    ({"user_id": one(1), "top_k": one(101)}, "top_k 101 is out of range"),
])
def test_out_of_range_requests_are_rejected_with_what_is_accepted(pre, request_, message):
    with pytest.raises(BadRequest) as info:
        pre(**request_)
    assert message in str(info.value)


@given(st.integers(-2**63, 2**63 - 1), st.sampled_from([-1, 0, 1, 2, 3, -9]))
@settings(max_examples=80, deadline=None)
def test_only_non_negative_ids_and_minus_one_pass(user_id, device):
    stage = ContextPreprocessor(StageContext("context_preprocessor"))
    valid = user_id >= -1 and device in (-1, 0, 1, 2)
    try:
        out = stage(user_id=one(user_id), device_type=one(device), timestamp=one(DAY0))
    except BadRequest:
        assert not valid
    else:
        assert valid and out["request_user_id"].tolist() == [user_id]


def test_defaults_come_from_parameters():
    stage = ContextPreprocessor(StageContext("c", params={"DEFAULT_TOP_K": "25", "DIVERSITY_MODE": "true"}))
    out = stage(user_id=one(-1), diversity=None)
    assert out["request_top_k"].tolist() == [25] and out["request_diversity"].tolist() == [True]
    with pytest.raises(StageConfigError, match="DEFAULT_TOP_K=500"):
        ContextPreprocessor(StageContext("c", params={"DEFAULT_TOP_K": "500"}))


# -- softmax_sampling -------------------------------------------------------------------------------------------
def sampler(**params):
    return SoftmaxSampling(StageContext("softmax_sampling", params={"RANKING_TOPK": "100", **params}))


def test_greedy_returns_the_top_k_descending_with_ties_in_candidate_order():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], np.float32)
    assert greedy(scores, 3).tolist() == [1, 3, 2]
    out = sampler()(scores=scores, item_index=np.arange(5) + 3, item_ids=np.arange(5) * 10, top_k=one(4),
                    diversity=one(False, np.bool_))
    assert out["selected_ids"].tolist() == [10, 30, 20, 40]
    assert out["selected_index"].tolist() == [4, 6, 5, 7]
    assert (np.diff(out["selected_scores"]) <= 0).all()


def test_diversity_samples_without_replacement_differs_from_greedy_and_keeps_high_scorers():
    rng = np.random.default_rng(0)
    scores = rng.beta(1, 8, size=300).astype(np.float32)
    ids = np.arange(300)
    stage = sampler(SAMPLING_SEED="11")
    greedy_ids = stage(scores=scores, item_index=ids, item_ids=ids, top_k=one(10),
                       diversity=one(False, np.bool_))["selected_ids"]
    picked = stage(scores=scores, item_index=ids, item_ids=ids, top_k=one(10), diversity=one(True, np.bool_))
    assert len(set(picked["selected_ids"].tolist())) == 10
    assert set(picked["selected_ids"].tolist()) != set(greedy_ids.tolist())
    top100 = set(greedy(scores, 100).tolist())
    assert set(picked["selected_ids"].tolist()) <= top100  # drawn from the RANKING_TOPK best only
    assert picked["selected_scores"].mean() > np.median(scores[list(top100)])


def test_a_seeded_sampler_gives_the_same_list_for_the_same_request_and_frequencies_follow_the_weights():
    scores = np.array([0.9, 0.5, 0.1], np.float32)
    ids = np.arange(3)
    seeded = sampler(SAMPLING_SEED="3")
    kwargs = dict(scores=scores, item_index=ids, item_ids=ids, top_k=one(1), diversity=one(True, np.bool_))
    assert seeded(**kwargs)["selected_ids"].tolist() == seeded(**kwargs)["selected_ids"].tolist()
    odds = scores / (1 - scores)
    for temperature in (1.0, 0.5):  # P(first) is proportional to odds ** (1 / T)
        fresh = sampler(SAMPLING_SEED="-1", DIVERSITY_TEMPERATURE=str(temperature))
        firsts = np.bincount([int(fresh(**kwargs)["selected_ids"][0]) for _ in range(800)], minlength=3) / 800
        weights = odds ** (1 / temperature)
        assert np.allclose(firsts, weights / weights.sum(), atol=0.06)


def test_fewer_candidates_than_k_return_them_all():
    out = sampler()(scores=np.array([0.2, 0.4], np.float32), item_index=np.array([3, 4]),
                    item_ids=np.array([7, 8]), top_k=one(10), diversity=one(True, np.bool_))
    assert sorted(out["selected_ids"].tolist()) == [7, 8]


# -- unroll / multimodal ----------------------------------------------------------------------------------------
def request_groups(categorical=3, continuous=0.5):
    """One request's user and context feature groups, every categorical column = ``categorical``."""
    feats = {n: one(categorical) for n in USER.categorical + CONTEXT.categorical}
    feats.update({n: one(continuous, np.float32) for n in USER.continuous + CONTEXT.continuous})
    return {**USER.pack(feats), **CONTEXT.pack(feats)}


def test_unroll_repeats_request_features_per_candidate_keeping_dtypes():
    stage = UnrollFeatures(StageContext("unroll_features"))
    groups = request_groups()
    groups["context_categorical"] = np.array([[4]])
    out = UNROLLED.unpack(**{k.split("_")[1]: v for k, v in stage(item_ids=np.arange(4), **groups).items()})
    assert out["user_id"].tolist() == [3] * 4 and out["device_type"].tolist() == [4] * 4
    assert out["hour_sin"].dtype == np.float32 and out["hour_sin"].tolist() == [0.5] * 4
    empty = stage(item_ids=np.zeros(0, np.int64), **groups)
    assert empty["unrolled_categorical"].shape == (0, len(UNROLLED.categorical))
    assert empty["unrolled_continuous"].shape == (0, len(UNROLLED.continuous))
    with pytest.raises(BadRequest, match="one row"):
        stage(item_ids=np.arange(2), **{**groups, "user_categorical": np.zeros((2, 4), np.int64)})


def test_feature_groups_round_trip_and_reject_a_wrong_width():
    cols = {"category_l1": np.array([3, 4]), "category_l2": np.array([5, 6]), "item_gender": np.array([1, 2]),
            "price_log_norm": np.array([0.25, -1.0], np.float32)}
    packed = ITEM.pack(cols)
    assert packed["item_categorical"].shape == (2, 3) and packed["item_continuous"].dtype == np.float32
    back = ITEM.unpack(packed["item_categorical"], packed["item_continuous"])
    assert all(np.array_equal(back[k], v) for k, v in cols.items())
    with pytest.raises(BadRequest, match=r"item_categorical must be \[rows, 3\]"):
        ITEM.unpack(np.zeros((2, 2), np.int64), packed["item_continuous"])


def test_multimodal_lookup_is_keyed_by_raw_id_and_zero_outside(tmp_path):
    matrix = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "multimodal.npy", matrix)
    stage = MultimodalEmbeddingLookup(StageContext("m", params={"IMAGE_DIMS": "2"}, model_dir=tmp_path))
    out = stage(item_ids=np.array([2, 0, 3, -1]))
    assert out["image_embedding"].tolist() == [[8, 9], [0, 1], [0, 0], [0, 0]]
    assert out["text_embedding"][0].tolist() == [10, 11]
    with pytest.raises(StageConfigError, match="IMAGE_DIMS=4"):
        MultimodalEmbeddingLookup(StageContext("m", params={"IMAGE_DIMS": "4"}, model_dir=tmp_path))


# -- artifacts of the tiny world --------------------------------------------------------------------------------
def version_dir(tmp_path, tiny, *names):
    """A model version folder holding some of the tiny artifacts, under the names the stages load."""
    folder = tmp_path / "1"
    folder.mkdir()
    sources = {"transforms": tiny.trained.transforms_dir, "index.faiss": tiny.trained.faiss_index,
               "multimodal.npy": tiny.trained.multimodal}
    for name in names:
        if name == "transforms":
            shutil.copytree(sources[name], folder / name)
        elif name == "availability.npy":
            np.save(folder / name, tiny.items["available_from_day"].to_numpy(np.int64))
        elif name == "items.parquet":
            shutil.copy2(tiny.trained.items, folder / name)
        elif name.endswith(".onnx"):
            shutil.copy2(tiny.trained.query_tower if name == "query.onnx" else tiny.trained.dlrm, folder / "model.onnx")
        else:
            shutil.copy2(sources[name], folder / name)
    return folder


def test_transforms_send_sentinels_to_null_and_unseen_values_to_oov(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "transforms")
    user = UserTransform(StageContext("nvt_user_transform", model_dir=folder))
    out = USER.unpack(**{k.split("_")[1]: v for k, v in user(
        raw_user_id=np.array([0, -1, 10**6]), raw_age=np.array([30.0, 40.0, 50.0]),
        raw_gender=np.array([1, -1, 0]),
        **{f"raw_{name}": np.array([3, -1, 19]) for name in USER_HISTORY}).items()})
    assert out["user_id"].tolist() == [3, 1, 2]   # known -> 3.., sentinel -> null 1, unseen -> OOV 2
    assert out["gender"].tolist()[1] == 1 and out["age_norm"].dtype == np.float32
    context = ContextTransform(StageContext("nvt_context_transform", model_dir=folder))
    out = CONTEXT.unpack(**{k.split("_")[1]: v for k, v in context(
        raw_device_type=np.array([-1, 2]), raw_timestamp=np.array([DAY0, DAY0 + 6 * 3600])).items()})
    assert out["device_type"].tolist() == [1, 5] and out["hour_sin"][1] == pytest.approx(1.0, abs=1e-6)
    items = ItemTransform(StageContext("nvt_item_transform", model_dir=folder))
    cold = int(tiny.items.loc[tiny.items["available_from_day"] > 0, "item_id"].iloc[0])
    out = items(raw_item_id=np.array([0, cold]), raw_category_l1=pack_text(["apparel", "?"]),
                raw_category_l2=pack_text(["shirt", None]), raw_item_gender=pack_text(["M", "U"]),
                raw_price=np.array([10.0, np.nan]))
    assert out["item_index"].tolist() == [3, 2]    # a cold item shares the OOV row
    assert ITEM.unpack(out["item_categorical"], out["item_continuous"])["category_l1"][1] == 2


def test_query_tower_feeds_onnx_inputs_by_feature_name_and_context_moves_the_query(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "query.onnx")
    stage = QueryTower(StageContext("query_tower", model_dir=folder))
    groups = request_groups(3, 0.1)
    desktop = stage(**groups)["query_embedding"]
    mobile = stage(**{**groups, "context_categorical": np.array([[4]])})["query_embedding"]
    assert desktop.shape == (16,) and desktop.dtype == np.float32
    assert not np.allclose(desktop, mobile)


def test_an_onnx_input_no_feature_matches_fails_the_load_and_input_map_fixes_it(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "query.onnx")
    with pytest.raises(StageConfigError, match="'hour_sin' \\(looked for feature 'hours'\\)"):
        QueryTower(StageContext("query_tower", model_dir=folder, params={"INPUT_MAP": '{"hour_sin": "hours"}'}))


def test_dlrm_scores_every_candidate_as_a_probability(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "dlrm.onnx")
    stage = DlrmRanking(StageContext("dlrm_ranking", model_dir=folder))
    n = 7
    groups = {"unrolled_categorical": np.full((n, len(UNROLLED.categorical)), 3),
              "unrolled_continuous": np.zeros((n, len(UNROLLED.continuous)), np.float32),
              "item_categorical": np.full((n, len(ITEM.categorical)), 3),
              "item_continuous": np.zeros((n, len(ITEM.continuous)), np.float32)}
    out = stage(item_index=np.arange(3, 3 + n), image_embedding=np.ones((n, 64), np.float32),
                text_embedding=np.zeros((n, 64), np.float32), **groups)["scores"]
    assert out.shape == (n,) and ((out > 0) & (out < 1)).all() and len(set(out.tolist())) > 1
    with pytest.raises(BadRequest, match="rows"):
        stage(item_index=np.arange(3, 3 + n - 1), image_embedding=np.ones((n, 64), np.float32),
              text_embedding=np.zeros((n, 64), np.float32), **groups)


def retrieval(tmp_path, tiny, **params):
    folder = version_dir(tmp_path, tiny, "index.faiss", "availability.npy")
    return FaissRetrieval(StageContext("faiss_retrieval", model_dir=folder,
                                       params={"START_DATE": "2026-01-01", **params}))


def test_retrieval_over_fetches_and_returns_only_released_raw_ids(tmp_path, tiny):
    stage = retrieval(tmp_path, tiny, RETRIEVAL_TOPK="300", RETRIEVAL_MARGIN="100")
    vectors = np.load(tiny.folder / "item_embeddings.npy")
    available_from = tiny.items["available_from_day"].to_numpy()
    out = stage(query_embedding=vectors[5], timestamp=one(DAY0 + 3600))["candidate_ids"]
    assert len(out) <= 400 and (available_from[out] == 0).all()
    assert out[0] == int(np.argmax(vectors @ vectors[5]))  # exact inner product, keyed by raw id
    late = stage(query_embedding=vectors[5], timestamp=one(DAY0 + 20 * 86400))["candidate_ids"]
    assert (available_from[late] > 0).any()  # held-back items appear once released


def test_retrieval_drops_faiss_padding_when_the_index_is_smaller_than_k(tmp_path, tiny):
    import faiss

    stage = retrieval(tmp_path, tiny, RETRIEVAL_TOPK="300")
    small = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    small.add_with_ids(np.eye(16, dtype=np.float32)[:3], np.array([7, 8, 9]))
    stage.index = small

    class Padded:  # an index that answers fewer neighbours than asked, as ANN probes do
        d, ntotal = 16, 5

        def search(self, q, k):
            d, i = small.search(q, 3)
            return np.pad(d, ((0, 0), (0, k - 3))), np.pad(i, ((0, 0), (0, k - 3)), constant_values=-1)

    stage.index = Padded()
    out = stage(query_embedding=np.eye(16, dtype=np.float32)[0], timestamp=one(DAY0))["candidate_ids"]
    assert sorted(out.tolist()) == [7, 8, 9]


def test_a_query_of_the_wrong_width_names_the_mismatch(tmp_path, tiny):
    stage = retrieval(tmp_path, tiny)
    with pytest.raises(StageConfigError, match="query embedding has 8 dims, the FAISS index 16"):
        stage(query_embedding=np.zeros(8, np.float32), timestamp=one(DAY0))


def test_decoder_maps_rows_to_raw_ids_and_refuses_mixed_id_spaces(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "transforms")
    stage = ItemIdDecoder(StageContext("item_id_decoder", model_dir=folder))
    cold = int(tiny.items.loc[tiny.items["available_from_day"] > 0, "item_id"].iloc[0])
    out = stage(item_index=np.array([3, 4, 2]), item_ids=np.array([0, 1, cold]),
                scores=np.array([0.3, 0.2, 0.1], np.float32))
    assert out["ordered_ids"].tolist() == [0, 1, cold]
    with pytest.raises(IdSpaceError, match="decode to"):
        stage(item_index=np.array([3]), item_ids=np.array([5]), scores=np.array([0.1], np.float32))


def test_item_table_lookup_and_unknown_ids():
    table = ItemTable([0, 1], {"category_l1": ["a", None], "category_l2": ["x", "y"], "item_gender": ["M", "F"],
                               "price": [1.0, None]}, source="test")
    out = table.lookup(np.array([1, 0, 5]))
    assert out["category_l1"].tolist() == [b"", b"a", b""]
    assert np.isnan(out["price"][0]) and out["price"][1] == 1.0 and np.isnan(out["price"][2])


def test_item_lookup_serves_the_packaged_snapshot_when_feast_cannot_be_read(tmp_path, tiny):
    folder = version_dir(tmp_path, tiny, "items.parquet")
    ctx = StageContext("feast_item_lookup", model_dir=folder, params={"ITEM_CACHE_REFRESH_S": "0"},
                       environ={"RECSYS_FEAST_REPO": str(tmp_path / "no-repo")})
    stage = FeastItemLookup(ctx)
    assert stage.table.source == "snapshot"
    assert ctx.metrics.value("recsys_degraded_requests_total", reason="feast_unreadable_at_load") == 1
    out = stage(item_ids=np.array([0, 1]))
    items = pd.read_parquet(tiny.trained.items)
    assert unpack_text(out["category_l1"])[0] == items.loc[0, "category_l1"].encode() and out["price"][1] == items.loc[1, "price"]
    assert stage.refresh() is False  # still unreadable: the snapshot keeps serving
    assert stage.table.source == "snapshot"
