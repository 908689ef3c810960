"""A user's history features in the online store, read and written through Feast's APIs (no key format of our own).

``top_category`` (view ``user_top_category``) and ``interest_1..3`` (view ``user_interests``) are read with the
provider's ``online_read`` (one round trip per view; it also returns the value's event time) and written through
Feast's push path (``store.push(source, df)`` with the default ``PushMode.ONLINE``, which writes every view fed by
that push source). The interest weights (view ``user_interest_weights``, the latest end-of-day snapshot) are only
read: the click path adds its clicks to them (``lib.top_category.interests_after_clicks``) and pushes the codes.
The offline side is not written per click: training recomputes the history point in time from the landed events
(``live_interactions``).

Event times: Feast's Redis store keeps a value only when its event time is *later, in whole seconds,* than the
stored one (an equal second is silently skipped). A click's value is pushed with the click's timestamp, moved
to one second after the stored event time when it is not later (two clicks in one second, a late click, or a
batch snapshot time-stamped at the end of the click's day), so the newest click always wins.

The FeatureStore is opened on first use (importing Feast and reading the registry takes seconds); a failure to
open it is reported as :class:`OnlineStoreUnavailable` with the reason, and the next call tries again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from recsys_assets.lib import feast_store
from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.top_category import INTEREST_WEIGHTS

# view -> (its push source or None, its features)
VIEWS = {
    "user_top_category": ("user_top_category_push", ("top_category",)),
    "user_interests": ("user_interests_push", INTERESTS),
    "user_interest_weights": (None, (INTEREST_WEIGHTS,)),
}


class OnlineStoreUnavailable(RuntimeError):
    """The Feast repository cannot be opened (no registry yet, unreadable yaml) or its store is unreachable."""


def open_feature_store(repo_dir: Path, yaml_file: str, environ: Mapping[str, str]):
    """A ``FeatureStore`` over ``repo_dir/yaml_file`` with ``${VAR}`` expanded from ``environ`` (not os.environ)."""
    try:
        return feast_store.open_feature_store(repo_dir, yaml_file, environ)
    except feast_store.FeastRepoError as exc:
        raise OnlineStoreUnavailable(str(exc)) from exc


@dataclasses.dataclass(frozen=True)
class StoredInterests:
    """A user's interests as stored: the codes (None: never written) and the latest snapshot's weights (None:
    none), each with its event time in Unix seconds."""
    codes: tuple[int, ...] | None
    codes_at: int | None
    weights: np.ndarray | None
    weights_at: int | None


class UserHistoryStore:
    """Read and push one user's ``top_category`` and ``interest_1..3`` through Feast."""

    def __init__(self, repo_dir: Path, yaml_file: str, environ: Mapping[str, str]) -> None:
        self.repo_dir = Path(repo_dir)
        self.yaml_file = yaml_file
        self.environ = dict(environ)
        self._store = None
        self._views = None
        self._provider = None
        self._lock = threading.Lock()

    def _open(self):
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        store = open_feature_store(self.repo_dir, self.yaml_file, self.environ)
                        views = {name: store.get_feature_view(name) for name in VIEWS}
                        for source, _ in VIEWS.values():
                            if source is not None:
                                store.get_data_source(source)
                        from feast.infra.provider import get_provider

                        provider = get_provider(store.config)
                    except OnlineStoreUnavailable:
                        raise
                    except Exception as exc:
                        raise OnlineStoreUnavailable(
                            f"the Feast repository {self.repo_dir} cannot be used ({type(exc).__name__}: {exc}): "
                            "materialize online_features first (it applies the registry)") from exc
                    self._store, self._views, self._provider = store, views, provider
        return self._store

    def warm(self) -> None:
        """Open the store now (at startup), so the first click does not pay for it."""
        self._open()

    def _read(self, view: str, user_id: int) -> tuple[dict, int | None]:
        """The view's stored feature protos by name (absent: never written) and their event time."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        store = self._open()
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(user_id))])
        ts, values = self._provider.online_read(config=store.config, table=self._views[view], entity_keys=[key],
                                                requested_features=list(VIEWS[view][1]))[0]
        present = {name: proto for name, proto in (values or {}).items()
                   if proto is not None and proto.WhichOneof("val") is not None}
        return present, _seconds(ts)

    def read(self, user_id: int) -> tuple[int | None, int | None]:
        """``(top_category, event time in Unix seconds)`` as stored; ``(None, None)`` for a user never written."""
        values, ts = self._read("user_top_category", user_id)
        proto = values.get("top_category")
        return (None if proto is None else int(proto.int64_val)), ts

    def read_interests(self, user_id: int) -> StoredInterests:
        values, codes_at = self._read("user_interests", user_id)
        codes = (tuple(int(values[name].int64_val) for name in INTERESTS) if all(n in values for n in INTERESTS)
                 else None)
        weights, weights_at = self._read("user_interest_weights", user_id)
        proto = weights.get(INTEREST_WEIGHTS)
        return StoredInterests(codes, codes_at, None if proto is None else np.asarray(proto.float_list_val.val,
                                                                                      np.float64), weights_at)

    def _push(self, view: str, user_id: int, values: dict, timestamp: int) -> None:
        import pandas as pd

        store = self._open()
        frame = pd.DataFrame({"user_id": [int(user_id)], **{k: [int(v)] for k, v in values.items()},
                              "event_timestamp": [pd.Timestamp(int(timestamp), unit="s", tz="UTC")]})
        store.push(VIEWS[view][0], frame)

    def push(self, user_id: int, top_category: int, timestamp: int) -> None:
        self._push("user_top_category", user_id, {"top_category": top_category}, timestamp)

    def push_interests(self, user_id: int, codes, timestamp: int) -> None:
        self._push("user_interests", user_id, dict(zip(INTERESTS, codes, strict=True)), timestamp)


def _seconds(ts) -> int | None:
    if ts is None:
        return None
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        return int(ts.timestamp())
    return int(ts)


def push_time(click_timestamp: int, stored_event_time: int | None) -> int:
    """The event time to push a click's value with: the click's, or one second past what is stored."""
    if stored_event_time is None:
        return int(click_timestamp)
    return max(int(click_timestamp), int(stored_event_time) + 1)
