#!/usr/bin/env bash
# Usage: scripts/test.sh
#
# Runs the whole test suite, exactly as CI does (.ci/run calls this): installs what it needs,
# then format check, clippy, cargo deny, unit + property + integration tests (cargo nextest,
# with the real binaries on loopback; the outbox's against a PostgreSQL server that
# scripts/postgres.sh starts), doc tests, the container images in a compose cluster
# through a leader failover, the Kubernetes manifests (scripts/check-k8s.sh),
# the client-dependency invariant, and a fuzz smoke run of every fuzz target (wire decoders, SQL
# selector parser). Environment:
#   FUZZ_SECONDS   length of the fuzz smoke run of each target (default 45)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny"
if ! deny_output=$(cargo deny --locked check 2>&1); then
    if grep -q "failed to fetch advisory database" <<<"$deny_output"; then
        # The RustSec database lives on GitHub; machines that only reach package registries
        # cannot fetch it. Check everything else, and say so loudly.
        echo "WARNING: advisory database unreachable; checking bans, licenses and sources only"
        cargo deny --locked check bans licenses sources
    else
        echo "$deny_output"
        exit 1
    fi
else
    echo "$deny_output" | tail -n 3
fi

step "build"
cargo build --workspace --bins --locked

step "tests"
# The outbox tests' PostgreSQL server, on loopback; each test makes its own database in it.
TEST_POSTGRES_URL=$(scripts/postgres.sh reset)
export TEST_POSTGRES_URL
trap 'scripts/postgres.sh stop' EXIT
cargo nextest run --workspace --locked --profile ci
cargo test --workspace --doc --locked

step "container images and the compose cluster (build, failover without loss)"
scripts/images.sh
cargo nextest run -p ferromq-integration-tests --locked --profile ci --run-ignored ignored-only --test compose

step "Kubernetes manifests (render, validate, lint, invariants)"
scripts/check-k8s.sh

step "the client SDK builds without RocksDB or raft"
if cargo tree -p ferromq-client -e normal --locked | grep -Ei '(rocksdb|raft)'; then
    echo "ferromq-client must not depend on RocksDB or raft"
    exit 1
fi

step "fuzz smoke (${FUZZ_SECONDS:-45} s per target)"
if rustup toolchain list | grep -q '^nightly'; then
    for target in wire_decode selector_parse; do
        echo "-- $target"
        cargo +nightly fuzz run "$target" -- -max_total_time="${FUZZ_SECONDS:-45}" -rss_limit_mb=2048 -max_len=65536 -timeout=1 2>&1 | tail -n 3
    done
else
    echo "WARNING: no nightly toolchain; fuzz smoke skipped (the decoders' property tests ran above)"
fi

printf '\nall checks passed in %d s\n' $((SECONDS - started))
