"""Daily operations: the new-day sensor, the daily refresh (online features, popularity window, new items' content
and retrieval index, the item cache's refresh signal), the Dagster instance config, and the replay evaluation of
the list as served on a tiny release (a real tritonserver, Valkey and Feast)."""

import contextlib
import datetime as dt
import json
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.embeddings.daily import daily_item_content
from recsys_assets.defs.feature_store.daily import daily_online_features, daily_popularity_tables
from recsys_assets.defs.index.daily import daily_retrieval_index
from recsys_assets.defs.ingest.jobs import DAILY_JOB, daily_job
from recsys_assets.defs.ingest.resources import NewDaySource
from recsys_assets.defs.ingest.runs import daily_run_exists
from recsys_assets.defs.ingest.sensors import new_day_sensor
from recsys_assets.defs.release.evaluation import served_list_evaluation
from recsys_assets.defs.release.resources import ServedEnsemble
from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import daily, dataset, paths, policy_value
from recsys_assets.lib import embeddings as emb
from recsys_assets.lib import faiss_index as fx
from recsys_assets.lib import popularity as pop
from recsys_assets.lib import served_evaluation as se
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.generator import World
from recsys_assets.lib.valkey_server import KeyLayout

START = dt.date(2026, 1, 1)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def key(day: int) -> str:
    return (START + dt.timedelta(days=day)).isoformat()


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def meta(result, asset: str) -> dict:
    (mat,) = [m for m in result.asset_materializations_for_node(asset) if m.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in mat.metadata.items()}


# -- pure logic ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, marker, expected", [
    (["interactions/day=2026-01-15/part-0.parquet", "interactions/day=2026-01-15/_SUCCESS"], "_SUCCESS", [14]),
    (["interactions/day=2026-01-15/part-0.parquet"], "_SUCCESS", []),          # still being written
    (["interactions/day=2026-01-15/part-0.parquet"], "", [14]),                # no marker asked for
    (["interactions/day=2026-01-16/_SUCCESS", "interactions/day=2026-01-15/_SUCCESS"], "_SUCCESS", [14, 15]),
    (["interactions/day=2025-12-31/_SUCCESS", "interactions/day=2026-13-01/_SUCCESS",
      "interactions/day=2026-01-15/.tmp-1-_SUCCESS", "interactions/other/_SUCCESS"], "_SUCCESS", []),
])
def test_landed_days_are_read_off_an_object_listing(keys, marker, expected):
    assert daily.landed_days(keys, START, marker) == expected


def test_the_wall_and_the_simulated_clock_say_which_days_are_over():
    wall = daily.DayClock(START)
    assert wall.last_over(daily.day_start(20, START).timestamp() + 5) == 19   # day 20 in progress
    sim = daily.DayClock(START, seconds_per_day=600, started_at=1000.0, first_day=14)
    assert sim.last_over(1000.0) == 13 and sim.last_over(1599.0) == 13 and sim.last_over(1600.0) == 14
    assert daily.next_days(13, 16, limit=2) == [14, 15]
    assert daily.next_days(13, 16, limit=5, last_day=14) == [14]
    assert daily.next_days(16, 16, limit=5) == []
    with pytest.raises(ValueError, match="started_at"):
        daily.DayClock(START, seconds_per_day=60)


def test_windows_slide_and_never_roll_back():
    assert daily.window_days(10, 7) == list(range(4, 11))
    assert daily.window_days(2, 7) == [0, 1, 2]
    assert daily.publishable(None, 3) and daily.publishable([4, 5, 6], 6) and not daily.publishable([4, 5, 6], 5)
    start, end = daily.materialize_window(3, START)
    assert start == dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc)
    assert end == dt.datetime(2026, 1, 5, 0, 0, 1, tzinfo=dt.timezone.utc)


def test_a_real_faiss_index_grows_in_place_and_only_by_what_it_lacks():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    available_from = np.where(np.arange(300) % 10 == 0, 5, 0)   # every 10th item arrives on day 5
    built = fx.build(vectors[available_from == 0], np.flatnonzero(available_from == 0))
    before = fx.search(built.index, vectors[:3], 20)
    todo = daily.items_to_index(fx.id_map(built.index), available_from, 5)
    assert todo.tolist() == list(range(0, 300, 10))
    growth = daily.extend_index(built.index, vectors[todo], todo)
    assert growth.before == 270 and growth.after == 300 and growth.added.tolist() == todo.tolist()
    found = fx.search(built.index, vectors[todo], 5)
    assert all(i in row.tolist() for i, row in zip(todo, found.ids))     # each new item is retrievable
    after = fx.search(built.index, vectors[:3], 20)
    for old, new in zip(before.ids, after.ids):  # the old items keep their order; new ones only slot in between
        kept = [i for i in new.tolist() if i not in set(todo.tolist())]
        assert kept == old.tolist()[:len(kept)]
    again = daily.extend_index(built.index, vectors[todo], todo)
    assert len(again.added) == 0 and again.after == 300                   # idempotent
    with pytest.raises(ValueError, match="another candidate"):
        daily.extend_index(built.index, np.zeros((1, 8), np.float32), [999])
    with pytest.raises(ValueError, match="unique"):
        daily.extend_index(built.index, np.zeros((2, 16), np.float32), [900, 900])


def test_replay_requests_and_list_measures(tiny_world):
    rows, _ = tiny_world.generate_day(5)
    requests = se.replay_requests(rows, known_user_ids=np.arange(60), per_split=25, seed=1)
    assert set(requests["split"]) == {"warm", "new", "anonymous"}
    assert (requests.loc[requests["split"] == "anonymous", "user_id"] == -1).all()
    assert (requests.loc[requests["split"] != "anonymous", "user_id"]
            == requests.loc[requests["split"] != "anonymous", "true_user_id"]).all()
    assert requests.loc[requests["split"] == "warm", "true_user_id"].lt(60).all()
    clicked = rows[rows["click"] == 1].groupby("user_id")["item_id"].apply(set)
    for r in requests.head(10).itertuples():
        assert set(r.relevant.tolist()) == clicked[r.true_user_id]
    first = rows.sort_values("timestamp").groupby("user_id").head(1).set_index("user_id")
    assert (requests["timestamp"].to_numpy() == first.loc[requests["true_user_id"], "timestamp"].to_numpy()).all()
    category = np.array(["a", "a", "b", "c"])
    assert se.intra_list_diversity([[0, 1], [0, 2]], category) == 0.5
    assert se.intra_list_diversity([[0, 2, 3]], category) == 1.0
    assert se.coverage([[0, 1], [1, 2]], 4) == 0.75
    assert se.fingerprint(requests) == se.fingerprint(requests.sample(frac=1.0, random_state=3))


def test_evaluate_scores_every_method_counts_failures_and_gates(tiny_world):
    rows, _ = tiny_world.generate_day(5)
    requests = se.replay_requests(rows, known_user_ids=np.arange(60), per_split=15)
    available = tiny_world.item_available_from
    oracle = se.oracle_lists(tiny_world.click_probability, requests, available, 5)
    relevant = {int(r.true_user_id): r.relevant for r in requests.itertuples()}

    def perfect_for_known_users(user_id, device, timestamp, diversity):
        if user_id < 0:
            raise ConnectionError("server gone")     # anonymous requests fail: counted, scored empty
        return relevant[user_id][:10]

    result = se.evaluate(perfect_for_known_users, requests, popular=list(range(10)), oracle=oracle)
    table = se.summary_table(result, tiny_world.items["category_l1"].to_numpy(), int((available <= 5).sum()))
    assert set(table["method"]) == set(se.METHODS)
    assert se.metric(table, "served", "all", "recall@10") == pytest.approx(1.0)
    assert se.metric(table, "served", "anonymous", "recall@10") == 0.0
    n_anonymous = int((requests["split"] == "anonymous").sum())
    assert table.query("method == 'served' and split == 'anonymous'")["failed"].item() == n_anonymous
    assert len(result.failures["served_diverse"]) == n_anonymous
    assert 0 < se.metric(table, "oracle", "all", "recall@10") <= 1
    # popularity is one list for everyone: coverage = 10 items of the catalogue
    assert se.metric(table, "popularity", "all", "coverage") == pytest.approx(10 / (available <= 5).sum())
    outcomes = {o.name: o for o in se.gate(table, se.fingerprint(requests))}
    assert outcomes["served_beats_popularity"].passed and outcomes["served_no_regression"].passed
    deployed = se.record(table, se.fingerprint(requests))
    deployed["metrics"]["served/all/recall@10"] = 1.5                  # a better deployed release on these rows
    assert not {o.name: o for o in se.gate(table, se.fingerprint(requests), deployed)}["served_no_regression"].passed
    other_rows = {**deployed, "fingerprint": "0" * 16}
    assert not {o.name: o for o in se.gate(table, se.fingerprint(requests), other_rows)}["served_no_regression"].passed


# -- the instance config (item 4) ----------------------------------------------------------------------------------
def test_the_instance_config_queues_merlin_and_daily_runs_and_retries_transient_failures(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        limits = {(x["key"], x.get("value")): x["limit"] for x in queue.tag_concurrency_limits}
        assert limits[("recsys/merlin", None)] == 1 and limits[("recsys/daily", None)] == 1
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 7200
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
    finally:
        instance.dispose()
    assert daily_job.tags["recsys/daily"] == "true" and int(daily_job.tags["dagster/max_runtime"]) <= 7200


def test_the_new_day_source_is_the_generator_locally_and_the_landing_on_kubernetes():
    from recsys_assets.defs.ingest.resources import build_resources
    from recsys_assets.defs.release.resources import build_resources as build_release_resources
    from recsys_assets.lib.settings import Settings, SettingsError

    local = build_resources(Settings(), environ={})
    assert local["new_day_source"].mode == "generator" and local["new_day_source"].seconds_per_day == 600
    assert build_release_resources(Settings(), environ={})["served_ensemble"].url == "127.0.0.1:8000"
    assert build_release_resources(Settings(), environ={"RECSYS_TRITON_HTTP_PORT": "9100"})[
        "served_ensemble"].url == "127.0.0.1:9100"
    k8s = build_resources(Settings(profile="k8s", triton_url="http://triton:8000"), environ={})
    assert k8s["new_day_source"].mode == "landing" and k8s["new_day_source"].seconds_per_day == 0
    assert build_release_resources(Settings(profile="k8s", triton_url="http://triton:8000"), environ={})[
        "served_ensemble"].url == "http://triton:8000"
    with pytest.raises(SettingsError, match="RECSYS_NEW_DAY_MODE"):
        build_resources(Settings(), environ={"RECSYS_NEW_DAY_MODE": "s3"})


# -- the sensor ---------------------------------------------------------------------------------------------------
def land(root: Path, day: int, complete: bool = True) -> None:
    folder = root / "interactions" / f"day={key(day)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-00000.parquet").write_bytes(b"PAR1")
    if complete:
        (folder / "_SUCCESS").write_bytes(b"")


def tick(instance, resources, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = new_day_sensor(context)
    return result, result.cursor


def test_a_second_landed_day_triggers_exactly_one_run(tmp_path):
    root = tmp_path / "artifacts"
    resources = {"artifacts": ArtifactStoreResource(root=str(root)),
                 "new_day_source": NewDaySource(mode="landing", first_day=14)}
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, resources)
        assert not result.run_requests and "no new day landed" in result.skip_reason.skip_message
        land(root, 14)
        result, cursor = tick(instance, resources, cursor)
        assert [(r.partition_key, r.run_key) for r in result.run_requests] == [(key(14), key(14))]
        result, cursor = tick(instance, resources, cursor)                        # same day again: nothing
        assert not result.run_requests
        land(root, 15, complete=False)                                            # still being written
        assert not tick(instance, resources, cursor)[0].run_requests
        land(root, 15)
        result, cursor = tick(instance, resources, cursor)
        assert [(r.partition_key, r.run_key) for r in result.run_requests] == [(key(15), key(15))]
        assert not tick(instance, resources, cursor)[0].run_requests
        land(root, 17)                                                            # a gap: day 16 is missing
        result, _ = tick(instance, resources, cursor)
        assert not result.run_requests and key(16) in result.skip_reason.skip_message


def test_the_generator_mode_requests_the_next_day_once_the_simulated_clock_ends_it(tmp_path):
    resources = {"artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")),
                 "new_day_source": NewDaySource(mode="generator", seconds_per_day=600, first_day=14)}
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, resources)                                # the simulation starts now
        assert not result.run_requests and json.loads(cursor)["started_at"] > 0
        ran_for = json.dumps({"last": 13, "started_at": time.time() - 2.5 * 600})  # days 14 and 15 are over
        result, cursor = tick(instance, resources, ran_for)
        assert [r.partition_key for r in result.run_requests] == [key(14)]        # one per tick
        result, cursor = tick(instance, resources, cursor)
        assert [r.partition_key for r in result.run_requests] == [key(15)]
        result, cursor = tick(instance, resources, cursor)
        assert not result.run_requests and "not over yet" in result.skip_reason.skip_message


def test_a_day_the_schedule_already_ran_is_passed_not_run_again(tmp_path):
    root = tmp_path / "artifacts"
    resources = {"artifacts": ArtifactStoreResource(root=str(root)),
                 "new_day_source": NewDaySource(mode="landing", first_day=14)}
    land(root, 14)
    land(root, 15)
    with dg.instance_for_test() as instance:
        # the daily schedule launched day 14's daily_job with the same run-key convention
        instance.add_run(dg.DagsterRun(job_name=DAILY_JOB, run_id=str(uuid.uuid4()), tags={
            "dagster/partition": key(14), "dagster/run_key": key(14),
            "dagster/schedule_name": "daily_schedule"}))
        # a failed run of day 15 does not count: the sensor gives the day its second chance
        instance.add_run(dg.DagsterRun(job_name=DAILY_JOB, run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.FAILURE,
                                       tags={"dagster/partition": key(15), "dagster/run_key": key(15)}))
        assert daily_run_exists(instance, key(14)) and not daily_run_exists(instance, key(15))
        result, cursor = tick(instance, resources)
        assert not result.run_requests and key(14) in result.skip_reason.skip_message
        assert DAILY_JOB in result.skip_reason.skip_message
        result, cursor = tick(instance, resources, cursor)
        assert [r.partition_key for r in result.run_requests] == [key(15)]


# -- new items: content rows and the retrieval index (no services) --------------------------------------------------
@pytest.fixture()
def item_artifacts(resources):
    """The catalogue, made-up encoder vectors with a real PCA fitted on day-0 items, and a trained index that
    knows only the items available by day 2, as after a training on days 00-02."""
    store = ArtifactStore(resources["artifacts"].root)
    world = World(seed=7, scale="tiny")
    catalogue = dataset.write_items(store, world)
    rng = np.random.default_rng(3)
    n = len(catalogue)
    day0 = (catalogue["available_from_day"] == 0).to_numpy()
    for kind, width in (("clip", 32), ("text", 48)):
        x = rng.normal(size=(n, width)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with store.writing(paths.CLIP_EMBEDDINGS if kind == "clip" else paths.TEXT_EMBEDDINGS) as tmp, \
                open(tmp, "wb") as fh:
            np.save(fh, x)
        pca = emb.fit_pca(x[day0], 8, meta={"fit_through_day": 0, "fit_items": int(day0.sum())})
        with store.writing(paths.embedding_pca(kind)) as tmp:
            pca.save(tmp)
    clip = np.load(store.local_path(paths.CLIP_EMBEDDINGS))
    text = np.load(store.local_path(paths.TEXT_EMBEDDINGS))
    table = np.hstack([emb.Pca.load(store.local_path(paths.embedding_pca("clip"))).transform(clip),
                       emb.Pca.load(store.local_path(paths.embedding_pca("text"))).transform(text)])
    with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, table.astype(np.float32))
    vectors = rng.normal(size=(n, 16)).astype(np.float32)                 # the frozen candidate tower's output
    with store.writing(paths.item_embeddings("plain")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vectors)
    known = np.flatnonzero(catalogue["available_from_day"].to_numpy() <= 2)
    with store.writing(paths.faiss_index("plain")) as tmp:
        fx.save(fx.build(vectors[known], known).index, tmp)
    return store, catalogue, vectors


def test_a_new_item_becomes_recommendable_without_a_retrain(resources, item_artifacts):
    store, catalogue, vectors = item_artifacts
    day = int(catalogue.loc[catalogue["available_from_day"] > 2, "available_from_day"].min())
    new = catalogue.loc[catalogue["available_from_day"] == day, "item_id"].to_numpy()
    trained = fx.load(store.local_path(paths.faiss_index("plain")))
    assert not np.isin(new, fx.id_map(trained)).any()
    assert daily.served_index(store, "plain") == paths.faiss_index("plain")

    result = dg.materialize([daily_item_content, daily_retrieval_index],
                            resources=resources, partition_key=key(day))
    assert result.success and all(e.passed for e in checks(result).values()), \
        {n: e.description for n, e in checks(result).items()}
    assert meta(result, "daily_retrieval_index")["items_added"] >= len(new)
    assert daily.served_index(store, "plain") == paths.daily_index("plain")
    grown = fx.load(store.local_path(daily.served_index(store, "plain")))
    found = fx.search(grown, vectors[new], 10)
    assert all(i in row.tolist() for i, row in zip(new, found.ids))      # the new items come back from FAISS
    assert np.isin(fx.id_map(trained), fx.id_map(grown)).all()            # nothing indexed before is gone
    assert grown.ntotal == trained.ntotal + meta(result, "daily_retrieval_index")["items_added"]

    again = dg.materialize([daily_retrieval_index], resources=resources, partition_key=key(day))
    assert meta(again, "daily_retrieval_index")["items_added"] == 0       # a re-run adds nothing

    # a full retrain replaces the trained index: the growth no longer applies
    with store.writing(paths.faiss_index("plain")) as tmp:
        fx.save(fx.build(vectors, np.arange(len(vectors))).index, tmp)
    assert daily.served_index(store, "plain") == paths.faiss_index("plain")


def test_new_items_content_rows_are_projected_with_the_saved_pca(resources, item_artifacts):
    store, catalogue, _ = item_artifacts
    table = np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS))
    day = int(catalogue["available_from_day"].max())
    with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, table[:-40])                       # the table lags the encoders by 40 items
    result = dg.materialize([daily_item_content], resources=resources, partition_key=key(day))
    assert result.success and all(e.passed for e in checks(result).values())
    assert meta(result, "daily_item_content")["rows_added"] == 40
    assert np.allclose(np.load(store.local_path(paths.MULTIMODAL_EMBEDDINGS)), table, atol=1e-6)
    # rows that are not the saved PCA's projection (e.g. a PCA refitted on later items) fail the check
    bad = table.copy()
    new = catalogue.loc[catalogue["available_from_day"] == day, "item_id"].to_numpy()
    bad[new] += 0.5
    with store.writing(paths.MULTIMODAL_EMBEDDINGS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, bad)
    result = dg.materialize([daily_item_content], resources=resources, partition_key=key(day),
                            raise_on_error=False)
    assert not checks(result)["projected_with_saved_pca"].passed


def test_the_served_evaluation_without_a_running_server_warns_and_lets_the_refresh_go_on(resources):
    store = ArtifactStore(resources["artifacts"].root)
    world = World(seed=7, scale="tiny")
    dataset.write_items(store, world)
    dataset.write_users(store, world, 3)
    dataset.write_day(store, world, 3)
    result = dg.materialize([served_list_evaluation], partition_key=key(3), resources={
        **resources, "served_ensemble": ServedEnsemble(url="127.0.0.1:1", timeout_s=1)})
    assert result.success and meta(result, "served_list_evaluation")["evaluated"] is False
    assert not checks(result)["replayed"].passed
    assert checks(result)["replayed"].severity == dg.AssetCheckSeverity.WARN


# -- the daily refresh on a real Valkey + Feast ---------------------------------------------------------------------
@pytest.mark.integration
def test_new_users_get_online_features_popularity_slides_and_the_item_cache_refreshes(resources, valkey, tmp_path):
    resources = {**resources, "valkey": ValkeyResource(url=f"redis://127.0.0.1:{valkey.port}"),
                 "feast": FeastResource()}
    store = ArtifactStore(resources["artifacts"].root)
    day = 3
    assert dg.materialize([ingest.items, ingest.users], resources=resources,
                          run_config={"ops": {"users": {"config": {"through_day": day - 1}}}}).success
    for d in range(day + 1):
        assert dg.materialize([ingest.raw_interactions, user_top_category], resources=resources,
                              partition_key=key(d)).success
    assert store.read_parquet(paths.USERS)["signup_day"].max() == day - 1   # the day's users are not known yet

    result = dg.materialize([daily_online_features], resources=resources, partition_key=key(day))
    assert result.success and all(e.passed for e in checks(result).values()), \
        {n: e.description for n, e in checks(result).items()}
    users = store.read_parquet(paths.USERS)
    new_users = users[users["signup_day"] == day]
    assert len(new_users) > 0 and meta(result, "daily_online_features")["new_users"] == len(new_users)
    assert any(m.asset_key == dg.AssetKey("users") for m in
               (e.event_specific_data.materialization for e in result.get_asset_materialization_events()))

    # at serving: the user lookup stage reads the new users' own age and gender (not the cold-start defaults)
    from recsys_assets.serving.executor import StageContext
    from recsys_assets.serving.runtime import server_environ
    from recsys_assets.serving.stages.feast_user_lookup import FeastUserLookup

    environ = {**server_environ(f"redis://127.0.0.1:{valkey.port}", store.uri(paths.FEAST_REGISTRY)),
               "RECSYS_ARTIFACTS": store.root}
    lookup = FeastUserLookup(StageContext("feast_user_lookup", environ=environ, params={"MEAN_AGE": "33.5"}))
    snapshot = store.read_parquet(paths.user_top_category(day)).set_index("user_id")["top_category"]
    for row in new_users.head(5).itertuples():
        out = lookup(user_id=np.array([row.user_id]))
        assert out["known_user_id"].tolist() == [row.user_id]
        assert out["age"].tolist() == [float(row.age)] and out["gender"].tolist() == [{"F": 0, "M": 1}[row.gender]]
        if row.user_id in snapshot.index:
            assert out["top_category"].tolist() == [int(snapshot[row.user_id])]
    assert lookup(user_id=np.array([int(users["user_id"].max()) + 1]))["known_user_id"].tolist() == [-1]

    # popularity over a sliding window: a longer window and the next day change the published order
    layout = KeyLayout.make()

    def published(day_, window_days, force=False):
        res = dg.materialize([daily_popularity_tables], resources=resources, partition_key=key(day_),
                             run_config={"ops": {"daily_popularity_tables": {"config": {
                                 "window_days": window_days, "force": force}}}})
        assert res.success and all(e.passed for e in checks(res).values())
        with contextlib.closing(valkey.endpoint.client(db=layout.popularity.db)) as client:
            return meta(res, "daily_popularity_tables"), pop.top_items(client, layout.popularity.prefix, 20, day_)

    short_meta, short = published(2, 1)
    assert short_meta["published"] and short_meta["window"] == "days 02-02"
    long_meta, long = published(3, 4)
    assert long_meta["window"] == "days 00-03" and long != short
    clicks = pd.concat([store.read_parquet(paths.raw_interactions(d)) for d in range(4)])
    counts = clicks.loc[clicks["click"] == 1, "item_id"].value_counts()
    assert int(counts.get(long[0], 0)) == int(counts.max())
    stale_meta, current = published(2, 1)                         # a backfill of an older day: not published
    assert stale_meta["published"] is False and current == long

    # the item cache of a running lookup stage re-reads Feast when the daily refresh bumps the signal
    from recsys_assets.serving.runtime import Runtime
    from recsys_assets.serving.stages.feast_item_lookup import SIGNAL_KEY, FeastItemLookup

    catalogue = store.read_parquet(paths.ITEMS)
    snap = tmp_path / "item_lookup"
    snap.mkdir()
    catalogue[["item_id", "category_l1", "category_l2", "item_gender", "price", "available_from_day"]].to_parquet(
        snap / "items.parquet", index=False)
    stage = FeastItemLookup(StageContext("feast_item_lookup", model_dir=snap, environ=environ,
                                         params={"ITEM_CACHE_REFRESH_S": "0", "ITEM_CACHE_SIGNAL_S": "0.2"}))
    try:
        item = int(catalogue.loc[catalogue["available_from_day"] == 0, "item_id"].iloc[0])
        changed = catalogue.loc[[item], ["item_id", "price", "category_l1", "category_l2", "item_gender"]].assign(
            price=777.0, event_timestamp=pd.Timestamp("2030-01-01", tz="UTC"))
        Runtime.from_environ(environ).feature_store().write_to_online_store("item_features", changed)
        time.sleep(0.6)
        assert stage(item_ids=np.array([item]))["price"].tolist() != [777.0]   # no signal, no refresh
        with contextlib.closing(valkey.endpoint.client(db=layout.popularity.db)) as client:
            client.incr(layout.popularity.prefix + SIGNAL_KEY)
        deadline = time.monotonic() + 20
        while stage(item_ids=np.array([item]))["price"].tolist() != [777.0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stage(item_ids=np.array([item]))["price"].tolist() == [777.0]
    finally:
        stage.close()


# -- the list as served, on a tiny release --------------------------------------------------------------------------
@pytest.mark.integration
def test_the_replay_evaluation_runs_on_a_tiny_release(tmp_path_factory, resources):
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
    from recsys_assets.release.repository import ServingDefaults, build_repository
    from recsys_assets.release.tiny import publish_online_state, serving_environ
    from tests.release.tiny_serving import tiny_artifacts

    work = tmp_path_factory.mktemp("served")
    tiny = tiny_artifacts(tmp_path_factory)
    root = work / "artifacts"
    store = ArtifactStore(root)
    world = World(seed=7, scale="tiny")
    day = 5
    dataset.write_items(store, world)
    dataset.write_users(store, world, day)
    for d in range(day - 2, day + 1):
        dataset.write_day(store, world, d)
    shutil.copytree(tiny.trained.transforms_dir, store.uri(paths.SERVING_TRANSFORMS))   # the release's vocabulary
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    server = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", root)
        publish_online_state(tiny, environ)
        build_repository(work / "repo", tiny.trained, ServingDefaults(sampling_seed=5), tiny.start_date, release=1)
        server = TritonServer(work / "repo", env=environ, exit_timeout=2, workdir=work / "triton")
        server.start(models=["ensemble_model"], timeout=900)
        result = dg.materialize(
            [served_list_evaluation], partition_key=key(day),
            resources={"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(seed=7, scale="tiny"),
                       "served_ensemble": ServedEnsemble(url=server.http_url)},
            run_config={"ops": {"served_list_evaluation": {"config": {"requests_per_split": 12}}}})
    finally:
        if server is not None:
            server.stop()
        valkey.stop()
    assert result.success
    found = checks(result)
    assert found["replayed"].passed and found["no_failed_requests"].passed, found["no_failed_requests"].description
    m = meta(result, "served_list_evaluation")
    assert m["evaluated"] is True and m["failed_calls"] == 0 and m["served_calls"] == 2 * m["requests"]
    assert "user vocabulary" in m["known_users"]
    table = store.read_parquet(paths.served_evaluation(day, "parquet"))
    assert set(table["method"]) == set(se.METHODS) and {"warm", "new", "anonymous", "all"} <= set(table["split"])
    assert (table["mean_length"] == 10).all()                                 # every list is full
    for method in ("served", "served_diverse"):
        assert 0 < se.metric(table, method, "all", "coverage") <= 1
        assert 0 <= se.metric(table, method, "all", "diversity") <= 1
    assert se.metric(table, "oracle", "all", "recall@10") > 0
    record = json.loads(store.read_bytes(paths.served_evaluation(day, "json")))
    assert record["fingerprint"] == m["fingerprint"] and "served/all/recall@10" in record["metrics"]
    assert store.exists(paths.served_evaluation(day, "png"))
    # the primary measure: true expected clicks with capture per split, and the check judged by it
    true = store.read_parquet(paths.served_evaluation(day, "true.parquet"))
    assert {"served", "served_diverse", "popularity", "oracle_no_taste", "context_ceiling"} <= set(true["method"])
    assert m["measure"] == policy_value.TRUTH_MEASURE and {"capture/served/warm", "capture/served/anonymous"} <= set(m)
    assert "true expected clicks" in found["served_beats_popularity"].description
    assert record["true"]["fingerprint"] == m["fingerprint"] and "served/warm/value" in record["true"]["metrics"]
