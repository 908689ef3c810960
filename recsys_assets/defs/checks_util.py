"""Turning the pure :class:`~recsys_assets.lib.validation.CheckOutcome` into Dagster check results."""

from __future__ import annotations

import dagster as dg

from recsys_assets.lib.validation import CheckOutcome

INGEST_CHECKS = ("schema", "non_empty", "id_ranges", "unique_keys")


def check_specs(asset_key: str, names=INGEST_CHECKS) -> list[dg.AssetCheckSpec]:
    """Blocking checks: a failed one stops everything downstream of the asset in the same run."""
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=True) for name in names]


def to_results(outcomes: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=o.description,
            metadata={"description": o.description, **o.metadata},
        )
        for o in outcomes
    ]


def markdown_table(df, floatfmt: str = ".3f") -> dg.MetadataValue:
    """A small DataFrame as a markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))
