#!/usr/bin/env python3
"""Prints the machine and how busy it is, as JSON, for the report: cores, CPU
model, memory, kernel, load average, and the share of CPU time spent over two
seconds sampled now (run before the bench starts: it tells whether the machine
was otherwise idle)."""

import json
import os
import platform
import sys
import time


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v), idle


def main() -> None:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    total0, idle0 = cpu_times()
    time.sleep(2)  # the sampling interval of the idle check, not a synchronisation
    total1, idle1 = cpu_times()
    busy = 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))
    json.dump(
        {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(),
            "loadavg_1m": os.getloadavg()[0],
            "busy_percent_before": round(busy, 1),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
