"""Small pieces several stages share: request scalars, the day of a timestamp, item availability, text tensors.

Days follow DESIGN.md Contracts: int64 Unix seconds, UTC; day 00 is ``START_DATE`` (a model parameter injected
by the repository build, since it defines the data, not the deployment). An item is available on day ``d`` when
``available_from_day <= d``; ids outside the catalogue are never available.

Text between stages travels as **fixed-width UTF-8 rows**: a UINT8 tensor [N, W] whose row i holds value i's UTF-8
bytes, zero-padded to the batch's widest value W (an empty row is an empty or missing value). Triton's BYTES type
would do, but the python backend (de)serializes BYTES element by element in Python, which cost ~1 ms per 900
strings on each side of a hop; a UINT8 matrix is one buffer copy, and numpy reads it back as an ``S<W>`` array
without a Python loop (:func:`pack_text`, :func:`unpack_text`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from recsys_assets.lib.settings import day_of_timestamp, start_epoch
from recsys_assets.serving.executor import BadRequest, StageConfigError

AVAILABILITY_FILE = "availability.npy"  # int64 available_from_day per raw item id (row r = item r)


def scalar(value: np.ndarray, name: str) -> int | float | bool:
    """The single value of a per-request tensor of shape [1]."""
    array = np.asarray(value).reshape(-1)
    if array.size != 1:
        raise BadRequest(f"{name} must hold exactly one value per request, got {array.size}")
    return array[0].item()


def epoch_of(start_date: str) -> int:
    try:
        day0 = dt.date.fromisoformat(start_date)
    except ValueError:
        raise StageConfigError(f"START_DATE={start_date!r} is not an ISO date such as 2026-01-01") from None
    return start_epoch(day0)


def day_of(timestamp: int, start_epoch: int) -> int:
    """The day index of a Unix timestamp (negative before day 00)."""
    return day_of_timestamp(int(timestamp), start_epoch)


class Availability:
    """``available_from_day`` of every catalogue item, by raw id."""

    def __init__(self, available_from_day: np.ndarray) -> None:
        self.available_from_day = np.asarray(available_from_day, dtype=np.int64).reshape(-1)

    @classmethod
    def load(cls, path: Path) -> "Availability":
        return cls(np.load(path, allow_pickle=False))

    @property
    def n_items(self) -> int:
        return len(self.available_from_day)

    def mask(self, item_ids: np.ndarray, day: int) -> np.ndarray:
        ids = np.asarray(item_ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < self.n_items)
        out = np.zeros(ids.shape, dtype=bool)
        out[inside] = self.available_from_day[ids[inside]] <= day
        return out


# -- fixed-width UTF-8 text tensors -----------------------------------------------------------------------------
def to_fixed_bytes(values) -> np.ndarray:
    """Values (bytes, str or None; None is empty) as a numpy ``S<W>`` array."""
    array = np.asarray(values)
    if array.dtype.kind == "S":
        return array
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8")
    items = [b"" if v is None else (v if isinstance(v, bytes) else str(v).encode("utf-8")) for v in array.tolist()]
    return np.array(items, dtype=bytes) if items else np.zeros(0, dtype="S1")


def pack_text(values) -> np.ndarray:
    """A text column as a UINT8 tensor [N, W] (see the module docstring); W is at least 1."""
    fixed = to_fixed_bytes(values)
    width = max(fixed.dtype.itemsize, 1)
    fixed = np.ascontiguousarray(fixed, dtype=f"S{width}")
    return fixed.view(np.uint8).reshape(len(fixed), width)


def unpack_text(tensor, name: str = "text") -> np.ndarray:
    """A UINT8 [N, W] text tensor as an ``S<W>`` array (trailing zero bytes dropped, as numpy does for S)."""
    array = np.asarray(tensor)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise BadRequest(f"{name} must be a UINT8 [N, W] text tensor (UTF-8 rows, zero-padded), "
                         f"got {array.dtype} {list(array.shape)}")
    n, width = array.shape
    if width == 0:
        return np.zeros(n, dtype="S1")
    return np.ascontiguousarray(array).view(f"S{width}").reshape(n)
