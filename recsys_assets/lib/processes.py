"""Between processes: whether one still runs (the servers' state files need to know it), and an exclusive lock
on a file that serialises what two processes must not do at once (start one server, switch one repository,
encode into one shared cache)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process not yet reaped by its parent (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller would wait; the message names the file."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder; a ``flock``, released if the holder dies)
    for the ``with`` block, waiting at most ``timeout_s`` seconds for it (None: as long as it takes)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=-1 if timeout_s is None else timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(f"the lock {path} is held by another process for {timeout_s:.0f} s") from None
    try:
        yield
    finally:
        lock.release()
