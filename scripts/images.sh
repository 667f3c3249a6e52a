#!/usr/bin/env bash
# Usage: scripts/images.sh [--base IMAGE] [--check]
#
# Builds the container images ferromq/broker and ferromq/nameserver from this workspace,
# tagged with the workspace version and the git commit (short sha). The images start FROM
# scratch: the release binaries, the shared libraries they load (RocksDB, the C and C++
# runtimes) and a non-root user 10001. `--base IMAGE` builds on another (local) base image.
# `--check` then starts a nameserver and a broker container on a private network and checks
# that the broker becomes ready, takes a message sent from inside its container, and that the
# Kubernetes preStop command works there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh --build

base=scratch
check=false
while (($#)); do
    case "$1" in
        --base) base="${2:?--base needs an image}"; shift 2 ;;
        --check) check=true; shift ;;
        *) echo "unknown argument $1"; exit 1 ;;
    esac
done
command -v docker >/dev/null || { echo "docker is needed to build images"; exit 1; }

cargo build --release --locked -p ferromq-cli -p ferromq-broker -p ferromq-nameserver
version="$(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferromq-broker"))')"
sha="$(git rev-parse --short=12 HEAD)"

context="$CARGO_TARGET_DIR/images/context"
rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc" "$context/rootfs/tmp" "$context/data"
for binary in ferromq ferromq-broker ferromq-nameserver; do
    # Without debug information (the release profile keeps it for profiling).
    objcopy --strip-debug "$CARGO_TARGET_DIR/release/$binary" "$context/rootfs/usr/local/bin/$binary"
    # Every library the binary loads, and the loader, at the same paths inside the image.
    ldd "$CARGO_TARGET_DIR/release/$binary" | grep -o '/[^ ]*' | sort -u | while read -r library; do
        cp --parents -L "$library" "$context/rootfs/"
    done
done
printf 'root:x:0:0::/:/sbin/nologin\nferromq:x:10001:10001::/data:/sbin/nologin\n' >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nferromq:x:10001:\n' >"$context/rootfs/etc/group"
chmod 1777 "$context/rootfs/tmp"
cp deploy/docker/Dockerfile "$context/"

for service in broker nameserver; do
    # The classic builder: BuildKit is not installed everywhere (its deprecation notice is
    # kept out of the output unless the build fails).
    if ! DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$base" --target "$service" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.revision=$sha" \
        -t "ferromq/$service:$version" -t "ferromq/$service:$sha" "$context" \
        >"$context/build-$service.log" 2>&1; then
        cat "$context/build-$service.log"
        exit 1
    fi
    echo "ferromq/$service:$version ferromq/$service:$sha ($(docker image inspect -f '{{.Size}}' "ferromq/$service:$version" | numfmt --to=iec))"
done

if $check; then
    network="ferromq-check-$$"
    cleanup() {
        docker rm -f "$network-ns" "$network-broker" >/dev/null 2>&1 || true
        docker network rm "$network" >/dev/null 2>&1 || true
    }
    trap cleanup EXIT
    docker network create "$network" >/dev/null
    docker run -d --network "$network" --name "$network-ns" "ferromq/nameserver:$sha" >/dev/null
    docker run -d --network "$network" --name "$network-broker" --read-only \
        --tmpfs /data:uid=10001,gid=10001 "ferromq/broker:$sha" \
        --data-dir /data --admin-listen 0.0.0.0:10913 --nameserver "$network-ns:9876" \
        --advertised-addr "$network-broker:10911" >/dev/null
    in_broker() { docker exec "$network-broker" /usr/local/bin/ferromq "$@"; }
    for _ in $(seq 1 100); do
        in_broker admin --admin 127.0.0.1:10913 --json raft status 2>/dev/null | grep -q '"Leader"' && break
        sleep 0.2
    done
    in_broker --nameserver "$network-ns:9876" send --topic image-check --body hello
    in_broker admin --admin 127.0.0.1:10913 raft transfer-leader --if-leader
    [[ "$(docker exec "$network-broker" /usr/local/bin/ferromq --version)" == *"$version"* ]]
    echo "images work: the broker (non-root, read-only root file system) took a message"
fi
