"""Between processes: the exclusive lock the servers, the repository and the shared embedding cache take."""

import subprocess
import sys

import pytest

from recsys_assets.lib.processes import LockTimeout, exclusive_lock, pid_alive

HOLD = """
import sys, time
from recsys_assets.lib.processes import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_held_by_another_process_times_out_and_is_freed_when_that_process_dies(tmp_path):
    path = tmp_path / "nested" / "work.lock"  # its folder is created
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="work.lock"):
            with exclusive_lock(path, timeout_s=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not pid_alive(holder.pid)
    with exclusive_lock(path, timeout_s=10):  # a dead holder's lock is gone with it
        with pytest.raises(LockTimeout):  # and the lock excludes a second holder in this process too
            with exclusive_lock(path, timeout_s=0.1):
                pass


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    path = tmp_path / "work.lock"
    with pytest.raises(RuntimeError):
        with exclusive_lock(path):
            raise RuntimeError("boom")
    with exclusive_lock(path, timeout_s=1):  # not held any more (else LockTimeout)
        pass
