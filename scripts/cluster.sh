#!/usr/bin/env bash
# Usage: scripts/cluster.sh up|down|status|stop SERVICE|start SERVICE
#
# A local cluster in containers (deploy/compose/docker-compose.yml): two nameservers and one
# broker group of three voters, ports on loopback (nameservers 127.0.0.1:9876 and :9886).
#   up       builds the images if this commit has none (scripts/images.sh), starts everything
#            and waits until the group has a leader and both nameservers know all three brokers
#   down     stops and removes the containers and their volumes
#   status   the containers, and the cluster as the nameserver sees it
#   stop/start SERVICE   one container (e.g. broker-a-1), for failure drills
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

compose=(docker-compose -p ferromq -f deploy/compose/docker-compose.yml)
ferromq="$CARGO_TARGET_DIR/release/ferromq"
sha="$(git rev-parse --short=12 HEAD)"

case "${1:-}" in
    up)
        if ! docker image inspect "ferromq/broker:$sha" >/dev/null 2>&1 || [[ ! -x "$ferromq" ]]; then
            scripts/images.sh
        fi
        FERROMQ_VERSION="$sha" "${compose[@]}" up -d --quiet-pull 2>&1 | grep -v "^Creating\|^Starting" || true
        for _ in $(seq 1 150); do
            if "$ferromq" --nameserver 127.0.0.1:9876,127.0.0.1:9886 admin cluster --json 2>/dev/null |
                python3 -c 'import json,sys; b=json.load(sys.stdin); sys.exit(0 if len(b) == 3 and any(x["role"] == "Leader" for x in b) else 1)'; then
                echo "cluster up: nameservers 127.0.0.1:9876,127.0.0.1:9886"
                exit 0
            fi
            sleep 0.2
        done
        echo "the cluster did not come up:"
        "${compose[@]}" logs --tail 20
        exit 1
        ;;
    down)
        "${compose[@]}" down --volumes --remove-orphans
        ;;
    status)
        "${compose[@]}" ps
        "$ferromq" --nameserver 127.0.0.1:9876,127.0.0.1:9886 admin cluster
        ;;
    stop | start)
        FERROMQ_VERSION="$sha" "${compose[@]}" "$1" "${2:?which service?}"
        ;;
    *)
        sed -n '2,11p' "$0"
        exit 1
        ;;
esac
