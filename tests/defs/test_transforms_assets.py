"""The transform assets on the tiny world: masking, NVTabular workflows and transforms in the real merlin env
(through the Pipes runner), the compiled serving transforms and their parity with NVTabular, and the blocking
input checks."""

import json
import subprocess

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.resources import PROJECT_ROOT, ArtifactStoreResource, MerlinRunner, WorldResource
from recsys_assets.defs.transforms import assets as tf
from recsys_assets.lib import dataset, paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.generator import World
from recsys_assets.lib.settings import partition_key
from recsys_assets.lib.feature_spec import GROUPS, NULL_INDEX, OOV_INDEX, USER_HISTORY, WORKFLOW_OUTPUTS
from recsys_assets.serving.transforms import CompiledTransforms

START = tf.START_DATE
TRAIN, VALIDATION = [0, 1], 9
TRANSFORMED = [1, VALIDATION]
MERLIN_PYTHON = PROJECT_ROOT / ".venv-merlin" / "bin" / "python"


def key(day: int) -> str:
    return partition_key(day, START)


def _world_on_disk(root, days) -> ArtifactStore:
    """The ingest layout for the tiny world (written directly: the ingest assets have their own tests)."""
    store = ArtifactStore(root)
    world = World(seed=7, scale="tiny", start_date=START)
    dataset.write_items(store, world)
    dataset.write_users(store, world, 13)
    for d in days:
        dataset.write_day(store, world, d)
    return store


def _resources(root) -> dict:
    return {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
            "merlin": MerlinRunner(profile="local")}


def _materialize(assets, resources, partition=None, run_config=None, raise_on_error=True):
    return dg.materialize(assets, resources=resources, partition_key=partition, run_config=run_config,
                          raise_on_error=raise_on_error)


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _read_folder(store: ArtifactStore, rel: str) -> pd.DataFrame:
    folder = store.local_path(rel)
    return pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], ignore_index=True)


# -- the pipeline once, shared by the merlin tests ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("transforms") / "artifacts"
    store = _world_on_disk(root, range(VALIDATION + 1))
    res = _resources(root)
    results = {}
    for d in (*TRAIN, VALIDATION):
        _materialize([user_top_category], res, key(d))
        results[f"masked/{d}"] = _materialize([tf.masked_interactions], res, key(d))
    results["workflows"] = _materialize([tf.nvt_workflows], res, run_config={
        "ops": {"nvt_workflows": {"config": {"train_days": TRAIN, "part_size": "1MB"}}}})
    for d in TRANSFORMED:
        results[f"transformed/{d}"] = _materialize([tf.transformed_interactions], res, key(d), run_config={
            "ops": {"transformed_interactions": {"config": {"part_size": "1MB"}}}})
    results["serving"] = _materialize([tf.serving_transforms], res)
    return store, results


@pytest.mark.merlin
def test_train_days_are_masked_and_the_validation_day_is_not(pipeline):
    store, results = pipeline
    mean_age = None
    for d in TRAIN:
        df = store.read_parquet(paths.masked_interactions(d))
        meta = results[f"masked/{d}"].asset_materializations_for_node("masked_interactions")[0].metadata
        mean_age = meta["mean_age"].value
        assert abs(df["masked_user"].mean() - 0.05) <= 1 / len(df)
        assert abs(df["masked_device"].mean() - 0.05) <= 1 / len(df)
        masked = df[df["masked_user"]]
        assert (masked[["user_id", "gender", "top_category"]] == -1).all().all()
        assert (masked["age"] == mean_age).all()
        assert (df.loc[df["masked_device"], "device_type"] == -1).all()
        assert all(e.passed for e in _checks(results[f"masked/{d}"]).values())
    val = store.read_parquet(paths.masked_interactions(VALIDATION))
    raw = store.read_parquet(paths.raw_interactions(VALIDATION))
    assert not val["masked_user"].any() and not val["masked_device"].any()
    assert (val["user_id"].to_numpy() == raw["user_id"].to_numpy()).all()
    assert (val["device_type"].to_numpy() == raw["device_type"].to_numpy()).all()


@pytest.mark.merlin
def test_workflows_are_saved_with_tags_and_the_training_mean_age(pipeline):
    store, results = pipeline
    checks = _checks(results["workflows"])
    assert checks["train_days_complete"].passed and checks["null_and_oov_rows"].passed
    folder = store.local_path(paths.NVT_WORKFLOWS)
    for name in ("user", "item", "context", "full"):
        assert (folder / name / "workflow.pkl").exists()
    meta = json.loads((folder / "meta.json").read_text())
    users = store.read_parquet(paths.USERS)
    assert meta["mean_age"] == pytest.approx(users.loc[users["signup_day"] <= 8, "age"].mean())
    assert meta["outputs"]["user"] == ["user_id", "gender", *USER_HISTORY, "age_norm", "age_binned"]
    assert meta["outputs"]["context"] == ["device_type", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos"]
    tags = meta["tags"]
    assert {"user", "id"} <= set(tags["user_id"]) and {"item", "id"} <= set(tags["item_id"])
    assert "context" in tags["device_type"] and "continuous" in tags["hour_sin"]
    assert "target" in tags["click"] and tags["item_id_raw"] == []


@pytest.mark.merlin
def test_transformed_days_put_sentinels_on_row_1_and_unseen_users_on_row_2(pipeline):
    store, results = pipeline
    for d in TRANSFORMED:
        assert all(e.passed for e in _checks(results[f"transformed/{d}"]).values())
    masked = store.read_parquet(paths.masked_interactions(1))
    out = _read_folder(store, paths.transformed_interactions(1))
    assert (out["interaction_id"].to_numpy() == masked["interaction_id"].to_numpy()).all()
    assert (out["item_id_raw"].to_numpy() == masked["item_id"].to_numpy()).all()
    assert (out.loc[masked["masked_user"].to_numpy(), "user_id"] == NULL_INDEX).all()
    assert (out.loc[masked["masked_device"].to_numpy(), "device_type"] == NULL_INDEX).all()
    assert (out.loc[~masked["masked_user"].to_numpy(), "user_id"] >= NULL_INDEX + 1).all()
    # Validation day: users never seen on the train days land on the OOV row; seen ones on real rows.
    seen = set(pd.concat([store.read_parquet(paths.masked_interactions(d)) for d in TRAIN])["user_id"])
    val_in = store.read_parquet(paths.masked_interactions(VALIDATION))
    val_out = _read_folder(store, paths.transformed_interactions(VALIDATION))
    unseen = ~val_in["user_id"].isin(seen).to_numpy()
    assert unseen.any() and (~unseen).any()
    assert (val_out.loc[unseen, "user_id"] == OOV_INDEX).all()
    assert (val_out.loc[~unseen, "user_id"] > OOV_INDEX).all()
    schema = (store.local_path(paths.transformed_interactions(VALIDATION)) / "schema.pbtxt").read_text()
    assert "user_id" in schema and "item_id_raw" in schema
    meta = results[f"transformed/{VALIDATION}"].asset_materializations_for_node("transformed_interactions")[0]
    assert meta.metadata["user_id_oov"].value == int(unseen.sum())


@pytest.mark.merlin
def test_a_backfill_of_many_days_is_one_run_with_the_same_output(pipeline):
    """The single-run backfill policy: days 00-01 in one run (one merlin process) write what per-day runs write."""
    from recsys_assets.demo import partition_range_tags

    store, _ = pipeline
    per_day = _read_folder(store, paths.transformed_interactions(1))
    result = dg.materialize([tf.transformed_interactions], resources=_resources(store.root),
                            tags=partition_range_tags(key(0), key(1)), run_config={
                                "ops": {"transformed_interactions": {"config": {"part_size": "1MB"}}}})
    assert result.success and all(e.passed for e in _checks(result).values())
    materialized = {m.partition for m in result.asset_materializations_for_node("transformed_interactions")}
    assert materialized == {key(0), key(1)}
    pd.testing.assert_frame_equal(_read_folder(store, paths.transformed_interactions(1)), per_day)
    day0 = _read_folder(store, paths.transformed_interactions(0))
    assert len(day0) == len(store.read_parquet(paths.masked_interactions(0)))


@pytest.mark.merlin
def test_serving_transforms_pass_parity_and_load_numpy_only(pipeline):
    store, results = pipeline
    assert _checks(results["serving"])["parity"].passed
    t = CompiledTransforms.load(store.local_path(paths.SERVING_TRANSFORMS))
    meta = json.loads((store.local_path(paths.NVT_WORKFLOWS) / "meta.json").read_text())
    assert t.mean_age == meta["mean_age"]
    user = t.transform_user([-1, 10**9], [t.mean_age, 40.0], ["M", None], *[[-1, 3]] * len(USER_HISTORY))
    assert user["user_id"].tolist() == [NULL_INDEX, OOV_INDEX]
    assert user["gender"].tolist()[1] == NULL_INDEX and user["top_category"][0] == NULL_INDEX


def _parity_cli(workflows, compiled, tmp_path, cases=None):
    args = [str(MERLIN_PYTHON), "-m", "recsys_assets.ml.nvt_parity", "--workflows", str(workflows),
            "--compiled", str(compiled), "--out", str(tmp_path / "report.json"), "--dump-dir", str(tmp_path / "dump")]
    if cases is not None:
        (tmp_path / "cases.json").write_text(json.dumps(cases))
        args += ["--cases", str(tmp_path / "cases.json")]
    proc = subprocess.run(args, check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(tmp_path),
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    report_file = tmp_path / "report.json"
    assert report_file.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(report_file.read_text())


EDGE_CASES = {
    "user": {
        "user_id": [0, 1, 5, -1, 10**9, None, 3, -1, 2, 7],
        "age": [0, 17, 18, 100, 130, None, 25.0, 64.99, 65, 35],
        "gender": [0, 1, -1, None, 7, 0, 1, -1, 0, 1],
        **{name: [0, 19, -1, None, 25, 3, 5, -1, 11, 2] for name in USER_HISTORY},
    },
    "item": {
        "item_id": [0, 100, 2464, -1, 99999, None, 5, 7],
        "category_l1": ["apparel", "books", "not a category", None, "", "beauty", "tools", "footwear"],
        "category_l2": ["shirt", None, "nope", "glasses", "shoes", "vase", "x", "y"],
        "item_gender": ["M", "F", "U", None, "X", "U", "M", "F"],
        "price": [0.0, 1e6, 1.0, None, 79.99, 24999.99, 0.01, 3.5],
    },
    "context": {
        "device_type": [0, 1, 2, -1, None, 7],
        "timestamp": [0, 1767225600, 1767225600 + 13 * 3600 + 59, 1767830399, 2**31 - 1, 4102444800],
    },
}


@pytest.mark.merlin
def test_compiled_transforms_equal_nvtabular_on_edge_cases(pipeline, tmp_path):
    store, _ = pipeline
    workflows = store.local_path(paths.NVT_WORKFLOWS)
    compiled = store.local_path(paths.SERVING_TRANSFORMS)
    code, report = _parity_cli(workflows, compiled, tmp_path, EDGE_CASES)
    assert code == 0 and report["identical"], report["mismatched_columns"]
    given = {k: v for k, v in report["columns"].items() if k.startswith("given/")}
    outputs = sum(len(WORKFLOW_OUTPUTS[g]) for g in GROUPS)  # every output column of every group
    assert len(given) == outputs and all(v["mismatches"] == 0 for v in given.values())
    assert all(v["dtype_nvtabular"] == v["dtype_compiled"] for v in report["columns"].values())
    # The same NVTabular outputs, reproduced here in the pipeline env (numpy 1.26) by the compiled transforms.
    t = CompiledTransforms.load(compiled)
    dumps = sorted((tmp_path / "dump").glob("*.inputs.parquet"))
    assert len(dumps) >= 9
    for inputs_file in dumps:
        group = inputs_file.name.split(".")[0].split("__")[-1]
        group = "user" if group.startswith("user") else group
        inputs = pd.read_parquet(inputs_file)
        expected = pd.read_parquet(str(inputs_file).replace(".inputs.", ".expected."))
        got = t.transform(group, {c: inputs[c].to_numpy() for c in inputs.columns})
        for col in expected.columns:
            want = expected[col].to_numpy()
            assert got[col].dtype == want.dtype, (inputs_file.name, col)
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got[col], want, rtol=0, atol=1e-6, equal_nan=True)
            else:
                assert (got[col] == want).all(), (inputs_file.name, col)


@pytest.mark.merlin
def test_parity_detects_a_compiled_transform_that_drifted(pipeline, tmp_path):
    store, _ = pipeline
    import shutil

    compiled = tmp_path / "drifted"
    shutil.copytree(store.local_path(paths.SERVING_TRANSFORMS), compiled)
    description = json.loads((compiled / "transforms.json").read_text())
    for out in description["groups"]["user"]["outputs"]:
        for step in out["steps"]:
            if step["op"] == "normalize":
                step["mean"] += 0.5
    (compiled / "transforms.json").write_text(json.dumps(description))
    code, report = _parity_cli(store.local_path(paths.NVT_WORKFLOWS), compiled, tmp_path)
    assert code == 1 and not report["identical"]
    assert any(k.endswith("/age_norm") for k in report["mismatched_columns"])


# -- blocking input checks (pipeline env only) ------------------------------------------------------------------
@pytest.fixture()
def two_days(tmp_path):
    root = tmp_path / "artifacts"
    store = _world_on_disk(root, [0, 1])
    res = _resources(root)
    for d in (0, 1):
        _materialize([user_top_category], res, key(d))
    return store, res


def test_missing_partition_fails_the_check_naming_it_and_stops_downstream(two_days):
    store, res = two_days
    store.delete(paths.top_category(1))
    store.write_parquet(paths.masked_interactions(1), pd.DataFrame({"stale": [1]}))
    result = _materialize([tf.masked_interactions, tf.transformed_interactions], res, key(1), raise_on_error=False)
    check = _checks(result)["inputs_complete"]
    assert not check.passed
    text = check.metadata["description"].value
    assert "user_top_category" in text and key(1) in text
    assert not store.exists(paths.masked_interactions(1))  # the stale file is gone
    assert not result.asset_materializations_for_node("transformed_interactions")
    assert not store.exists(paths.transformed_interactions(1))


def test_empty_raw_partition_fails_the_check(two_days):
    store, res = two_days
    raw = store.read_parquet(paths.raw_interactions(0))
    store.write_parquet(paths.raw_interactions(0), raw.iloc[:0])
    result = _materialize([tf.masked_interactions], res, key(0), raise_on_error=False)
    check = _checks(result)["inputs_complete"]
    assert not check.passed and "empty" in check.metadata["description"].value
    assert key(0) in check.metadata["description"].value


def test_unknown_or_missing_column_fails_before_the_merlin_env_runs(two_days):
    store, res = two_days
    _materialize([tf.masked_interactions], res, key(0))
    masked = store.read_parquet(paths.masked_interactions(0))
    store.write_parquet(paths.masked_interactions(0), masked.assign(shoe_size=1))
    # A runner that cannot start: reaching the merlin env would fail the step instead of the check.
    res = {**res, "merlin": MerlinRunner(python="/nonexistent/python")}
    result = _materialize([tf.transformed_interactions], res, key(0), raise_on_error=False)
    check = _checks(result)["input_valid"]
    assert not check.passed
    assert "'shoe_size'" in check.metadata["description"].value and key(0) in check.metadata["description"].value
    store.write_parquet(paths.masked_interactions(0), masked.drop(columns=["price"]))
    result = _materialize([tf.nvt_workflows], res, raise_on_error=False,
                          run_config={"ops": {"nvt_workflows": {"config": {"train_days": [0]}}}})
    check = _checks(result)["train_days_complete"]
    assert not check.passed and "'price'" in check.metadata["description"].value
    assert key(0) in check.metadata["description"].value
    # The step fails on the blocking check, not on the runner: the merlin env was never started.
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "blocking asset check" in str(failure.event_specific_data.error)


_CLOSED_VOCABULARY_SCRIPT = r"""
import json, sys
import numpy as np, pandas as pd, nvtabular as nvt
from recsys_assets.lib.feature_spec import MASKED_SCHEMA, USER_HISTORY
from recsys_assets.ml.nvt_workflows import fit_workflows

out = sys.argv[1]
n = 40
rows = {name: np.zeros(n, dtype=dtype) if dtype != "object" else ["apparel"] * n for name, dtype in MASKED_SCHEMA.items()}
rows.update(interaction_id=np.arange(n), user_id=np.arange(n) % 7, item_id=np.arange(n) % 5, age=np.full(n, 30.0),
            timestamp=1767225600 + 3600 * np.arange(n), click=np.arange(n) % 2, price=np.full(n, 9.5),
            gender=np.full(n, -1), device_type=np.full(n, -1), **{h: np.full(n, -1) for h in USER_HISTORY})
train = pd.DataFrame(rows)[list(MASKED_SCHEMA)]
train.to_parquet(f"{out}/train.parquet")
fit_workflows([f"{out}/train.parquet"], f"{out}/wf", mean_age=30.0)
result = {}
for name, group, probe in (("gender", "user", [-1, 0, 1, 7]), ("device_type", "context", [-1, 0, 1, 2, 9])):
    wf = nvt.Workflow.load(f"{out}/wf/{group}")
    for tag, values in (("mixed", probe), ("all_unknown", [-1, -1])):
        batch = train.iloc[: len(values)].reset_index(drop=True).copy()
        batch[name] = np.asarray(values, dtype=np.int64)
        result[f"{name}/{tag}"] = wf.transform(batch)[name].tolist()
user = nvt.Workflow.load(f"{out}/wf/user")
history = train.iloc[:3].reset_index(drop=True).copy()
result["history/all_unknown"] = user.transform(history)[USER_HISTORY[0]].tolist()
history[USER_HISTORY[0]] = np.array([-1, 5, 0], dtype=np.int64)
result["history/after_an_empty_fit"] = user.transform(history)[USER_HISTORY[0]].tolist()
print(json.dumps(result))
"""


@pytest.mark.merlin
def test_closed_vocabularies_fit_and_encode_without_a_single_known_value(tmp_path):
    """Own data without a users file has no gender, a shop may log no device: the workflows still fit (the spec's
    closed vocabularies give the rows) and a batch with no value in a column lands in the null row (NVTabular's
    Categorify alone fails on both)."""
    proc = subprocess.run([str(MERLIN_PYTHON), "-c", _CLOSED_VOCABULARY_SCRIPT, str(tmp_path)], check=False,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(tmp_path),
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    null, oov = NULL_INDEX, OOV_INDEX
    g_unknown, g_f, g_m, g_other = got["gender/mixed"]
    assert (g_unknown, g_other) == (null, oov) and g_f != g_m and min(g_f, g_m) > oov
    d_unknown, *d_known, d_other = got["device_type/mixed"]
    assert (d_unknown, d_other) == (null, oov) and len(set(d_known)) == 3 and min(d_known) > oov
    assert got["gender/all_unknown"] == got["device_type/all_unknown"] == [null, null]
    # top_category has no closed vocabulary: fit on no value at all, it keeps only the reserved rows
    assert got["history/all_unknown"] == [null] * 3 and got["history/after_an_empty_fit"] == [null, oov, oov]
