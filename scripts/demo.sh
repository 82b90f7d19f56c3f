#!/usr/bin/env bash
# make demo: the whole cluster as local processes, no Docker. Starts datanode1-3 on ports
# 6001-6003 and the headnode on 5000, sends the exercise's messages with the client, prints the
# receipts, the headnode's Status and where every file is, then stops the cluster with SIGTERM.
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

for port in 5000 6001 6002 6003; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is in use (is another cluster running? try 'make down')" >&2
    exit 1
  fi
done

echo "== starting 3 datanodes and the headnode (logs in $data/logs/)"
for i in 1 2 3; do
  "$bin/datanode" --listen "127.0.0.1:600$i" --name "datanode$i" --data-dir "$data/datanode$i" \
    --headnode http://127.0.0.1:5000 2>"$data/logs/datanode$i.log" &
  pids+=($!)
done
"$bin/headnode" --listen 127.0.0.1:5000 --heartbeat-log "$data/headnode/heartbeat.log" \
  --registro-log "$data/headnode/registro.log" 2>"$data/logs/headnode.log" &
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

echo "== client send (the exercise's messages)"
"${client[@]}" send --log "$data/client/client.log"
echo
echo "== headnode status"
"${client[@]}" status
echo
echo "== files"
for i in 1 2 3; do
  printf '  %-31s %s messages\n' "$data/datanode$i/messages.jsonl" "$(wc -l <"$data/datanode$i/messages.jsonl")"
done
printf '  %-31s %s\n' "$data/headnode/registro.log" "one line per stored message (headnode)"
printf '  %-31s %s\n' "$data/headnode/heartbeat.log" "one line per datanode per probe (headnode)"
printf '  %-31s %s\n' "$data/client/client.log" "one line per reply (client)"
printf '  %-31s %s\n' "$data/logs/" "each process's own log (stderr)"
echo
echo "== stopping the cluster (SIGTERM)"
stop_all
echo "demo: done; every process exited cleanly"
