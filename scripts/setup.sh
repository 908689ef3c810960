#!/usr/bin/env bash
# Creates (or refreshes) the two Python environments from the locked requirement files:
#   .venv         pipeline env: Dagster, Feast, Valkey, FAISS, torch/open_clip/sentence-transformers, Triton
#   .venv-merlin  merlin env:   NVTabular 23.8, merlin-models 23.12, TensorFlow 2.12 (CPU), dagster-pipes
# An env is rebuilt only when its lock file changed (a stamp holds the lock's hash). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for cand in "${PYTHON311:-}" python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python3.11"; do
    [[ -n "$cand" ]] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}

PY=$(find_python) || {
  cat >&2 <<'MSG'
error: Python 3.11 (with venv) was not found, and both environments need it
       (the Merlin stack stops at Python 3.11; Triton's python backend stub is built for it).
Install one of:
  - Debian/Ubuntu:  apt-get install python3.11 python3.11-venv python3.11-dev
  - pyenv:          pyenv install 3.11.7
then re-run `make setup`, or point PYTHON311=/path/to/python3.11 at it.
MSG
  exit 1
}

remove_unlocked() {  # remove_unlocked <dir> <lock>: uninstall what the lock no longer names (a sync, not a merge)
  local extra
  extra=$("$1/bin/python" -m pip freeze --exclude-editable | cut -d= -f1 | tr 'A-Z_' 'a-z-' | sort \
          | comm -23 - <(grep -v '^#' "$2" | cut -d= -f1 | tr 'A-Z_' 'a-z-' | sort) | grep -v -x -e pip -e setuptools -e wheel || true)
  [[ -z "$extra" ]] || "$1/bin/python" -m pip uninstall -y $extra
}

up_to_date() {  # up_to_date <dir> <lock>: the env exists and was built from this lock
  [[ -f "$1/.lock-sha256" && "$(cat "$1/.lock-sha256")" == "$(sha256sum "$2" | cut -d' ' -f1)" ]]
}

syncable() {  # syncable <dir>: an env built before, which a changed lock updates in place (else: built anew)
  [[ -x "$1/bin/python" && -f "$1/.lock-sha256" ]]
}

build_env() {  # build_env <dir> <lock file>
  local dir=$1 lock=$2 stamp want
  stamp="$dir/.lock-sha256"
  want=$(sha256sum "$lock" | cut -d' ' -f1)
  if up_to_date "$dir" "$lock"; then
    echo "[setup] $dir is up to date with $lock"
    return 0
  fi
  if syncable "$dir"; then
    echo "[setup] syncing $dir with $lock (log: $dir.log)"
  else
    echo "[setup] creating $dir from $lock (log: $dir.log)"
    rm -rf "$dir"
  fi
  {
    { [[ -x "$dir/bin/python" ]] || "$PY" -m venv "$dir"; } &&
    "$dir/bin/python" -m pip install --quiet --upgrade pip==24.0 &&
    "$dir/bin/python" -m pip install --no-deps -r "$lock" &&
    remove_unlocked "$dir" "$lock" &&
    "$dir/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e . &&
    "$dir/bin/python" -m pip check
  } >"$dir.log" 2>&1 || { echo "[setup] FAILED to build $dir; the end of $dir.log:" >&2; tail -n 40 "$dir.log" >&2; return 1; }
  echo "$want" >"$stamp"
  echo "[setup] $dir ready ($(du -sh "$dir" | cut -f1))"
}

# Disk: an env built anew takes about this much (du of each, 2026-12-07), plus pip's unpacking room. Out of space,
# pip stops halfway with "No space left on device" and leaves a broken env: say it before starting.
need_gib=0
syncable .venv || need_gib=$((need_gib + 9))         # 7.4 GiB: torch + its CUDA libraries
syncable .venv-merlin || need_gib=$((need_gib + 3))  # 2.3 GiB: TensorFlow
free_gib=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
if (( need_gib > 0 && free_gib < need_gib )); then
  cat >&2 <<MSG
error: $free_gib GiB free on the disk of $(pwd); building the missing environments needs about $need_gib GiB
       (.venv 7.4 GiB, most of it torch's CUDA build, which PyPI's torchvision needs; .venv-merlin 2.3 GiB).
Free some space (old clones of this project, ~/.cache/pip, /tmp) and re-run \`make setup\`.
MSG
  exit 1
fi

# The two installs are mostly unpacking and I/O: run them side by side.
build_env .venv requirements/pipeline.lock.txt & p1=$!
build_env .venv-merlin requirements/merlin.lock.txt & p2=$!
# Debian's Chromium for the storefront's browser tests (Playwright drives it; it never downloads a browser).
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >.chromium-install.log 2>&1 \
      || { echo "[setup] FAILED to install chromium; see .chromium-install.log" >&2; exit 1; }
  else
    echo "[setup] warning: chromium not found; install it (apt-get install chromium) for the storefront tests" >&2
  fi
fi

# helm + kubectl for the offline Kubernetes checks (tests/infra), pinned, into .tools/bin.
scripts/install-k8s-tools.sh >.tools-install.log 2>&1 & p3=$!
rc=0
wait $p1 || rc=1
wait $p2 || rc=1
wait $p3 || { echo "[setup] FAILED to install helm/kubectl; .tools-install.log:" >&2; tail -n 20 .tools-install.log >&2; rc=1; }
exit $rc
