#!/usr/bin/env python3
"""Reads `wrk --latency` output on stdin and prints its figures as JSON:
requests/s, p50/p99 latency in ms, requests, non-2xx responses, socket errors.
Exits non-zero if wrk completed no request."""

import json
import re
import sys

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
SIZES = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return round(float(m[1]) * UNITS[m[2]], 3)


def main() -> None:
    out = sys.stdin.read()
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    done = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    xfer = re.search(r"^Transfer/sec:\s+([\d.]+)(\w+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    load = re.search(r"(\d+) threads and (\d+) connections", out)
    if not (done and rps and int(done[1]) > 0):
        sys.stderr.write(out)
        raise SystemExit("wrk completed no request")
    json.dump(
        {
            "requests_per_s": float(rps[1]),
            "mib_per_s": round(float(xfer[1]) * SIZES[xfer[2]], 1) if xfer else None,
            "p50_ms": ms(lat["50"]) if "50" in lat else None,
            "p99_ms": ms(lat["99"]) if "99" in lat else None,
            "requests": int(done[1]),
            "threads": int(load[1]) if load else None,
            "connections": int(load[2]) if load else None,
            "non_2xx": int(non2xx[1]) if non2xx else 0,
            "socket_errors": sock[1].strip() if sock else None,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
