#!/usr/bin/env bash
# Usage: scripts/standalone.sh [--demo]
#
# Builds FerroMQ (release), starts `ferromq standalone` (a nameserver and a one-voter broker on
# the default ports 9876/9877 and 10911/10913, data in ./data or $DATA_DIR), sends a message and
# consumes it back to show the round trip, then keeps running until Ctrl-C. With --demo it
# stops after the round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh --build

cargo build --release --locked -p ferromq-cli
ferromq="$CARGO_TARGET_DIR/release/ferromq"
data="${DATA_DIR:-data}"

"$ferromq" standalone --data-dir "$data" &
node=$!
trap 'kill -TERM $node 2>/dev/null || true; wait $node 2>/dev/null || true' EXIT

echo "==> sending a message"
for _ in $(seq 1 100); do
    # A node that failed to start (a port taken by another node) must not be mistaken for
    # one that answers.
    kill -0 $node 2>/dev/null || { echo "standalone node exited (is something else on its ports?)"; exit 1; }
    if "$ferromq" send --topic quickstart --tag demo --key greeting --body "hello from FerroMQ at $(date +%T)" 2>/dev/null; then
        sent=1
        break
    fi
    sleep 0.2
done
[[ -n "${sent:-}" ]] || { echo "could not send a message"; exit 1; }

echo "==> consuming it back as group 'quickstart'"
"$ferromq" consume --topic quickstart --group quickstart --count 1 --timeout 10s

if [[ "${1:-}" == "--demo" ]]; then
    echo "==> round trip done; stopping"
    exit 0
fi
echo "==> FerroMQ is running (nameserver 127.0.0.1:9876, broker 127.0.0.1:10911); Ctrl-C stops it"
wait $node
