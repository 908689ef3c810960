"""The click stream: the durable record of every click, a Valkey stream the events API appends to.

Contract:

- One stream, ``recsys:events:{clicks}``, in the events key space (logical db 2 by default; db 0 on a cluster,
  told apart by the prefix). The braces are a cluster hash tag: the stream and its idempotency keys live in one
  slot, so the append script below may touch both.
- An entry's id is Valkey's own (``<arrival ms>-<seq>``, strictly increasing in arrival order) and becomes the
  event's ``event_id`` everywhere downstream. Its fields are ``user_id``, ``item_id``, ``timestamp`` (the click's
  Unix seconds, UTC: it decides the day the event belongs to, not the arrival time) and ``device_type``
  (-1 unknown), all decimal text, plus ``key`` when the client sent an ``Idempotency-Key``.
- :func:`append` with a key is idempotent: the first append records ``key -> event id`` (kept
  :data:`IDEMPOTENCY_TTL_S`) in the same server-side script as the ``XADD``, so a retried request (say after a
  503 half-way through the click path) finds its event instead of adding it twice. Without a key every call
  appends.
- The stream is never capped by length: entries leave it only through the lander's
  :func:`recsys_assets.api.landing.trim_landed`, once the day file they belong to holds them, so an event cannot
  be dropped before it reached training.

Only the standard library is imported here; the client is any ``valkey``/``redis`` client (plain or cluster).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from recsys_assets.lib.settings import day_of_timestamp

STREAM_KEY = "recsys:events:{clicks}"
IDEMPOTENCY_PREFIX = "recsys:events:{clicks}:key:"
IDEMPOTENCY_TTL_S = 24 * 3600
FIELDS = ("user_id", "item_id", "timestamp", "device_type")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# KEYS[1] stream, KEYS[2] idempotency key; ARGV[1] its TTL, ARGV[2..] the entry's field/value pairs.
_APPEND_ONCE = """
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1]))
return {1, id}
"""


@dataclasses.dataclass(frozen=True)
class Event:
    """One click as the stream holds it."""

    user_id: int
    item_id: int
    timestamp: int
    device_type: int = -1
    event_id: str = ""
    key: str | None = None

    def fields(self) -> dict[str, str]:
        out = {name: str(int(getattr(self, name))) for name in FIELDS}
        if self.key:
            out["key"] = self.key
        return out

    def day(self, start_epoch: int) -> int:
        return day_of(self.timestamp, start_epoch)


def day_of(timestamp: int, start_epoch: int) -> int:
    """The day index (days since day 00, UTC) of a Unix timestamp; negative before day 00."""
    return day_of_timestamp(int(timestamp), int(start_epoch))


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)`` (ordering of stream ids)."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a stream id (<milliseconds>-<sequence>)") from None


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"Idempotency-Key {key[:40]!r}: expected 1-128 characters of A-Z a-z 0-9 . _ : -")
    return key


def append(client, event: Event, durability: str = "fsync", wait_timeout_ms: int = 1000) -> tuple[str, bool]:
    """Append ``event``; returns ``(event_id, created)``: ``created`` is False when its key was recorded before.

    ``durability``: ``fsync`` returns once the append-only file holding the entry is fsynced (``WAITAOF 1 0``,
    sent after the append's reply: ~0.1 ms here, where a pipelined one waits for the next 100 ms server tick);
    ``replica`` once one replica has it (``WAIT 1``); ``async`` once the server has it (an AOF with
    ``appendfsync everysec`` fsyncs within a second). A wait that times out raises :class:`DurabilityTimeout`:
    the entry exists but is not yet as durable as asked.
    """
    fields = event.fields()
    if event.key:
        args = [IDEMPOTENCY_TTL_S] + [x for pair in fields.items() for x in pair]
        created, stream_id = client.eval(_APPEND_ONCE, 2, STREAM_KEY, IDEMPOTENCY_PREFIX + event.key, *args)
        created = bool(int(created))
    else:
        stream_id, created = client.xadd(STREAM_KEY, fields), True
    stream_id = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    if durability != "async":  # a retry waits too: the first attempt may have timed out waiting
        _wait(client, durability, wait_timeout_ms, stream_id)
    return stream_id, created


class DurabilityTimeout(RuntimeError):
    def __init__(self, message: str, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


def _wait(client, durability: str, timeout_ms: int, stream_id: str) -> None:
    # On a cluster the wait must go to the node that holds the stream's slot.
    node = {"target_nodes": client.get_node_from_key(STREAM_KEY)} if hasattr(client, "get_node_from_key") else {}
    if durability == "fsync":
        local, _ = client.execute_command("WAITAOF", 1, 0, timeout_ms, **node)
        if int(local) < 1:
            raise DurabilityTimeout(f"it was not fsynced to the append-only file within {timeout_ms} ms", stream_id)
    elif durability == "replica":
        if int(client.execute_command("WAIT", 1, timeout_ms, **node)) < 1:
            raise DurabilityTimeout(f"it reached no replica within {timeout_ms} ms", stream_id)
    else:
        raise ValueError(f"durability {durability!r}: expected fsync, replica or async")


def decode(stream_id, fields: dict) -> Event:
    """An :class:`Event` from one XRANGE entry (bytes or str, as the client returns them)."""
    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    values = {text(k): text(v) for k, v in fields.items()}
    try:
        return Event(user_id=int(values["user_id"]), item_id=int(values["item_id"]),
                     timestamp=int(values["timestamp"]), device_type=int(values.get("device_type", -1)),
                     event_id=text(stream_id), key=values.get("key"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"stream entry {text(stream_id)} of {STREAM_KEY} is malformed ({values}): {exc}") from exc


def get(client, event_id: str) -> Event | None:
    """The entry ``event_id``, or None when the stream no longer holds it."""
    found = client.xrange(STREAM_KEY, min=event_id, max=event_id, count=1)
    return decode(*found[0]) if found else None


def read_after(client, after: str = "0-0", count: int = 10_000, limit: int | None = None) -> Iterator[list[Event]]:
    """Batches of the entries with ids strictly after ``after``, in id order, ``count`` per round trip.

    Stops at the end of the stream as it was when each batch was read (entries appended later have larger ids
    and are read by the next call), or after ``limit`` entries.
    """
    seen = 0
    cursor = after
    while limit is None or seen < limit:
        n = count if limit is None else min(count, limit - seen)
        batch = client.xrange(STREAM_KEY, min=f"({cursor}", max="+", count=n)
        if not batch:
            return
        events = [decode(i, f) for i, f in batch]
        yield events
        seen += len(events)
        cursor = events[-1].event_id
        if len(batch) < n:
            return


def length(client) -> int:
    return int(client.xlen(STREAM_KEY))
