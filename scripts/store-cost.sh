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
#        OF=datanode scripts/store-cost.sh [DATANODE_BINARY...]: the datanode under callgrind instead
#        (the instructions it spends per Store forwarded to it, StoreBatch calls of one message
#        at 1 in flight), behind target/release/headnode
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
of=${OF:-headnode}
case "$of" in headnode | datanode) ;; *) echo "store-cost: OF is headnode or datanode, not $of" >&2; exit 2 ;; esac
binaries=("$@")
((${#binaries[@]})) || binaries=("$bin/$of")
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
command -v valgrind >/dev/null || { echo "store-cost: valgrind is not installed" >&2; exit 1; }

echo "== $of instructions per Store (callgrind; client bench --concurrency $CONCURRENCY, $SMALL and $LARGE Stores)"
for measured in "${binaries[@]}"; do
  declare -A ir=()
  if [ "$of" = headnode ]; then
    headnode=$measured datanode_bin=$bin/datanode
  else
    headnode=$bin/headnode datanode_bin=$measured
  fi
  for n in "$SMALL" "$LARGE"; do
    dir="$work/$n"
    rm -rf "$dir" && mkdir -p "$dir"
    grind=(valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out")
    data_grind=() head_grind=("${grind[@]}")
    [ "$of" = datanode ] && data_grind=("${grind[@]}") head_grind=()
    "${data_grind[@]}" "$datanode_bin" --listen 127.0.0.1:0 --name datanode1 --data-dir "$dir/datanode1" \
      --fsync never </dev/null >/dev/null 2>"$dir/datanode1.err" &
    data=$!
    pids+=($data)
    datanode=$(addr_of "$dir/datanode1.err")
    "${head_grind[@]}" "$headnode" --listen 127.0.0.1:0 --datanodes "$datanode" "${head_args[@]}" \
      --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" \
      </dev/null >/dev/null 2>"$dir/headnode.err" &
    head=$!
    pids+=($head)
    url="http://$(addr_of "$dir/headnode.err")"
    wait_serving "$url"
    "$bin/client" --addr "$url" --timeout 30s bench --concurrency "$CONCURRENCY" \
      --connections 1 --requests "$n" --no-progress --json >"$dir/bench.json"
    stop "$head"
    stop "$data"
    ir[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out")
    for pid in "${pids[@]}"; do stop "$pid"; done
    pids=()
  done
  if [ -n "${CALLGRIND_KEEP:-}" ]; then
    mkdir -p "$CALLGRIND_KEEP"
    cp "$work/$LARGE/callgrind.out" "$CALLGRIND_KEEP/$(basename "$measured").callgrind.out"
  fi
  printf '  %-40s %8d instructions per Store\n' "$measured" $(((ir[$LARGE] - ir[$SMALL]) / (LARGE - SMALL)))
done
