"""``feast_user_lookup``: a user's age, gender and history codes from the online store, through Feast's API.

Input ``user_id`` INT64 [1] (checked by ``context_preprocessor``). Outputs (each [1]): ``known_user_id`` INT64,
``age`` FP64, ``gender`` INT64 (0 F, 1 M, -1 unknown) and the history codes ``top_category``, ``interest_1..3``
INT64 (``lib.feature_spec.USER_HISTORY``, -1 none).

Cold start (DESIGN.md Serving graph): an anonymous request (-1) or a user the online store does not know gets
``known_user_id`` -1, the training mean age (``MEAN_AGE``, injected by the repository build), gender -1 and
-1 for every history code: exactly what the masked training rows carry. A known user with a missing feature gets that
feature's default. When Valkey cannot be reached the request is served with the same defaults (counted in
``recsys_degraded_requests_total{stage="feast_user_lookup"}``) and the lookup resumes once Valkey answers.

Parameters: ``MEAN_AGE`` (required), ``USER_FEATURE_SERVICE`` (default ``user_features``), ``FEAST_READ``:
``provider`` (default) reads the service's feature views through Feast's Redis online store (its own entity-key
serialization, field hashing and value decoding): the views of one entity share one Redis hash, so all of them
come back in one HMGET, one round trip (~0.25 ms; other online stores: the provider's ``online_read`` per view),
or ``sdk`` calls
``FeatureStore.get_online_features`` (the seed's way, ~6 ms of Feast bookkeeping per request on this machine). The
views have no TTL (ttl 0), so both give the same values. The Feast repository and its registry/online store come
from the server's environment (``serving.runtime``).
"""

from __future__ import annotations

import numpy as np

from recsys_assets.lib.feature_spec import USER_HISTORY, encode_gender
from recsys_assets.serving.common import scalar
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext
from recsys_assets.serving.runtime import Breaker, Runtime, ValkeyUnavailable


def _first(values) -> object:
    return values[0] if values else None


class FeastUserLookup(Stage):
    inputs = ("user_id",)
    outputs = ("known_user_id", "age", "gender", *USER_HISTORY)

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.mean_age = ctx.param_float("MEAN_AGE")
        service_name = ctx.param("USER_FEATURE_SERVICE", "user_features")
        self.runtime = Runtime.from_environ(ctx.environ)
        ctx.declare_degraded("valkey_unreachable")
        self.breaker = Breaker("Valkey (Feast online store)", ctx.log,
                               retry_after_s=ctx.param_float("RETRY_AFTER_S", 1.0))
        try:
            self.store = self.runtime.feature_store()
            self.service = self.store.get_feature_service(service_name)
        except Exception as exc:
            raise StageConfigError(f"Feast feature service {service_name!r} cannot be read from "
                                   f"{self.runtime.feast_repo}: {exc} (materialize online_features first)") from exc
        names = {f.name for projection in self.service.feature_view_projections for f in projection.features}
        missing = {"age", "gender", *USER_HISTORY} - names
        if missing:
            raise StageConfigError(f"feature service {service_name!r} lacks {sorted(missing)}")
        self.read_mode = ctx.param("FEAST_READ", "provider")
        if self.read_mode not in ("provider", "sdk"):
            raise StageConfigError(f"FEAST_READ={self.read_mode!r}: expected provider or sdk")
        from feast.infra.provider import get_provider

        self.provider = get_provider(self.store.config)
        self.views = [(self.store.get_feature_view(p.name), [f.name for f in p.features])
                      for p in self.service.feature_view_projections]
        self._one_hash = self._redis_fields()

    def _redis_fields(self):
        """For Feast's Redis store: (store, [(view name, requested names, field count)], all hash fields)."""
        online = getattr(self.provider, "online_store", None)
        if type(online).__name__ != "RedisOnlineStore" or not hasattr(online, "_generate_hset_keys_for_features"):
            return None
        layout, fields = [], []
        for view, features in self.views:
            requested, hset_keys = online._generate_hset_keys_for_features(view, list(features))
            layout.append((view.name, requested, len(hset_keys)))
            fields += hset_keys
        return online, layout, fields

    def _read_one_hash(self, key) -> dict:
        """Every view's values from the entity's one Redis hash, in one round trip (Feast's layout and decoding)."""
        online, layout, fields = self._one_hash
        config = self.store.config
        [redis_key] = online._generate_redis_keys_for_entities(config, [key])
        values = online._get_client(config.online_store).hmget(redis_key, fields)
        out, start = {}, 0
        for view_name, requested, count in layout:
            _, decoded = online._get_features_for_entity(values[start:start + count], view_name, list(requested))
            out.update(decoded or {})
            start += count
        return out

    def defaults(self) -> dict[str, np.ndarray]:
        return self._row(-1, self.mean_age, -1, {})

    @staticmethod
    def _row(user_id: int, age: float, gender: int, history: dict[str, int]) -> dict[str, np.ndarray]:
        return {"known_user_id": np.array([user_id], np.int64), "age": np.array([age], np.float64),
                "gender": np.array([gender], np.int64),
                **{name: np.array([history.get(name, -1)], np.int64) for name in USER_HISTORY}}

    def lookup(self, user_id: int) -> dict[str, list]:
        """Feast's answer for one user: ``{feature: [value or None]}``."""
        if self.read_mode == "sdk":
            return self.store.get_online_features(features=self.service,
                                                  entity_rows=[{"user_id": user_id}]).to_dict()
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user_id)])
        out: dict[str, list] = {}
        if self._one_hash is not None:
            protos = self._read_one_hash(key)
            for _, features in self.views:
                for name in features:
                    proto = protos.get(name)
                    out[name] = [None if proto is None or not proto.WhichOneof("val")
                                 else feast_value_type_to_python_type(proto)]
            return out
        for view, features in self.views:
            # A copy: Feast's Redis store appends its timestamp field to the list it is given.
            _, values = self.provider.online_read(config=self.store.config, table=view, entity_keys=[key],
                                                  requested_features=list(features))[0]
            for name in features:
                proto = (values or {}).get(name)
                out[name] = [None if proto is None else feast_value_type_to_python_type(proto)]
        return out

    def __call__(self, user_id):
        uid = int(scalar(user_id, "user_id"))
        if uid < 0:
            return self.defaults()
        try:
            row = self.breaker.call(lambda: self.lookup(uid))
        except ValkeyUnavailable:
            self.ctx.degraded("valkey_unreachable")
            return self.defaults()
        age, gender = _first(row.get("age")), _first(row.get("gender"))
        history = {name: _first(row.get(name)) for name in USER_HISTORY}
        if age is None and gender is None and all(v is None for v in history.values()):
            return self.defaults()  # not in the online store: a new user
        gender_code = encode_gender([gender])[0] if isinstance(gender, str) or gender is None else int(gender)
        return self._row(uid, self.mean_age if age is None else float(age), gender_code,
                         {name: int(v) for name, v in history.items() if v is not None})
