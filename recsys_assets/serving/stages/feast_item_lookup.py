"""``feast_item_lookup``: the candidates' item features from an in-memory copy of the online store.

Input ``item_ids`` INT64 [-1] (raw ids). Outputs, row-aligned: ``category_l1``, ``category_l2``, ``item_gender``
as fixed-width UTF-8 text UINT8 [N, W] (:func:`~recsys_assets.serving.common.pack_text`; an empty row is a missing
value) and ``price`` FP64 [-1].

The seed read Feast on every request (195 ms of its ~375 ms). Item features change only when the catalogue does,
so the whole table is read through Feast's ``get_online_features`` once when the model loads (one call for every
catalogue id) and kept as numpy columns indexed by raw id; a request is a fancy-index (~µs for 300 items). The
cache is refreshed without a restart: a background thread re-reads Feast every ``ITEM_CACHE_REFRESH_S`` seconds
(0 = never) and swaps the table in one assignment. It also re-reads at once when the refresh signal changes: the
daily refresh ``INCR``s the Valkey key ``<popularity prefix>signal:item_features`` (:data:`SIGNAL_KEY`, the key
space where the pipeline publishes serving-wide tables) after it materialized new item features, and the thread
polls that key every ``ITEM_CACHE_SIGNAL_S`` seconds (one GET; 0 = no polling), so every server replica picks the
new items up within seconds. If Feast cannot be read at load time the snapshot packaged in
the version (``items.parquet``, written by the repository build) serves until a refresh succeeds (logged and
counted as degraded). An id outside the table gets missing values, which the item transform sends to the
null/OOV rows.

Parameter ``ITEM_FEATURES``: the Feast feature references (comma-separated, ``view:feature``).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from recsys_assets.serving.common import pack_text, to_fixed_bytes
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext
from recsys_assets.serving.runtime import Runtime, ValkeyLink, ValkeyUnavailable

SNAPSHOT_FILE = "items.parquet"
DEFAULT_FEATURES = ("item_features:price,item_features:category_l1,item_features:category_l2,"
                    "item_features:item_gender")
COLUMNS = ("category_l1", "category_l2", "item_gender", "price")
SIGNAL_KEY = "signal:item_features"  # under the popularity key space's prefix; INCR'd by the daily refresh


class ItemTable:
    """Item feature columns indexed by raw item id (text as a fixed-width UTF-8 ``S<W>`` array, b"" if missing)."""

    def __init__(self, item_ids, columns: dict[str, object], source: str) -> None:
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(ids) and ids.min() < 0:
            raise ValueError("item ids must be >= 0")
        n = int(ids.max()) + 1 if len(ids) else 0
        self.source = source
        self.size = len(ids)
        self.columns: dict[str, np.ndarray] = {}
        for name in COLUMNS:
            values = columns[name]
            if name == "price":
                col = np.full(n, np.nan, np.float64)
                col[ids] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            else:
                text = to_fixed_bytes(np.array(list(values), dtype=object))
                col = np.zeros(n, dtype=text.dtype)
                col[ids] = text
            self.columns[name] = col

    def lookup(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        n = len(self.columns["price"])
        inside = (ids >= 0) & (ids < n)
        if inside.all():
            return {name: col[ids] for name, col in self.columns.items()}
        out = {}
        for name, col in self.columns.items():
            values = np.full(len(ids), np.nan if name == "price" else b"", dtype=col.dtype)
            values[inside] = col[ids[inside]]
            out[name] = values
        return out


class FeastItemLookup(Stage):
    inputs = ("item_ids",)
    outputs = COLUMNS

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.refs = [r.strip() for r in ctx.param("ITEM_FEATURES", DEFAULT_FEATURES).split(",") if r.strip()]
        names = {ref.split(":")[-1] for ref in self.refs}
        if names != set(COLUMNS):
            raise StageConfigError(f"ITEM_FEATURES must name exactly {sorted(COLUMNS)}, got {sorted(names)}")
        self.refresh_s = ctx.param_float("ITEM_CACHE_REFRESH_S", 300.0)
        self.signal_s = ctx.param_float("ITEM_CACHE_SIGNAL_S", 2.0)
        self.runtime = Runtime.from_environ(ctx.environ)
        ctx.declare_degraded("feast_unreadable_at_load", "item_cache_refresh_failed")
        self.snapshot = ctx.artifact(SNAPSHOT_FILE)
        self._store = None
        self._stop = threading.Event()
        self._signal_link = (ValkeyLink(self.runtime, "popularity", ctx.log, retry_after_s=max(self.signal_s, 1.0))
                             if self.signal_s > 0 and self.runtime.valkey_url else None)
        self._signal = self.read_signal()  # the value the table below is at least as new as
        try:
            self.table = self.read_feast()
        except Exception as exc:  # Feast/Valkey down at load: serve the packaged snapshot, say so
            ctx.log.warning("item features from the packaged snapshot %s: Feast could not be read (%s: %s)",
                            self.snapshot, type(exc).__name__, exc)
            ctx.degraded("feast_unreadable_at_load")
            self.table = self.read_snapshot()
        self._thread = None
        if self.refresh_s > 0 or self._signal_link is not None:
            self._thread = threading.Thread(target=self._refresh_loop, name="item-cache-refresh", daemon=True)
            self._thread.start()

    def catalogue_ids(self) -> np.ndarray:
        import pandas as pd

        return pd.read_parquet(self.snapshot, columns=["item_id"])["item_id"].to_numpy(np.int64)

    def read_snapshot(self) -> ItemTable:
        import pandas as pd

        df = pd.read_parquet(self.snapshot)
        return ItemTable(df["item_id"].to_numpy(), {c: df[c].tolist() for c in COLUMNS}, source="snapshot")

    def read_feast(self) -> ItemTable:
        """Every catalogue item's features through Feast's ``get_online_features`` (one call)."""
        if self._store is None:
            self._store = self.runtime.feature_store()
        ids = self.catalogue_ids()
        rows = self._store.get_online_features(features=self.refs, entity_rows={"item_id": ids.tolist()}).to_dict()
        missing = [int(i) for i, v in zip(ids, rows["category_l1"]) if v is None]
        if len(missing) == len(ids) and len(ids):
            raise LookupError(f"the online store has no item features (first ids {missing[:5]}): materialize "
                              "online_features")
        if missing:
            self.ctx.log.warning("%d items have no online features (first: %s)", len(missing), missing[:5])
        return ItemTable(ids, {c: rows[c] for c in COLUMNS}, source="feast")

    def refresh(self) -> bool:
        """Re-read the table from Feast and swap it in; False (and the old table kept) if Feast cannot be read."""
        try:
            table = self.read_feast()
        except Exception as exc:
            self.ctx.log.warning("item cache refresh failed, keeping the %s table: %s: %s",
                                 self.table.source, type(exc).__name__, exc)
            self.ctx.degraded("item_cache_refresh_failed")
            return False
        self.table = table  # one reference swap: a request sees the old table or the new one
        return True

    def read_signal(self) -> bytes | None:
        """The refresh signal's value (None: no signal configured, not set yet, or Valkey unreachable)."""
        if self._signal_link is None:
            return None
        try:
            return self._signal_link.run(lambda c: c.get(self._signal_link.prefix + SIGNAL_KEY))
        except ValkeyUnavailable:
            return None  # the periodic refresh still runs; the link logs the loss once

    def _refresh_loop(self) -> None:
        tick = min(s for s in (self.refresh_s, self.signal_s if self._signal_link else 0.0) if s > 0)
        last = time.monotonic()
        while not self._stop.wait(tick):
            signal = self.read_signal()
            due = self.refresh_s > 0 and time.monotonic() - last >= self.refresh_s
            if due or (signal is not None and signal != self._signal):
                if self.refresh():
                    last = time.monotonic()
                    if signal is not None:
                        self._signal = signal

    def __call__(self, item_ids):
        return {name: (values if name == "price" else pack_text(values))
                for name, values in self.table.lookup(item_ids).items()}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._signal_link is not None:
            self._signal_link.close()
