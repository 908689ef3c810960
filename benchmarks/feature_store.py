"""Feature lookups: Feast's SDK against a direct Valkey read of the same keys and an in-memory item cache.

Builds a fresh world (``--scale``, default demo) in a temporary artifact root with the real assets (ingest,
user_top_category of days 00-01, offline_features, online_features into an embedded Valkey on a free port),
then times, over ``--reps`` repetitions (random ids each time, after a warm-up):

- 1 user (age, gender, top_category) and 300 items (price, category_l1, category_l2, item_gender) through
  ``FeatureStore.get_online_features`` (what the seed did per request);
- the same keys read directly: one pipeline of HMGETs on Feast's hashes (keys and field names from Feast's
  own Redis online store helpers, values decoded with its protobufs), with valkey-py and with redis-py + hiredis
  (the reply parser decides: valkey-py parses in pure Python unless the libvalkey package is installed);
- 300 items from an in-memory cache loaded once through Feast (what serving does for items).

    .venv/bin/python benchmarks/feature_store.py [--scale demo] [--reps 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ITEM_FEATURES = ["price", "category_l1", "category_l2", "item_gender"]
USER_VIEWS = {"user_profile": ["age", "gender"], "user_top_category": ["top_category"]}


def timed(fn, reps: int, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def build(root: Path, scale: str, port: int):
    import dagster as dg

    from recsys_assets.defs.feature_store.assets import offline_features, online_features
    from recsys_assets.defs.feature_store.resources import FeastResource, ValkeyResource
    from recsys_assets.defs.features.assets import user_top_category
    from recsys_assets.defs.ingest import assets as ingest
    from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource

    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "world": WorldResource(scale=scale),
                 "valkey": ValkeyResource(url=f"redis://127.0.0.1:{port}"), "feast": FeastResource()}
    dg.materialize([ingest.items, ingest.users], resources=resources)
    for day in (0, 1):
        key = f"2026-01-0{day + 1}"
        dg.materialize([ingest.raw_interactions], resources=resources, partition_key=key)
        dg.materialize([user_top_category], resources=resources, partition_key=key)
    result = dg.materialize([offline_features, online_features], resources=resources)
    meta = result.asset_materializations_for_node("online_features")[0].metadata
    print(f"online_features: {meta['users'].value} users, {meta['items'].value} items; feast apply "
          f"{meta['seconds_apply'].value} s, materialize {meta['seconds_materialize'].value} s, read-back of every "
          f"id {meta['seconds_verify'].value} s, whole asset {meta['seconds_total'].value} s")
    return resources["feast"].repo(resources["artifacts"].store(), resources["valkey"])


def direct_reader(fs, client, view_features: dict[str, list[str]], entity: str):
    """HMGET of Feast's hashes in one pipeline; keys and fields from Feast's Redis online store, values decoded."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    online = RedisOnlineStore()
    fields = []
    for view, names in view_features.items():
        fv = fs.get_feature_view(view)
        _, hset_keys = online._generate_hset_keys_for_features(fv, list(names))
        fields.extend(hset_keys[:-1])  # the last one is the view's event-time field

    def read(ids):
        keys = online._generate_redis_keys_for_entities(
            fs.config, [EntityKey(join_keys=[entity], entity_values=[Value(int64_val=int(i))]) for i in ids])
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            rows = pipe.execute()
        return [[feast_value_type_to_python_type(Value.FromString(v)) if v is not None else None for v in row]
                for row in rows]

    return read


def item_cache(fs, item_ids: np.ndarray):
    """All item features loaded once through Feast into numpy columns; lookups are array takes."""
    rows = fs.get_online_features(features=[f"item_features:{f}" for f in ITEM_FEATURES],
                                  entity_rows={"item_id": item_ids.tolist()}).to_dict()
    position = {int(i): k for k, i in enumerate(rows["item_id"])}
    columns = {f: np.asarray(rows[f]) for f in ITEM_FEATURES}

    def lookup(ids):
        idx = np.fromiter((position[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        return {f: col[idx] for f, col in columns.items()}

    return lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()

    from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port

    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "valkey", port=free_port()) as server:
        repo = build(Path(tmp) / "artifacts", args.scale, server.port)
        fs = repo.store()
        store_users = fs.get_feature_service("user_features")
        import pandas as pd

        user_ids = pd.read_parquet(Path(repo.artifacts) / "feature_store/offline/users.parquet")["user_id"].to_numpy()
        item_ids = pd.read_parquet(Path(repo.artifacts) / "feature_store/offline/items.parquet")["item_id"].to_numpy()
        rng = np.random.default_rng(0)
        import redis
        import valkey.utils

        client = server.endpoint.client(db=0)  # valkey-py: a pure-Python reply parser unless libvalkey is installed
        hiredis_client = redis.Redis(host=server.host, port=server.port, db=0)  # redis-py + hiredis, as Feast uses
        read_user = direct_reader(fs, client, USER_VIEWS, "user_id")
        read_items = direct_reader(fs, client, {"item_features": ITEM_FEATURES}, "item_id")
        read_items_hiredis = direct_reader(fs, hiredis_client, {"item_features": ITEM_FEATURES}, "item_id")
        parser = "libvalkey" if valkey.utils.LIBVALKEY_AVAILABLE else "pure-Python parser"
        lookup = item_cache(fs, item_ids)

        # the direct read must return what Feast returns
        probe = rng.choice(item_ids, args.items, replace=False)
        via_feast = fs.get_online_features(features=[f"item_features:{f}" for f in ITEM_FEATURES],
                                           entity_rows={"item_id": probe.tolist()}).to_dict()
        direct = read_items(probe)
        assert [r[0] for r in direct] == via_feast["price"] and [r[1] for r in direct] == via_feast["category_l1"]
        cached = lookup(probe)
        assert cached["price"].tolist() == via_feast["price"]

        def one_user_feast():
            fs.get_online_features(features=store_users, entity_rows=[{"user_id": int(rng.choice(user_ids))}])

        def items_feast():
            fs.get_online_features(features=[f"item_features:{f}" for f in ITEM_FEATURES],
                                   entity_rows={"item_id": rng.choice(item_ids, args.items, replace=False).tolist()})

        cases = [
            ("1 user, Feast get_online_features", one_user_feast),
            (f"1 user, direct pipeline, valkey-py ({parser})", lambda: read_user([rng.choice(user_ids)])),
            (f"{args.items} items, Feast get_online_features", items_feast),
            (f"{args.items} items, direct pipeline, valkey-py ({parser})",
             lambda: read_items(rng.choice(item_ids, args.items, replace=False))),
            (f"{args.items} items, direct pipeline, redis-py + hiredis",
             lambda: read_items_hiredis(rng.choice(item_ids, args.items, replace=False))),
            (f"{args.items} items, in-memory cache (dict + numpy take)",
             lambda: lookup(rng.choice(item_ids, args.items, replace=False))),
        ]
        print(f"\nscale {args.scale}, {len(user_ids)} users, {len(item_ids)} items, {args.reps} repetitions each "
              "(times include drawing the random ids)\n")
        print(f"| {'lookup':<58} | p50 ms | p95 ms |")
        print(f"|{'-' * 60}|-------:|-------:|")
        for name, fn in cases:
            ms = timed(fn, args.reps)
            print(f"| {name:<58} | {np.percentile(ms, 50):6.3f} | {np.percentile(ms, 95):6.3f} |")
        client.close()
        hiredis_client.close()


if __name__ == "__main__":
    main()
