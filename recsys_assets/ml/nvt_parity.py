"""Parity of the compiled numpy transforms with NVTabular (runs in the merlin env).

Applies the saved NVTabular workflows and :class:`recsys_assets.serving.transforms.CompiledTransforms` to the same
inputs and compares every output column: dtypes equal, integer columns exactly equal, float columns within
``atol`` with NaN in the same places. The inputs: every vocabulary value of every categorical column, sentinels
(-1), unseen ids, missing values (NaN and None), extreme ages and prices, every hour of every weekday, both as
int-typed batches and as batches with missing values; the full workflow is checked on the joined rows too.
Callers may add their own cases (``--cases`` JSON: ``{"user": {"user_id": [...], ...}, "item": ..., ...}``).

CLI (used by the tests from the pipeline env)::

    python -m recsys_assets.ml.nvt_parity --workflows DIR --compiled DIR [--cases FILE] [--out report.json]
        [--dump-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from recsys_assets.lib.feature_spec import (
    FULL_WORKFLOW_INPUTS,
    GROUPS,
    PASSTHROUGH,
    TARGET,
    USER_HISTORY,
    WORKFLOW_INPUTS,
)
from recsys_assets.ml import without_tensorflow

ATOL = 1e-6
AGES = [0, 17, 18, 24, 25, 34, 35, 49, 50, 64, 65, 99, 100, 130, -5]
PRICES = [0.0, 0.01, 0.99, 1.0, 9.99, 79.99, 499.0, 24999.99, 1e6]
DAY0 = 1767225600  # 2026-01-01T00:00:00Z


def typed_column(values: list):
    """The pandas column a list becomes: strings -> object; ints -> int64; numbers with None/NaN -> float64."""
    import pandas as pd

    values = list(values)
    if any(isinstance(v, str) for v in values):
        return pd.Series(values, dtype=object)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return pd.Series(values, dtype=np.int64)
    return pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)


def frame(columns: dict):
    import pandas as pd

    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"case columns must have equal lengths, got {lengths}")
    return pd.DataFrame({c: typed_column(v) for c, v in columns.items()})


def _cycle(values, n: int) -> list:
    values = list(values)
    return [values[i % len(values)] for i in range(n)]


def default_cases(transforms) -> dict:
    """``{case name: (group, columns)}``: vocabularies plus edge cases, int-typed and with missing values."""
    vocab = {name: values for name, (values, _) in transforms.vocabularies.items()}

    def known(name, cast):
        return [cast(v) for v in vocab.get(name, [])]

    mean_age = transforms.compiled.mean_age
    user = {
        "user_id": known("user.user_id", int) + [-1, 10**9, 10**12],
        "age": [float(a) for a in AGES] + [mean_age, 32.5],
        "gender": known("user.gender", int) + [-1, 7],
        **{name: known(f"user.{name}", int) + [-1, 25] for name in USER_HISTORY},
    }
    item = {
        "item_id": known("item.item_id", int) + [-1, 2465, 10**6],
        "category_l1": known("item.category_l1", str) + ["not a category", ""],
        "category_l2": known("item.category_l2", str) + ["not a style"],
        "item_gender": known("item.item_gender", str) + ["X"],
        "price": PRICES,
    }
    hours = [DAY0 + d * 86400 + h * 3600 + 59 for d in range(7) for h in range(24)]
    context = {
        "device_type": known("context.device_type", int) + [-1, 7],
        "timestamp": hours + [0, 1, 2**31 - 1, 4102444800],
    }
    cases = {}
    for group, cols in (("user", user), ("item", item), ("context", context)):
        n = max(len(v) for v in cols.values())
        typed = {c: _cycle(v, n) for c, v in cols.items()}
        if group == "user":
            typed["age"] = [int(a) for a in typed["age"]]  # ints, as the users table holds them
        cases[f"typed/{group}"] = (group, typed)
        # Every column gets missing values (NaN for numbers, None and NaN for strings) beside real ones.
        missing = {}
        for c, v in cols.items():
            values = _cycle(v, 6)
            tail = [None, float("nan")]
            missing[c] = values + tail if isinstance(values[0], str) else [float(x) for x in values] + tail
        cases[f"missing/{group}"] = (group, missing)
    # Ages as floats, the training mean age (the cold-start default) among them.
    n = max(len(v) for v in user.values())
    cases["float-age/user"] = ("user", {c: _cycle(v, n) for c, v in user.items()})
    return cases


class _Pair:
    def __init__(self, workflows_dir, compiled_dir):
        import nvtabular as nvt

        from recsys_assets.serving.transforms import CompiledTransforms, read_description

        self.workflows = {g: nvt.Workflow.load(str(Path(workflows_dir) / g)) for g in (*GROUPS, "full")}
        description, self.vocabularies = read_description(compiled_dir)
        self.compiled = CompiledTransforms(description, self.vocabularies)


def _compare(expected, actual: dict, prefix: str, report: dict) -> None:
    for col in expected.columns:
        want = expected[col].to_numpy()
        got = actual[col]
        entry = {"dtype_nvtabular": str(want.dtype), "dtype_compiled": str(got.dtype), "rows": len(want)}
        same_dtype = want.dtype == got.dtype
        if want.dtype.kind == "f":
            nan_same = np.array_equal(np.isnan(want), np.isnan(got.astype(want.dtype)))
            ok = ~np.isnan(want)
            diff = float(np.max(np.abs(want[ok] - got[ok]))) if ok.any() else 0.0
            mismatches = int((np.abs(want[ok] - got[ok]) > ATOL).sum()) + (0 if nan_same else 1)
            entry["max_abs_diff"] = diff
        else:
            mismatches = int((want != got).sum()) if want.shape == got.shape else len(want)
        entry["mismatches"] = mismatches + (0 if same_dtype else 1)
        report["columns"][f"{prefix}/{col}"] = entry


def parity_report(workflows_dir, compiled_dir, cases: dict | None = None, dump_dir=None) -> dict:
    """Compare NVTabular with the compiled transforms; ``cases``: extra ``{group: {column: values}}``.

    ``dump_dir``: also write each case's inputs and NVTabular's outputs there (``<case>.inputs.parquet``,
    ``<case>.expected.parquet``), so another environment can hold its compiled outputs against them.
    """
    pair = _Pair(workflows_dir, compiled_dir)
    all_cases = default_cases(pair)
    for group, cols in (cases or {}).items():
        all_cases[f"given/{group}"] = (group, cols)
    report = {"columns": {}, "rows": 0}
    joined = {}
    for name, (group, cols) in all_cases.items():
        df = frame(cols)[list(WORKFLOW_INPUTS[group])]
        expected = pair.workflows[group].transform(df)
        actual = pair.compiled.transform(group, {c: df[c].to_numpy() for c in df.columns})
        _compare(expected, actual, name, report)
        if dump_dir is not None:
            stem = Path(dump_dir) / name.replace("/", "__")
            Path(dump_dir).mkdir(parents=True, exist_ok=True)
            df.to_parquet(f"{stem}.inputs.parquet", index=False)
            expected.to_parquet(f"{stem}.expected.parquet", index=False)
        report["rows"] += len(df)
        kind = name.split("/")[0]
        joined.setdefault(kind, {})[group] = df
    # The full workflow (the one the training data goes through) on the joined rows of each kind.
    import pandas as pd

    for kind, frames in joined.items():
        if set(frames) != set(GROUPS):
            continue
        n = max(len(f) for f in frames.values())
        parts = [f.iloc[np.arange(n) % len(f)].reset_index(drop=True) for f in frames.values()]
        df = pd.concat(parts, axis=1)
        df[TARGET] = np.arange(n, dtype=np.int64) % 2
        for col in PASSTHROUGH:
            df[col] = np.arange(n, dtype=np.int64)
        df = df[list(FULL_WORKFLOW_INPUTS)]
        expected = pair.workflows["full"].transform(df)
        for group in GROUPS:
            actual = pair.compiled.transform(group, {c: df[c].to_numpy() for c in WORKFLOW_INPUTS[group]})
            _compare(expected[list(actual)], actual, f"full-{kind}/{group}", report)
        report["rows"] += n
    bad = sorted(k for k, v in report["columns"].items() if v["mismatches"])
    diffs = [v.get("max_abs_diff", 0.0) for v in report["columns"].values()]
    report["identical"] = not bad
    report["mismatched_columns"] = bad
    report["max_float_abs_diff"] = float(max(diffs)) if diffs else 0.0
    report["worst"] = bad[0] if bad else f"max float diff {report['max_float_abs_diff']:.2e}"
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", required=True)
    parser.add_argument("--compiled", required=True)
    parser.add_argument("--cases", help="JSON file: {group: {column: [values]}}")
    parser.add_argument("--out", help="write the report here (JSON); default stdout")
    parser.add_argument("--dump-dir", help="write each case's inputs and NVTabular outputs here (parquet)")
    args = parser.parse_args(argv)
    cases = json.loads(Path(args.cases).read_text()) if args.cases else None
    report = parity_report(args.workflows, args.compiled, cases, args.dump_dir)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    without_tensorflow()  # NVTabular only: 3 s less of the step's start
    sys.exit(main())
