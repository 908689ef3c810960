"""What the fault-injection tests measured, collected during a run and printed at its end.

Tests never assert on time; they record it here (:func:`record`): requests sent during a fault, how many failed
and how, seconds until the service answered normally again, events lost. ``tests/reliability/conftest.py``
prints the table in pytest's terminal summary and, when ``RECSYS_RELIABILITY_REPORT`` names a file, writes the
rows there as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROWS: list[dict] = []
COLUMNS = ("fault", "requests", "failed", "failed_how", "recovery_s", "events_lost", "note")


def record(fault: str, **numbers) -> dict:
    row = {"fault": fault, **numbers}
    ROWS.append(row)
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def table(rows: list[dict] | None = None) -> str:
    rows = ROWS if rows is None else rows
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write(path: str | Path) -> None:
    Path(path).write_text(json.dumps(ROWS, indent=1, default=str))
