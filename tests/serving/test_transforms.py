"""The compiled transforms (numpy only) on a hand-made description: lookups, reserved rows, numeric steps."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys_assets.serving import transforms as T

NULL, OOV = 1, 2
DAY0 = 1767225600  # 2026-01-01 00:00:00 UTC, a Thursday (weekday 3)


def _description(mean_age=33.5):
    cat = lambda name: {"op": "categorify", "vocab": name}
    to_null = {"op": "sentinel_to_null", "value": -1}
    fill_age = {"op": "fill_missing", "value": mean_age}
    cyc = lambda unit, period, offset, fn: {"op": "cyclical", "unit": unit, "period": period,
                                            "offset": offset, "fn": fn, "dtype": "float32"}
    out = lambda name, src, dtype, steps: {"name": name, "input": src, "dtype": dtype, "tags": [],
                                          "steps": steps}
    return {
        "format": T.FORMAT, "version": T.VERSION, "mean_age": mean_age,
        "indices": {"pad": 0, "null": NULL, "oov": OOV, "first": 3},
        "input_codes": {"gender": {"F": 0, "M": 1}},
        "groups": {
            "user": {"inputs": ["user_id", "age", "gender", "top_category"], "outputs": [
                out("user_id", "user_id", "int64", [to_null, cat("user.user_id")]),
                out("gender", "gender", "int64", [to_null, cat("user.gender")]),
                out("top_category", "top_category", "int64", [to_null, cat("user.top_category")]),
                out("age_norm", "age", "float32", [fill_age, {"op": "normalize", "mean": 40.0, "std": 10.0,
                                                              "dtype": "float32"}]),
                out("age_binned", "age", "int64", [fill_age, {"op": "bucketize", "edges": [18, 25, 35, 50, 65]},
                                                   cat("user.age_binned")]),
            ]},
            "item": {"inputs": ["item_id", "category_l1", "category_l2", "item_gender", "price"], "outputs": [
                out("item_id", "item_id", "int64", [to_null, cat("item.item_id")]),
                out("category_l1", "category_l1", "int64", [cat("item.category_l1")]),
                out("category_l2", "category_l2", "int64", [cat("item.category_l2")]),
                out("item_gender", "item_gender", "int64", [cat("item.item_gender")]),
                out("price_log_norm", "price", "float32", [{"op": "fill_missing", "value": 50.0}, {"op": "log1p"},
                                                           {"op": "normalize", "mean": 4.0, "std": 2.0,
                                                            "dtype": "float32"}]),
            ]},
            "context": {"inputs": ["device_type", "timestamp"], "outputs": [
                out("device_type", "device_type", "int64", [to_null, cat("context.device_type")]),
                out("hour_sin", "timestamp", "float32", [cyc(3600, 24, 0, "sin")]),
                out("hour_cos", "timestamp", "float32", [cyc(3600, 24, 0, "cos")]),
                out("weekday_sin", "timestamp", "float32", [cyc(86400, 7, 3, "sin")]),
                out("weekday_cos", "timestamp", "float32", [cyc(86400, 7, 3, "cos")]),
            ]},
        },
        "vocabularies": {},
    }


VOCABS = {
    # values in frequency order as NVTabular writes them; labels from 3
    "user.user_id": (np.array([20.0, 10.0, 30.0]), np.array([3, 4, 5])),
    "user.gender": (np.array([1.0, 0.0]), np.array([3, 4])),
    "user.top_category": (np.array([5.0, 0.0, 19.0]), np.array([3, 4, 5])),
    "user.age_binned": (np.array([2, 3, 1, 4, 5]), np.array([3, 4, 5, 6, 7])),
    "item.item_id": (np.array([7.0, 3.0, 2464.0]), np.array([3, 4, 5])),
    "item.category_l1": (np.array(["apparel", "books"]), np.array([3, 4])),
    "item.category_l2": (np.array(["shirt", "novel", "saw"]), np.array([3, 4, 5])),
    "item.item_gender": (np.array(["U", "F", "M"]), np.array([3, 4, 5])),
    "context.device_type": (np.array([1.0, 0.0, 2.0]), np.array([3, 4, 5])),
}


@pytest.fixture()
def folder(tmp_path):
    description = _description()
    description["vocabularies"] = {k: {"size": len(v[0])} for k, v in VOCABS.items()}
    T.write_description(tmp_path, description, VOCABS)
    return tmp_path


@pytest.fixture()
def t(folder):
    return T.CompiledTransforms.load(folder)


def test_user_ids_sentinels_missing_and_unseen(t):
    out = t.transform_user(user_id=[20, 10, 30, -1, 99, 10**12],
                           age=[40, 40, 40, 40, 40, 40], gender=[0, 1, -1, 7, 0, 1], top_category=[5, 0, 19, -1, 3, 5])
    assert out["user_id"].tolist() == [3, 4, 5, NULL, OOV, OOV]
    assert out["gender"].tolist() == [4, 3, NULL, OOV, 4, 3]
    assert out["top_category"].tolist() == [3, 4, 5, NULL, OOV, 3]
    assert all(v.dtype == np.int64 for k, v in out.items() if k != "age_norm")
    missing = t.transform_user(np.array([np.nan, 10.0]), [np.nan, None], [None, 1], [np.nan, 0])
    assert missing["user_id"].tolist() == [NULL, 4] and missing["gender"].tolist() == [NULL, 3]
    assert missing["top_category"].tolist() == [NULL, 4]


def test_age_is_filled_normalised_and_bucketed(t):
    ages = [0, 17, 18, 24.9, 25, 35, 49, 50, 64, 65, 100, 130]
    out = t.transform_user([10] * 12, ages, [0] * 12, [0] * 12)
    np.testing.assert_array_equal(out["age_norm"], ((np.array(ages, float) - 40.0) / 10.0).astype(np.float32))
    assert out["age_norm"].dtype == np.float32
    # buckets 0..5 -> vocabulary {2:3, 3:4, 1:5, 4:6, 5:7}; bucket 0 (under 18) was never seen -> OOV
    assert out["age_binned"].tolist() == [OOV, OOV, 5, 5, 3, 4, 4, 6, 6, 7, 7, 7]
    cold = t.transform("user", t.unknown_user(2))
    assert cold["user_id"].tolist() == [NULL, NULL] and cold["gender"].tolist() == [NULL, NULL]
    assert cold["age_norm"][0] == np.float32((33.5 - 40) / 10) and cold["age_binned"][0] == 3
    missing_age = t.transform_user([10], [None], [0], [0])
    assert missing_age["age_norm"][0] == cold["age_norm"][0]


def test_gender_strings_map_to_codes(t):
    out = t.transform_user([10] * 5, [30] * 5, np.array(["F", "M", "m", None, "X"], dtype=object), [0] * 5)
    assert out["gender"].tolist() == [4, 3, 3, NULL, NULL]


def test_items_strings_prices_and_cold_items(t):
    out = t.transform_item(item_id=[7, 3, 2464, 1000, -1],
                           category_l1=np.array(["books", "apparel", "toys", None, float("nan")], dtype=object),
                           category_l2=["novel", "shirt", "saw", "", "novel"],
                           item_gender=["U", "M", "F", "U", "Q"],
                           price=[0.0, 1e6, None, 9.99, np.nan])
    assert out["item_id"].tolist() == [3, 4, 5, OOV, NULL]
    assert out["category_l1"].tolist() == [4, 3, OOV, NULL, NULL]
    assert out["category_l2"].tolist() == [4, 3, 5, OOV, 4]
    assert out["item_gender"].tolist() == [3, 5, 4, 3, OOV]
    filled = np.array([0.0, 1e6, 50.0, 9.99, 50.0])
    expect = ((np.log(filled.astype(np.float32) + 1) - 4.0) / 2.0).astype(np.float32)
    np.testing.assert_array_equal(out["price_log_norm"], expect)


def test_context_device_and_cyclical_time(t):
    ts = [DAY0, DAY0 + 6 * 3600 + 59, DAY0 + 4 * 86400 + 12 * 3600, DAY0 + 86399]
    out = t.transform_context(device_type=[1, 0, -1, 9], timestamp=ts)
    assert out["device_type"].tolist() == [3, 4, NULL, OOV]
    hours, weekdays = np.array([0, 6, 12, 23]), np.array([3, 3, 0, 3])  # Thursday, ..., Monday
    np.testing.assert_allclose(out["hour_sin"], np.sin(2 * math.pi * hours / 24), atol=1e-6)
    np.testing.assert_allclose(out["hour_cos"], np.cos(2 * math.pi * hours / 24), atol=1e-6)
    np.testing.assert_allclose(out["weekday_sin"], np.sin(2 * math.pi * weekdays / 7), atol=1e-6)
    np.testing.assert_allclose(out["weekday_cos"], np.cos(2 * math.pi * weekdays / 7), atol=1e-6)
    assert {v.dtype for k, v in out.items() if k != "device_type"} == {np.dtype(np.float32)}


def test_a_request_batch_of_300_items_is_vectorised(t):
    rng = np.random.default_rng(0)
    n = 300
    out = t.transform_item(rng.choice([7, 3, 2464, 5], n), rng.choice(["books", "apparel", "x"], n).astype(object),
                           np.array(["saw"] * n, dtype=object), np.array(["U"] * n), rng.uniform(0, 100, n))
    assert {len(v) for v in out.values()} == {n}
    assert t.outputs("item") == ("item_id", "category_l1", "category_l2", "item_gender", "price_log_norm")


def test_bad_batches_say_what_is_wrong(t):
    with pytest.raises(T.TransformInputError, match="missing \\['timestamp'\\]"):
        t.transform("context", {"device_type": [1]})
    with pytest.raises(T.TransformInputError, match="different lengths"):
        t.transform_context([1, 2], [DAY0])
    with pytest.raises(T.TransformInputError, match="unknown transform group"):
        t.transform("session", {})


def test_description_files_round_trip_and_versions_are_checked(folder):
    description, vocabularies = T.read_description(folder)
    assert description["mean_age"] == 33.5
    assert vocabularies["item.category_l1"][0].dtype.kind == "U"  # saved without pickles
    np.testing.assert_array_equal(vocabularies["user.user_id"][1], [3, 4, 5])
    description["version"] = 99
    (Path(folder) / T.DESCRIPTION_FILE).write_text(json.dumps(description))
    with pytest.raises(ValueError, match="recompile"):
        T.CompiledTransforms.load(folder)
    with pytest.raises(FileNotFoundError, match="serving_transforms"):
        T.CompiledTransforms.load(Path(folder) / "nowhere")


def test_unknown_step_is_refused(folder):
    description, vocabularies = T.read_description(folder)
    description["groups"]["user"]["outputs"][0]["steps"].append({"op": "hash_bucket"})
    with pytest.raises(ValueError, match="hash_bucket"):
        T.CompiledTransforms(description, vocabularies)


def test_module_imports_with_numpy_alone_and_parses_as_python_310():
    source = Path(T.__file__).read_text()
    ast.parse(source, feature_version=(3, 10))
    code = ("import sys; import recsys_assets.serving.transforms; "
            "bad = [m for m in ('pandas', 'dagster', 'nvtabular', 'tensorflow', 'torch') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=Path(T.__file__).parents[2]).returncode == 0


def test_text_as_utf8_rows_categorifies_like_strings(t):
    """The fixed-width UTF-8 tensors the item stages exchange give the labels the str path gives (b"" = "")."""
    from recsys_assets.serving.common import pack_text, unpack_text

    values = ["books", "apparel", "toys", "", "novel", "sh\u00efrt", "apparel"]
    packed = pack_text(values)
    assert packed.dtype == np.uint8 and packed.shape == (len(values), max(len(v.encode()) for v in values))
    rows = unpack_text(packed)
    assert [v.decode() for v in rows.tolist()] == values
    for column in ("category_l1", "category_l2"):
        step = [s for name, _, _, steps in t._groups["item"] if name == column for s in steps][-1]
        assert step(rows).tolist() == step(np.array(values, dtype=object)).tolist()
    # an empty batch, and a batch of empty values, stay well-formed
    assert unpack_text(pack_text([])).shape == (0,)
    assert unpack_text(pack_text([None, None])).tolist() == [b"", b""]
    with pytest.raises(ValueError, match="UINT8"):
        unpack_text(np.array(["books"], dtype=object))
