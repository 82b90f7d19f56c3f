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
#        OF=nginx scripts/store-cost.sh [NGINX_BINARY...]: nginx under callgrind instead, as the
#        peer to compare with (one worker process, no master, `grpc_pass` to one datanode, as
#        make bench's scenario (c) with one datanode); default `nginx` from PATH
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
case "$of" in headnode | datanode | nginx) ;; *) echo "store-cost: OF is headnode, datanode or nginx, not $of" >&2; exit 2 ;; esac
binaries=("$@")
if ((${#binaries[@]} == 0)); then
  if [ "$of" = nginx ]; then binaries=(nginx); else binaries=("$bin/$of"); fi
fi
work=$(mktemp -d)
# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"
command -v valgrind >/dev/null || { echo "store-cost: valgrind is not installed" >&2; exit 1; }
if [ "$of" = nginx ]; then
  for measured in "${binaries[@]}"; do
    command -v "$measured" >/dev/null || { echo "store-cost: no nginx at $measured (Debian: apt-get install nginx)" >&2; exit 1; }
  done
fi

# nginx $1 under callgrind in $2, one worker and no master (so callgrind sees the worker),
# `grpc_pass` to the datanode at $3; sets `head` (its pid) and `url`. nginx cannot report a port
# it chose, so a free one is asked of the kernel first.
start_nginx() {
  local nginx=$1 dir=$2 datanode=$3 port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$dir/nginx/tmp"
  cat >"$dir/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/tmp/body;
    proxy_temp_path $dir/nginx/tmp/proxy;
    fastcgi_temp_path $dir/nginx/tmp/fastcgi;
    uwsgi_temp_path $dir/nginx/tmp/uwsgi;
    scgi_temp_path $dir/nginx/tmp/scgi;
    keepalive_requests 10000000;
    upstream datanodes {
        server $datanode;
        keepalive 16;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$port http2;
        location / { grpc_pass grpc://datanodes; }
    }
}
CONF
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$nginx" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" </dev/null >/dev/null 2>"$dir/nginx.err" &
  head=$!
  url="http://127.0.0.1:$port"
}

echo "== $of instructions per Store (callgrind; client bench --concurrency $CONCURRENCY, $SMALL and $LARGE Stores)"
for measured in "${binaries[@]}"; do
  declare -A ir=()
  case "$of" in
    headnode) headnode=$measured datanode_bin=$bin/datanode ;;
    datanode) headnode=$bin/headnode datanode_bin=$measured ;;
    nginx) headnode="" datanode_bin=$bin/datanode ;;
  esac
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
    if [ "$of" = nginx ]; then
      start_nginx "$measured" "$dir" "$datanode"
    else
      "${head_grind[@]}" "$headnode" --listen 127.0.0.1:0 --datanodes "$datanode" "${head_args[@]}" \
        --heartbeat-log "$dir/heartbeat.log" --registro-log "$dir/registro.log" \
        </dev/null >/dev/null 2>"$dir/headnode.err" &
      head=$!
      url="http://$(addr_of "$dir/headnode.err")"
    fi
    pids+=($head)
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
