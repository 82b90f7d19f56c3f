#!/usr/bin/env bash
# Side by side: two or more headnode builds under the same h2load load, in the same run.
#
# Starts, for every binary, a cluster of three datanodes (--fsync $MODE) and that headnode
# (--datanodes, every port 127.0.0.1:0), all at once; then at each level of requests in flight
# runs h2load for $SECONDS_PER seconds against each headnode in turn (the order rotates each
# round), $ROUNDS times. Prints, per binary and level, the median req/s and p99 over the rounds,
# the headnode's CPU µs per Store, and the median of each round's ratio to the first binary.
#
# Usage: scripts/headnode-ab.sh BINARY... (take the benchmark lock: flock /tmp/registro-bench.lock)
# Settings: LEVELS="1 8 64 256" ROUNDS=8 SECONDS_PER=2 MODE=never CONNECTIONS=4 SIZE=100
#           HEADNODE_ARGS="" (extra flags for every headnode); ENV_<n>="VAR=value ..." (environment
#           of the n-th binary, from 1, e.g. ENV_2="TOKIO_WORKER_THREADS=1"); DATANODE_<n>=BINARY
#           (the n-th cluster's datanodes; default target/release/datanode); LOGS_<n>=DIR (where the
#           n-th headnode writes its registro and heartbeat logs; default its cluster's folder);
#           DATANODE_ARGS_<n>="..." (extra flags for the n-th cluster's datanodes, e.g.
#           DATANODE_ARGS_1="--worker-threads 2"); MODE_<n>=always|never (the n-th cluster's
#           --fsync, instead of $MODE: both modes side by side); DIRECT=1 (load each cluster's first datanode
#           straight, not its headnode: the CPU column is then that datanode's)
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a levels <<<"${LEVELS:-1 8 64 256}"
rounds=${ROUNDS:-8}
secs=${SECONDS_PER:-2}
mode=${MODE:-never}
connections=${CONNECTIONS:-4}
size=${SIZE:-100}
read -r -a head_args <<<"${HEADNODE_ARGS:-}"
bin=target/release
binaries=("$@")
((${#binaries[@]})) || { echo "usage: $0 HEADNODE_BINARY..." >&2; exit 2; }
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
python3 scripts/bench_chart.py body "$size" "$work/body.bin"

ticks() { local t; read -r -a t <<<"$(cpu_ticks "$1")"; echo $((t[0] + t[1])); }
results=$work/results.txt
# One cluster per binary, all up at once and idle but for the one under load, so each short
# measurement of one binary sits between measurements of the others: the machine's noise
# falls on all of them alike.
declare -a heads=() urls=() first_datanode=()
for i in "${!binaries[@]}"; do
  dir=$work/b$i
  mkdir -p "$dir"
  addrs=()
  datavar="DATANODE_$((i + 1))"
  dargsvar="DATANODE_ARGS_$((i + 1))"
  modevar="MODE_$((i + 1))"
  read -r -a data_args <<<"${!dargsvar:-}"
  for d in 1 2 3; do
    "${!datavar:-$bin/datanode}" --listen 127.0.0.1:0 --name "datanode$d" --data-dir "$dir/datanode$d" \
      --fsync "${!modevar:-$mode}" "${data_args[@]}" </dev/null >/dev/null 2>"$dir/datanode$d.err" &
    pids+=($!)
    ((d > 1)) || first_datanode[i]=$!
    addrs+=("$(addr_of "$dir/datanode$d.err")")
  done
  envvar="ENV_$((i + 1))"
  read -r -a extra_env <<<"${!envvar:-}"
  logsvar="LOGS_$((i + 1))"
  logs=${!logsvar:-$dir}
  mkdir -p "$logs"
  env "${extra_env[@]}" "${binaries[i]}" --listen 127.0.0.1:0 --datanodes "$(IFS=,; echo "${addrs[*]}")" \
    "${head_args[@]}" --heartbeat-log "$logs/heartbeat.log" --registro-log "$logs/registro.log" \
    </dev/null >/dev/null 2>"$dir/headnode.err" &
  heads[i]=$!
  pids+=($!)
  urls[i]="http://$(addr_of "$dir/headnode.err")"
  if [[ ${DIRECT:-} == 1 ]]; then
    urls[i]="http://${addrs[0]}" heads[i]=${first_datanode[i]}
  fi
done
for i in "${!binaries[@]}"; do
  for _ in $(seq 1 300); do
    "$bin/client" --addr "${urls[i]}" health --service registro.v1.Store >/dev/null 2>&1 && break
    sleep 0.1
  done
  h2load -D 1 -c 4 -m 16 -d "$work/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "${urls[i]}/registro.v1.Store/Store" >/dev/null 2>&1
done
n=${#binaries[@]}
for level in "${levels[@]}"; do
  c=$((level < connections ? level : connections))
  m=$(((level + c - 1) / c))
  for round in $(seq 1 "$rounds"); do
    for k in $(seq 0 $((n - 1))); do
      i=$(((k + round - 1) % n))
      head=${heads[i]}
      t0=$(ticks "$head")
      h2load -D "$secs" -c "$c" -m "$m" -d "$work/body.bin" -H 'content-type: application/grpc' \
        -H 'te: trailers' --log-file "$work/run.tsv" "${urls[i]}/registro.v1.Store/Store" \
        >"$work/run.txt" 2>&1
      t1=$(ticks "$head")
      python3 - "$(python3 scripts/bench_chart.py h2load "$work/run.txt" "$work/run.tsv")" \
        "$i" "$round" "$level" "$((t1 - t0))" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); i, rnd, level, ticks, hz = sys.argv[2:]
cpu = int(ticks) * 1e6 / int(hz) / max(r["ok"], 1)
print(i, rnd, level, r["throughput_rps"], r["latency_us"]["p99"], round(cpu, 1), r["errors"])
PY
      rm -f "$work/run.tsv"
      printf '%s\n' "$(tail -n 1 "$results")" >&2
    done
  done
done
python3 - "$results" "${binaries[@]}" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.split() for l in open(sys.argv[1])]
names = sys.argv[2:]
by = defaultdict(list)
for i, rnd, level, rps, p99, cpu, err in rows:
    by[(int(i), int(level))].append((int(rnd), float(rps), float(p99), float(cpu), int(err)))
levels = sorted({k[1] for k in by})
print(f"{'binary':40} {'in flight':>9} {'req/s':>9} {'p99 ms':>7} {'cpu µs':>7} {'/first':>6}  rounds req/s")
for level in levels:
    base = {r: rps for r, rps, *_ in by[(0, level)]}
    for i, name in enumerate(names):
        v = by[(i, level)]
        rps = statistics.median(x[1] for x in v)
        ratios = [x[1] / base[x[0]] for x in v if base.get(x[0])]
        print(f"{name[-40:]:40} {level:9} {rps:9.0f} {statistics.median(x[2] for x in v) / 1000:7.2f} "
              f"{statistics.median(x[3] for x in v):7.1f} {statistics.median(ratios):6.2f}  "
              + " ".join(f"{x[1]:.0f}" for x in sorted(v)) + (f"  errors {sum(x[4] for x in v)}" if sum(x[4] for x in v) else ""))
PY
