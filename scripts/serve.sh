#!/usr/bin/env bash
# `make serve`: Triton (latest model repository), the API and the storefront on 127.0.0.1, until Ctrl-C.
# Stops what it started: the API, Triton, and the embedded Valkey if this script had to start it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
ROOT=${RECSYS_ARTIFACTS:-$PWD/artifacts}

valkey_was_up=0
$PY -m recsys_assets.lib.valkey_server status --dir "$ROOT/valkey" >/dev/null 2>&1 && valkey_was_up=1

api_pid=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n "$api_pid" ]] && kill -TERM "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
  $PY -m recsys_assets.release.serve stop --artifacts "$ROOT" || true
  if [[ -z "${RECSYS_VALKEY_URL:-}" && $valkey_was_up == 0 ]]; then
    $PY -m recsys_assets.lib.valkey_server stop --dir "$ROOT/valkey" || true
  fi
}
trap cleanup EXIT INT TERM

$PY -m recsys_assets.release.serve start --artifacts "$ROOT"
$PY -m recsys_assets.api &
api_pid=$!
echo "Storefront: http://127.0.0.1:${RECSYS_API_PORT:-8080}/store/   (Ctrl-C stops Triton, the API and Valkey)"
wait "$api_pid"
