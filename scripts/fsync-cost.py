#!/usr/bin/env python3
"""What one durable write costs on this machine's disk, by how the file is laid out.

Writes N records of SIZE bytes to a file in DIR, each followed by fdatasync, as a datanode with
--fsync always does when every write carries one record, and reports per write: the wall time,
this process's system and user time, and the whole machine's busy time (/proc/stat, so the
kernel's journal and block threads count too). Layouts:

  append     a new file, each write extending it (what messages.jsonl is)
  keepsize   blocks reserved beyond the end first (fallocate FALLOC_FL_KEEP_SIZE): the size
             still grows with each write
  fallocate  the file's size set first (posix_fallocate): writes land inside it
  overwrite  the file written with zeros and synced first: writes replace bytes already there
  direct     as overwrite, the file opened O_DIRECT|O_DSYNC: each write rewrites the 4 KiB
             pages the record touches from an aligned buffer, no fdatasync (a database's WAL)

Usage: scripts/fsync-cost.py DIR [LAYOUT...] (default: all four, twice, in turn)
Settings: N=3000 SIZE=1200
"""

import ctypes
import mmap
import os
import sys
import time

FALLOC_FL_KEEP_SIZE = 1


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def run(directory, layout, n, size):
    path = os.path.join(directory, f"fsync-cost-{layout}")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        if layout == "overwrite":
            os.write(fd, b"\0" * (n * size))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        elif layout == "fallocate":
            os.posix_fallocate(fd, 0, n * size)
            os.fsync(fd)
        elif layout == "keepsize":
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(n * size)):
                raise OSError(ctypes.get_errno(), "fallocate")
            os.fsync(fd)
        elif layout == "direct":
            os.write(fd, b"\0" * (n * size + 8192))
            os.fsync(fd)
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
        elif layout != "append":
            raise SystemExit(f"unknown layout {layout!r}")
        record = b"x" * (size - 1) + b"\n"
        hz = os.sysconf("SC_CLK_TCK")
        page = 4096
        aligned = mmap.mmap(-1, size + 2 * page)
        t0, m0, p0 = time.monotonic(), machine_busy(), os.times()
        for i in range(n):
            if layout == "direct":
                start = i * size // page * page
                end = -(-(i + 1) * size // page) * page
                os.pwrite(fd, memoryview(aligned)[: end - start], start)
            else:
                os.write(fd, record)
                os.fdatasync(fd)
        t1, m1, p1 = time.monotonic(), machine_busy(), os.times()
    finally:
        os.close(fd)
        os.unlink(path)
    us = lambda seconds: 1e6 * seconds / n
    print(
        f"{layout:10} wall {us(t1 - t0):5.0f} µs a write   this process: system {us(p1.system - p0.system):4.0f} µs, "
        f"user {us(p1.user - p0.user):3.0f} µs   machine busy {us((m1 - m0) / hz):4.0f} µs"
    )


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    directory = sys.argv[1]
    layouts = sys.argv[2:] or ["append", "keepsize", "fallocate", "overwrite", "direct"] * 2
    n = int(os.environ.get("N", "3000"))
    size = int(os.environ.get("SIZE", "1200"))
    for layout in layouts:
        run(directory, layout, n, size)


if __name__ == "__main__":
    main()
