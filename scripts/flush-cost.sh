#!/usr/bin/env bash
# Where the CPU of a Store goes with each --fsync mode, through the headnode (or HAProxy) at one load: three
# datanodes (with /metrics) and a headnode on loopback, h2load for SECONDS_PER seconds, then per
# stored message the headnode's and the datanodes' user and system CPU, the rest of the machine
# (h2load and the kernel's own threads: the journal, block I/O), the messages one data-file write
# carried and how long its fdatasync took. For the question "why is `always` this much slower than
# `never` at 64 in flight" (BENCHMARKS.md, "Why durable writes fall below 0.7×").
#
# Usage: scripts/flush-cost.sh [MODE...] (default: always never; take the benchmark lock:
#        flock /tmp/registro-bench.lock scripts/flush-cost.sh)
# Settings: LEVEL=64 (requests in flight, over 4 connections) SECONDS_PER=5 SIZE=100
#           HEADNODE=target/release/headnode DATANODE=target/release/datanode
#           FRONT=headnode (or haproxy: HAProxy as make bench's scenario d instead of the headnode;
#           its CPU is then in the "front" column)
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a modes <<<"${*:-always never}"
level=${LEVEL:-64}
secs=${SECONDS_PER:-5}
size=${SIZE:-100}
bin=target/release
headnode_bin=${HEADNODE:-$bin/headnode}
datanode_bin=${DATANODE:-$bin/datanode}
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
command -v h2load >/dev/null || { echo "flush-cost: h2load is missing (Debian: apt-get install nghttp2-client)" >&2; exit 1; }
python3 scripts/bench_chart.py body "$size" "$work/body.bin"
# Start-up lines (for the addresses) but not a line per message.
export RUST_LOG="info,registro::datanode::store=warn,registro::headnode::store=warn"

conns=$((level < 4 ? level : 4))
streams=$(((level + conns - 1) / conns))
load() { # url seconds
  h2load -D "$2" -c "$conns" -m "$streams" -d "$work/body.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' "$1/registro.v1.Store/Store"
}
# busy and idle ticks of the whole machine
machine() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
# sum and count of a datanode histogram, over every datanode
histogram() { # name metrics-url...
  local name=$1 url
  shift
  for url in "$@"; do curl -fsS "$url/metrics"; done |
    awk -v n="$name" '$1 == n "_sum" {s += $2} $1 == n "_count" {c += $2} END {print s + 0, c + 0}'
}

for mode in "${modes[@]}"; do
  dir=$work/$mode
  mkdir -p "$dir"
  addrs=() metrics=() datanodes=()
  for d in 1 2 3; do
    "$datanode_bin" --listen 127.0.0.1:0 --name "datanode$d" --data-dir "$dir/datanode$d" --fsync "$mode" \
      --metrics-listen 127.0.0.1:0 </dev/null >/dev/null 2>"$dir/datanode$d.err" &
    pids+=($!) datanodes+=($!)
    addrs+=("$(addr_of "$dir/datanode$d.err")")
    metrics+=("http://$(addr_of "$dir/datanode$d.err" 'metrics on http://')")
  done
  if [[ ${FRONT:-headnode} == haproxy ]]; then
    command -v haproxy >/dev/null || { echo "flush-cost: haproxy is missing (Debian: apt-get install haproxy)" >&2; exit 1; }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    scripts/haproxy-config.sh "$port" 1024 "${addrs[@]}" >"$dir/haproxy.cfg"
    haproxy -db -f "$dir/haproxy.cfg" </dev/null >/dev/null 2>"$dir/haproxy.err" &
    head=$!
    pids+=("$head")
    url="http://127.0.0.1:$port"
  else
    "$headnode_bin" --listen 127.0.0.1:0 --datanodes "$(IFS=,; echo "${addrs[*]}")" \
      --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" </dev/null >/dev/null 2>"$dir/headnode.err" &
    head=$!
    pids+=("$head")
    url="http://$(addr_of "$dir/headnode.err")"
  fi
  wait_serving "$url"
  load "$url" 2 >/dev/null
  h0=$(cpu_ticks "$head") d0=$(cpu_ticks "${datanodes[@]}") m0=$(machine)
  b0=$(histogram registro_batch_messages "${metrics[@]}") f0=$(histogram registro_fsync_seconds "${metrics[@]}")
  out=$(load "$url" "$secs")
  h1=$(cpu_ticks "$head") d1=$(cpu_ticks "${datanodes[@]}") m1=$(machine)
  b1=$(histogram registro_batch_messages "${metrics[@]}") f1=$(histogram registro_fsync_seconds "${metrics[@]}")
  python3 - "$mode" "$level" "$out" "$h0" "$h1" "$d0" "$d1" "$m0" "$m1" "$b0" "$b1" "$f0" "$f1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
mode, level, out, h0, h1, d0, d1, m0, m1, b0, b1, f0, f1, hz = sys.argv[1:]
ok = int(re.search(r"(\d+) succeeded", out).group(1))
rps = float(re.search(r"([\d.]+) req/s", out).group(1))
v = lambda a, b: [int(y) - int(x) for x, y in zip(a.split(), b.split())]
us = lambda t: t * 1e6 / int(hz) / max(ok, 1)
hu, hs = v(h0, h1)
du, ds = v(d0, d1)
busy, idle = v(m0, m1)
(bs, bc), (fs, fc) = [[float(y) - float(x) for x, y in zip(a.split(), b.split())] for a, b in ((b0, b1), (f0, f1))]
rest = us(busy) - us(hu + hs) - us(du + ds)
print(f"fsync {mode:6} {level} in flight: {rps:8.0f} Stores/s | µs per Store: front {us(hu):.1f} user + "
      f"{us(hs):.1f} sys, datanodes {us(du):.1f} + {us(ds):.1f}, rest of the machine {rest:.1f} "
      f"(busy {us(busy):.1f}, idle {100 * idle / max(busy + idle, 1):.0f} %) | {bs / max(bc, 1):.1f} messages a write"
      + (f", fdatasync {1000 * fs / fc:.3f} ms" if fc else ""))
PY
  for pid in "$head" "${datanodes[@]}"; do stop "$pid"; done
  pids=()
done
