#!/usr/bin/env bash
# Usage: scripts/install-deps.sh [--build | --chaos | --bench]
#
# Installs, idempotently, what FerroMQ needs on a Debian 12 machine.
#   --build   only what building needs: a C toolchain, Debian's RocksDB and libclang (for the
#             rocksdb crate's bindgen) - the quick start uses this
#   (none)    also the test tools: cargo-deny, cargo-fuzz, a nightly toolchain for fuzzing,
#             cargo-nextest if the machine lacks it, iptables (the chaos test's network
#             faults), PostgreSQL (the outbox tests' server), and schemathesis from PyPI in a
#             virtualenv (the admin API fuzz test)
#   --chaos   what building needs, and iptables (scripts/chaos.sh)
#   --bench   also iperf3 and fio (the machine's limits), python3 (the report), perf
#             (profiles) and PostgreSQL (the outbox bench), which scripts/bench.sh uses
set -euo pipefail

mode="${1:-test}"
TOOLS_DIR="${FERROMQ_TOOLS_DIR:-$HOME/.cache/ferromq/tools}"
APT_PACKAGES=(build-essential librocksdb-dev libclang-dev)
[[ "$mode" != "--build" ]] && APT_PACKAGES+=(iptables)
# PostgreSQL: the server the outbox tests run against (scripts/postgres.sh starts it).
[[ "$mode" == "test" ]] && APT_PACKAGES+=(python3 python3-venv postgresql)
[[ "$mode" == "--bench" ]] && APT_PACKAGES+=(iperf3 fio python3 linux-perf postgresql)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[[ "$mode" == "--build" || "$mode" == "--chaos" ]] && exit 0

# Cargo tools go to a persistent folder so later runs skip the build.
mkdir -p "$TOOLS_DIR"
install_tool() {
    local crate="$1" version="$2" binary="$3"
    if [[ -x "$TOOLS_DIR/bin/$binary" ]] && "$TOOLS_DIR/bin/$binary" --version 2>/dev/null | grep -q "$version"; then
        return
    fi
    echo "installing $crate $version into $TOOLS_DIR"
    cargo install --locked --quiet --root "$TOOLS_DIR" "$crate" --version "$version"
}
install_tool cargo-deny 0.20.2 cargo-deny
if ! cargo nextest --version >/dev/null 2>&1; then
    install_tool cargo-nextest 0.9.143 cargo-nextest
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    # Only the fuzz smoke run needs nightly; scripts/test.sh skips it (loudly) without one.
    rustup toolchain install nightly --profile minimal || echo "WARNING: no nightly toolchain; fuzzing will be skipped"
fi
if rustup toolchain list | grep -q '^nightly'; then
    install_tool cargo-fuzz 0.13.2 cargo-fuzz
fi

# Python test tools from PyPI, in a virtualenv of Debian's python3 (scripts/env.sh exports
# TEST_PYTHON and SCHEMATHESIS_BIN): schemathesis fuzzes the admin APIs
# (integration-tests/tests/openapi_fuzz.rs); prometheus_client, the Prometheus project's own
# text-format parser, reads /metrics (integration-tests/tests/deploy_metrics.rs);
# kubernetes-validate and yamllint check the Kubernetes manifests (scripts/check-k8s.sh).
PYTHON_TOOLS=("schemathesis==4.32.5" "prometheus-client==0.26.0" "kubernetes-validate==1.37.0" "yamllint==1.38.0")
VENV_DIR="${TEST_VENV_DIR:-$HOME/.cache/ferromq/venv}"
installed="$("$VENV_DIR/bin/pip" freeze 2>/dev/null | tr '_A-Z' '-a-z' || true)"
missing_tools=()
for tool in "${PYTHON_TOOLS[@]}"; do
    grep -qx "$tool" <<<"$installed" || missing_tools+=("$tool")
done
if ((${#missing_tools[@]})); then
    echo "installing ${missing_tools[*]} into $VENV_DIR"
    /usr/bin/python3 -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
fi
