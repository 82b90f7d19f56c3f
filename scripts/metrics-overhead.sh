#!/usr/bin/env bash
# make metrics-overhead: what recording metrics costs the headnode, measured two ways.
#
# 1. Instructions (repeatable on a noisy machine): the headnode runs under
#    `valgrind --tool=callgrind` with and without --metrics-listen; `client bench --concurrency 1`
#    sends SMALL and then LARGE Stores (separate runs), and the instructions per Store are
#    (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL), which cancels start-up, shutdown and probes.
# 2. Throughput (same run, alternating): ROUNDS rounds, each starts a fresh cluster without and
#    then with --metrics-listen and runs `client bench` for BENCH_SECONDS; the medians of each,
#    and the median of the rounds' own ratios (a round's two runs saw the same machine), are
#    compared. ROUNDS=0 skips this part.
#
# Ports: every process listens on 127.0.0.1:0 (nothing fixed). Needs valgrind for part 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-500}
LARGE=${LARGE:-2500}
ROUNDS=${ROUNDS:-5}
BENCH_SECONDS=${BENCH_SECONDS:-8}
CONCURRENCY=${CONCURRENCY:-64}
bin=target/release
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"

# Starts datanodes (their count is $1) in $2; sets $datanodes to their addresses, comma-separated.
start_datanodes() {
  local n=$1 dir=$2 addrs=()
  for i in $(seq 1 "$n"); do
    "$bin/datanode" --listen 127.0.0.1:0 --name "datanode$i" --data-dir "$dir/datanode$i" \
      </dev/null >/dev/null 2>"$dir/datanode$i.err" &
    pids+=($!)
    addrs+=("$(addr_of "$dir/datanode$i.err")")
  done
  datanodes=$(IFS=,; echo "${addrs[*]}")
}

echo "== instructions per Store (callgrind; client bench --concurrency 1, $SMALL and $LARGE Stores)"
command -v valgrind >/dev/null || { echo "metrics-overhead: valgrind is not installed" >&2; exit 1; }
declare -A ir
for mode in off on; do
  for n in "$SMALL" "$LARGE"; do
    dir="$work/cg-$mode-$n"
    mkdir -p "$dir"
    start_datanodes 1 "$dir"
    extra=()
    [ "$mode" = on ] && extra=(--metrics-listen 127.0.0.1:0)
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
      "$bin/headnode" --listen 127.0.0.1:0 --datanodes "$datanodes" \
      --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" "${extra[@]}" \
      </dev/null >/dev/null 2>"$dir/headnode.err" &
    head=$!
    pids+=($head)
    url="http://$(addr_of "$dir/headnode.err")"
    wait_serving "$url"
    "$bin/client" --addr "$url" --timeout 30s bench --concurrency 1 --connections 1 \
      --requests "$n" --no-progress --json >"$dir/bench.json"
    stop "$head"
    ir[$mode-$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out")
    printf '  metrics %-3s %5d Stores: %s instructions\n' "$mode" "$n" "${ir[$mode-$n]}"
    for pid in "${pids[@]}"; do stop "$pid"; done
    pids=()
  done
done
per_off=$(( (ir[off-$LARGE] - ir[off-$SMALL]) / (LARGE - SMALL) ))
per_on=$(( (ir[on-$LARGE] - ir[on-$SMALL]) / (LARGE - SMALL) ))
echo "  per Store: $per_off instructions without metrics, $per_on with"
awk -v off="$per_off" -v on="$per_on" 'BEGIN { printf "  recording costs %+.2f%% instructions per Store\n", (on - off) * 100 / off }'

[ "$ROUNDS" -gt 0 ] || exit 0
echo
echo "== throughput (client bench --concurrency $CONCURRENCY, ${BENCH_SECONDS}s, $ROUNDS alternating rounds, 3 datanodes)"
off_runs=()
on_runs=()
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    dir="$work/bench-$round-$mode"
    mkdir -p "$dir"
    start_datanodes 3 "$dir"
    extra=()
    [ "$mode" = on ] && extra=(--metrics-listen 127.0.0.1:0)
    "$bin/headnode" --listen 127.0.0.1:0 --datanodes "$datanodes" \
      --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" "${extra[@]}" \
      </dev/null >/dev/null 2>"$dir/headnode.err" &
    head=$!
    pids+=($head)
    url="http://$(addr_of "$dir/headnode.err")"
    wait_serving "$url"
    "$bin/client" --addr "$url" bench --concurrency "$CONCURRENCY" --duration "${BENCH_SECONDS}s" \
      --no-progress --json >"$dir/bench.json"
    rate=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput_rps"]))' "$dir/bench.json")
    printf '  round %d metrics %-3s %7s Stores/s\n' "$round" "$mode" "$rate"
    if [ "$mode" = on ]; then on_runs+=("$rate"); else off_runs+=("$rate"); fi
    [ "$mode" = on ] && ratios+=("$(awk -v off="${off_runs[-1]}" -v on="$rate" 'BEGIN { printf "%.4f", (on - off) * 100 / off }')")
    for pid in "${pids[@]}"; do stop "$pid"; done
    pids=()
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m_off=$(median "${off_runs[@]}")
m_on=$(median "${on_runs[@]}")
echo "  median: $m_off Stores/s without metrics, $m_on with"
awk -v off="$m_off" -v on="$m_on" 'BEGIN { printf "  throughput with metrics: %+.2f%% (medians)\n", (on - off) * 100 / off }'
printf '  throughput with metrics: %+.2f%% (median of the rounds'"'"' own differences: %s)\n' \
  "$(median "${ratios[@]}")" "$(printf '%+.1f%% ' "${ratios[@]}")"
