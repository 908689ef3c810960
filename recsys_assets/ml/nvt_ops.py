"""The column functions inside the NVTabular workflows (wrapped in ``LambdaOp``), as small named classes.

Saved workflows pickle these by reference (``recsys_assets.ml.nvt_ops.<Class>``), and the serving compiler
(:mod:`recsys_assets.ml.nvt_compile`) reads their parameters to emit the same computation in plain numpy.
Anything else inside a ``LambdaOp`` could not be compiled, so the workflows use only these.
Works on pandas Series (CPU) and numpy arrays alike; no NVTabular import here.
"""

from __future__ import annotations

import math

import numpy as np


class SentinelToNull:
    """``value`` (the -1 sentinel) -> NaN, so Categorify sends it to the null row 1; always float64 out.

    Float64 on every call (not only when a sentinel is present) keeps the vocabulary's dtype independent of
    whether a batch happens to contain a sentinel.
    """

    __name__ = "sentinel_to_null"

    def __init__(self, value: int = -1):
        self.value = value

    def __call__(self, col):
        values = col.astype("float64")
        return values.where(values != self.value) if hasattr(values, "where") else \
            np.where(values != self.value, values, np.nan)


class Cyclical:
    """Timestamp (Unix s, UTC) -> sin or cos of its position in a cycle, as float32.

    ``k = (timestamp // unit + offset) % period``; out = ``fn(2 pi k / period)``. Hour of day: unit 3600,
    period 24, offset 0. Weekday (Monday 0): unit 86400, period 7, offset 3 (``lib.feature_spec.CYCLES``).
    """

    def __init__(self, unit: int, period: int, offset: int, fn: str):
        if fn not in ("sin", "cos"):
            raise ValueError(f"fn must be 'sin' or 'cos', got {fn!r}")
        self.unit, self.period, self.offset, self.fn = int(unit), int(period), int(offset), fn
        self.__name__ = f"cyclical_{fn}_{period}"

    def __call__(self, col):
        k = (col // self.unit + self.offset) % self.period
        angle = k.astype("float64") * (2.0 * math.pi / self.period)
        out = np.sin(angle) if self.fn == "sin" else np.cos(angle)
        return out.astype("float32")

