#!/usr/bin/env python3
"""Runs a shell command and prints `wall_s cpu_s peak_rss_kib`: wall time, user+system CPU of
the command and all its children, and the peak of the summed resident memory of its whole
process tree (sampled every 20 ms), so a pipeline is measured as a whole."""
import os
import subprocess
import sys
import time


def tree(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


start = time.time()
proc = subprocess.Popen(["bash", "-c", sys.argv[1]])
peak = 0
while proc.poll() is None:
    peak = max(peak, sum(rss_kib(p) for p in tree(proc.pid)))
    time.sleep(0.02)
wall = time.time() - start
usage = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
if proc.returncode != 0:
    sys.exit(f"command failed ({proc.returncode}): {sys.argv[1]}")
print(f"{wall:.2f} {usage.ru_utime + usage.ru_stime:.2f} {peak}")
