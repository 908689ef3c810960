#!/usr/bin/env bash
# Deploys the recommender to an EXISTING EKS cluster (kubectl context already pointing at it):
#   1. Karpenter NodePools / EC2NodeClasses (gpu, cpu)       kubectl apply
#   2. prometheus-adapter with the Triton queue-time rule    helm upgrade --install (pinned chart)
#   3. Dagster with this project's code location             helm upgrade --install (pinned chart)
#   4. RBAC for the pipeline to helm-upgrade Triton itself   kubectl apply
#   5. Triton (this repo's chart)                            helm upgrade --install
# Chart versions come from infra/k8s/charts.yaml. Idempotent: every step is an apply/upgrade.
#
#   infra/deploy.sh                         deploy (GPU Triton: values-eks-gpu.yaml)
#   TRITON_VALUES=infra/helm/triton/values-cpu.yaml infra/deploy.sh
#   DRY_RUN=1 infra/deploy.sh               print the commands, touch nothing (no cluster needed)
#
# Needs in the cluster first (see infra/README.md): Karpenter >= 1.0, AWS Load Balancer Controller,
# kube-prometheus-stack, the namespace's Secrets `recsys-valkey` (keys RECSYS_VALKEY_URL, RECSYS_VALKEY_PASSWORD,
# RECSYS_FEAST_ONLINE_STORE) and
# `dagster-postgresql-secret` (key postgresql-password), the IAM roles named in the values files.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fixed: the values files and pipeline-rbac.yaml name it (service URLs, IRSA trust policies).
NAMESPACE=recsys
TRITON_RELEASE="${TRITON_RELEASE:-triton}"
TRITON_VALUES="${TRITON_VALUES:-infra/helm/triton/values-eks-gpu.yaml}"
HELM="${HELM:-$(command -v helm || echo .tools/bin/helm)}"
KUBECTL="${KUBECTL:-$(command -v kubectl || echo .tools/bin/kubectl)}"
DRY_RUN="${DRY_RUN:-}"

# pin <chart key> <field>: a field of infra/k8s/charts.yaml (two-level map written by this project).
pin() {
  awk -v key="  $1:" -v field="    $2:" '
    $0 == key { inside = 1; next }
    inside && /^  [^ ]/ { inside = 0 }
    inside && index($0, field) == 1 { sub(field " *", ""); print; exit }
  ' infra/k8s/charts.yaml
}

run() {
  echo "+ $*"
  [[ -n "$DRY_RUN" ]] || "$@"
}

need_secret() {
  [[ -n "$DRY_RUN" ]] && return 0
  "$KUBECTL" -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1 || {
    echo "error: Secret $NAMESPACE/$1 is missing: $2" >&2
    exit 1
  }
}

[[ -f "$TRITON_VALUES" ]] || { echo "error: TRITON_VALUES=$TRITON_VALUES does not exist" >&2; exit 1; }
need_secret recsys-valkey "create it with keys RECSYS_VALKEY_URL, RECSYS_VALKEY_PASSWORD, RECSYS_FEAST_ONLINE_STORE (infra/README.md)"
need_secret dagster-postgresql-secret "create it with key postgresql-password (the RDS password)"

run "$KUBECTL" apply -f infra/k8s/karpenter-nodepools.yaml

run "$HELM" repo add dagster "$(pin dagster repo)" --force-update
run "$HELM" repo add prometheus-community "$(pin prometheus-adapter repo)" --force-update
run "$HELM" repo update dagster prometheus-community

run "$HELM" upgrade --install prometheus-adapter "$(pin prometheus-adapter chart)" \
  --version "$(pin prometheus-adapter version)" --namespace "$(pin prometheus-adapter namespace)" --create-namespace \
  -f "$(pin prometheus-adapter values)" --wait

run "$HELM" upgrade --install dagster "$(pin dagster chart)" \
  --version "$(pin dagster version)" --namespace "$NAMESPACE" --create-namespace \
  -f "$(pin dagster values)" --wait --timeout 15m

# Lets the pipeline's run pods helm-upgrade Triton themselves (triton_deployment in the k8s profile).
run "$KUBECTL" apply -f infra/k8s/pipeline-rbac.yaml

run "$HELM" upgrade --install "$TRITON_RELEASE" infra/helm/triton --namespace "$NAMESPACE" --create-namespace \
  -f infra/helm/triton/values.yaml -f "$TRITON_VALUES" --wait --timeout 20m
