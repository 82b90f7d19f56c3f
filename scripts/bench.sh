#!/usr/bin/env bash
# make bench: throughput and latency of registro.v1.Store/Store on loopback, side by side, in one
# run with one load:
#   (a) straight to one datanode, (b) through the headnode (3 datanodes),
#   (c) through nginx grpc_pass with `random` balancing (the same 3 datanodes),
#   (d) through HAProxy (`proto h2` to the same 3 datanodes, `balance random`, `http-reuse always`),
#   (e) through a second headnode with --replicas 2 (each Store on 2 of the same 3 datanodes),
# at each level of requests in flight (BENCH_LEVELS), driven by h2load (and `client bench` when
# BENCH_GENERATORS has it), for datanodes with --fsync always and --fsync never.
# Rounds interleave the scenarios (in a rotating order) so machine noise hits all of them; the
# report takes medians.
# Also measures how long the headnode takes to log a killed or hung datanode as UNREACHABLE, the
# headnode's peak resident memory and every server's CPU time per message under load, and (when perf
# can sample) profiles the headnode.
# Writes BENCHMARKS.md and docs/bench.svg; raw results and every process's log go to bench-out/.
#
# Settings (environment):
#   BENCH_DURATION=6       seconds per measurement        BENCH_ROUNDS=3       rounds per fsync mode
#   BENCH_LEVELS="1 8 64 256"  requests in flight         BENCH_CONNECTIONS=4  HTTP/2 connections
#                          (at most; a level below it uses one connection per request)
#   BENCH_SCENARIOS="a b c d e"                           BENCH_GENERATORS=h2load (and/or client)
#   BENCH_REPLICAS=2       --replicas of scenario (e)
#   BENCH_SIZE=100         message bytes                  BENCH_MODES="always never"
#   BENCH_KILLS=5          SIGKILLs (and SIGSTOPs) of a datanode for detection time
#   BENCH_PROFILE=auto     perf profile of the headnode (1, 0, or auto: when perf can sample)
#   BENCH_RUST_LOG=warn    RUST_LOG of the nodes          BENCH_OUT=bench-out
#   BENCH_KEEP_DATA=1      keep the data files and registro logs (deleted after counting)
#   BENCH_REPORT=.         where BENCHMARKS.md and bench.svg go: `.` writes the committed
#                          BENCHMARKS.md and docs/bench.svg; any other folder gets both (a
#                          partial run that should not replace the committed report)
# A quick run: BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_KILLS=2 BENCH_LEVELS="1 64" make bench
set -euo pipefail
# Plaintext on loopback, as nginx's side is, whatever certificates the shell has exported.
unset REGISTRO_TLS_CA REGISTRO_TLS_CERT REGISTRO_TLS_KEY
cd "$(dirname "$0")/.."

duration=${BENCH_DURATION:-6}
rounds=${BENCH_ROUNDS:-3}
read -r -a levels <<<"${BENCH_LEVELS:-1 8 64 256}"
read -r -a scenarios <<<"${BENCH_SCENARIOS:-a b c d e}"
read -r -a generators <<<"${BENCH_GENERATORS:-h2load}"
replicas=${BENCH_REPLICAS:-2}
connections=${BENCH_CONNECTIONS:-4}
size=${BENCH_SIZE:-100}
modes=${BENCH_MODES:-always never}
kills=${BENCH_KILLS:-5}
profile=${BENCH_PROFILE:-auto}
out=${BENCH_OUT:-bench-out}
report=${BENCH_REPORT:-.}
if [ "$report" = . ]; then
  markdown=BENCHMARKS.md svg=docs/bench.svg
else
  mkdir -p "$report"
  markdown=$report/BENCHMARKS.md svg=$report/bench.svg
fi
export RUST_LOG=${BENCH_RUST_LOG:-warn}
# The code measured, taken before this run writes BENCHMARKS.md and the chart.
BENCH_COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)
export BENCH_COMMIT

# Ports away from make demo's 5000 and 6001-6003.
head_port=15000
head2_port=15002
nginx_port=15080
haproxy_port=15443
datanode_ports=(16001 16002 16003)
datanode_list=$(printf '127.0.0.1:%s,' "${datanode_ports[@]}")
datanode_list=${datanode_list%,}

has_scenario() { [[ " ${scenarios[*]} " == *" $1 "* ]]; }

# Both generators spread a level the same way: `conns_of LEVEL` HTTP/2 connections, each with
# `streams_of LEVEL` requests in flight.
conns_of() { echo $(($1 < connections ? $1 : connections)); }
streams_of() { local c; c=$(conns_of "$1"); echo $((($1 + c - 1) / c)); }
for level in "${levels[@]}"; do
  c=$(conns_of "$level")
  if (($(streams_of "$level") * c != level)); then
    echo "bench: level $level is not a multiple of $c connections; h2load will keep $(($(streams_of "$level") * c)) in flight" >&2
  fi
done

bin=target/release
mkdir -p "$out" docs
out=$(cd "$out" && pwd)
# What an earlier run left there (only what this script writes).
for mode in $modes; do rm -rf "${out:?}/$mode"; done
rm -rf "$out/raw" "$out/nginx" "$out/haproxy" "$out"/perf.data* "$out"/profile-* "$out"/*.jsonl "$out"/*.txt "$out"/*.log "$out"/body.bin
results=$out/results.jsonl
commands=$out/commands.txt
: >"$results"
: >"$commands"
chart=scripts/bench_chart.py

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- processes: every one we start is stopped on exit -------------------------------------------
declare -A pids=()
nginx_conf=""

stop_nginx() {
  if [ -n "$nginx_conf" ] && [ -n "${pids[nginx]:-}" ]; then
    nginx -p "$out/nginx" -c "$nginx_conf" -s quit 2>/dev/null || kill -TERM "${pids[nginx]}" 2>/dev/null || true
    wait "${pids[nginx]}" 2>/dev/null || true
    unset 'pids[nginx]'
  fi
}

stop_all() {
  stop_nginx
  if [ -n "${haproxy_pid:-}" ]; then
    kill -TERM "$haproxy_pid" 2>/dev/null || true
    wait "$haproxy_pid" 2>/dev/null || true
    haproxy_pid=""
  fi
  for name in "${!pids[@]}"; do kill -CONT "${pids[$name]}" 2>/dev/null || true; done
  for name in "${!pids[@]}"; do kill -TERM "${pids[$name]}" 2>/dev/null || true; done
  for name in "${!pids[@]}"; do wait "${pids[$name]}" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Polls `$@` every 50 ms until it succeeds; fails after `$timeout` seconds.
wait_for() {
  local what=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what did not happen within ${timeout}s"
      return 1
    fi
    sleep 0.05
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
serving_count() { "$bin/client" --addr "http://127.0.0.1:$head_port" status 2>/dev/null | grep -c ' SERVING ' || true; }
all_serving() { [ "$(serving_count)" -eq 3 ]; }
# Warmed up and routing: the headnode's readiness (registro.v1.Store SERVING).
ready() { "$bin/client" --addr "http://127.0.0.1:$head_port" --timeout 1s health --service registro.v1.Store >/dev/null 2>&1; }

# ---- tools ------------------------------------------------------------------------------------
log "building release binaries (make build: cargo, then scripts/bolt.sh)"
make build
# Whether the headnode and the datanodes ran as BOLT laid them out (it needs Debian's bolt-15).
optimised=()
for name in headnode datanode; do
  if readelf -S "$bin/$name" | grep -q '\.note\.bolt_info'; then optimised+=("$name"); fi
done
bolted=$(IFS=,; echo "${optimised[*]:-none}")

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v haproxy >/dev/null || missing+=(haproxy)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: ${missing[*]} missing; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for port in "$head_port" "$head2_port" "$nginx_port" "$haproxy_port" "${datanode_ports[@]}"; do
  port_free "$port" || { echo "bench: port $port is in use" >&2; exit 1; }
done

python3 "$chart" body "$size" "$out/body.bin"

# ---- the cluster --------------------------------------------------------------------------------
start_datanode() { # index mode dir
  local i=$1 mode=$2 dir=$3
  "$bin/datanode" --listen "127.0.0.1:${datanode_ports[i - 1]}" --name "datanode$i" \
    --data-dir "$dir/datanode$i" --headnode "http://127.0.0.1:$head_port" --fsync "$mode" \
    2>>"$dir/logs/datanode$i.log" &
  pids[datanode$i]=$!
}

start_cluster() { # mode dir
  local mode=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir/logs" "$dir/headnode"
  "$bin/headnode" --listen "127.0.0.1:$head_port" --heartbeat-log "$dir/headnode/heartbeat.log" \
    --registro-log "$dir/headnode/registro.log" 2>"$dir/logs/headnode.log" &
  pids[headnode]=$!
  for i in 1 2 3; do start_datanode "$i" "$mode" "$dir"; done
  wait_for "3 SERVING datanodes" 30 all_serving
  wait_for "the headnode ready (warm-up over)" 30 ready
  if has_scenario e; then
    # A second headnode over the same datanodes (from --datanodes; they register with the first).
    mkdir -p "$dir/headnode2"
    "$bin/headnode" --listen "127.0.0.1:$head2_port" --replicas "$replicas" --datanodes "$datanode_list" \
      --heartbeat-log "$dir/headnode2/heartbeat.log" --registro-log "$dir/headnode2/registro.log" \
      2>"$dir/logs/headnode2.log" &
    pids[headnode2]=$!
    wait_for "the --replicas $replicas headnode ready" 30 \
      "$bin/client" --addr "http://127.0.0.1:$head2_port" --timeout 1s health --service registro.v1.Store
  fi
}

# HAProxy as a gRPC balancer: HTTP/2 both sides, connections to the datanodes shared by every
# client stream (http-reuse always), a random datanode per request.
haproxy_pid=""
start_haproxy() {
  mkdir -p "$out/haproxy"
  local conf=$out/haproxy/haproxy.cfg fds maxconn
  # Each proxied connection takes two descriptors; keep room for listeners and logs.
  fds=$(ulimit -n)
  [ "$fds" = unlimited ] && fds=65536
  maxconn=$(((fds - 64) / 2))
  ((maxconn > 4096)) && maxconn=4096
  scripts/haproxy-config.sh "$haproxy_port" "$maxconn" "127.0.0.1:${datanode_ports[0]}" \
    "127.0.0.1:${datanode_ports[1]}" "127.0.0.1:${datanode_ports[2]}" >"$conf"
  haproxy -c -q -f "$conf" 2>"$out/haproxy/config-test.log" || { cat "$out/haproxy/config-test.log" >&2; return 1; }
  haproxy -db -f "$conf" 2>>"$out/haproxy/error.log" &
  haproxy_pid=$!
  wait_for "HAProxy answering gRPC health checks" 20 \
    "$bin/client" --addr "http://127.0.0.1:$haproxy_port" health --service registro.v1.Store
}

start_nginx() {
  mkdir -p "$out/nginx/tmp"
  nginx_conf=$out/nginx/nginx.conf
  local user=""
  [ "$(id -u)" -eq 0 ] && user="user root;"
  cat >"$nginx_conf" <<EOF
# Written by scripts/bench.sh: gRPC to the datanodes, balanced at random, like the headnode.
$user
worker_processes auto;
daemon off;
pid $out/nginx/nginx.pid;
error_log $out/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $out/nginx/tmp/body;
    proxy_temp_path $out/nginx/tmp/proxy;
    fastcgi_temp_path $out/nginx/tmp/fastcgi;
    uwsgi_temp_path $out/nginx/tmp/uwsgi;
    scgi_temp_path $out/nginx/tmp/scgi;
    # Long-lived client connections: no GOAWAY after 1000 requests.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream datanodes {
        random;
        server 127.0.0.1:${datanode_ports[0]};
        server 127.0.0.1:${datanode_ports[1]};
        server 127.0.0.1:${datanode_ports[2]};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$nginx_port http2;
        location / {
            grpc_pass grpc://datanodes;
        }
    }
}
EOF
  nginx -p "$out/nginx" -c "$nginx_conf" -t 2>"$out/nginx/config-test.log" \
    || { cat "$out/nginx/config-test.log" >&2; return 1; }
  nginx -p "$out/nginx" -c "$nginx_conf" 2>>"$out/nginx/error.log" &
  pids[nginx]=$!
  wait_for "nginx answering gRPC health checks" 20 \
    "$bin/client" --addr "http://127.0.0.1:$nginx_port" health --service registro.v1.Store
}

# ---- measurements -----------------------------------------------------------------------------
declare -A scenario_port=([a]=${datanode_ports[0]} [b]=$head_port [c]=$nginx_port [d]=$haproxy_port [e]=$head2_port)

stored_lines() { cat "$1"/datanode*/messages.jsonl 2>/dev/null | wc -l; }

# Waits until the data files stop growing (a stream cut at h2load's deadline may still land).
settled_lines() {
  local dir=$1 before after
  after=$(stored_lines "$dir")
  while :; do
    sleep 0.3
    before=$after
    after=$(stored_lines "$dir")
    [ "$before" -eq "$after" ] && break
  done
  echo "$after"
}

# Samples the headnode's VmRSS (kB) every 100 ms into $1 until killed.
# The headnode's peak resident memory over one run, without a process of our own running beside
# it (a sampling loop's awk and sleep would take CPU from the run under way, and only from the
# headnode's): its high-water mark VmHWM is reset before the run (/proc/PID/clear_refs, 5) and read
# after it. Where the reset is refused the mark covers the process's whole life, an upper bound.
reset_peak_rss() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
peak_rss() { # pid file
  local key value _
  while read -r key value _; do
    if [ "$key" = VmHWM: ]; then echo "$value" >"$2"; return; fi
  done <"/proc/$1/status"
}

# Remembers the first command line of each kind for the report, shell-quoted, paths relative.
note_raw() { # key text
  grep -q "^$1	" "$commands" || printf '%s\t%s\n' "$1" "${2//$PWD\//}" >>"$commands"
}
note_command() { # key command...
  local key=$1 arg line=""
  shift
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  note_raw "$key" "${line# }"
}

# CPU time (user + system, in clock ticks) the given processes have used so far, all threads.
cpu_ticks() { # pid...
  local sum=0 pid fields
  for pid in "$@"; do
    read -r -a fields <"/proc/$pid/stat" 2>/dev/null || continue
    sum=$((sum + fields[13] + fields[14]))
  done
  echo "$sum"
}

# The servers' CPU so far, as "headnode datanodes proxy" in clock ticks: the headnode of the
# scenario (the --replicas one in (e)), and nginx's processes in (c), HAProxy in (d).
server_ticks() { # scenario
  local proxy_pids=() head=${pids[headnode]}
  [ "$1" = e ] && head=${pids[headnode2]}
  if [ "$1" = c ] && [ -n "${pids[nginx]:-}" ]; then
    mapfile -t proxy_pids < <(pgrep -P "${pids[nginx]}"; echo "${pids[nginx]}")
  elif [ "$1" = d ] && [ -n "$haproxy_pid" ]; then
    proxy_pids=("$haproxy_pid")
  fi
  echo "$(cpu_ticks "$head") $(cpu_ticks "${pids[datanode1]}" "${pids[datanode2]}" "${pids[datanode3]}") $(cpu_ticks "${proxy_pids[@]}")"
}

measure() { # mode dir round level scenario generator
  local mode=$1 dir=$2 round=$3 level=$4 scenario=$5 generator=$6
  local port=${scenario_port[$scenario]} tag="$mode-r$round-l$level-$scenario-$generator"
  local conns streams copies=1
  conns=$(conns_of "$level")
  streams=$(streams_of "$level")
  [ "$scenario" = e ] && copies=$replicas
  local before after rss_file="" rss_of="" summary cmd ticks_before ticks_after
  before=$(settled_lines "$dir")
  ticks_before=$(server_ticks "$scenario")
  if [ "$scenario" = b ] || [ "$scenario" = e ]; then
    rss_file=$out/raw/$tag.rss
    : >"$rss_file"
    rss_of=${pids[headnode]}
    [ "$scenario" = e ] && rss_of=${pids[headnode2]}
    reset_peak_rss "$rss_of"
  fi
  case $generator in
    client)
      cmd=("$bin/client" --addr "http://127.0.0.1:$port" bench --duration "${duration}s"
        --concurrency "$level" --connections "$conns" --size "$size" --json)
      note_command "client-$scenario-$level" "${cmd[@]}"
      "${cmd[@]}" >"$out/raw/$tag.json" 2>"$out/raw/$tag.err"
      summary=$(cat "$out/raw/$tag.json")
      ;;
    h2load)
      cmd=(h2load -D "$duration" -c "$conns" -m "$streams" -d "$out/body.bin"
        -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$out/raw/$tag.tsv"
        "http://127.0.0.1:$port/registro.v1.Store/Store")
      note_command "h2load-$scenario-$level" "${cmd[@]}"
      "${cmd[@]}" >"$out/raw/$tag.txt" 2>&1
      summary=$(python3 "$chart" h2load "$out/raw/$tag.txt" "$out/raw/$tag.tsv")
      rm -f "$out/raw/$tag.tsv"
      ;;
  esac
  [ -z "$rss_of" ] || peak_rss "$rss_of" "$rss_file"
  after=$(settled_lines "$dir")
  ticks_after=$(server_ticks "$scenario")
  python3 - "$summary" "$mode" "$round" "$level" "$scenario" "$generator" "$((after - before))" "$copies" "$rss_file" \
    "$ticks_before" "$ticks_after" "$(getconf CLK_TCK)" >>"$results" <<'EOF'
import json, sys
summary, mode, rnd, level, scenario, generator, stored, copies, rss_file, t0, t1, hz = sys.argv[1:]
r = json.loads(summary)
# Messages acknowledged: the data files' new lines, each message counted once (scenario e stores
# every message on `copies` datanodes).
messages = max(int(stored) // int(copies), 1)
# CPU microseconds per stored message of each server role, over the whole measurement.
cpu = {
    role: (b - a) * 1e6 / int(hz) / messages
    for role, a, b in zip(("headnode", "datanodes", "proxy"), map(int, t0.split()), map(int, t1.split()))
}
lat = r.get("latency_us", {})
rss = [int(x) for x in open(rss_file).read().split()] if rss_file else []
print(json.dumps({
    "kind": "load", "mode": mode, "round": int(rnd), "level": int(level), "scenario": scenario,
    "generator": generator, "copies": int(copies),
    "rps": r["throughput_rps"], "ok": r["ok"], "errors": r["errors"], "stored": int(stored),
    "errors_by_code": r.get("errors_by_code", {}), "p50_us": lat.get("p50", 0),
    "p90_us": lat.get("p90", 0), "p99_us": lat.get("p99", 0), "max_us": lat.get("max", 0),
    "elapsed_s": r.get("elapsed_s", 0), "rss_max_kb": max(rss) if rss else None,
    "cpu_us_per_message": cpu,
}))
EOF
  log "$(tail -n 1 "$results" | python3 "$chart" line)"
}

# How long until the heartbeat log says datanode3 is gone, `kills` times for each of two faults:
# SIGKILL (the process dies, its connections close) and SIGSTOP (it hangs with its connections
# open, so only a probe that times out can tell).
measure_detection() { # mode dir
  local mode=$1 dir=$2 hb=$2/headnode/heartbeat.log
  note_raw detect "kill -KILL|-STOP <datanode3 pid>; poll $hb every 10 ms for its first UNREACHABLE/NOT_SERVING line"
  local signal k lines t0 t1 line deadline
  for signal in KILL STOP; do
    for k in $(seq 1 "$kills"); do
      # A random phase against the 1 s heartbeat, so the samples cover the whole interval.
      sleep "0.$(printf '%03d' $((RANDOM % 1000)))"
      lines=$(wc -l <"$hb")
      # Not a job of this shell any more, so bash does not announce "Killed".
      [ "$signal" = KILL ] && disown "${pids[datanode3]}"
      t0=$(date +%s%N)
      kill "-$signal" "${pids[datanode3]}"
      deadline=$((SECONDS + 15))
      line=""
      until line=$(tail -n "+$((lines + 1))" "$hb" | grep -m1 -E '^[^ ]+ datanode3 [^ ]+ (UNREACHABLE|NOT_SERVING) '); do
        ((SECONDS < deadline)) || { log "SIG$signal: no UNREACHABLE line for datanode3 within 15 s"; break; }
        sleep 0.01
      done
      t1=$(date +%s%N)
      if [ -n "$line" ]; then
        python3 "$chart" detect "$mode" "$signal" "$k" "$t0" "$t1" "$line" >>"$results"
        log "SIG$signal $k: $(tail -n 1 "$results" | python3 "$chart" line)"
      fi
      if [ "$signal" = KILL ]; then
        while kill -0 "${pids[datanode3]}" 2>/dev/null; do sleep 0.01; done
        start_datanode 3 "$mode" "$dir"
      else
        kill -CONT "${pids[datanode3]}"
      fi
      wait_for "datanode3 SERVING again" 30 all_serving
    done
  done
}

# perf samples of the headnode's CPU (software clock: no hardware counters needed) under load (b).
profile_headnode() { # dir
  local dir=$1
  local secs=$((duration < 5 ? duration : 5))
  log "profiling the headnode for ${secs}s under load"
  "$bin/client" --addr "http://127.0.0.1:$head_port" bench --duration "$((secs + 2))s" \
    --concurrency 64 --connections "$connections" --size "$size" --json >"$out/profile-load.json" &
  local load=$!
  sleep 1
  note_raw profile "perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p <headnode pid> -- sleep $secs  (under client bench --concurrency 64 through scenario b)"
  perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "${pids[headnode]}" \
    -o "$out/perf.data" -- sleep "$secs" 2>"$out/perf-record.log" || true
  wait "$load" || true
  perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio -g none --percent-limit 0.7 \
    2>/dev/null | grep -v -e '^#' -e '^$' | sed -E 's/[[:space:]-]+$//' | cut -c1-150 | head -30 \
    >"$out/profile-self.txt" || true
  perf script -i "$out/perf.data" -F comm,tid,ip,sym --no-inline 2>/dev/null >"$out/perf-script.txt" || true
  python3 "$chart" profile "$out/perf-script.txt" >"$out/profile-breakdown.txt" || true
  rm -f "$out/perf-script.txt"
}

perf_works() {
  local ok=0
  perf record -q -e cpu-clock -o "$out/perf-check.data" -- true >/dev/null 2>&1 || ok=1
  rm -f "$out/perf-check.data"
  return $ok
}

# ---- the run ----------------------------------------------------------------------------------
mkdir -p "$out/raw"
first_mode=${modes%% *}
last_mode=${modes##* }
for mode in $modes; do
  dir=$out/$mode
  log "fsync $mode: starting 3 datanodes, the headnode(s), nginx and HAProxy"
  start_cluster "$mode" "$dir"
  has_scenario c && start_nginx
  has_scenario d && start_haproxy
  for scenario in "${scenarios[@]}"; do
    "$bin/client" --addr "http://127.0.0.1:${scenario_port[$scenario]}" bench --duration 1s \
      --concurrency 64 --connections "$connections" --size "$size" --json >/dev/null
  done
  step=0
  for round in $(seq 1 "$rounds"); do
    for level in "${levels[@]}"; do
      # Rotate the order at every step so no scenario always runs first.
      shift_by=$((step % ${#scenarios[@]}))
      order=("${scenarios[@]:shift_by}" "${scenarios[@]:0:shift_by}")
      step=$((step + 1))
      for scenario in "${order[@]}"; do
        for generator in "${generators[@]}"; do
          measure "$mode" "$dir" "$round" "$level" "$scenario" "$generator"
        done
      done
    done
  done
  if [ "$mode" = "$last_mode" ] && [ "$profile" != 0 ]; then
    if perf_works; then
      profile_headnode "$dir"
    elif [ "$profile" = 1 ]; then
      log "perf cannot sample here; no profile"
    fi
  fi
  if [ "$mode" = "$first_mode" ] && ((kills > 0)); then
    log "fsync $mode: failure detection, $kills SIGKILLs and $kills SIGSTOPs of datanode3"
    measure_detection "$mode" "$dir"
  fi
  stop_all
  # The data files are counted; at millions of lines they are not worth keeping.
  [ -n "${BENCH_KEEP_DATA:-}" ] || rm -f "$dir"/datanode*/messages.jsonl "$dir"/headnode/registro.log
done

log "writing $markdown and $svg"
python3 "$chart" report --results "$results" --commands "$commands" --out-dir "$out" \
  --markdown "$markdown" --svg "$svg" \
  --settings "duration=${duration}s rounds=$rounds levels=${levels[*]} connections<=$connections size=$size replicas(e)=$replicas RUST_LOG=$RUST_LOG bolt=$bolted"
log "done: $markdown, $svg; raw results in $out/"
