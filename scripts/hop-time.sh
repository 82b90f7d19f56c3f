#!/usr/bin/env bash
# How long a proxy holds a request, one at a time: the time from a proxy's epoll_wait returning to
# its next writev (one "hop": a request read and passed on, or a reply read and passed back), and
# the syscalls it makes per request, from the kernel's syscall tracepoints (perf record), while
# h2load sends N Stores one at a time to URL. Hops are also split by the socket they end on (the
# client's connection, one line per datanode connection) and by whether the thread woke on the
# CPU it went to sleep on or was moved to another (a moved thread starts with cold caches).
#
# Usage: scripts/hop-time.sh PID[,PID...] URL [N]
#   PID: the proxy's processes (the headnode; nginx's workers: $(pgrep -d, -f 'nginx: worker'))
#   URL: where h2load sends registro.v1.Store/Store (e.g. http://127.0.0.1:15000)
# Needs perf with tracepoint access (root, or kernel.perf_event_paranoid <= -1) and h2load.
set -euo pipefail
cd "$(dirname "$0")/.."
pids=${1:?usage: $0 PID[,PID...] URL [N]}
url=${2:?usage: $0 PID[,PID...] URL [N]}
n=${3:-4000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 scripts/bench_chart.py body 100 "$work/body.bin"
perf record -q -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p "$pids" -o "$work/perf.data" \
  2>"$work/perf.err" &
perf_pid=$!
# perf attaches within a moment; a request sent before it only goes uncounted.
until [ -s "$work/perf.data" ] || ! kill -0 "$perf_pid" 2>/dev/null; do sleep 0.05; done
h2load -n "$n" -c 1 -m 1 -d "$work/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
  "$url/registro.v1.Store/Store" | grep -E '^(finished|requests|time for request)'
kill -INT "$perf_pid"
wait "$perf_pid" || true
perf script -i "$work/perf.data" -F tid,cpu,time,event,trace 2>/dev/null >"$work/perf.txt"
python3 - "$work/perf.txt" "$n" <<'PY'
import re, statistics, sys
from collections import Counter
names = {0: "read", 1: "write", 7: "poll", 20: "writev", 23: "select", 44: "sendto",
         45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 202: "futex", 230: "clock_nanosleep",
         232: "epoll_wait", 281: "epoll_pwait", 318: "getrandom", 55: "getsockopt"}
woke, hops, calls = {}, [], Counter()
slept_on, by_fd, by_move = {}, {}, {False: [], True: []}
line_re = re.compile(
    r"\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+raw_syscalls:(sys_enter|sys_exit):\s+NR (\d+)(?: \((\w+))?")
for line in open(sys.argv[1]):
    m = line_re.match(line)
    if not m:
        continue
    tid, cpu, ts, kind, nr, arg0 = m.group(1), m.group(2), float(m.group(3)), m.group(4), int(m.group(5)), m.group(6)
    if kind == "sys_exit" and nr in (232, 281):
        woke[tid] = (ts, slept_on.get(tid) not in (None, cpu))
    elif kind == "sys_enter":
        calls[names.get(nr, f"#{nr}")] += 1
        if nr in (232, 281):
            slept_on[tid] = cpu
        if nr == 20 and tid in woke:
            start, moved = woke.pop(tid)
            gap = (ts - start) * 1e6
            if gap < 2000:  # longer: the process slept in between (not one hop)
                hops.append(gap)
                by_fd.setdefault(arg0 or "0", []).append(gap)
                by_move[moved].append(gap)
n = int(sys.argv[2])
if not hops:
    sys.exit("no hops seen: is PID the proxy serving URL?")
def spread(times):
    times = sorted(times)
    q = lambda p: times[min(len(times) - 1, int(len(times) * p))]
    return f"median {statistics.median(times):.1f} µs, p90 {q(0.9):.1f} µs, p99 {q(0.99):.1f} µs"
print(f"hops: {len(hops)}; time from wake-up to writev: {spread(hops)}")
for fd, times in sorted(by_fd.items(), key=lambda kv: -len(kv[1]))[:4]:
    print(f"  ending on fd {int(fd, 16)}: {len(times)} hops, {spread(times)}")
for moved, times in by_move.items():
    if times:
        where = "on another CPU than it slept on" if moved else "on the CPU it slept on"
        print(f"  woke {where}: {len(times)} hops ({100 * len(times) / len(hops):.0f} %), {spread(times)}")
print("syscalls per request: " + ", ".join(f"{k} {v / n:.2f}" for k, v in calls.most_common(8)))
PY
