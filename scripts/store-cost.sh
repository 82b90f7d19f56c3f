#!/usr/bin/env bash
# make store-cost: instructions the headnode spends per forwarded Store, under callgrind
# (instruction counts are repeatable on a noisy machine, wall-clock figures are not).
#
# For each headnode binary given (default target/release/headnode), one datanode (--fsync never)
# and the headnode under `valgrind --tool=callgrind`; `client bench --concurrency C` sends SMALL
# and then LARGE Stores (separate runs), and the instructions per Store are
# (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL), which cancels start-up, shutdown and probes.
#
# Usage: scripts/store-cost.sh [HEADNODE_BINARY...]
# Settings: SMALL=500 LARGE=2500 CONCURRENCY=1 (Stores in flight) HEADNODE_ARGS="" (extra flags)
#           CALLGRIND_KEEP=DIR (keep the LARGE run's callgrind.out per binary there)
# Ports: every process listens on 127.0.0.1:0 (nothing fixed). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-500}
LARGE=${LARGE:-2500}
CONCURRENCY=${CONCURRENCY:-1}
read -r -a head_args <<<"${HEADNODE_ARGS:-}"
bin=target/release
binaries=("$@")
((${#binaries[@]})) || binaries=("$bin/headnode")
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
command -v valgrind >/dev/null || { echo "store-cost: valgrind is not installed" >&2; exit 1; }

echo "== headnode instructions per Store (callgrind; client bench --concurrency $CONCURRENCY, $SMALL and $LARGE Stores)"
for headnode in "${binaries[@]}"; do
  declare -A ir=()
  for n in "$SMALL" "$LARGE"; do
    dir="$work/$n"
    rm -rf "$dir" && mkdir -p "$dir"
    "$bin/datanode" --listen 127.0.0.1:0 --name datanode1 --data-dir "$dir/datanode1" --fsync never \
      </dev/null >/dev/null 2>"$dir/datanode1.err" &
    pids+=($!)
    datanode=$(addr_of "$dir/datanode1.err")
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
      "$headnode" --listen 127.0.0.1:0 --datanodes "$datanode" "${head_args[@]}" \
      --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" \
      </dev/null >/dev/null 2>"$dir/headnode.err" &
    head=$!
    pids+=($head)
    url="http://$(addr_of "$dir/headnode.err")"
    wait_serving "$url"
    "$bin/client" --addr "$url" --timeout 30s bench --concurrency "$CONCURRENCY" \
      --connections 1 --requests "$n" --no-progress --json >"$dir/bench.json"
    stop "$head"
    ir[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out")
    for pid in "${pids[@]}"; do stop "$pid"; done
    pids=()
  done
  if [ -n "${CALLGRIND_KEEP:-}" ]; then
    mkdir -p "$CALLGRIND_KEEP"
    cp "$work/$LARGE/callgrind.out" "$CALLGRIND_KEEP/$(basename "$headnode").callgrind.out"
  fi
  printf '  %-40s %8d instructions per Store\n' "$headnode" $(((ir[$LARGE] - ir[$SMALL]) / (LARGE - SMALL)))
done
