#!/usr/bin/env python3
"""The Python half of `make bench` (scripts/bench.sh), standard library only.

  bench_chart.py body SIZE OUT            the h2load request body: one gRPC frame of
                                          StoreRequest{message: "x" * SIZE}
  bench_chart.py h2load OUTPUT LOG        h2load's summary and per-request log -> one JSON object
                                          shaped like `client bench --json`
  bench_chart.py line                     one results.jsonl record (stdin) -> one progress line
  bench_chart.py detect MODE SIGNAL K T0_NS T1_NS LINE
                                          one failure-detection record for results.jsonl
  bench_chart.py profile PERF_SCRIPT      `perf script -F comm,tid,ip,sym` output -> where the
                                          CPU samples go, by component and by system call
  bench_chart.py report --results ...     results.jsonl -> BENCHMARKS.md and the SVG chart
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from html import escape

GENERATORS = {"client": "client bench", "h2load": "h2load"}


# ---- body -----------------------------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def body(size, path):
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, then
    StoreRequest with field 1 (message, wire type 2) and no request_id."""
    message = b"x" * size
    proto = b"\x0a" + varint(len(message)) + message
    with open(path, "wb") as f:
        f.write(b"\x00" + len(proto).to_bytes(4, "big") + proto)


# ---- h2load ---------------------------------------------------------------------------------


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def h2load(output_path, log_path):
    text = open(output_path).read()
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    if not finished or not requests:
        sys.exit(f"cannot read h2load's output {output_path}:\n{text}")
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    done, succeeded, failed, errored, timeout = (int(requests.group(i)) for i in (3, 4, 5, 6, 7))
    latencies = []
    with open(log_path) as f:
        for row in f:
            cols = row.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                latencies.append(int(cols[2]))
    latencies.sort()
    # A stream h2load gave up on (reset, timed out) is "failed"; any other non-2xx is done but
    # not succeeded. gRPC errors are neither: they come as HTTP 200 (see errors_of).
    errors_by_code = {
        name: n
        for name, n in [
            ("h2load errored", errored),
            ("h2load timeout", timeout),
            ("HTTP not 2xx", done - succeeded - failed),
        ]
        if n
    }
    print(
        json.dumps(
            {
                "generator": "h2load",
                "requests": int(requests.group(1)),
                "ok": succeeded,
                "errors": done - succeeded,
                "errors_by_code": errors_by_code,
                "elapsed_s": elapsed,
                "throughput_rps": float(finished.group(3)),
                "latency_us": {
                    "p50": percentile(latencies, 0.50),
                    "p90": percentile(latencies, 0.90),
                    "p99": percentile(latencies, 0.99),
                    "max": latencies[-1] if latencies else 0,
                },
            }
        )
    )


def line():
    r = json.load(sys.stdin)
    if r["kind"] == "detect":
        print(f"{r['logged_ms']} ms to: {r['line']}")
        return
    print(
        f"{r['mode']:6} round {r['round']} {r.get('level', '-'):>3} in flight ({r['scenario']}) "
        f"{r['generator']:6}: "
        f"{r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1000:6.2f} ms  "
        f"p99 {r['p99_us'] / 1000:6.2f} ms  ok {r['ok']}  stored {r['stored']}  "
        f"errors {r['errors']}"
    )


def detect(mode, signal, k, t0_ns, t1_ns, log_line):
    """Time from the signal to the heartbeat line's own timestamp, and to when it was seen."""
    ts = datetime.datetime.fromisoformat(log_line.split()[0].replace("Z", "+00:00")).timestamp()
    print(
        json.dumps(
            {
                "kind": "detect",
                "mode": mode,
                "signal": signal,
                "kill": int(k),
                "logged_ms": round(ts * 1000 - int(t0_ns) / 1e6, 1),
                "seen_ms": round((int(t1_ns) - int(t0_ns)) / 1e6, 1),
                "status": log_line.split()[3],
                "line": log_line,
            }
        )
    )


# ---- profile --------------------------------------------------------------------------------

# A sample belongs to the first component whose test matches its thread name and call stack.
COMPONENTS = [
    ("registro.log writer thread", lambda comm, st: comm.startswith("log ")),
    ("LogFile::line: queueing a line, waking the writer", lambda comm, st: "LogFile::line" in st),
    ("runtime idle (park, epoll_wait)", lambda comm, st: "worker::Context::park" in st),
    (
        "batch calls to the datanodes (queue, StoreBatch encode/decode, Channel/Buffer)",
        lambda comm, st: "registro::headnode::batch" in st,
    ),
    (
        "forward: failover loop, dedupe, registro log line in StoreService",
        lambda comm, st: "registro::headnode::store" in st,
    ),
    (
        "outbound HTTP/2 connection tasks (to the datanodes)",
        lambda comm, st: "hyper::proto::h2::client" in st or "h2::client::Connection" in st,
    ),
    ("tower Buffer worker (one per Channel)", lambda comm, st: "tower::buffer::worker" in st),
    (
        "inbound request handling (h2 stream, tonic decode/encode, routing)",
        lambda comm, st: "H2Stream" in st or "StoreServer" in st,
    ),
    (
        "inbound HTTP/2 connection tasks (from the clients)",
        lambda comm, st: "serve_connection" in st or "proto::h2::server" in st,
    ),
    ("health probes and watch streams", lambda comm, st: "probe" in st or "health" in st),
    ("tokio scheduler", lambda comm, st: "tokio::runtime" in st),
]
SYSCALL = re.compile(
    r"\b(?:__x64_sys_|__do_sys_|__sys_|do_|ksys_)"
    r"(writev|write|sendmsg|sendto|recvfrom|recvmsg|read|futex|epoll_wait|epoll_ctl)\b"
)
SWITCH = ("finish_task_switch", "_raw_spin_unlock_irqrestore", "irqentry_exit")


def perf_samples(path):
    comm, frames = None, []
    with open(path, errors="replace") as f:
        for row in f:
            if not row.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif not row[0].isspace():
                comm = row.rsplit(None, 1)[0].strip()
            else:
                parts = row.strip().split(None, 1)
                frames.append(parts[1] if len(parts) > 1 else "")
    if comm is not None:
        yield comm, frames


def profile(path):
    parts, calls, total = defaultdict(int), defaultdict(int), 0
    for comm, frames in perf_samples(path):
        total += 1
        stack = "\n".join(frames)
        part = next((name for name, test in COMPONENTS if test(comm, stack)), "other")
        parts[part] += 1
        call = next((m.group(1) for fr in frames for m in [SYSCALL.search(fr)] if m), None)
        if call is None and frames and any(k in frames[0] for k in SWITCH):
            call = "context switches and interrupts (not under a syscall)"
        calls[call or "user space"] += 1
    if not total:
        print("no samples")
        return
    print(f"{total} samples of the headnode")
    print("\nby component (first match from the top of this list)")
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nby system call (kernel time under it)")
    for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        if n / total >= 0.005:
            print(f"  {100 * n / total:5.1f}%  {name}")


# ---- report ---------------------------------------------------------------------------------

SCENARIOS = {
    "a": "(a) one datanode, direct",
    "b": "(b) headnode → 3 datanodes",
    "c": "(c) nginx grpc_pass random → 3 datanodes",
    "d": "(d) HAProxy proto h2, balance random → 3 datanodes",
    "e": "(e) headnode --replicas 2 → 3 datanodes",
}
SHORT = {"a": "datanode", "b": "headnode", "c": "nginx", "d": "HAProxy", "e": "headnode R=2"}
SCENARIO_COLOURS = {"a": "#999999", "b": "#3b6ea5", "c": "#3a9a5b", "d": "#e0913a", "e": "#8e5bb5"}
PEERS = ("c", "d")


def errors_of(r):
    """Failed Stores. h2load counts a gRPC error as HTTP 200, so for it the errors are its own
    failures plus the 200s that stored nothing (ok - stored messages, when positive)."""
    if r["generator"] == "h2load":
        return r["errors"] + max(0, r["ok"] - r["stored"] // max(r.get("copies", 1), 1))
    return r["errors"]


def summarise(records):
    """Median of each measurement over the rounds, per (mode, level, scenario, generator)."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["mode"], r.get("level", 64), r["scenario"], r["generator"])].append(r)
    table = {}
    for key, rs in groups.items():
        rss = [r["rss_max_kb"] for r in rs if r.get("rss_max_kb")]
        codes = defaultdict(int)
        for r in rs:
            for code, n in r.get("errors_by_code", {}).items():
                codes[code] += n
        table[key] = {
            "rounds": len(rs),
            "rps": statistics.median(r["rps"] for r in rs),
            "rps_min": min(r["rps"] for r in rs),
            "rps_max": max(r["rps"] for r in rs),
            "rps_all": [r["rps"] for r in sorted(rs, key=lambda r: r["round"])],
            "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
            "ok": sum(r["ok"] for r in rs),
            "stored": sum(r["stored"] for r in rs),
            "errors": sum(errors_of(r) for r in rs),
            "codes": dict(codes),
            "rss_max_kb": max(rss) if rss else None,
            "cpu_us": {
                role: statistics.median(r["cpu_us_per_message"].get(role, 0) for r in rs)
                for role in ("headnode", "datanodes", "proxy")
                if all("cpu_us_per_message" in r for r in rs)
            },
        }
    return table


def run_quiet(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def commit():
    """The commit the benchmarked code was built from, with -dirty for uncommitted changes:
    BENCH_COMMIT, which bench.sh sets before the run writes anything, or git now."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        p = subprocess.run(["git", "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "unknown"


def machine():
    cpu = "unknown"
    try:
        for row in open("/proc/cpuinfo"):
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for row in open("/proc/meminfo"):
            if row.startswith("MemTotal:"):
                mem = f"{int(row.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": run_quiet(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "rustc": run_quiet(["rustc", "--version"]),
        "nginx": run_quiet(["nginx", "-v"]),
        "haproxy": run_quiet(["haproxy", "-v"]).split(" - ")[0],
        "h2load": run_quiet(["h2load", "--version"]),
        "commit": commit(),
    }


def fmt_rps(x):
    return f"{x:,.0f}".replace(",", " ")


def ratio(a, b):
    return a / b if b else float("nan")


def dims(table):
    modes = sorted({k[0] for k in table}, key=lambda m: (m != "always", m))
    levels = sorted({k[1] for k in table})
    scenarios = [s for s in SCENARIOS if any(k[2] == s for k in table)]
    generators = [g for g in GENERATORS if any(k[3] == g for k in table)]
    return modes, levels, scenarios, generators


def best_peer(table, mode, level, g):
    """The proxy with the highest throughput at this point: (scenario, its summary)."""
    peers = [(s, table[(mode, level, s, g)]) for s in PEERS if (mode, level, s, g) in table]
    return max(peers, key=lambda p: p[1]["rps"], default=(None, None))


def markdown(table, detections, commands, settings, out_dir, machine_info, chart="docs/bench.svg"):
    modes, levels, scenarios, generators = dims(table)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rounds = max((v["rounds"] for v in table.values()), default=0)
    md = ["# Benchmarks", ""]
    md.append(
        f"Measured by `make bench` (scripts/bench.sh) on {now}, on commit "
        f"`{machine_info['commit']}`. Every number is the median of "
        f"{rounds} round{'s' if rounds != 1 else ''}; in each round every level runs every "
        "scenario back to back (in an order that rotates at each step) with the same load, so the "
        "machine's noise falls on all of them. Errors, ok and stored are totals over the rounds."
    )
    md += ["", f"Load: `{settings}` (seconds per measurement, rounds, requests in flight, most "
           "HTTP/2 connections, message bytes, --replicas of scenario e, log level of the nodes, "
           "which binaries scripts/bolt.sh laid out). "
           "A level of N in flight uses min(N, connections) connections, each with its share of "
           "streams (h2load `-c`/`-m`, `client bench --concurrency N --connections C`).", ""]
    md += ["## Machine", ""]
    md += [
        f"- {machine_info['nproc']} CPUs: {machine_info['cpu']}; {machine_info['memory']} RAM",
        f"- {machine_info['kernel']} ({machine_info['os']})",
        f"- {machine_info['rustc']}; {machine_info['nginx']}; {machine_info['haproxy']}; "
        f"{machine_info['h2load']}",
        "- Everything on loopback on the same machine: generator, headnodes, datanodes, nginx and "
        "HAProxy share the CPUs, so these are relative figures, not capacity figures.",
        "",
    ]
    for g in generators:
        md += [f"## Stores/s by requests in flight ({GENERATORS[g]})", ""]
        md += [
            "Median req/s, p99 ms in brackets. **headnode / best** is the headnode's throughput "
            "over the better of nginx and HAProxy at that point (p99: the headnode's over that "
            "peer's; below 1 is better).",
            "",
        ]
        head = "| in flight | fsync | " + " | ".join(SHORT[s] for s in scenarios)
        cols = len(scenarios)
        if "b" in scenarios and any(p in scenarios for p in PEERS):
            head += " | headnode / best | p99 headnode / best"
            cols += 2
        md += [head + " |", "|---|---|" + "---:|" * cols]
        for level in levels:
            for mode in modes:
                row = f"| {level} | {mode} |"
                for s in scenarios:
                    v = table.get((mode, level, s, g))
                    row += f" {fmt_rps(v['rps'])} ({v['p99_ms']:.2f}) |" if v else " – |"
                b = table.get((mode, level, "b", g))
                ps, p = best_peer(table, mode, level, g)
                if cols > len(scenarios):
                    if b and p:
                        row += (f" **{ratio(b['rps'], p['rps']):.2f}** vs {SHORT[ps]} | "
                                f"{ratio(b['p99_ms'], p['p99_ms']):.2f} |")
                    else:
                        row += " – | – |"
                md.append(row)
        md.append("")
        spread = [
            f"{SHORT[s]} {level}/{mode}: " + ", ".join(fmt_rps(x) for x in v["rps_all"])
            for (mode, level, s, gg), v in sorted(table.items())
            if gg == g and s == "b"
        ]
        if spread and rounds > 1:
            md += ["Every round of the headnode (req/s, in round order): " + "; ".join(spread), ""]

    md += ["## Ratios", ""]
    for g in generators:
        for level in levels:
            always, never = table.get(("always", level, "b", g)), table.get(("never", level, "b", g))
            if always and never and level == 64:
                md.append(
                    f"- Through the headnode at {level} in flight, {GENERATORS[g]}: durable "
                    f"(always) / non-durable (never) throughput "
                    f"**{ratio(always['rps'], never['rps']):.2f}** ({fmt_rps(always['rps'])} vs "
                    f"{fmt_rps(never['rps'])} req/s); p99 {always['p99_ms']:.2f} vs "
                    f"{never['p99_ms']:.2f} ms"
                )
        # What each front adds to a direct Store at 1 in flight: one request at a time, so the
        # mean latency is the inverse of the throughput.
        for mode in modes:
            a = table.get((mode, 1, "a", g))
            fronts = [(s, table.get((mode, 1, s, g))) for s in ("b",) + PEERS]
            fronts = [(s, v) for s, v in fronts if v]
            if a and fronts:
                added = [
                    f"{SHORT[s]} +{1e6 / v['rps'] - 1e6 / a['rps']:.0f} µs "
                    f"(p50 +{(v['p50_ms'] - a['p50_ms']) * 1000:.0f} µs)"
                    for s, v in fronts
                ]
                md.append(
                    f"- fsync {mode}, 1 in flight, {GENERATORS[g]}: latency added to a direct Store "
                    f"({1e6 / a['rps']:.0f} µs mean, from its throughput; p50 "
                    f"{a['p50_ms'] * 1000:.0f} µs): " + ", ".join(added)
                )
        for mode in modes:
            for level in levels:
                b, e = table.get((mode, level, "b", g)), table.get((mode, level, "e", g))
                if b and e:
                    md.append(
                        f"- fsync {mode}, {level} in flight, {GENERATORS[g]}: --replicas 2 / "
                        f"--replicas 1 throughput **{ratio(e['rps'], b['rps']):.2f}** "
                        f"({fmt_rps(e['rps'])} vs {fmt_rps(b['rps'])} req/s); p99 "
                        f"{e['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms"
                    )
    md.append("")

    md += ["## Every measurement", ""]
    md += [
        "| fsync | in flight | scenario | generator | req/s (min–max) | p50 ms | p99 ms | errors "
        "| ok | stored |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        for level in levels:
            for s in scenarios:
                for g in generators:
                    v = table.get((mode, level, s, g))
                    if not v:
                        continue
                    md.append(
                        f"| {mode} | {level} | {SCENARIOS[s]} | {GENERATORS[g]} | "
                        f"**{fmt_rps(v['rps'])}** ({fmt_rps(v['rps_min'])}–"
                        f"{fmt_rps(v['rps_max'])}) | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                        f"{v['errors']} | {v['ok']} | {v['stored']} |"
                    )
    codes = {
        f"{m} {lv} {SHORT[s]} {GENERATORS[g]}": v["codes"]
        for (m, lv, s, g), v in table.items()
        if v["codes"]
    }
    if codes:
        md += ["", "Errors by code: " + "; ".join(f"{k}: {v}" for k, v in codes.items())]
    md.append("")

    cpu_rows = [
        (mode, level, s, g, table[(mode, level, s, g)]["cpu_us"])
        for mode in modes
        for level in levels
        for s in scenarios
        for g in generators
        if table.get((mode, level, s, g), {}).get("cpu_us") and s != "a"
    ]
    if cpu_rows:
        md += [
            "## CPU per Store",
            "",
            "CPU time (user + system, every thread, from /proc/PID/stat) each server used during a "
            "measurement, divided by the messages stored in it (each counted once, however many "
            "copies): the cost of one forwarded Store, in µs (medians over the rounds). The "
            "generator's own CPU is not counted. **proxy** is the headnode in (b) and (e), nginx's "
            "processes in (c), HAProxy in (d).",
            "",
            "| fsync | in flight | scenario | generator | proxy | datanodes | servers in all |",
            "|---|---:|---|---|---:|---:|---:|",
        ]
        for mode, level, s, g, cpu in cpu_rows:
            proxy = cpu["headnode"] if s in "be" else cpu.get("proxy", 0)
            dn = cpu["datanodes"]
            md.append(
                f"| {mode} | {level} | {SHORT[s]} | {GENERATORS[g]} | **{proxy:.1f}** | "
                f"{dn:.1f} | {proxy + dn:.1f} |"
            )
        md.append("")

    rss = [(m, lv, s, v["rss_max_kb"]) for (m, lv, s, g), v in table.items()
           if s in "be" and v["rss_max_kb"]]
    if rss:
        md += ["## Headnode memory", "",
               "Peak resident memory of the headnode in each load run (the largest over the rounds; "
               "VmHWM of /proc/PID/status, reset through /proc/PID/clear_refs before the run and "
               "read after it); the goal is at most 30 MB under load.", "",
               "| fsync | scenario | " + " | ".join(f"{lv} in flight" for lv in levels) + " |",
               "|---|---|" + "---:|" * len(levels)]
        for mode in modes:
            for s in "be":
                cells = []
                for lv in levels:
                    vals = [kb for m, l2, s2, kb in rss if m == mode and l2 == lv and s2 == s]
                    cells.append(f"{max(vals) / 1024:.1f} MiB" if vals else "–")
                if any(c != "–" for c in cells):
                    md.append(f"| {mode} | {SHORT[s]} | " + " | ".join(cells) + " |")
        md.append("")

    # Hand-written notes kept across runs (what each optimisation bought, with its commands).
    notes = os.path.join("docs", "bench-notes.md")
    if os.path.exists(notes):
        md += open(notes).read().rstrip().splitlines() + [""]

    if detections:
        md += ["## Failure detection", ""]
        statuses = sorted({d["status"] for d in detections})
        md += [
            "The headnode runs with its defaults (`--heartbeat-interval 1s`, "
            "`--heartbeat-timeout 500ms`) and no load. datanode3 gets the signal at a random "
            "moment of the heartbeat period; measured is the time from the signal to the "
            f"timestamp of the first {'/'.join(statuses)} line for it in heartbeat.log (and to "
            "when the script saw that line, polling every 10 ms). Then it is restarted (SIGKILL) "
            "or continued (SIGSTOP), and the next signal waits until it is SERVING again.",
            "",
            "| fault | n | median | max | min | seen: median / max | each (ms) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        faults = {
            "KILL": "SIGKILL (process dies, connections close)",
            "STOP": "SIGSTOP (process hangs, connections stay open)",
        }
        for signal in sorted({d.get("signal", "KILL") for d in detections}):
            ds = [d for d in detections if d.get("signal", "KILL") == signal]
            logged = [d["logged_ms"] for d in ds]
            seen = [d["seen_ms"] for d in ds]
            md.append(
                f"| {faults.get(signal, signal)} | {len(ds)} | "
                f"**{statistics.median(logged):.0f} ms** | **{max(logged):.0f} ms** | "
                f"{min(logged):.0f} ms | {statistics.median(seen):.0f} / {max(seen):.0f} ms | "
                + ", ".join(f"{x:.0f}" for x in logged)
                + " |"
            )
        examples = {}
        for d in detections:
            examples.setdefault(d.get("signal", "KILL"), d["line"])
        md += ["", "First lines logged, one per fault:", "", "```"]
        md += list(examples.values())
        md += ["```", ""]

    breakdown = os.path.join(out_dir, "profile-breakdown.txt")
    if os.path.exists(breakdown) and os.path.getsize(breakdown) > 0:
        md += [
            "## Headnode profile",
            "",
            "perf samples (software cpu-clock at 999 Hz, DWARF call graphs; this VM has no "
            "hardware counters) of the headnode under `client bench --concurrency 64` through "
            "scenario (b), in the last fsync mode. Each sample is put in the first component its "
            "stack matches; the second list is the kernel time under each system call.",
            "",
            "```",
        ]
        md += open(breakdown).read().rstrip().splitlines()
        md += ["```", ""]

    self_profile = os.path.join(out_dir, "profile-self.txt")
    if os.path.exists(self_profile) and os.path.getsize(self_profile) > 0:
        md += [
            "Self time per symbol, top entries (`perf report --no-children --sort dso,symbol`):",
            "",
            "```",
        ]
        md += open(self_profile).read().rstrip().splitlines()[:25]
        md += ["```", ""]

    md += ["## Commands", "", "Exactly as run (first round; the others repeat them):", "", "```"]
    md += [f"# {key}\n{cmd}" for key, cmd in commands]
    md += [
        "```",
        "",
        "The cluster: `headnode --listen 127.0.0.1:15000` (defaults otherwise), for (e) "
        "`headnode --listen 127.0.0.1:15002 --replicas 2 --datanodes 127.0.0.1:16001,…` and three "
        "`datanode --listen 127.0.0.1:1600N --name datanodeN --headnode http://127.0.0.1:15000 "
        "--fsync MODE`; nginx with the config bench.sh writes to `bench-out/nginx/nginx.conf` "
        "(`listen 15080 http2`, `grpc_pass grpc://datanodes`, `upstream datanodes { random; "
        "server 127.0.0.1:16001; …; keepalive 256; }`, `access_log off`, "
        "`worker_processes auto`); HAProxy with `bench-out/haproxy/haproxy.cfg` (`bind "
        "127.0.0.1:15443 proto h2`, `balance random`, `http-reuse always`, `server datanodeN "
        "127.0.0.1:1600N proto h2`, `maxconn` within the descriptor limit, default threads).",
        "",
        "## Reading the numbers",
        "",
        "- **ok** is what the generator counted as a success; **stored** is the number of lines "
        "the datanodes' data files grew by during the run, counted after the files stopped "
        "growing (in (e) every message is two lines). h2load reports a gRPC error as a "
        "successful HTTP 200, so its **errors** are its own failures plus the 200s that stored "
        "nothing; stored can exceed ok by the few requests in flight when h2load stops at its "
        "deadline.",
        "- Latency is per request, in the generator: `client bench` records successes in an "
        "HdrHistogram (µs); for h2load the percentiles come from its per-request `--log-file`.",
        "- Throughput is successes per second of the run (`client bench`) or h2load's own req/s.",
        "- Scenario (a) is one datanode doing all the work; the others spread it over three, "
        "on the same 2 CPUs, so (a) is not an upper bound for them.",
        "- Regenerate: `make bench` (about 20 minutes); a quick run: "
        "`BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_KILLS=2 BENCH_LEVELS=\"1 64\" make bench`.",
        "",
        f"![throughput and p99 per scenario and level]({chart})",
        "",
    ]
    return "\n".join(md)


def nice_ceiling(x):
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least `x`: round ticks."""
    if x <= 0:
        return 1
    power = 10 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= x)


def svg(table):
    """Per fsync mode, a throughput panel and a p99 panel: groups are levels of requests in
    flight, one bar per scenario (the first generator's numbers)."""
    modes, levels, scenarios, generators = dims(table)
    g = generators[0] if generators else "h2load"
    width, left, right = 960, 70, 20
    panel_h, top_pad, bottom_pad = 200, 40, 45
    panels = [
        (mode, title, key, label)
        for mode in modes
        for title, key, label in (
            (f"fsync {mode}: Stores/s by requests in flight ({GENERATORS[g]}, median; higher is "
             "better)", "rps", fmt_rps),
            (f"fsync {mode}: p99 latency, ms (median; lower is better)", "p99_ms",
             lambda v: f"{v:.1f}"),
        )
    ]
    height = len(panels) * (panel_h + top_pad + bottom_pad) + 40
    group_w = (width - left - right) / max(1, len(levels))
    bar_w = group_w * 0.8 / max(1, len(scenarios))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for p, (mode, title, key, label) in enumerate(panels):
        y0 = 20 + p * (panel_h + top_pad + bottom_pad)
        base = y0 + top_pad + panel_h
        values = [v[key] for (m, lv, s, gg), v in table.items() if m == mode and gg == g]
        top = nice_ceiling(max(values, default=1))
        parts.append(f'<text x="{left}" y="{y0 + 16}" font-size="14" font-weight="bold">'
                     f"{escape(title)}</text>")
        parts.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" '
                     'stroke="#333"/>')
        for tick in range(5):
            value = top * tick / 4
            y = base - panel_h * tick / 4
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                         'stroke="#ddd"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                         f"{escape(label(value))}</text>")
        for i, level in enumerate(levels):
            gx = left + i * group_w
            for j, s in enumerate(scenarios):
                v = table.get((mode, level, s, g))
                if not v:
                    continue
                h = panel_h * v[key] / top
                x = gx + group_w * 0.1 + j * bar_w
                parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w - 2:.1f}" '
                             f'height="{h:.1f}" fill="{SCENARIO_COLOURS[s]}"/>')
                parts.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{base - h - 4:.1f}" '
                             f'text-anchor="middle" font-size="9">{escape(label(v[key]))}</text>')
            cx = gx + group_w / 2
            parts.append(f'<text x="{cx:.1f}" y="{base + 16}" text-anchor="middle">'
                         f"{level} in flight</text>")
    legend_y = height - 16
    for j, s in enumerate(scenarios):
        x = left + j * 170
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" '
                     f'fill="{SCENARIO_COLOURS[s]}"/>')
        parts.append(f'<text x="{x + 18}" y="{legend_y}">({s}) {escape(SHORT[s])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def report(args):
    records, detections = [], []
    with open(args.results) as f:
        for row in f:
            if row.strip():
                r = json.loads(row)
                (records if r["kind"] == "load" else detections).append(r)
    commands = []
    if os.path.exists(args.commands):
        for row in open(args.commands):
            key, _, cmd = row.rstrip("\n").partition("\t")
            commands.append((key, cmd))
    table = summarise(records)
    with open(args.markdown, "w") as f:
        chart = os.path.relpath(args.svg, os.path.dirname(args.markdown) or ".")
        f.write(markdown(table, detections, commands, args.settings, args.out_dir, machine(), chart))
    os.makedirs(os.path.dirname(args.svg) or ".", exist_ok=True)
    with open(args.svg, "w") as f:
        f.write(svg(table))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("body")
    p.add_argument("size", type=int)
    p.add_argument("out")
    p = sub.add_parser("h2load")
    p.add_argument("output")
    p.add_argument("log")
    sub.add_parser("line")
    p = sub.add_parser("detect")
    for name in ("mode", "signal", "k", "t0", "t1", "log_line"):
        p.add_argument(name)
    p = sub.add_parser("profile")
    p.add_argument("perf_script")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--commands", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--svg", required=True)
    p.add_argument("--settings", default="")
    args = parser.parse_args()
    if args.command == "body":
        body(args.size, args.out)
    elif args.command == "h2load":
        h2load(args.output, args.log)
    elif args.command == "line":
        line()
    elif args.command == "detect":
        detect(args.mode, args.signal, args.k, args.t0, args.t1, args.log_line)
    elif args.command == "profile":
        profile(args.perf_script)
    else:
        report(args)


if __name__ == "__main__":
    main()
