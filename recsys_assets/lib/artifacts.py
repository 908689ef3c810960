"""The artifact store: one layout, either under a local folder or under an ``s3://bucket/prefix``.

Every artifact is addressed by a relative path (``raw/interactions/day_03.parquet``). Writes are atomic:
the producer writes into a private temporary path and the store publishes it with a rename (local) or a
single upload (S3), so a process killed mid-write never leaves a half-written artifact a reader could see.
Folders (NVTabular workflows, SavedModels, image sets) are published the same way, as a whole.

A writer killed before it publishes leaves its temporary (``.tmp-<owner>.<pid>-<token>-<name>``) behind; readers
never see it (listings and parquet datasets skip dot-files), and the next write, list or read of that folder
removes it once it is *abandoned*: its owner is a process of this machine (same host name and pid namespace) that is
no longer running, or, for owners elsewhere, it is older than :data:`STALE_TEMPORARY_S`. A folder is looked at
again only after it changed (its modification time), so reads stay cheap.

A file that exists but cannot be read as parquet (damaged, truncated, another format) raises
:class:`ArtifactUnreadable`, naming the artifact and saying to re-materialize what writes it.

Reads of S3 artifacts go through a local cache folder so that libraries wanting file paths (pyarrow,
NVTabular, FAISS) get them. boto3 is imported only when an ``s3://`` root is used.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from recsys_assets.lib.processes import pid_alive


class ArtifactNotFound(FileNotFoundError):
    pass


class ArtifactUnreadable(RuntimeError):
    """An artifact exists but cannot be read (a damaged or truncated file): re-materialize what writes it."""


# A temporary older than this belongs to no write still running (when its owner's liveness cannot be asked).
STALE_TEMPORARY_S = 24 * 3600
_TEMPORARY = re.compile(r"^\.tmp-(?:old-)?(?:(?P<owner>[A-Za-z0-9_]+)\.(?P<pid>\d+)-)?[0-9a-f]{8}-")


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        root = str(root)
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            bucket, _, prefix = root[len("s3://"):].partition("/")
            if not bucket:
                raise ValueError(f"artifact root {root!r}: expected s3://bucket[/prefix]")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self.root = root.rstrip("/")
            self._cache = Path(cache_dir or Path(tempfile.gettempdir()) / "recsys-artifact-cache" / bucket)
            self._client = None
        else:
            self.root = str(Path(root).resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- addressing -----------------------------------------------------------------------------------
    def uri(self, rel: str) -> str:
        rel = _clean(rel)
        return f"{self.root}/{rel}" if self.is_s3 else str(Path(self.root) / rel)

    def _key(self, rel: str) -> str:
        rel = _clean(rel)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def s3(self):
        if self._client is None:
            import boto3  # local: only the s3 profile needs it

            self._client = boto3.client("s3")
        return self._client

    # -- queries ----------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if not self.is_s3:
            return Path(self.uri(rel)).exists()
        resp = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(rel), MaxKeys=1)
        return resp.get("KeyCount", 0) > 0

    def list(self, prefix: str) -> list[str]:
        """Relative paths of the files directly or indirectly under ``prefix``, sorted."""
        if not self.is_s3:
            base = Path(self.uri(prefix))
            if not base.exists():
                return []
            root = Path(self.root)
            if base.is_dir():
                sweep_abandoned(base)
            return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file() and ".tmp-" not in p.name)
        out: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    # -- reads ------------------------------------------------------------------------------------------
    def local_path(self, rel: str) -> Path:
        """A local path holding the artifact (a file or a folder); downloads S3 artifacts into the cache."""
        if not self.is_s3:
            path = Path(self.uri(rel))
            sweep_abandoned(path.parent)
            if not path.exists():
                raise ArtifactNotFound(f"artifact {rel!r} not found under {self.root}: materialize its asset first")
            return path
        keys = self.list(rel)
        if not keys:
            raise ArtifactNotFound(f"artifact {rel!r} not found under {self.root}: materialize its asset first")
        for key in keys:
            target = self._cache / key
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, self._key(key), str(target))
        return self._cache / _clean(rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.is_s3:
            return self.local_path(rel).read_bytes()
        buf = io.BytesIO()
        self.s3.download_fileobj(self.bucket, self._key(rel), buf)
        return buf.getvalue()

    def read_parquet(self, rel: str, **kwargs):
        import pandas as pd
        import pyarrow as pa

        path = self.local_path(rel)
        try:
            return pd.read_parquet(path, **kwargs)
        except (pa.ArrowException, OSError) as exc:
            raise ArtifactUnreadable(
                f"artifact {rel!r} ({self.uri(rel)}) cannot be read as parquet: {type(exc).__name__}: {exc}. The file "
                "is damaged or is not what its producer writes: re-materialize the asset (and partition) that writes "
                "it, then run what reads it again") from exc

    # -- writes -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        """Yield a private temporary path (file or folder, the producer decides); publish it atomically on exit.

        An exception inside the block publishes nothing and removes the temporary path.
        """
        rel = _clean(rel)
        if self.is_s3:
            tmp_root = Path(tempfile.mkdtemp(prefix="recsys-upload-"))
            tmp = tmp_root / Path(rel).name
        else:
            final = Path(self.uri(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            sweep_abandoned(final.parent)
            tmp = final.with_name(_temporary_name(final.name))
        try:
            yield tmp
            if not tmp.exists():
                raise RuntimeError(f"the producer of {rel!r} wrote nothing to {tmp}")
            self._publish(tmp, rel)
        finally:
            if tmp.exists():
                _remove(tmp)
            if self.is_s3:
                shutil.rmtree(tmp.parent, ignore_errors=True)

    def _publish(self, tmp: Path, rel: str) -> None:
        if self.is_s3:
            # Delete-then-upload: a re-materialization replaces the whole artifact, never merges with it.
            self.delete(rel)
            files = [tmp] if tmp.is_file() else [p for p in tmp.rglob("*") if p.is_file()]
            for f in files:
                sub = "" if f == tmp else "/" + str(f.relative_to(tmp))
                self.s3.upload_file(str(f), self.bucket, self._key(rel + sub))
            return
        final = Path(self.uri(rel))
        if final.is_dir() and tmp.is_dir():
            # rename() cannot replace a non-empty folder: move the old one aside, swap, then drop it.
            old = final.with_name(_temporary_name(final.name, "old-"))
            os.rename(final, old)
            os.rename(tmp, final)
            _remove(old)
        else:
            if final.is_dir():
                _remove(final)
            os.replace(tmp, final)

    def write_bytes(self, rel: str, data: bytes) -> str:
        with self.writing(rel) as tmp:
            tmp.write_bytes(data)
        return self.uri(rel)

    def write_parquet(self, rel: str, df, **kwargs) -> str:
        with self.writing(rel) as tmp:
            df.to_parquet(tmp, index=False, **kwargs)
        return self.uri(rel)

    def delete(self, rel: str) -> None:
        if not self.is_s3:
            path = Path(self.uri(rel))
            if path.exists():
                _remove(path)
            return
        for key in self.list(rel):
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def size_bytes(self, rel: str) -> int:
        if not self.is_s3:
            path = Path(self.uri(rel))
            if path.is_file():
                return path.stat().st_size
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(rel)):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total


def _clean(rel: str) -> str:
    rel = str(rel).strip("/")
    if not rel or ".." in Path(rel).parts:
        raise ValueError(f"invalid artifact path {rel!r}: expected a relative path without '..'")
    return rel


def _owner() -> str:
    """This machine as temporaries name it: the host name and, on Linux, the pid namespace (containers of one pod
    share a host name, not their pids)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    with contextlib.suppress(OSError):
        return f"{host}_{os.stat('/proc/self/ns/pid').st_ino:x}"
    return host


def _temporary_name(name: str, kind: str = "") -> str:
    return f".tmp-{kind}{_owner()}.{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"




def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, p.lstat().st_mtime)
    return newest


def is_abandoned(path: Path, max_age_s: float = STALE_TEMPORARY_S, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of a writer that can no longer publish it (see the module docstring)."""
    match = _TEMPORARY.match(path.name)
    if not match:
        return False
    if match["owner"] == _owner() and match["pid"]:
        return not pid_alive(int(match["pid"]))
    try:
        return (time.time() if now is None else now) - _newest_mtime(path) > max_age_s
    except FileNotFoundError:  # published or removed meanwhile
        return False


_SWEPT: dict[str, int] = {}  # folder -> its modification time (ns) when last swept
_SWEPT_LOCK = threading.Lock()


def sweep_abandoned(folder: Path, max_age_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove the abandoned temporaries directly in ``folder``; skipped while the folder is unchanged since the last
    sweep (this process). Returns what was removed."""
    key = str(folder)
    try:
        mtime = os.stat(folder).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return []
    with _SWEPT_LOCK:
        if _SWEPT.get(key) == mtime:
            return []
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".tmp-") and is_abandoned(path, max_age_s):
                with contextlib.suppress(FileNotFoundError):
                    _remove(path)
                removed.append(path)
    with contextlib.suppress(OSError), _SWEPT_LOCK:
        _SWEPT[key] = os.stat(folder).st_mtime_ns
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
