"""What reading a source did: counts per reason, notes and flags (:class:`SourceReport`), and the rows it could not
use with the reason for each (:class:`Quarantine`). Nothing is dropped without landing in one of them."""

from __future__ import annotations

import collections
import dataclasses
import json

QUARANTINE_COLUMNS = ("file", "row", "column", "reason", "values", "day")


@dataclasses.dataclass
class SourceReport:
    """Counts per reason, notes for a person, and flags that change what the pipeline does downstream.

    ``quarantined`` counts rows written to a quarantine file, by reason; ``counts`` everything else that changed
    a row count (duplicates removed, rows routed to other days, events kept aside for unknown items, ...).
    """

    table: str
    rows_read: int = 0
    rows_out: int = 0
    quarantined: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)
    flags: dict[str, bool] = dataclasses.field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def metadata(self) -> dict:
        """Flat JSON-able values for an asset's metadata (``MaterializeResult(metadata=...)``)."""
        out: dict = {"table": self.table, "rows_read": self.rows_read, "rows_out": self.rows_out,
                     "rows_quarantined": int(sum(self.quarantined.values()))}
        out.update({f"quarantined: {reason}": int(n) for reason, n in sorted(self.quarantined.items())})
        out.update({name: int(n) for name, n in sorted(self.counts.items())})
        out.update({name: bool(value) for name, value in sorted(self.flags.items())})
        if self.notes:
            out["notes"] = "\n".join(self.notes)
        return out


class Quarantine:
    """Rows that could not be used: ``file``, ``row`` (1-based record number after the header), ``column``,
    ``reason``, the row's ``values`` as JSON text and the ``day`` index the row belongs to (-1 when it has none:
    no usable timestamp, or not an event)."""

    def __init__(self, report: SourceReport):
        self.report = report
        self._parts: list = []

    def add(self, file: str, rows, column: str, reason: str, values, days=None) -> None:
        """Quarantine the rows ``rows`` (an index into ``values``, the frame as read) for ``reason``; ``days``
        (aligned with ``rows``) says which day each belongs to."""
        import pandas as pd

        rows = list(rows)
        if not rows:
            return
        records = values.loc[rows].astype(str).to_dict(orient="records")
        self._parts.append(pd.DataFrame({
            "file": file, "row": pd.Series([int(r) + 1 for r in rows], dtype="int64"), "column": column,
            "reason": reason, "values": [json.dumps(r, ensure_ascii=False) for r in records],
            "day": pd.Series(-1 if days is None else list(days), index=range(len(rows)), dtype="int64"),
        }))
        self.report.quarantined[reason] += len(rows)

    def add_lines(self, file: str, lines: list[tuple[int, list[str]]]) -> None:
        """CSV records (``(0-based record number, fields)``) that did not split into the header's fields."""
        import pandas as pd

        if lines:
            fields = pd.DataFrame({"fields": [json.dumps(f, ensure_ascii=False) for _, f in lines]},
                                  index=[number for number, _ in lines])
            self.add(file, fields.index, "", "malformed line: the number of fields differs from the header", fields)

    def frame(self):
        import pandas as pd

        if not self._parts:
            return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row" else object) for c in QUARANTINE_COLUMNS})
        return pd.concat(self._parts, ignore_index=True)[list(QUARANTINE_COLUMNS)]
