#!/usr/bin/env bash
# Usage: scripts/chaos.sh [--minutes N] [--fault-interval-secs S] [--keep DIR]
#
# The long chaos run (default 10 minutes): a nameserver and a three-member broker group as real
# processes, four producers and two consumer groups under load; every 30 s a fault (kill -9 of
# the leader, isolation of the leader with iptables, SIGSTOP of the leader past the election
# timeout, kill -9 of a follower with its newest segment torn and bit-flipped, 30 % packet loss
# to a follower, kill -9 of a follower, kill -9 of all three members at once), then a final
# drain and a check of the whole history. Network faults need root (else they are skipped and
# listed as such). Prints the
# checker's table, ending with
#   lost=<n> unexpected=<n> duplicates=<n> order_violations=<n> divergence=<n> failover_p99_ms=<n>
# and exits non-zero when anything was lost, reordered or diverged. CI runs an 80-second
# version as the test `chaos_short`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh --chaos

minutes=10
args=()
while (($#)); do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --fault-interval-secs | --keep) args+=("$1" "$2"); shift 2 ;;
        *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
cargo build --release --locked -p ferromq-broker -p ferromq-nameserver -p ferromq-integration-tests --bins
exec "$CARGO_TARGET_DIR/release/ferromq-chaos" --minutes "$minutes" "${args[@]}"
