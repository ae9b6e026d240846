#!/usr/bin/env python3
"""Watches how much CPU the rest of the machine takes while the bench runs.

    cpuwatch.py ROOT_PID OUT_FILE MAX_SECONDS

Once a second, reads every process's CPU time from /proc and splits it into
the bench's own (ROOT_PID and its descendants) and everyone else's; appends
"unix_time foreign_cpu_s own_cpu_s" (cumulative) to OUT_FILE. Stops when
ROOT_PID exits or after MAX_SECONDS. A process that lives less than a second
between two samples is missed, so the foreign figure is a lower bound.
"""

import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def snapshot():
    """{pid: (ppid, cpu seconds)} of every process now."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        procs[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return procs


def ours(procs, root):
    """The pids of root and its descendants."""
    children = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def main() -> None:
    root, out, max_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    start = time.monotonic()
    prev = snapshot()
    foreign = own = 0.0
    with open(out, "a") as f:
        while time.monotonic() - start < max_s and os.path.exists(f"/proc/{root}"):
            time.sleep(1.0)  # the sampling period
            now = snapshot()
            mine = ours(now, root)
            for pid, (_, cpu) in now.items():
                # A process first seen now counts from its start: it began since the last sample.
                delta = cpu - prev[pid][1] if pid in prev else cpu
                if pid in mine:
                    own += delta
                else:
                    foreign += delta
            prev = now
            f.write(f"{time.time():.3f} {foreign:.2f} {own:.2f}\n")
            f.flush()


if __name__ == "__main__":
    main()
