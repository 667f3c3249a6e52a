#!/usr/bin/env bash
# Usage: scripts/bench.sh [--quick]
#
# Measures, in one run on this machine, the machine's limits (loopback TCP bandwidth with
# iperf3; fdatasync rate and sequential write bandwidth with fio; the round trip of an empty
# request to the broker, which no send can beat) and FerroMQ standalone
# (release build, 1 KiB messages), and prints every FerroMQ figure also as a ratio to the
# relevant limit. Results go to $CARGO_TARGET_DIR/bench/results.json; docs/benchmarks.md records
# a run. --quick uses 10x fewer messages (a smoke run, not a measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh --bench

scale=1
[[ "${1:-}" == "--quick" ]] && scale=10
out_dir="$CARGO_TARGET_DIR/bench"
data_root="${BENCH_DATA_DIR:-$HOME/.cache/ferromq/bench-data}"
mkdir -p "$out_dir" "$data_root"
results="$out_dir/results.json"
echo "{}" >"$results"

record() { # record KEY JSON
    python3 - "$results" "$1" "$2" <<'PY'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = json.load(open(path))
data[key] = value
json.dump(data, open(path, "w"), indent=2)
PY
}

echo "==> building (release)"
cargo build --release --locked -p ferromq-cli -p ferromq-broker -p ferromq-nameserver
ferromq="$CARGO_TARGET_DIR/release/ferromq"
release="$CARGO_TARGET_DIR/release"

echo "==> machine limits"
iperf3 -s -1 -p 15201 >/dev/null 2>&1 &
iperf_server=$!
loopback=""
for _ in $(seq 1 50); do
    json=$(iperf3 -c 127.0.0.1 -p 15201 -t 5 -J 2>/dev/null || true)
    loopback=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/1048576)' \
        <<<"$json" 2>/dev/null || true)
    [[ -n "$loopback" ]] && break
    sleep 0.1
done
kill "$iperf_server" 2>/dev/null || true
[[ -n "$loopback" ]] || { echo "iperf3 failed"; exit 1; }
record loopback_mib_per_sec "$loopback"
fio_dir="$data_root/fio"
mkdir -p "$fio_dir"
fsync_iops=$(fio --name=fdatasync --directory="$fio_dir" --rw=write --bs=4k --size=32m --fdatasync=1 \
    --runtime=10 --time_based=0 --output-format=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])')
record fdatasync_per_sec "$fsync_iops"
seq_bw=$(fio --name=seqwrite --directory="$fio_dir" --rw=write --bs=1m --size=1g --end_fsync=1 \
    --output-format=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024)')
record seq_write_mib_per_sec "$seq_bw"
rm -rf "$fio_dir"
printf 'loopback %.0f MiB/s, fdatasync %.0f /s, sequential write %.0f MiB/s\n' "$loopback" "$fsync_iops" "$seq_bw"

node=""
stop_node() {
    if [[ -n "$node" ]]; then
        kill -TERM "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
        node=""
    fi
}
trap stop_node EXIT

start_node() { # start_node FLUSH
    stop_node
    rm -rf "$data_root/node"
    "$ferromq" standalone --data-dir "$data_root/node" --flush "$1" \
        --nameserver-listen 127.0.0.1:19876 --nameserver-admin-listen 127.0.0.1:19877 \
        --broker-listen 127.0.0.1:20911 --broker-admin-listen 127.0.0.1:20913 >"$out_dir/node-$1.log" 2>&1 &
    node=$!
    for _ in $(seq 1 100); do
        "$ferromq" --nameserver 127.0.0.1:19876 send --topic warmup --body x >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "standalone did not start"; cat "$out_dir/node-$1.log"; exit 1
}

bench() { # bench KEY ARGS...
    local key="$1"; shift
    local json status=0
    # A run that stops early still prints its JSON; keep it, then fail.
    json=$("$ferromq" --nameserver 127.0.0.1:19876 bench "$@" --json) || status=$?
    [[ -n "$json" ]] && record "$key" "$json"
    echo "$key: $json"
    if ((status != 0)); then
        echo "bench $key failed (exit $status)"
        exit "$status"
    fi
}

n_batch=$((2000000 / scale))
n_single=$((200000 / scale))
n_backlog=$((1000000 / scale))

echo "==> sync flush"
start_node sync
bench produce_batch64_p4_sync_flush produce --topic b1 --messages "$n_batch" --size 1024 --producers 4 --batch 64
bench produce_single_sync_flush produce --topic b2 --messages $((n_single / 10)) --size 1024
# Delayed delivery: a light load spread over 20 s, then a burst all due in the same instant.
bench scheduled_light scheduled --topic s1 --messages $((2000 / scale)) --lead 5s --spread 20s
bench scheduled_burst scheduled --topic s2 --messages $((100000 / scale)) --lead 40s

echo "==> async flush"
start_node async
bench ping_round_trip ping --count $((20000 / scale))
bench produce_batch64_p4_async_flush produce --topic b1 --messages "$n_batch" --size 1024 --producers 4 --batch 64
bench produce_single_async_flush --threads 1 produce --topic b2 --messages "$n_single" --size 1024
bench produce_backlog produce --topic backlog --messages "$n_backlog" --size 1024 --producers 4 --batch 64
bench consume_backlog consume --topic backlog --group readers --messages "$n_backlog"

# The outbox: 4 producers enqueue one message per transaction while 2 relays send; on SQLite
# (WAL, synchronous commits) and on the PostgreSQL test server (scripts/postgres.sh: fsync off).
n_outbox=$((50000 / scale))
# Then the relays' capacity: the same number enqueued first, drained by 2 relays.
rm -f "$data_root"/outbox*.sqlite*
bench outbox_sqlite outbox --database "sqlite://$data_root/outbox.sqlite" --messages "$n_outbox" --producers 4 --relays 2
bench outbox_sqlite_drain outbox --database "sqlite://$data_root/outbox-drain.sqlite" --messages "$n_outbox" --producers 4 --relays 2 --drain
# A keyed backlog (after an outage, say): each key's rows go one claim after another.
bench outbox_sqlite_keyed_drain outbox --database "sqlite://$data_root/outbox-keyed-drain.sqlite" --messages "$n_outbox" --producers 4 --relays 2 --keys 100 --drain
pg_url=$(scripts/postgres.sh start)
for db in outbox_bench outbox_bench_keyed outbox_bench_drain outbox_bench_keyed_drain outbox_bench_tracked outbox_bench_tracked_drain outbox_bench_lagging; do
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
bench outbox_postgres outbox --database "${pg_url%/postgres}/outbox_bench" --messages "$n_outbox" --producers 4 --relays 2
bench outbox_postgres_keyed outbox --database "${pg_url%/postgres}/outbox_bench_keyed" --messages "$n_outbox" --producers 4 --relays 2 --keys 100
bench outbox_postgres_drain outbox --database "${pg_url%/postgres}/outbox_bench_drain" --messages "$n_outbox" --producers 4 --relays 2 --drain
bench outbox_postgres_keyed_drain outbox --database "${pg_url%/postgres}/outbox_bench_keyed_drain" --messages "$n_outbox" --producers 4 --relays 2 --keys 100 --drain
# Consumption tracking: a consumer group acknowledges everything and the relays mark each row
# consumed from the brokers' trace (one request per row), following the producers, then on a
# backlog.
bench outbox_postgres_tracked outbox --database "${pg_url%/postgres}/outbox_bench_tracked" --messages "$n_outbox" --producers 4 --relays 2 --track stock
bench outbox_postgres_tracked_drain outbox --database "${pg_url%/postgres}/outbox_bench_tracked_drain" --messages "$n_outbox" --producers 4 --relays 2 --track stock-drain --drain
# A lagging group: its consumer starts only once the sent rows have waited a while; the
# trackers' looks at the waiting rows meanwhile.
bench outbox_postgres_lagging outbox --database "${pg_url%/postgres}/outbox_bench_lagging" --messages $((10000 / scale)) --producers 4 --relays 2 --track stock-lagging --lag $((120 / scale))s
stop_node

echo "==> three-member group, sync flush (all on this one machine)"
group_pids=()
stop_group() {
    for pid in "${group_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${group_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    group_pids=()
}
trap 'stop_node; stop_group' EXIT
rm -rf "$data_root/group"
mkdir -p "$data_root/group"
"$release/ferromq-nameserver" --listen 127.0.0.1:19876 --admin-listen 127.0.0.1:19877 >"$out_dir/group-ns.log" 2>&1 &
group_pids+=($!)
peers='[{id = 1, raft_addr = "127.0.0.1:21912", client_addr = "127.0.0.1:21911"}, {id = 2, raft_addr = "127.0.0.1:22912", client_addr = "127.0.0.1:22911"}, {id = 3, raft_addr = "127.0.0.1:23912", client_addr = "127.0.0.1:23911"}]'
for id in 1 2 3; do
    FERROMQ_NODE_ID=$id FERROMQ_RAFT__LISTEN="127.0.0.1:2${id}912" FERROMQ_RAFT__PEERS="$peers" \
        "$release/ferromq-broker" --data-dir "$data_root/group/b$id" --listen "127.0.0.1:2${id}911" \
        --admin-listen "127.0.0.1:2${id}913" --nameserver 127.0.0.1:19876 >"$out_dir/group-b$id.log" 2>&1 &
    group_pids+=($!)
done
for _ in $(seq 1 150); do
    "$ferromq" --nameserver 127.0.0.1:19876 send --topic warmup --body x >/dev/null 2>&1 && break
    sleep 0.2
done
bench group_produce_batch64_p4_sync_flush produce --topic g1 --messages "$n_batch" --size 1024 --producers 4 --batch 64
half_rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["group_produce_batch64_p4_sync_flush"]["msgs_per_sec"] / 2)' "$results")
bench group_produce_half_load_sync_flush produce --topic g2 --messages $((n_batch / 4)) --size 1024 --producers 4 --batch 64 --rate "$half_rate"

# Failover: a sequential producer runs while the leader is killed; its worst latency and its
# errors show what the outage cost.
leader_pid=""
for id in 1 2 3; do
    if python3 -c 'import json,sys,urllib.request; sys.exit(0 if json.load(urllib.request.urlopen(sys.argv[1]))["role"] == "Leader" else 1)' \
        "http://127.0.0.1:2${id}913/v1/raft" 2>/dev/null; then
        leader_pid=${group_pids[$id]}
    fi
done
"$ferromq" --nameserver 127.0.0.1:19876 bench produce --topic g3 --messages $((40000 / scale)) --size 1024 --json \
    >"$out_dir/failover.json" 2>/dev/null &
failover_bench=$!
sleep 2
[[ -n "$leader_pid" ]] && kill -9 "$leader_pid"
wait "$failover_bench" || true
record failover_sequential_producer "$(cat "$out_dir/failover.json")"
echo "failover_sequential_producer: $(cat "$out_dir/failover.json")"
stop_group

echo "==> summary (ratios to this machine's limits)"
python3 - "$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
loop, disk, fsync = r["loopback_mib_per_sec"], r["seq_write_mib_per_sec"], r["fdatasync_per_sec"]
def line(name, key, limit_name, limit, unit="mib_per_sec"):
    b = r[key]
    print(f"{name:48} {b['msgs_per_sec']:>10.0f} msg/s {b['mib_per_sec']:>8.1f} MiB/s "
          f"p99 {b['latency_us']['p99']:>7} us  = {b[unit] / limit:.2f} x {limit_name}")
line("batched produce, batch 64 x 4 producers, sync", "produce_batch64_p4_sync_flush", "disk seq write", disk)
line("batched produce, batch 64 x 4 producers, async", "produce_batch64_p4_async_flush", "disk seq write", disk)
line("single producer sync sends, sync flush", "produce_single_sync_flush", "fdatasync/s", fsync, "msgs_per_sec")
line("single producer sync sends, async flush", "produce_single_async_flush", "ping round trips/s", r["ping_round_trip"]["msgs_per_sec"], "msgs_per_sec")
line(f"consume {r['consume_backlog']['messages']:,}-message backlog", "consume_backlog", "loopback", loop)
single, group = r["produce_batch64_p4_sync_flush"], r["group_produce_batch64_p4_sync_flush"]
print(f"{'3-member group, batch 64 x 4 producers, sync':48} {group['msgs_per_sec']:>10.0f} msg/s {group['mib_per_sec']:>8.1f} MiB/s "
      f"p99 {group['latency_us']['p99']:>7} us  = {group['msgs_per_sec'] / single['msgs_per_sec']:.2f} x single-member group")
half = r["group_produce_half_load_sync_flush"]
print(f"{'3-member group at half of its peak, sync sends':48} {half['msgs_per_sec']:>10.0f} msg/s p99 {half['latency_us']['p99']} us")
failover = r.get("failover_sequential_producer")
if failover:
    print(f"{'leader killed under a sequential producer':48} worst send {failover['latency_us']['max'] / 1000:.0f} ms, "
          f"{failover['errors']} failed sends, {failover['messages']} acknowledged")
batched = r["produce_batch64_p4_async_flush"]["msgs_per_sec"]
for name, key in [("outbox on SQLite, 4 producers, 2 relays", "outbox_sqlite"),
                  ("outbox on PostgreSQL (no fsync), same", "outbox_postgres"),
                  ("outbox on PostgreSQL, 100 sharding keys", "outbox_postgres_keyed")]:
    o = r[key]
    print(f"{name:48} {o['msgs_per_sec']:>10.0f} msg/s commit->ack p50 {o['latency_us']['p50'] / 1000:.0f} ms "
          f"p99 {o['latency_us']['p99'] / 1000:.0f} ms = {o['msgs_per_sec'] / o['enqueue']['msgs_per_sec']:.2f} x its enqueue rate "
          f"({o['enqueue']['msgs_per_sec']:.0f} commits/s), {o['msgs_per_sec'] / batched:.3f} x batched produce")
print(f"{'':48} SQLite enqueue = {r['outbox_sqlite']['enqueue']['msgs_per_sec'] / fsync:.2f} x fdatasync/s")
for name, key in [("outbox backlog drained by 2 relays, SQLite", "outbox_sqlite_drain"),
                  ("same, 100 sharding keys", "outbox_sqlite_keyed_drain"),
                  ("outbox backlog drained by 2 relays, PostgreSQL", "outbox_postgres_drain"),
                  ("same, 100 sharding keys", "outbox_postgres_keyed_drain")]:
    o = r[key]
    print(f"{name:48} {o['msgs_per_sec']:>10.0f} msg/s = {o['msgs_per_sec'] / batched:.3f} x batched produce")
def tracked(name, key, ratio_name, limit):
    c = r[key]["consumed"]
    print(f"{name:48} {c['msgs_per_sec']:>10.0f} rows/s marked consumed, commit->consumed p50 {c['latency_us']['p50'] / 1000:.0f} ms "
          f"p99 {c['latency_us']['p99'] / 1000:.0f} ms = {c['msgs_per_sec'] / limit:.2f} x {ratio_name}")
tracked("outbox tracked on PostgreSQL, following", "outbox_postgres_tracked", "its enqueue rate",
        r["outbox_postgres_tracked"]["enqueue"]["msgs_per_sec"])
tracked("outbox tracked on PostgreSQL, backlog", "outbox_postgres_tracked_drain", "ping round trips/s",
        r["ping_round_trip"]["msgs_per_sec"])
ping = r["ping_round_trip"]
print(f"limits: loopback {loop:.0f} MiB/s, disk sequential write {disk:.0f} MiB/s, fdatasync {fsync:.0f}/s, "
      f"empty request round trip p50 {ping['latency_us']['p50']} us ({ping['msgs_per_sec']:.0f}/s)")
PY
echo "results: $results"
