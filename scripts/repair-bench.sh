#!/usr/bin/env bash
# Times `client repair` over N under-replicated messages: datanode1's data file is written with N
# records (100-byte messages, half with a request id) in the data file's format, datanode2 and
# datanode3 start empty, and a `--replicas 2` headnode repairs: every record is copied once.
# Usage: scripts/repair-bench.sh [N] [FSYNC]   (release binaries in target/release; FSYNC always|never;
# HEADNODE_ARGS: more headnode flags, e.g. "--repair-ids-per-pass 20000")
# Run it under `flock /tmp/registro-bench.lock` so no other benchmark shares the CPUs.
set -euo pipefail
N=${1:-100000}
FSYNC=${2:-always}
BIN=${BIN:-target/release}
work=$(mktemp -d /tmp/registro-repair-bench.XXXXXX)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"

mkdir -p "$work/d1" "$work/d2" "$work/d3"
python3 - "$N" "$work/d1/messages.jsonl" <<'EOF'
import json, sys, uuid
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        rid = f"bench-{i}" if i % 2 == 0 else ""
        f.write(json.dumps({"id": str(uuid.uuid4()), "stored_at": "2026-11-24T10:00:00.000Z",
                            "message": ("m%d " % i).ljust(100, "x"), "request_id": rid},
                           separators=(",", ":")) + "\n")
EOF

# The headnode logs at info (its address, the repair's start and end); the datanodes at warn (at
# info they log every record stored) and register themselves.
# shellcheck disable=SC2086 # HEADNODE_ARGS is a list of flags
RUST_LOG=info "$BIN/headnode" --listen 127.0.0.1:0 --replicas 2 --heartbeat-interval 200ms ${HEADNODE_ARGS:-} \
  --heartbeat-log "$work/heartbeat.log" --registro-log "$work/registro.log" 2>"$work/headnode.err" &
pids+=($!)
head=$(addr_of "$work/headnode.err")
for i in 1 2 3; do
  RUST_LOG=warn "$BIN/datanode" --listen 127.0.0.1:0 --name "datanode$i" --data-dir "$work/d$i" \
    --fsync "$FSYNC" --headnode "http://$head" 2>"$work/datanode$i.err" &
  pids+=($!)
done
# Every datanode registered and SERVING (datanode1 reads its N records first), and warm-up over.
for _ in $(seq 1 6000); do
  [ "$("$BIN/client" --addr "$head" status 2>/dev/null | grep -c ' SERVING ')" = 3 ] &&
    "$BIN/client" --addr "$head" health --service registro.v1.Store >/dev/null 2>&1 && break
  sleep 0.05
done
"$BIN/client" --addr "$head" status
[ "$("$BIN/client" --addr "$head" status | grep -c ' SERVING ')" = 3 ] || { echo "the datanodes did not all come up" >&2; exit 1; }
export RUST_LOG=warn
echo "repair of $N under-replicated messages, datanodes --fsync $FSYNC, headnode ${HEADNODE_ARGS:-(defaults)}, load average $(cut -d' ' -f1-3 /proc/loadavg):"
start=$(date +%s.%N)
"$BIN/client" --addr "$head" repair --no-progress
end=$(date +%s.%N)
printf 'elapsed %.2f s\n' "$(echo "$end - $start" | bc)"
start=$(date +%s.%N)
"$BIN/client" --addr "$head" repair --no-progress
end=$(date +%s.%N)
printf 'second repair (nothing to copy): elapsed %.2f s\n' "$(echo "$end - $start" | bc)"
wc -l "$work"/d*/messages.jsonl
grep "repair done" "$work/headnode.err" | tail -2
echo "headnode peak resident memory: $(grep VmHWM "/proc/${pids[0]}/status")"
