#!/usr/bin/env bash
# make demo: the whole cluster as local processes, no Docker. Starts datanode1-3 on ports
# 6001-6003 (metrics on 9601-9603) and the headnode on 5000 (status page and metrics on 9500),
# sends the exercise's messages with the client, prints the receipts, the headnode's Status, a
# few of its metrics and where every file is, then stops the cluster with SIGTERM.
# DEMO_KEEP=1 keeps the cluster running (and the status page up) until Ctrl-C.
set -euo pipefail
# The demo is plaintext on loopback, whatever certificates the shell has exported.
unset REGISTRO_TLS_CA REGISTRO_TLS_CERT REGISTRO_TLS_KEY
cd "$(dirname "$0")/.."

bin=target/release
data=data
mkdir -p "$data/logs" "$data/headnode" "$data/client"
pids=()

stop_all() {
  local rc=0
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  pids=()
  return $rc
}
trap 'stop_all || true' EXIT

for port in 5000 6001 6002 6003 9500 9601 9602 9603; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is in use (is another cluster running? try 'make down')" >&2
    exit 1
  fi
done

echo "== starting 3 datanodes and the headnode (logs in $data/logs/)"
for i in 1 2 3; do
  "$bin/datanode" --listen "127.0.0.1:600$i" --name "datanode$i" --data-dir "$data/datanode$i" \
    --headnode http://127.0.0.1:5000 --metrics-listen "127.0.0.1:960$i" 2>"$data/logs/datanode$i.log" &
  pids+=($!)
done
"$bin/headnode" --listen 127.0.0.1:5000 --heartbeat-log "$data/headnode/heartbeat.log" \
  --registro-log "$data/headnode/registro.log" --metrics-listen 127.0.0.1:9500 2>"$data/logs/headnode.log" &
pids+=($!)

client=("$bin/client" --addr http://127.0.0.1:5000)
deadline=$((SECONDS + 30))
until [ "$("${client[@]}" status 2>/dev/null | grep -c ' SERVING ')" -eq 3 ]; do
  if [ $SECONDS -ge $deadline ]; then
    echo "demo: the datanodes did not all become SERVING within 30 s; see $data/logs/" >&2
    "${client[@]}" status >&2 || true
    exit 1
  fi
  sleep 0.1
done
# The headnode takes Stores once it has warmed up (it knows every datanode that will register).
until "${client[@]}" --timeout 1s health --service registro.v1.Store >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    echo "demo: the headnode did not become ready within 30 s; see $data/logs/" >&2
    exit 1
  fi
  sleep 0.1
done

echo "== client send (the exercise's messages)"
"${client[@]}" send --log "$data/client/client.log"
echo
echo "== headnode status"
"${client[@]}" status
echo
echo "== metrics (GET http://127.0.0.1:9500/metrics, registro's own)"
metrics() { # host port: GET /metrics over bash's /dev/tcp, so curl is not needed
  exec 3<>"/dev/tcp/$1/$2" && printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3 && cat <&3
  exec 3<&-
}
{ metrics 127.0.0.1 9500 | grep '^registro_' | sed 's/^/  /'; } || echo "  (cannot read the headnode's metrics)"
for i in 1 2 3; do
  { metrics 127.0.0.1 "960$i" | grep '^registro_stored_total' | sed "s/^/  datanode$i: /"; } || echo "  (cannot read datanode$i's metrics)"
done
echo
echo "== where to look while it runs"
echo "  status page:  http://127.0.0.1:9500/"
echo "  metrics:      http://127.0.0.1:9500/metrics (headnode), http://127.0.0.1:9601/metrics … :9603 (datanodes)"
echo
echo "== files"
for i in 1 2 3; do
  printf '  %-31s %s messages\n' "$data/datanode$i/messages.jsonl" "$(wc -l <"$data/datanode$i/messages.jsonl")"
done
printf '  %-31s %s\n' "$data/headnode/registro.log" "one line per stored message (headnode)"
printf '  %-31s %s\n' "$data/headnode/heartbeat.log" "one line per datanode per probe (headnode)"
printf '  %-31s %s\n' "$data/client/client.log" "one line per reply (client)"
printf '  %-31s %s\n' "$data/logs/" "each process's own log (stderr)"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo
  echo "== DEMO_KEEP=1: the cluster keeps running; open http://127.0.0.1:9500/ and press Ctrl-C to stop"
  trap 'echo; echo "== stopping the cluster (SIGTERM)"; stop_all || true; echo "demo: done"; exit 0' INT TERM
  while :; do sleep 1; done
fi
echo
echo "== stopping the cluster (SIGTERM)"
stop_all
echo "demo: done; every process exited cleanly"
