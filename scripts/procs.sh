# Sourced by the measuring scripts (metrics-overhead.sh, store-cost.sh, headnode-ab.sh,
# flush-cost.sh, bolt.sh, repair-bench.sh): the processes they start, how they wait for them and
# the CPU they use. The sourcing script sets
# `work` (its scratch folder, removed on exit) and, for wait_serving, `bin` (the client's folder).

# Every process started; stopped (SIGTERM, then waited for) when the script exits.
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The address a process logged right after PHRASE ($2, default `listening on `) in log file $1,
# waiting up to 60 s for it; e.g. addr_of datanode.err 'metrics on http://'.
addr_of() {
  local log=$1 phrase=${2:-listening on }
  for _ in $(seq 1 600); do
    if grep -q "$phrase" "$log" 2>/dev/null; then
      grep -o "$phrase[0-9.:]*" "$log" | head -1 | cut -c$((${#phrase} + 1))-
      return
    fi
    sleep 0.1
  done
  echo "${0##*/}: no address after '$phrase' in $log" >&2
  cat "$log" >&2
  exit 1
}

# Waits up to 60 s until the headnode at URL $1 reports registro.v1.Store SERVING.
wait_serving() {
  local url=$1
  for _ in $(seq 1 600); do
    "$bin/client" --addr "$url" health --service registro.v1.Store >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "${0##*/}: headnode at $url never became ready" >&2
  exit 1
}

# CPU time the given processes have used so far, every thread, in clock ticks: "USER SYSTEM".
cpu_ticks() { # pid...
  local user=0 system=0 pid f
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    user=$((user + f[13])) system=$((system + f[14]))
  done
  echo "$user $system"
}

# Stops process $1 (SIGTERM) and waits for it.
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
