"""Pure logic of the events API: request validation, the catalogue, and the 24 h recent-items window.

Validation (what a 4xx says):

- ``user_id``: an int64 >= 0, or -1 for an anonymous click. Other negative ids are refused (DESIGN.md Contracts
  "Ids"). An unknown non-negative id is a new user and is accepted. **Anonymous clicks** are recorded in the click
  stream (and so land in ``live_interactions`` with ``user_id`` -1, the sentinel the transforms send to the null
  row) but change no per-user state: there is no seen filter, window or top_category of "anonymous".
- ``item_id``: a catalogue id (0..2464) of an item available on the click's day (``available_from_day``).
- ``device_type``: 0 desktop, 1 mobile, 2 tablet, -1 unknown (the default).
- ``timestamp``: Unix seconds (UTC), default the server's clock; not before day 00 (``RECSYS_START_DATE``: an
  event must belong to a daily partition), below 2^32, and for a click not later than the server's clock plus
  ``RECSYS_API_MAX_CLOCK_SKEW_S`` (300 s): the window keeps the 24 h before the newest click, so one click dated
  in the future would push the user's real clicks out of it and pin ``top_category`` until then. A
  recommendation may ask about any time from day 00 on (before it nothing is released: 422, not an empty list).
- JSON types are strict: ``"12"``, ``12.0`` or ``true`` for an id is a 422, not a silent conversion.

The recent-items window of a user is a sorted set ``<seen prefix>recent:<user_id>`` (score: click timestamp,
member: ``<event_id>|<item_id>|<category code>``) in the seen-state key space. One server-side script adds the
click, drops what fell out of the 24 h before the newest click, caps the set at :data:`WINDOW_CAP` entries,
sets a TTL and returns what is left, so concurrent clicks of one user never interleave half-way.
``top_category`` is then :func:`~recsys_assets.lib.top_category.top_category_of_window` of that window, "now"
being just after the newest click: the training-time definition (dominant ``category_l1`` of the 24 h before,
ties to the most recent click), evaluated at the moment the next request can arrive. Clicks that arrive late
(older than the newest one) count where their timestamp puts them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from recsys_assets.lib.feature_spec import DEVICE_NAMES
from recsys_assets.lib.settings import day_of_timestamp
from recsys_assets.lib.top_category import (
    CATEGORIES,
    NONE,
    WINDOW_SECONDS,
    category_codes,
    category_vocabulary,
    top_category_of_window,
)

DEVICES = DEVICE_NAMES
MAX_TIMESTAMP = 2**32 - 1
MAX_ID = 2**63 - 1
RANKING_TOPK = 100  # the most the ensemble returns (DESIGN.md Contracts "Sizes of K")
WINDOW_CAP = 1000
WINDOW_TTL_S = WINDOW_SECONDS + 3600


class InvalidRequest(ValueError):
    """A request the API refuses (a 4xx); the message says what was wrong and what is accepted."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# -- validators (pure; the pydantic models and the query parameters use the same ones) ---------------------------
def check_user_id(user_id: int) -> int:
    if user_id < -1 or user_id > MAX_ID:
        raise ValueError(f"user_id {user_id}: expected an id >= 0, or -1 for an anonymous user")
    return user_id


def check_item_id(item_id: int) -> int:
    if item_id < 0 or item_id > MAX_ID:
        raise ValueError(f"item_id {item_id}: expected a catalogue id >= 0")
    return item_id


def check_device_type(device_type: int) -> int:
    if device_type not in DEVICES:
        raise ValueError(f"unknown device_type {device_type}: expected 0 (desktop), 1 (mobile), 2 (tablet) or -1")
    return device_type


def check_timestamp(timestamp: int) -> int:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp {timestamp}: expected Unix seconds in 0..{MAX_TIMESTAMP}")
    return timestamp


def check_k(k: int) -> int:
    if not 1 <= k <= RANKING_TOPK:
        raise ValueError(f"k {k}: expected 1..{RANKING_TOPK}")
    return k


def _id_value(value, name: str, check) -> int | str:
    """An id as given: an int (checked) or a shop's text id (``api.ids`` translates it); anything else refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return check(value)
    raise ValueError(f"{name}: expected a valid integer id (or, with own data, the shop's id as text), "
                     f"got {type(value).__name__}")


class Click(BaseModel):
    """``POST /events`` body: one click."""

    model_config = ConfigDict(strict=True, extra="forbid",
                              json_schema_extra={"examples": [{"user_id": 12, "item_id": 345, "device_type": 1,
                                                               "timestamp": 1768219200}]})

    # Strings are a shop's own ids (RECSYS_SOURCE, ``api.ids``), translated to int ids before anything else.
    user_id: int | str
    item_id: int | str
    device_type: int = -1
    timestamp: int | None = None

    # "plain": one check of the value, so an error names the field alone (no per-union-member locations), and
    # nothing is coerced: 12.0 and true are refused, as the strict model refused them before ids could be text.
    @field_validator("user_id", mode="plain")
    @classmethod
    def _user(cls, v) -> int | str:
        return _id_value(v, "user_id", check_user_id)

    @field_validator("item_id", mode="plain")
    @classmethod
    def _item(cls, v) -> int | str:
        return _id_value(v, "item_id", check_item_id)

    @field_validator("device_type")
    @classmethod
    def _device(cls, v: int) -> int:
        return check_device_type(v)

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, v: int | None) -> int | None:
        return None if v is None else check_timestamp(v)


# -- the catalogue -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Catalogue:
    """What the API needs of ``raw/items.parquet``: availability, category codes and product details."""

    available_from_day: np.ndarray  # int64 per item id
    category: np.ndarray            # int64 category code per item id
    names: tuple[str, ...]
    category_l1: tuple[str, ...]
    category_l2: tuple[str, ...]
    price: np.ndarray               # float64
    vocabulary: tuple[str, ...] = CATEGORIES  # the category codes' names (``lib.top_category``)

    @classmethod
    def from_frame(cls, items) -> Catalogue:
        items = items.sort_values("item_id")
        ids = items["item_id"].to_numpy(np.int64)
        if not (ids == np.arange(len(ids))).all():
            raise ValueError("the catalogue's item ids must be 0..N-1 (raw/items.parquet, the items asset)")
        vocabulary = category_vocabulary(items["category_l1"])
        return cls(available_from_day=items["available_from_day"].to_numpy(np.int64),
                   category=category_codes(items["category_l1"].to_numpy(), vocabulary), vocabulary=vocabulary,
                   names=tuple(items["name"].astype(str)), category_l1=tuple(items["category_l1"].astype(str)),
                   category_l2=tuple(items["category_l2"].astype(str)),
                   price=items["price"].to_numpy(np.float64))

    def __len__(self) -> int:
        return len(self.category)

    def check_clickable(self, item_id: int, day: int, start_date) -> int:
        """The item's category code; :class:`InvalidRequest` if it is unknown or not yet available on ``day``."""
        if not 0 <= item_id < len(self):
            raise InvalidRequest(f"item_id {item_id} is not in the catalogue (ids 0..{len(self) - 1})")
        available = int(self.available_from_day[item_id])
        if available > day:
            import datetime as dt

            first = start_date + dt.timedelta(days=available)
            raise InvalidRequest(f"item_id {item_id} is not available before day {available:02d} "
                                 f"({first.isoformat()}); the click is on day {day:02d}")
        return int(self.category[item_id])

    def details(self, item_id: int) -> dict | None:
        if not 0 <= item_id < len(self):
            return None
        return {"name": self.names[item_id], "category": self.category_l1[item_id],
                "style": self.category_l2[item_id], "price": float(self.price[item_id])}


def check_click_day(timestamp: int, start_epoch: int, start_date) -> int:
    """The click's day index; refuses a click before day 00 (it would belong to no partition)."""
    day = day_of_timestamp(int(timestamp), int(start_epoch))
    if day < 0:
        raise InvalidRequest(f"timestamp {timestamp} is before day 00 ({start_date.isoformat()}, "
                             "RECSYS_START_DATE): such an event belongs to no daily partition")
    return day


def check_recommendation_day(timestamp: int, start_epoch: int, start_date) -> int:
    """The day a recommendation is asked for; refuses a time before day 00 (nothing is released then)."""
    day = day_of_timestamp(int(timestamp), int(start_epoch))
    if day < 0:
        raise InvalidRequest(f"timestamp {timestamp} is before day 00 ({start_date.isoformat()}, "
                             "RECSYS_START_DATE): no item is available before then; ask for a time from day 00 on, "
                             "or leave timestamp out for the server's clock")
    return day


def check_not_ahead(timestamp: int, now: float, allowance_s: int) -> int:
    """Refuses a click dated more than ``allowance_s`` after the server's clock ``now`` (clock skew is allowed)."""
    ahead = int(timestamp) - int(now)
    if ahead > allowance_s:
        raise InvalidRequest(f"timestamp {timestamp} is {ahead} s ahead of the server's clock ({int(now)}): a click "
                             f"may be dated at most {allowance_s} s in the future (RECSYS_API_MAX_CLOCK_SKEW_S); send "
                             "the time it happened, or leave timestamp out for the server's clock")
    return int(timestamp)


# -- the recent-items window -------------------------------------------------------------------------------------
# KEYS[1] the window; ARGV: score, member, window seconds, cap, ttl. Returns [member, score, ...] oldest first.
WINDOW_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(newest[2]) - tonumber(ARGV[3]))
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[4])
if n > cap then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"""


def window_key(seen_prefix: str, user_id: int) -> str:
    if user_id < 0:
        raise ValueError(f"user_id {user_id}: anonymous users have no recent-items window")
    return f"{seen_prefix}recent:{int(user_id)}"


def window_member(event_id: str, item_id: int, category: int) -> str:
    return f"{event_id}|{int(item_id)}|{int(category)}"


@dataclasses.dataclass(frozen=True)
class WindowEntry:
    timestamp: int
    event_id: str
    item_id: int
    category: int


def parse_window(reply) -> list[WindowEntry]:
    """The script's flat ``[member, score, ...]`` reply as entries, oldest first."""
    def text(v) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    out = []
    for member, score in zip(reply[0::2], reply[1::2]):
        event_id, item, category = text(member).split("|")
        out.append(WindowEntry(int(float(text(score))), event_id, int(item), int(category)))
    return out


def window_top_category(entries: list[WindowEntry], window: int = WINDOW_SECONDS) -> int:
    """``top_category`` just after the newest click of the window (-1 for an empty window)."""
    if not entries:
        return NONE
    now = max(e.timestamp for e in entries) + 1
    return top_category_of_window([(e.timestamp, e.category) for e in entries], now, window)


def trim_window(entries: list[WindowEntry], window: int = WINDOW_SECONDS, cap: int = WINDOW_CAP) -> list[WindowEntry]:
    """What :data:`WINDOW_SCRIPT` keeps of a window (the same rules in Python, for tests and for reasoning)."""
    if not entries:
        return []
    ordered = sorted(entries, key=lambda e: (e.timestamp, window_member(e.event_id, e.item_id, e.category)))
    newest = ordered[-1].timestamp
    kept = [e for e in ordered if e.timestamp > newest - window]
    return kept[-cap:] if cap else kept


def category_name(code: int | None, vocabulary: tuple[str, ...] = CATEGORIES) -> str | None:
    """The name of a category code in ``vocabulary`` (``Catalogue.vocabulary``: the served catalogue's)."""
    if code is None or code < 0:
        return None
    return vocabulary[code]
