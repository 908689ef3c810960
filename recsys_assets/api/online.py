"""``top_category`` in the online store, read and written through Feast's APIs (no key format of our own).

Reading uses the provider's ``online_read`` of the ``user_top_category`` view (one round trip; it also returns
the value's event time). Writing uses Feast's push path: ``store.push("user_top_category_push", df)`` with the
default ``PushMode.ONLINE``, which writes every view fed by that push source. The offline side is not written
per click: training recomputes top_category point in time from the landed events (``live_interactions``).

Event times: Feast's Redis store keeps a value only when its event time is *later, in whole seconds,* than the
stored one (an equal second is silently skipped). A click's value is pushed with the click's timestamp, moved
to one second after the stored event time when it is not later (two clicks in one second, a late click, or a
batch snapshot time-stamped at the end of the click's day), so the newest click always wins.

The FeatureStore is opened on first use (importing Feast and reading the registry takes seconds); a failure to
open it is reported as :class:`OnlineStoreUnavailable` with the reason, and the next call tries again.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from pathlib import Path

from recsys_assets.lib import feast_store

PUSH_SOURCE = "user_top_category_push"
FEATURE_VIEW = "user_top_category"
FEATURE = "top_category"


class OnlineStoreUnavailable(RuntimeError):
    """The Feast repository cannot be opened (no registry yet, unreadable yaml) or its store is unreachable."""


def open_feature_store(repo_dir: Path, yaml_file: str, environ: Mapping[str, str]):
    """A ``FeatureStore`` over ``repo_dir/yaml_file`` with ``${VAR}`` expanded from ``environ`` (not os.environ)."""
    try:
        return feast_store.open_feature_store(repo_dir, yaml_file, environ)
    except feast_store.FeastRepoError as exc:
        raise OnlineStoreUnavailable(str(exc)) from exc


class TopCategoryStore:
    """Read and push one user's ``top_category`` through Feast."""

    def __init__(self, repo_dir: Path, yaml_file: str, environ: Mapping[str, str]) -> None:
        self.repo_dir = Path(repo_dir)
        self.yaml_file = yaml_file
        self.environ = dict(environ)
        self._store = None
        self._view = None
        self._provider = None
        self._lock = threading.Lock()

    def _open(self):
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        store = open_feature_store(self.repo_dir, self.yaml_file, self.environ)
                        view = store.get_feature_view(FEATURE_VIEW)
                        store.get_data_source(PUSH_SOURCE)
                        from feast.infra.provider import get_provider

                        provider = get_provider(store.config)
                    except OnlineStoreUnavailable:
                        raise
                    except Exception as exc:
                        raise OnlineStoreUnavailable(
                            f"the Feast repository {self.repo_dir} cannot be used ({type(exc).__name__}: {exc}): "
                            "materialize online_features first (it applies the registry)") from exc
                    self._store, self._view, self._provider = store, view, provider
        return self._store

    def warm(self) -> None:
        """Open the store now (at startup), so the first click does not pay for it."""
        self._open()

    def read(self, user_id: int) -> tuple[int | None, int | None]:
        """``(top_category, event time in Unix seconds)`` as stored; ``(None, None)`` for a user never written."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        store = self._open()
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(user_id))])
        ts, values = self._provider.online_read(config=store.config, table=self._view, entity_keys=[key],
                                                requested_features=[FEATURE])[0]
        proto = (values or {}).get(FEATURE)
        if proto is None or proto.WhichOneof("val") is None:
            return None, _seconds(ts)
        return int(proto.int64_val), _seconds(ts)

    def push(self, user_id: int, top_category: int, timestamp: int) -> None:
        import pandas as pd

        store = self._open()
        frame = pd.DataFrame({"user_id": [int(user_id)], FEATURE: [int(top_category)],
                              "event_timestamp": [pd.Timestamp(int(timestamp), unit="s", tz="UTC")]})
        store.push(PUSH_SOURCE, frame)


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
