"""Content digests of files and folders: the identity of an artifact, whatever path or mtime it has.

Used wherever "is this the same artifact?" is asked: a repository version's inputs, the served index's base, the
retrain window's transforms, the embedding cache's weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """A file's :func:`file_sha256`; for a folder, sha256 over every file's relative name and digest (sorted), so
    two copies of a folder have the same digest."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()
