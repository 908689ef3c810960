"""The click path: what ``POST /events`` and ``DELETE /users/{id}/seen`` do, without HTTP.

A click, in this order (each step only after the previous one succeeded):

1. **Record it durably**: append to the click stream (:mod:`recsys_assets.api.stream`; with an
   ``Idempotency-Key`` a retried request finds its first event instead of adding another). If this fails the
   request fails with :class:`ServiceUnavailable` (503, retry) and nothing was recorded: a click is never
   acknowledged without being in the stream, and never silently dropped.
2. **Seen filter**: add the item to the user's Bloom filter (:class:`~recsys_assets.serving.bloom.SeenFilter`,
   the sizing ``filter_seen_items`` reads), so the next recommendation hides it.
3. **Window**: add the click to the user's 24 h recent-items window and read the window back (one script).
4. **top_category**: recompute it from the window (:func:`~recsys_assets.api.events.window_top_category`), read
   the stored value (the "before"), and push the new one through Feast when it changed.
5. **interest_1..3**: add the window's clicks since the latest end-of-day snapshot to that snapshot's interest
   weights (:func:`~recsys_assets.lib.top_category.interests_after_clicks`, the batch definition's own arithmetic),
   rank them again and push the codes through Feast when they changed. The snapshot is only read, so a retry
   computes the same values (the window is the state).

Steps 2-5 are idempotent (the window member carries the event id), so when one of them fails after step 1 the
503 names the recorded event and a retry with the same ``Idempotency-Key`` completes them without a second event.
Anonymous clicks (user -1) stop after step 1.

Clicks of one user are serialised within the process (striped locks), so two concurrent clicks cannot push
their history values in the wrong order; across API processes the window script keeps the window itself
consistent and the push-time rule of :mod:`~recsys_assets.api.online` keeps the newest value.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from recsys_assets.api import events as ev
from recsys_assets.api import stream
from recsys_assets.api.config import ApiConfig
from recsys_assets.api.online import OnlineStoreUnavailable, UserHistoryStore, push_time
from recsys_assets.lib.top_category import interests_after_clicks
from recsys_assets.lib.valkey_server import is_unavailable

LOCK_STRIPES = 64
log = logging.getLogger("recsys_assets.api")


class ServiceUnavailable(RuntimeError):
    """A dependency (Valkey, the online store) cannot serve right now: a 503 the client should retry."""

    def __init__(self, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


class Backends:
    """Valkey clients (events stream, seen state) and the Feast store, resolved on first use and kept.

    Resolution asks the server whether it runs in cluster mode (unless configured); while Valkey is down it
    raises :class:`ServiceUnavailable` and tries again on the next request.
    """

    def __init__(self, config: ApiConfig, endpoint) -> None:
        self.config = config
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.events = None
        self.seen = None
        self.seen_prefix = ""
        self.cluster = False
        self.history: UserHistoryStore | None = None
        self.seen_filter = None
        self.durability = ""

    def resolve(self) -> Backends:
        if self.events is not None:
            return self
        with self._lock:
            if self.events is not None:
                return self
            from recsys_assets.lib.valkey_server import (
                FEAST_ONLINE_STORE_ENV,
                FEAST_REGISTRY_ENV,
                KeyLayout,
                feast_connection_string,
            )
            from recsys_assets.serving.bloom import SeenFilter

            cfg = self.config
            # A reply may take the durability wait on top of the usual round trip.
            options = {"socket_connect_timeout": cfg.valkey_timeout_s,
                       "socket_timeout": cfg.valkey_timeout_s + cfg.durability_timeout_ms / 1000}
            try:
                cluster = cfg.cluster if cfg.cluster is not None else self._ask_cluster(options)
                layout = KeyLayout.make(cluster=cluster, feast_db=cfg.feast_db, seen_db=cfg.seen_db)
                events_db = 0 if cluster else cfg.events_db
                seen = self.endpoint.client(db=layout.seen.db, cluster=cluster, **options)
                events = (seen if events_db == layout.seen.db
                          else self.endpoint.client(db=events_db, cluster=cluster, **options))
                durability = self._pick_durability(events)
                seen.ping()  # the Bloom mode is probed once and kept: probe a server that answers
                seen_filter = SeenFilter(layout.seen.prefix, cfg.bloom.params(), mode=cfg.bloom.mode)
                seen_filter.implementation(seen)
            except Exception as exc:
                if is_unavailable(exc):
                    raise ServiceUnavailable(f"Valkey at {self.endpoint!r} is unreachable ({exc})") from exc
                raise
            environ = {**cfg.environ, "RECSYS_ARTIFACTS": cfg.artifacts, FEAST_REGISTRY_ENV: cfg.registry(),
                       FEAST_ONLINE_STORE_ENV: feast_connection_string(self.endpoint, db=layout.feast.db,
                                                                       cluster=cluster)}
            self.history = UserHistoryStore(cfg.feast_repo, cfg.feast_yaml, environ)
            self.seen_filter = seen_filter
            self.seen_prefix, self.cluster, self.durability, self.seen = layout.seen.prefix, cluster, durability, seen
            self.events = events  # last: other threads take a set ``events`` to mean "resolved"
        return self

    def _pick_durability(self, events) -> str:
        """``auto``: fsync where the server keeps an append-only file, else a replica where one is connected."""
        wanted = self.config.durability
        if wanted != "auto":
            return wanted
        # On a cluster, ask the node that holds the stream (the one the waits go to).
        node = ({"target_nodes": events.get_node_from_key(stream.STREAM_KEY)}
                if hasattr(events, "get_node_from_key") else {})
        if int(events.info("persistence", **node).get("aof_enabled", 0)):
            return "fsync"
        if int(events.info("replication", **node).get("connected_slaves", 0)):
            return "replica"
        log.warning("Valkey at %r keeps no append-only file and has no replica: a click counts as recorded once the "
                    "server has it, and a crash of the server may lose it (set up AOF or a replica)", self.endpoint)
        return "async"

    def _ask_cluster(self, options) -> bool:
        probe = self.endpoint.client(**options)
        try:
            return bool(probe.info("cluster").get("cluster_enabled", 0))
        finally:
            probe.close()

    def ping(self) -> None:
        self.resolve().events.ping()

    def close(self) -> None:
        for client in {id(c): c for c in (self.events, self.seen) if c is not None}.values():
            try:
                client.close()
            except Exception:  # a dead connection may fail to close; nothing to keep
                pass
        self.events = self.seen = None


@dataclasses.dataclass
class ClickOutcome:
    event_id: str
    duplicate: bool
    user_id: int
    item_id: int
    timestamp: int
    device_type: int
    day: int
    personalized: bool
    top_category_before: int | None = None
    top_category_after: int | None = None
    pushed: bool = False
    interests_before: list[int] | None = None
    interests_after: list[int] | None = None
    interests_pushed: bool = False
    window_size: int = 0
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self, categories: tuple[str, ...] = ev.CATEGORIES) -> dict:
        """``categories``: the served catalogue's vocabulary (``Catalogue.vocabulary``), naming the codes."""
        out = dataclasses.asdict(self)
        out["top_category_before_name"] = ev.category_name(self.top_category_before, categories)
        out["top_category_after_name"] = ev.category_name(self.top_category_after, categories)
        out["interests_after_names"] = (None if self.interests_after is None else
                                        [ev.category_name(c, categories) for c in self.interests_after])
        return out


class ClickPath:
    """Records clicks and resets seen state over :class:`Backends`, validated against a :class:`Catalogue`."""

    def __init__(self, config: ApiConfig, backends: Backends, catalogue: ev.Catalogue,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.backends = backends
        self.catalogue = catalogue
        self.clock = clock
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def record(self, click: ev.Click, idempotency_key: str | None = None) -> ClickOutcome:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        cfg = self.config
        now = self.clock()
        ts = int(now) if click.timestamp is None else ev.check_not_ahead(click.timestamp, now, cfg.max_clock_skew_s)
        day = ev.check_click_day(ts, cfg.start_epoch, cfg.start_date)
        category = self.catalogue.check_clickable(click.item_id, day, cfg.start_date)
        if idempotency_key is not None:
            try:
                stream.check_key(idempotency_key)
            except ValueError as exc:
                raise ev.InvalidRequest(str(exc), status=400) from None
        event = stream.Event(user_id=click.user_id, item_id=click.item_id, timestamp=ts,
                             device_type=click.device_type, key=idempotency_key)

        backends = self.backends.resolve()
        try:
            event_id, created = stream.append(backends.events, event, backends.durability,
                                              wait_timeout_ms=cfg.durability_timeout_ms)
        except stream.DurabilityTimeout as exc:
            raise ServiceUnavailable(f"the click was recorded as event {exc.event_id}, but {exc}; retry with the same "
                                     "Idempotency-Key to confirm it without recording it twice", exc.event_id) from exc
        except Exception as exc:
            if is_unavailable(exc):
                raise ServiceUnavailable(f"Valkey is unreachable ({exc}): the click was NOT recorded; retry") from exc
            raise
        if not created:
            ts, day = self._check_retry(backends, event, event_id)
        timings["stream"] = _ms(t0)
        outcome = ClickOutcome(event_id=event_id, duplicate=not created, user_id=click.user_id,
                               item_id=click.item_id, timestamp=ts, device_type=click.device_type, day=day,
                               personalized=click.user_id >= 0, timings_ms=timings)
        if click.user_id < 0:
            timings["total"] = _ms(t0)
            return outcome

        with self._locks[click.user_id % LOCK_STRIPES]:
            try:
                self._update_user_state(backends, outcome, category)
            except (ServiceUnavailable, ev.InvalidRequest):
                raise
            except OnlineStoreUnavailable as exc:
                raise ServiceUnavailable(
                    f"the click was recorded as event {event_id}, but the user's history could not be written: {exc}; "
                    "retry with the same Idempotency-Key to complete it", event_id) from exc
            except Exception as exc:
                if is_unavailable(exc):
                    raise ServiceUnavailable(
                        f"the click was recorded as event {event_id}, but the seen state / history features were not "
                        f"updated (Valkey unreachable: {exc}); retry with the same Idempotency-Key to complete it",
                        event_id) from exc
                raise
        timings["total"] = _ms(t0)
        return outcome

    def _check_retry(self, backends: Backends, event: stream.Event, event_id: str) -> tuple[int, int]:
        """A retried click must be the same click; it continues with the first attempt's timestamp."""
        original = stream.get(backends.events, event_id)
        if original is None:  # landed and trimmed since: the key outlived the entry; keep this request's values
            return event.timestamp, ev.check_click_day(event.timestamp, self.config.start_epoch, self.config.start_date)
        if (original.user_id, original.item_id, original.device_type) != (event.user_id, event.item_id,
                                                                         event.device_type):
            raise ev.InvalidRequest(
                f"Idempotency-Key {event.key!r} was used for another click (event {event_id}: user "
                f"{original.user_id}, item {original.item_id}, device {original.device_type}): use a new key per click")
        return original.timestamp, original.day(self.config.start_epoch)

    def _update_user_state(self, backends: Backends, outcome: ClickOutcome, category: int) -> None:
        timings = outcome.timings_ms
        t = time.perf_counter()
        backends.seen_filter.add(backends.seen, outcome.user_id, [outcome.item_id])
        timings["seen_filter"] = _ms(t)

        t = time.perf_counter()
        reply = backends.seen.eval(ev.WINDOW_SCRIPT, 1, ev.window_key(backends.seen_prefix, outcome.user_id),
                                   outcome.timestamp, ev.window_member(outcome.event_id, outcome.item_id, category),
                                   ev.WINDOW_SECONDS, ev.WINDOW_CAP, ev.WINDOW_TTL_S)
        window = ev.parse_window(reply)
        after = ev.window_top_category(window)
        outcome.window_size = len(window)
        timings["window"] = _ms(t)

        t = time.perf_counter()
        before, stored_at = backends.history.read(outcome.user_id)
        stored = backends.history.read_interests(outcome.user_id)
        timings["feast_read"] = _ms(t)
        outcome.top_category_before, outcome.top_category_after = before, after
        newest = max(e.timestamp for e in window) if window else outcome.timestamp
        if after != before:
            t = time.perf_counter()
            backends.history.push(outcome.user_id, after, push_time(newest, stored_at))
            outcome.pushed = True
            timings["feast_push"] = _ms(t)

        _, interests = interests_after_clicks(stored.weights, stored.weights_at,
                                              [(e.timestamp, e.category) for e in window], newest + 1)
        outcome.interests_before = None if stored.codes is None else list(stored.codes)
        outcome.interests_after = interests.tolist()
        if outcome.interests_after != outcome.interests_before:
            t = time.perf_counter()
            backends.history.push_interests(outcome.user_id, outcome.interests_after,
                                            push_time(newest, stored.codes_at))
            outcome.interests_pushed = True
            timings["feast_push_interests"] = _ms(t)

    def reset_seen(self, user_id: int) -> dict:
        """Forget what a user has seen: their Bloom filter and recent-items window (the history features stay)."""
        try:
            ev.check_user_id(user_id)
        except ValueError as exc:
            raise ev.InvalidRequest(str(exc)) from None
        if user_id < 0:
            raise ev.InvalidRequest(f"user_id {user_id}: anonymous users have no seen state", status=422)
        backends = self.backends.resolve()
        keys = [backends.seen_filter.implementation(backends.seen).key(user_id),
                ev.window_key(backends.seen_prefix, user_id)]
        try:
            deleted = sum(int(backends.seen.delete(k)) for k in keys)  # one key per call: cluster slots differ
        except Exception as exc:
            if is_unavailable(exc):
                raise ServiceUnavailable(f"Valkey is unreachable ({exc}): nothing was reset; retry") from exc
            raise
        return {"user_id": user_id, "keys_deleted": deleted}


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)
