"""``scripts/setup.sh`` (what ``make setup`` runs) on a machine without room for the environments: it says so and
what to free, before pip starts (out of space, pip stops halfway and leaves a broken env)."""

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_setup_refuses_to_start_without_disk_room_and_says_how_much_it_needs(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "scripts" / "setup.sh", project / "scripts")
    shutil.copytree(PROJECT_ROOT / "requirements", project / "requirements")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                             "echo '/dev/vda 100 1 5242880 1% /'\n")  # 5 GiB available
    (fake / "df").chmod(0o755)
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=project, capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "PYTHON311": sys.executable})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "5 GiB free" in proc.stderr and "needs about 12 GiB" in proc.stderr and "make setup" in proc.stderr
    assert not (project / ".venv").exists() and not (project / ".venv-merlin").exists()
