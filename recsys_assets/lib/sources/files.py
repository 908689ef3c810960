"""Reading a source folder (a local path or an ``s3://bucket/prefix``): which tables it holds and their rows.

One reader for both: fsspec addresses the local folder and S3 alike (``s3fs``, in the pipeline lock, implements
its ``s3`` protocol with the usual AWS credential chain: environment, profile, IRSA on EKS). An environment
without s3fs gets a :class:`SourceError` saying what to install.

Tables are CSV (``.csv``, ``.csv.gz``) or parquet (``.parquet``, ``.pq``). A CSV is read with every column as
text (an empty cell is ``""``), so string ids such as ``00123`` keep their zeros and nothing is guessed.
"""

from __future__ import annotations

import csv
import posixpath
from pathlib import Path

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


class SourceError(ValueError):
    """The shop's data does not follow the source contract: the message names the file and the column."""


class SourceFolder:
    """A folder of source tables: ``items``, optional ``users``, and any number of files under ``events/``."""

    def __init__(self, location: str):
        self.location = str(location).rstrip("/") or "/"
        if self.location.startswith("s3://"):
            try:
                import s3fs  # noqa: F401  (fsspec's "s3" protocol is implemented by it)
            except ImportError as exc:
                raise SourceError(
                    f"source {self.location}: reading an s3:// source needs the s3fs package, which this "
                    "environment does not hold (it is in requirements/pipeline.lock.txt: run make setup), or "
                    "copy the data to a local folder and set RECSYS_SOURCE to that folder") from exc
            import fsspec

            self.fs = fsspec.filesystem("s3")
            self.root = self.location[len("s3://"):]
        else:
            import fsspec

            path = Path(self.location)
            if not path.is_dir():
                raise SourceError(f"source {self.location}: no such folder; set RECSYS_SOURCE to the folder that "
                                  "holds items.csv (or .parquet) and events/")
            self.fs = fsspec.filesystem("file")
            self.root = str(path.resolve())

    def __repr__(self) -> str:
        return f"SourceFolder({self.location!r})"

    def _tables(self, folder: str) -> list[str]:
        """Relative names of the tables directly in ``folder`` ('' = the root), sorted."""
        base = posixpath.join(self.root, folder) if folder else self.root
        if not self.fs.isdir(base):
            return []
        names = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False))
        return [posixpath.join(folder, n) if folder else n for n in names
                if n.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES) and not n.startswith((".", "_"))]

    def table(self, stem: str, required: bool = True) -> str | None:
        """The one file named ``<stem>.csv|.csv.gz|.parquet|.pq`` at the root; None when optional and absent."""
        found = [n for n in self._tables("") if _stem(n) == stem]
        if len(found) > 1:
            raise SourceError(f"source {self.location}: {found} are all the {stem!r} table: keep exactly one")
        if not found:
            if required:
                raise SourceError(f"source {self.location}: no {stem}.csv or {stem}.parquet: the {stem!r} table "
                                  "is required (see docs/own-data.md)")
            return None
        return found[0]

    def event_files(self) -> list[str]:
        """The tables under ``events/`` (any number, any split), sorted by name."""
        files = self._tables("events")
        if not files:
            raise SourceError(f"source {self.location}: no CSV or parquet files under events/ (see docs/own-data.md)")
        return files

    def uri(self, name: str) -> str:
        return f"{self.location}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.isfile(posixpath.join(self.root, name))

    def open(self, name: str, mode: str = "rb", **options):
        return self.fs.open(posixpath.join(self.root, name), mode, **options)

    def read(self, name: str):
        """``(rows, bad_lines)`` of one table: a DataFrame (CSV: every column text, empty cells ``""``) whose index
        is the 0-based record number in the file, and the CSV records that do not split into the header's number
        of fields, as ``(record number, fields)`` pairs, which the caller quarantines."""
        import pandas as pd

        kind = "parquet" if name.lower().endswith(PARQUET_SUFFIXES) else "CSV"
        compression = "gzip" if name.lower().endswith(".gz") else None
        try:
            if kind == "parquet":
                with self.open(name) as handle:
                    return pd.read_parquet(handle), []
            try:
                with self.open(name, compression=compression) as handle:
                    return pd.read_csv(handle, dtype=str, keep_default_na=False), []
            except pd.errors.ParserError:
                # pandas does not say where its bad lines were; the csv module does, so it is the second try.
                return self._read_ragged_csv(name, compression)
        except (ValueError, OSError, pd.errors.ParserError, csv.Error) as exc:
            raise SourceError(f"{self.uri(name)}: cannot be read as {kind}: {exc}") from exc

    def _read_ragged_csv(self, name: str, compression: str | None):
        import pandas as pd

        with self.open(name, "rt", compression=compression, encoding="utf-8", newline="") as handle:
            records = csv.reader(handle)
            header = next(records)
            good, index, bad = [], [], []
            for number, fields in enumerate(records):
                if len(fields) == len(header):
                    good.append(fields)
                    index.append(number)
                elif fields:  # a blank line is no record
                    bad.append((number, fields))
        return pd.DataFrame(good, columns=header, index=pd.Index(index, dtype="int64"), dtype=str), bad


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
