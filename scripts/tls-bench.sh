#!/usr/bin/env bash
# What mutual TLS costs: two clusters on loopback (headnode + 3 datanodes each), one plaintext and
# one under mutual TLS, benched alternately with `client bench` (same load, same run), ROUNDS
# rounds per fsync mode; prints each round and the medians. Also times TRIALS one-shot
# `client health` runs against each (a process start, a connection, a handshake, one call).
# Usage: scripts/tls-bench.sh [ROUNDS] [SECONDS]   (BIN: folder of the binaries, default
# target/release; PORT_BASE: first of the 8 ports used, default 17000)
set -euo pipefail
cd "$(dirname "$0")/.."
unset REGISTRO_TLS_CA REGISTRO_TLS_CERT REGISTRO_TLS_KEY
rounds=${1:-5}
secs=${2:-10}
trials=${TRIALS:-20}
bin=${BIN:-target/release}
base=${PORT_BASE:-17000}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

"$bin/client" tls ca --dir "$dir/certs" >/dev/null
for n in headnode datanode1 datanode2 datanode3 client; do
  role=${n%[0-9]}
  "$bin/client" tls cert --dir "$dir/certs" --role "$role" --name "$n" --host 127.0.0.1 >/dev/null
done
tls_of() { echo --tls-ca "$dir/certs/ca.pem" --tls-cert "$dir/certs/$1.pem" --tls-key "$dir/certs/$1-key.pem"; }

# start MODE(plain|tls) FSYNC HEAD_PORT
start() {
  local mode=$1 fsync=$2 port=$3 tls_h="" scheme=http
  [ "$mode" = tls ] && { tls_h=$(tls_of headnode); scheme=""; }
  mkdir -p "$dir/$mode-$fsync"
  # shellcheck disable=SC2086
  "$bin/headnode" --listen "127.0.0.1:$port" --heartbeat-log "$dir/$mode-$fsync/hb.log" \
    --registro-log "$dir/$mode-$fsync/reg.log" $tls_h 2>"$dir/$mode-$fsync/headnode.err" &
  pids+=($!)
  for i in 1 2 3; do
    local tls_d=""
    [ "$mode" = tls ] && tls_d=$(tls_of "datanode$i")
    # shellcheck disable=SC2086
    "$bin/datanode" --listen "127.0.0.1:$((port + i))" --name "datanode$i" --fsync "$fsync" \
      --data-dir "$dir/$mode-$fsync/d$i" --headnode "${scheme:+$scheme://}127.0.0.1:$port" $tls_d \
      2>"$dir/$mode-$fsync/datanode$i.err" &
    pids+=($!)
  done
}

client_for() { # MODE PORT
  if [ "$1" = tls ]; then echo "$bin/client" --addr "127.0.0.1:$2" $(tls_of client); else echo "$bin/client" --addr "http://127.0.0.1:$2"; fi
}

wait_serving() { # MODE PORT
  local deadline=$((SECONDS + 20))
  until [ "$($(client_for "$1" "$2") status 2>/dev/null | grep -c ' SERVING ')" -eq 3 ]; do
    [ $SECONDS -lt $deadline ] || { echo "cluster $1 on $2 not SERVING" >&2; exit 1; }
    sleep 0.2
  done
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for fsync in always never; do
  plain_port=$base; tls_port=$((base + 4))
  start plain "$fsync" "$plain_port"
  start tls "$fsync" "$tls_port"
  wait_serving plain "$plain_port"; wait_serving tls "$tls_port"
  : >"$dir/plain.rps"; : >"$dir/tls.rps"
  for r in $(seq 1 "$rounds"); do
    for mode in plain tls; do
      port=$plain_port; [ "$mode" = tls ] && port=$tls_port
      out=$($(client_for "$mode" "$port") bench --duration "${secs}s" --json)
      rps=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["throughput_rps"]), d["errors"], d["latency_us"]["p99"])' <<<"$out")
      read -r tput errors p99 <<<"$rps"
      echo "fsync=$fsync round=$r $mode: $tput Stores/s, p99 ${p99} us, errors $errors"
      echo "$tput" >>"$dir/$mode.rps"
    done
  done
  p=$(median <"$dir/plain.rps"); t=$(median <"$dir/tls.rps")
  echo "fsync=$fsync medians over $rounds rounds: plaintext $p Stores/s, mutual TLS $t Stores/s, TLS/plaintext $(python3 -c "print(round($t/$p, 3))")"
  if [ "$fsync" = always ]; then
    for mode in plain tls; do
      port=$plain_port; [ "$mode" = tls ] && port=$tls_port
      : >"$dir/$mode.ms"
      for _ in $(seq 1 "$trials"); do
        s=$(date +%s%N); $(client_for "$mode" "$port") health >/dev/null; e=$(date +%s%N)
        echo $(((e - s) / 1000)) >>"$dir/$mode.ms"
      done
      echo "one-shot client health, $mode: median $(median <"$dir/$mode.ms") us over $trials runs (process start + connect + call)"
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
