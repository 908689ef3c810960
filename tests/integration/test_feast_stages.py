"""The two Feast stages against the real thing: the project's Feast repository applied and materialized into a
real Valkey (tiny world), read through Feast's own APIs."""

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib.feature_spec import USER_HISTORY
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from recsys_assets.serving.executor import StageContext
from recsys_assets.serving.common import unpack_text
from recsys_assets.serving.stages.feast_item_lookup import FeastItemLookup
from recsys_assets.serving.stages.feast_user_lookup import FeastUserLookup
from recsys_assets.release.tiny import publish_online_state, serving_environ
from tests.release.tiny_serving import tiny_artifacts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    work = tmp_path_factory.mktemp("feast")
    tiny = tiny_artifacts(tmp_path_factory)
    valkey = EmbeddedValkey(work / "valkey", port=free_port()).start()
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", work / "artifacts")
        state = publish_online_state(tiny, environ)
        yield tiny, environ, state, valkey
    finally:
        valkey.stop()


def user_stage(environ, **params):
    return FeastUserLookup(StageContext("feast_user_lookup", environ=environ,
                                        params={"MEAN_AGE": "33.5", **params}))


def test_known_users_get_their_features_and_unknown_ones_the_cold_start_defaults(online):
    tiny, environ, state, _ = online
    stage = user_stage(environ)
    row = tiny.users.iloc[4]
    out = stage(user_id=np.array([int(row.user_id)]))
    assert out["known_user_id"].tolist() == [int(row.user_id)]
    assert out["age"].tolist() == [float(row.age)]
    assert out["gender"].tolist() == [{"F": 0, "M": 1}[row.gender]]
    for name in USER_HISTORY:  # what the offline tables hold is what serving reads (one HMGET, two views)
        assert out[name].tolist() == [state[name][int(row.user_id)]], name
    for unknown in (-1, 10**9):
        out = stage(user_id=np.array([unknown]))
        assert {k: v.tolist() for k, v in out.items()} == {"known_user_id": [-1], "age": [33.5], "gender": [-1],
                                                           **{name: [-1] for name in USER_HISTORY}}


def test_provider_reads_equal_the_sdk_and_do_not_grow_with_requests(online):
    tiny, environ, _, _ = online
    fast, sdk = user_stage(environ), user_stage(environ, FEAST_READ="sdk")
    sizes = [len(features) for _, features in fast.views]
    for uid in tiny.users["user_id"].tolist()[:30] + [10**9]:
        a, b = fast(user_id=np.array([uid])), sdk(user_id=np.array([uid]))
        assert {k: v.tolist() for k, v in a.items()} == {k: v.tolist() for k, v in b.items()}
    # Feast's Redis store appends to the feature list it is handed: the stage must hand it a copy every time
    assert [len(features) for _, features in fast.views] == sizes


def test_item_cache_is_read_through_feast_at_load_and_refreshes_without_restart(online, tmp_path):
    tiny, environ, _, valkey = online
    items = pd.read_parquet(tiny.trained.items)
    items.to_parquet(tmp_path / "items.parquet", index=False)
    ctx = StageContext("feast_item_lookup", model_dir=tmp_path, environ=environ,
                       params={"ITEM_CACHE_REFRESH_S": "0"})
    stage = FeastItemLookup(ctx)
    try:
        assert stage.table.source == "feast" and stage.table.size == len(items)
        ids = np.array([0, 5, len(items) - 1])
        out = stage(item_ids=ids)
        assert unpack_text(out["category_l1"]).tolist() == [c.encode() for c in items.loc[ids, "category_l1"]]
        assert np.allclose(out["price"], items.loc[ids, "price"])
        from recsys_assets.serving.runtime import Runtime

        store = Runtime.from_environ(environ).feature_store()
        changed = items.loc[[5]].assign(price=999.0, event_timestamp=pd.Timestamp("2030-01-01", tz="UTC"))
        store.write_to_online_store("item_features", changed[["item_id", "price", "category_l1", "category_l2",
                                                               "item_gender", "event_timestamp"]])
        assert stage(item_ids=np.array([5]))["price"].tolist() != [999.0]  # cached until a refresh
        assert stage.refresh() is True
        assert stage(item_ids=np.array([5]))["price"].tolist() == [999.0]
        assert ctx.metrics.value("recsys_degraded_requests_total") == 0
    finally:
        stage.close()
