#!/usr/bin/env bash
# Usage: scripts/check-k8s.sh
#
# Renders every Kubernetes overlay (k8s/overlays/*) with `kubectl kustomize`, validates the
# result against the oldest Kubernetes we support with `kubernetes-validate --strict`, lints the
# YAML with yamllint, and checks our invariants (scripts/check_k8s.py). The Python tools come
# from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

OLDEST_KUBERNETES=1.27.0
venv_bin="$(dirname "$TEST_PYTHON")"
if ! command -v kubectl >/dev/null; then
    echo "kubectl is needed to render the manifests (its kustomize); install kubectl >= 1.27"
    exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

"$venv_bin/yamllint" --strict -c .yamllint k8s deploy/prometheus
for overlay in k8s/overlays/*/; do
    name="$(basename "$overlay")"
    kubectl kustomize "$overlay" >"$out/$name.yaml"
    # CRDs (the ServiceMonitor) have no schema here: the tool says so and skips them.
    "$venv_bin/kubernetes-validate" --strict -k "$OLDEST_KUBERNETES" --quiet "$out/$name.yaml"
    echo "$name: rendered and valid for Kubernetes $OLDEST_KUBERNETES"
done
"$TEST_PYTHON" scripts/check_k8s.py "$out"/*.yaml
# The checker itself must catch a broken manifest.
sed -e 's/podManagementPolicy: Parallel/podManagementPolicy: OrderedReady/' "$out/prod.yaml" >"$out/broken"
if "$TEST_PYTHON" scripts/check_k8s.py "$out/broken" >/dev/null; then
    echo "scripts/check_k8s.py accepted a StatefulSet without parallel pod management"
    exit 1
fi
