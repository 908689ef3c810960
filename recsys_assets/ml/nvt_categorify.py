"""Categorify that also fits and encodes a column holding no value at all (runs in the merlin env).

NVTabular 23.08's Categorify fails twice on a column that is entirely null (own data without a users file, a first
day without any history): fitting writes no unique-value file, so the transform cannot find one, and encoding
looks at the column's first non-null value to tell lists from scalars ("Failed to categorical encode column").
Here a fit that saw no value writes an empty vocabulary (only the pad, null and OOV rows: every later value is
OOV), and a batch without a value lands entirely in the null row; everything else goes through Categorify
unchanged. Saved workflows pickle it by reference, and the
serving compiler (:mod:`recsys_assets.ml.nvt_compile`) treats it as the Categorify it is.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from merlin.dag import ColumnSelector
from nvtabular.ops import Categorify

from recsys_assets.lib.feature_spec import NULL_INDEX


class NullSafeCategorify(Categorify):
    def fit(self, col_selector: ColumnSelector, ddf):
        self._fit_dtypes = {name: str(ddf[name].dtype) for name in col_selector.names}
        return super().fit(col_selector, ddf)

    def fit_finalize(self, categories):
        super().fit_finalize(categories)
        dtypes = self.__dict__.pop("_fit_dtypes", {})
        for name, path in self.categories.items():
            if not os.path.exists(path):  # the training rows held no value: the reserved rows only
                pd.DataFrame({name: pd.Series([], dtype=dtypes.get(name, "float64"))}).to_parquet(path)

    def transform(self, col_selector: ColumnSelector, df):
        empty = [name for name in col_selector.names if not df[name].notna().any()]
        if not empty:
            return super().transform(col_selector, df)
        rest = [name for name in col_selector.names if name not in empty]
        out = super().transform(ColumnSelector(rest), df) if rest else df.copy(deep=False)
        for name in empty:
            out[name] = np.full(len(df), NULL_INDEX, dtype=self.output_dtype or np.int64)
        return out
