import contextlib
import datetime as dt
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_assets.defs.feature_store import tables as t
from recsys_assets.defs.feature_store.assets import offline_features, online_features, popularity_tables
from recsys_assets.defs.feature_store.resources import FEATURE_REPO, FeastRepo, FeastResource, ValkeyResource
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest import assets as ingest
from recsys_assets.lib import paths
from recsys_assets.lib import popularity as pop
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.valkey_server import KeyLayout, free_port, ping

DAYS = [0, 1]


def _key(day: int) -> str:
    return f"2026-01-{day + 1:02d}"


def _materialize_upstream(resources, top_category_days=DAYS):
    assert dg.materialize([ingest.items, ingest.users], resources=resources).success
    for d in DAYS:
        assert dg.materialize([ingest.raw_interactions], resources=resources, partition_key=_key(d)).success
    for d in top_category_days:
        assert dg.materialize([user_top_category], resources=resources, partition_key=_key(d)).success


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.integration
def test_offline_online_push_and_popularity_on_a_real_valkey(resources, valkey):
    resources = {**resources, "valkey": ValkeyResource(url=f"redis://127.0.0.1:{valkey.port}"),
                 "feast": FeastResource()}
    _materialize_upstream(resources)
    result = dg.materialize(
        [offline_features, online_features, popularity_tables], resources=resources,
        run_config={"ops": {"popularity_tables": {"config": {"days": DAYS}}}},
    )
    assert result.success
    checks = _checks(result)
    assert checks and all(e.passed for e in checks.values()), {n: e.description for n, e in checks.items()}
    meta = result.asset_materializations_for_node("online_features")[0].metadata
    store = ArtifactStore(resources["artifacts"].root)
    users = store.read_parquet(paths.USERS)
    catalogue = store.read_parquet(paths.ITEMS)
    assert meta["users"].value == len(users) and meta["items"].value == len(catalogue)

    # read back through Feast, as serving will
    repo = resources["feast"].repo(store, resources["valkey"])
    fs = repo.store()
    snapshot = store.read_parquet(paths.user_top_category(DAYS[-1])).set_index("user_id")["top_category"]
    clicker = int(snapshot.index[0])
    never_clicked = int(np.setdiff1d(users["user_id"], snapshot.index)[0])
    rows = fs.get_online_features(features=fs.get_feature_service("user_features"),
                                  entity_rows=[{"user_id": clicker}, {"user_id": never_clicked}]).to_dict()
    by_id = users.set_index("user_id")
    assert rows["age"] == [int(by_id.at[clicker, "age"]), int(by_id.at[never_clicked, "age"])]
    assert rows["gender"] == [by_id.at[clicker, "gender"], by_id.at[never_clicked, "gender"]]
    assert rows["top_category"] == [int(snapshot.at[clicker]), -1]

    probe = [0, 1, len(catalogue) - 1]
    items = fs.get_online_features(
        features=["item_features:price", "item_features:category_l1", "item_features:category_l2",
                  "item_features:item_gender"],
        entity_rows={"item_id": probe}).to_dict()
    expected = catalogue.set_index("item_id").loc[probe]
    assert items["price"] == pytest.approx(expected["price"].tolist())
    assert items["category_l1"] == expected["category_l1"].tolist()
    assert items["category_l2"] == expected["category_l2"].tolist()
    assert items["item_gender"] == expected["item_gender"].tolist()
    # unknown entities come back empty (serving's cold-start path)
    unknown = fs.get_online_features(features=fs.get_feature_service("user_features"),
                                     entity_rows=[{"user_id": 10**9}]).to_dict()
    assert unknown["age"] == [None] and unknown["top_category"] == [None]

    # a click updates top_category in real time through the push source
    new_value = (int(snapshot.at[clicker]) + 1) % 20
    fs.push("user_top_category_push", pd.DataFrame({
        "user_id": [clicker], "top_category": [new_value],
        "event_timestamp": [pd.Timestamp.now(tz="UTC")]}))
    again = fs.get_online_features(features=["user_top_category:top_category", "user_profile:age"],
                                   entity_rows=[{"user_id": clicker}]).to_dict()
    assert again["top_category"] == [new_value] and again["age"] == [int(by_id.at[clicker, "age"])]
    # the interests the same way (their own push source), and the weights of the latest snapshot read back
    fs.push("user_interests_push", pd.DataFrame({
        "user_id": [clicker], "interest_1": [new_value], "interest_2": [-1], "interest_3": [-1],
        "event_timestamp": [pd.Timestamp.now(tz="UTC")]}))
    weights = fs.get_online_features(features=["user_interests:interest_1", "user_interest_weights:interest_weights"],
                                     entity_rows=[{"user_id": clicker}, {"user_id": never_clicked}]).to_dict()
    latest = store.read_parquet(paths.user_top_category(DAYS[-1])).set_index("user_id")
    assert weights["interest_1"][0] == new_value
    np.testing.assert_allclose(weights["interest_weights"][0], latest.at[clicker, "interest_weights"])
    if never_clicked not in latest.index:  # never shown anything by the last day: zeros from signup
        assert weights["interest_weights"][1] == [0.0] * len(latest.at[clicker, "interest_weights"])

    # popularity tables read back in click-count order, from db 3, without items not yet available
    clicks = pd.concat([store.read_parquet(paths.raw_interactions(d)) for d in DAYS])
    counts = clicks.loc[clicks["click"] == 1, "item_id"].value_counts()
    layout = KeyLayout.make()
    with contextlib.closing(valkey.endpoint.client(db=layout.popularity.db)) as client:
        top = pop.top_items(client, layout.popularity.prefix, 20, day=DAYS[-1])
        assert [int(counts.get(i, 0)) for i in top] == sorted(counts.reindex(top, fill_value=0), reverse=True)
        assert int(counts.get(top[0], 0)) == int(counts.max())
        late = set(catalogue.loc[catalogue["available_from_day"] > DAYS[-1], "item_id"])
        assert not late & set(pop.top_items(client, layout.popularity.prefix, len(catalogue), day=DAYS[-1]))
        category = catalogue.at[top[0], "category_l1"]
        in_category = pop.top_items(client, layout.popularity.prefix, 5, day=DAYS[-1], category_l1=category)
        assert in_category[0] == top[0] and set(catalogue.loc[in_category, "category_l1"]) == {category}
    with contextlib.closing(valkey.endpoint.client(db=layout.feast.db)) as client:
        assert client.dbsize() >= len(users) + len(catalogue)  # Feast's hashes, one per entity


def test_a_missing_top_category_day_fails_the_blocking_check_naming_the_partition(resources):
    _materialize_upstream(resources, top_category_days=[])
    # only day 01 of user_top_category: day 00 is missing
    for d in DAYS:
        dg.materialize([user_top_category], resources=resources, partition_key=_key(d))
    ArtifactStore(resources["artifacts"].root).delete(paths.user_top_category(0))
    result = dg.materialize([offline_features], resources=resources, raise_on_error=False)
    evaluation = _checks(result)["top_category_days"]
    assert not evaluation.passed and "2026-01-01" in evaluation.description
    assert not ArtifactStore(resources["artifacts"].root).exists(paths.FEAST_USERS)
    assert not result.asset_materializations_for_node("offline_features")  # nothing recorded as materialized


def test_popularity_names_a_missing_partition(resources):
    dg.materialize([ingest.items], resources=resources)
    dg.materialize([ingest.raw_interactions], resources=resources, partition_key=_key(0))
    resources = {**resources, "valkey": ValkeyResource(url="redis://127.0.0.1:1")}  # never reached
    result = dg.materialize([popularity_tables], resources=resources, raise_on_error=False,
                            run_config={"ops": {"popularity_tables": {"config": {"days": [0, 1]}}}})
    evaluation = _checks(result)["window_complete"]
    assert not evaluation.passed and "2026-01-02" in evaluation.description
    assert not result.asset_materializations_for_node("popularity_tables")


# -- the offline tables, without services --------------------------------------------------------------------------
USERS = pd.DataFrame({"user_id": [0, 1, 2], "age": [30, 40, 50], "gender": ["F", "M", "F"],
                      "signup_day": [0, 0, 1], "signup_timestamp": [0, 0, 86_400]})


def _snapshot(day, values):
    return pd.DataFrame({"user_id": list(values), "top_category": list(values.values()),
                         "event_timestamp": pd.to_datetime([(day + 1) * 86_400] * len(values), unit="s", utc=True)})


def test_top_category_history_keeps_changes_only():
    history = t.top_category_history(USERS, {0: _snapshot(0, {0: 3}), 1: _snapshot(1, {0: 3, 1: 5}),
                                             2: _snapshot(2, {0: 4, 1: 5})})
    as_tuples = [(u, c, int(ts.timestamp() // 86_400)) for u, c, ts in history.itertuples(index=False)]
    assert as_tuples == [(0, -1, 0), (0, 3, 1), (0, 4, 3), (1, -1, 0), (1, 5, 2), (2, -1, 1)]
    assert str(history["event_timestamp"].dt.tz) == "UTC"


def test_interest_weights_keep_the_latest_snapshot_and_zeros_for_users_without_one():
    def snapshot(day, weights):
        return pd.DataFrame({"user_id": list(weights), "interest_weights": [np.float32(w) for w in weights.values()],
                             "event_timestamp": pd.Timestamp((day + 1) * 86_400, unit="s", tz="UTC")})

    table = t.interest_weights_table(USERS, {0: snapshot(0, {0: [1.0, 0.0]}), 1: snapshot(1, {1: [0.5, 2.0]})}, 2)
    got = [(u, np.asarray(w).tolist(), int(ts.timestamp() // 86_400)) for u, w, ts in table.itertuples(index=False)]
    assert got == [(0, [0.0, 0.0], 0), (1, [0.5, 2.0], 2), (2, [0.0, 0.0], 1)]  # user 0 is not in the latest
    assert not t.value_problems({"user_interest_weights": table}, ("a", "b"))
    bad = table.assign(interest_weights=[np.array([-1.0, 0.0], np.float32)] + list(table["interest_weights"][1:]))
    assert [str(p).split(":")[0] for p in t.value_problems({"w": bad}, ("a", "b"))] == ["w.interest_weights"]


def test_coverage_and_value_problems_name_table_and_column():
    items = pd.DataFrame({"item_id": [0, 1], "price": [1.0, np.nan], "category_l1": ["books", "toys"],
                          "category_l2": ["a", "b"], "item_gender": ["U", "F"], "available_from_day": [0, 0]})
    tables = {"users": t.users_table(USERS.iloc[:2]), "items": t.items_table(items, dt.date(2026, 1, 1))}
    coverage = t.coverage_problems(tables, user_ids=[0, 1, 2], item_ids=[0, 1])
    assert [str(p).split(":")[0] for p in coverage] == ["users.user_id"] and "[2]" in str(coverage[0])
    values = {str(p).split(":")[0] for p in t.value_problems(tables)}
    assert values == {"items.price", "items.category_l1"}


# -- resources -------------------------------------------------------------------------------------------------
def test_embedded_valkey_resource_starts_and_stops_with_the_step(tmp_path):
    port = free_port()
    resource = ValkeyResource(data_dir=str(tmp_path / "valkey"), port=port, keep_running=False)
    with dg.build_resources({"valkey": resource}) as built:
        assert built.valkey.feast_online_store() == f"127.0.0.1:{port},db=0"
        assert ping("127.0.0.1", port) and "started here" in built.valkey.describe()
        with contextlib.closing(built.valkey.client("popularity")) as client:
            assert client.connection_pool.connection_kwargs["db"] == 3
    assert not ping("127.0.0.1", port)
    assert (tmp_path / "valkey" / "appendonlydir").is_dir()


def test_k8s_configuration_loads_with_athena_and_a_cluster_online_store(monkeypatch):
    from feast.repo_config import load_repo_config
    from feast.repo_operations import parse_repo

    env = {"RECSYS_PROFILE": "k8s", "RECSYS_AWS_REGION": "eu-west-1", "RECSYS_ATHENA_DATABASE": "recsys",
           "RECSYS_ATHENA_WORKGROUP": "primary", "RECSYS_ATHENA_STAGING": "s3://bucket/athena/"}
    repo = FeastRepo(registry="s3://bucket/prefix/feature_store/registry.db",
                     online_store="cache.example:6379,ssl=true,password=pw", artifacts="s3://bucket/prefix",
                     profile="k8s", yaml_file="feature_store.k8s.yaml")
    for k, v in {**env, **repo.environ()}.items():
        monkeypatch.setenv(k, v)
    # Feast's own loader, which expands ${VAR} from the environment
    config = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.k8s.yaml")
    assert config.offline_store.type == "athena" and config.offline_store.region == "eu-west-1"
    assert config.online_store.redis_type == "redis_cluster"
    assert config.registry.path.startswith("s3://")

    monkeypatch.syspath_prepend(str(FEATURE_REPO))
    try:
        contents = parse_repo(Path(FEATURE_REPO))
    finally:
        sys.modules.pop("features", None)
    kinds = {type(s).__name__ for s in contents.data_sources}
    assert kinds == {"AthenaSource", "PushSource"}
    assert {fv.name for fv in contents.feature_views} == {"user_profile", "user_top_category", "user_interests",
                                                            "user_interest_weights", "item_features"}
    assert [s.name for s in contents.feature_services] == ["user_features"]
