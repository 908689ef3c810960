"""Dagster check results and metadata: one way to write a check result, a blocking spec, a table or a plot.

Also turns the pure :class:`~recsys_assets.lib.validation.CheckOutcome` into Dagster check results.
"""

from __future__ import annotations

import base64

import dagster as dg

from recsys_assets.lib.validation import CheckOutcome

INGEST_CHECKS = ("schema", "non_empty", "id_ranges", "unique_keys")


def check_specs(asset_key: str, names=INGEST_CHECKS, blocking: bool = True) -> list[dg.AssetCheckSpec]:
    """Blocking checks (by default): a failed one stops everything downstream of the asset in the same run."""
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=blocking) for name in names]


def check(name: str, passed: bool, description: str, severity=dg.AssetCheckSeverity.ERROR,
          **metadata) -> dg.AssetCheckResult:
    """A check result whose description is also in its metadata (the UI shows metadata in the check's history)."""
    return dg.AssetCheckResult(check_name=name, passed=bool(passed), severity=severity, description=description,
                               metadata={"description": description, **metadata})


def to_results(outcomes: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
    return [
check(o.name, o.passed, o.description, **o.metadata) for o in outcomes
    ]


def markdown_table(df, floatfmt: str = ".3f") -> dg.MetadataValue:
    """A small DataFrame as a markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def png_markdown(store, rel: str) -> dg.MetadataValue:
    """A PNG of the artifact store inlined as markdown, so the UI shows the plot itself."""
    data = store.read_bytes(rel)
    return dg.MetadataValue.md(f"![{rel}](data:image/png;base64,{base64.b64encode(data).decode()})")
