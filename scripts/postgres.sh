#!/usr/bin/env bash
# Usage: scripts/postgres.sh start|reset|stop|status|url
#
# A throwaway PostgreSQL server on loopback for the outbox tests (Debian's postgresql package,
# installed by scripts/install-deps.sh). `start` creates the cluster the first time, starts it if
# it is not running, and prints its URL (a superuser, trust authentication, loopback only);
# tests create their own databases in it. `reset` starts afresh from an empty cluster (what
# scripts/test.sh does, so the databases of earlier runs do not pile up). Durability is off
# (fsync, synchronous_commit): the data is disposable and the tests are about the outbox, not
# PostgreSQL's disk.
#   TEST_POSTGRES_DIR    cluster directory (default /tmp/ferromq-postgres: the postgres user,
#                        which runs the server when this script runs as root, cannot enter /root)
#   TEST_POSTGRES_PORT   port on 127.0.0.1 (default 55432)
# (Not FERROMQ_*: the servers take every FERROMQ_* variable for configuration and refuse
# unknown ones.)
set -euo pipefail

PG_DIR="${TEST_POSTGRES_DIR:-/tmp/ferromq-postgres}"
PG_PORT="${TEST_POSTGRES_PORT:-55432}"
PG_USER=ferromq
URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/postgres"

bin_dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bin_dir" || ! -x "$bin_dir/pg_ctl" ]]; then
    echo "PostgreSQL server binaries not found: run scripts/install-deps.sh (Debian package postgresql)" >&2
    exit 1
fi

# PostgreSQL refuses to run as root: run it as the postgres user the Debian package created.
as_server_user() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

running() {
    [[ -f "$PG_DIR/data/PG_VERSION" ]] && as_server_user "$bin_dir/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

start() {
    # Test processes may ask at the same time: one creates and starts, the others wait.
    mkdir -p "$PG_DIR"
    exec 9>"$PG_DIR/.start.lock"
    flock 9
    if ! [[ -f "$PG_DIR/data/PG_VERSION" ]]; then
        [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DIR"
        as_server_user "$bin_dir/initdb" -D "$PG_DIR/data" -U "$PG_USER" --auth=trust -E UTF8 \
            --no-sync >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
    fi
    if ! running; then
        as_server_user "$bin_dir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null 9>&- || { tail -n 20 "$PG_DIR/server.log" >&2; exit 1; }
    fi
    echo "$URL"
}

stop() {
    if running; then
        as_server_user "$bin_dir/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null
    fi
}

case "${1:-}" in
    start) start ;;
    reset)
        stop
        rm -rf "$PG_DIR"
        start
        ;;
    stop) stop ;;
    status)
        if running; then echo "running: $URL"; else echo "stopped"; exit 3; fi
        ;;
    url) echo "$URL" ;;
    *)
        awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
        exit 2
        ;;
esac
