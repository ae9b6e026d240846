#!/usr/bin/env python3
"""Drives one gleaner node through its HTTP API only, for bench/run.sh.

Subcommands (each prints or writes one JSON result):

  listen LOG PID TIMEOUT          wait for the "http server listening" log line
                                  (JSON log format) and for /readyz; print the address
  e2e API SITE PID SOURCES PAGES DEADLINE
                                  SOURCES catalogue sources of PAGES pages each; pages/s
                                  and items/s from the first run's start to the last finish
  again API PID SOURCES PAGES DEADLINE
                                  the e2e sources run once more over the same pages
                                  (unchanged, or answered 304): pages/s of that pass
  cluster APIS PIDS SITE SOURCES PAGES DEADLINE
                                  APIS and PIDS comma-separated, one per node: the e2e
                                  sources created through the first node, placed over
                                  every node, replicated to all; pages/s of the cluster
  cursors API COLLECTION PAGES OUTDIR
                                  walk the collection (limit=100) and write wrk path
                                  lists: plain pages and field-filtered pages
  sched API SITE PID SOURCES COLLECTIONS EVERY WINDOW DEADLINE
                                  SOURCES tiny sources every EVERY s, spread over
                                  COLLECTIONS collections: schedule lag, RSS per source

The admin token is read from GLEANER_ADMIN_TOKEN. Every wait is bounded by a
deadline; every loop by a count.
"""

import concurrent.futures
import http.client
import json
import math
import os
import re
import sys
import threading
import time
import urllib.parse
from datetime import datetime

TOKEN = os.environ.get("GLEANER_ADMIN_TOKEN", "")
WORKERS = 8  # concurrent API clients for bulk registration and reads
# Seconds the schedule test leaves the node without requests before it reads the
# memory of idle sources (more than jemalloc's 10 s decay of freed pages).
SETTLE_SECS = 15


class Api:
    """A small keep-alive JSON client, one connection per thread."""

    def __init__(self, base: str):
        u = urllib.parse.urlsplit(base)
        assert u.hostname in ("127.0.0.1", "localhost"), "loopback only"
        self.host, self.port = u.hostname, u.port
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return self.local.conn

    def call(self, method: str, path: str, body=None):
        """Returns (status, parsed JSON or None); reconnects once on a dropped connection."""
        headers = {"authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        ctype = resp.getheader("content-type") or ""
        return resp.status, (json.loads(raw) if raw and "json" in ctype else None)

    def must(self, method: str, path: str, body=None, ok=(200,)):
        status, doc = self.call(method, path, body)
        if status not in ok:
            raise SystemExit(f"{method} {path}: HTTP {status}: {doc}")
        return doc


def ts(s: str) -> float:
    """RFC 3339 (chrono's, up to nanoseconds) to Unix seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {s}")
    zone = "+00:00" if m[3] == "Z" else m[3]
    frac = int(m[2]) / 10 ** len(m[2]) if m[2] else 0.0
    return datetime.fromisoformat(m[1] + zone).timestamp() + frac


def pct(values, p: float):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(p / 100 * len(v)))) - 1]


def proc_status(pid: int, key: str) -> int:
    """A kB figure from /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {key} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The fields both kinds of fixture page share (the same markup per product).
FIELDS = {
    "title": {"css": "h3 a", "attr": "title"},
    "price": {"css": ".price", "type": "number"},
    "url": {"css": "h3 a", "attr": "href", "type": "url"},
}


def catalogue_spec(i: int, site: str, pages: int) -> dict:
    """Source i walks catalogue pages i*pages+1 .. (i+1)*pages via next_page."""
    return {
        "id": f"cat-{i:04d}",
        "url": f"{site}/catalogue/page-{i * pages + 1}.html",
        "collection": "catalogue",
        "schedule": {"every_secs": 604800},  # one run in the bench: the first
        "extract": {
            "scope": "article.product",
            "fields": {**FIELDS, "tags": {"css": ".tag", "all": True}},
            "next_page": {"css": "li.next a", "attr": "href", "max_pages": pages},
        },
        "key": ["url"],
    }


def tiny_spec(i: int, site: str, every: int, collections: int) -> dict:
    """Source i scrapes tiny page i into one of `collections` collections."""
    return {
        "id": f"tiny-{i:05d}",
        "url": f"{site}/tiny/{i}.html",
        "collection": f"tiny-{i % collections:03d}",
        "schedule": {"every_secs": every, "jitter_secs": 0},
        "extract": {
            "scope": "article.product",
            "fields": FIELDS,
        },
        "key": ["url"],
    }


def create(api: Api, spec: dict, deadline: float):
    """POSTs one source: up to 3 attempts on a 5xx or a dropped connection (a 409 after
    a failed attempt means that attempt went through), none after the deadline.
    Returns when the node accepted it (time.monotonic()), or None."""
    for attempt in range(3):
        if time.monotonic() > deadline:
            return None
        try:
            status, _ = api.call("POST", "/api/v1/sources", spec)
        except OSError:
            status = 0
        if status == 201 or (status == 409 and attempt > 0):
            return time.monotonic()
        if 400 <= status < 500:
            raise SystemExit(f"POST /api/v1/sources: HTTP {status} for {spec['id']}")
        time.sleep(1.0)  # the node is overloaded: back off before the next attempt
    return None


def post_all(api: Api, specs, deadline: float):
    """Creates every source with WORKERS concurrent clients, until the deadline;
    returns the specs the node accepted, the seconds taken, and the acceptance
    rate (sources/s) of the first and of the last tenth of them."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda s: create(api, s, deadline), specs))
    accepted = sorted(t for t in done if t is not None)
    tenth = max(1, len(accepted) // 10)
    rates = (None, None)
    if len(accepted) >= 20:
        first = accepted[tenth - 1] - start
        last = accepted[-1] - accepted[-tenth - 1]
        rates = (round(tenth / first, 1), round(tenth / last, 1))
    created = [s for s, t in zip(specs, done, strict=True) if t is not None]
    return created, time.monotonic() - start, rates


def wait_first_runs(api: Api, ids: set, deadline: float, every: float):
    """Polls GET /sources until every id has a last_run or the deadline passes;
    returns {id: source} of those that have one."""
    done = {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        try:
            status, doc = api.call("GET", "/api/v1/sources")
        except OSError:
            status, doc = 0, None
        if status == 200:
            done = {s["id"]: s for s in doc["sources"] if s["id"] in ids and s["status"].get("last_run")}
        if len(done) < len(ids):
            time.sleep(every)
    return done


def cmd_listen(log: str, pid: str, timeout: str) -> None:
    deadline = time.monotonic() + float(timeout)
    addr = None
    while addr is None:
        if time.monotonic() > deadline:
            raise SystemExit("the node did not log 'http server listening' in time")
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            raise SystemExit(f"the node exited; see {log}") from None
        with open(log, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                fields = rec.get("fields", rec)  # flattened or not
                if fields.get("message") == "http server listening":
                    addr = fields["addr"]
                    break
        if addr is None:
            time.sleep(0.05)
    api = Api(f"http://{addr}")
    while True:
        try:
            if api.call("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the node did not become ready in time")
        time.sleep(0.05)
    print(addr)


def cmd_e2e(base, site, pid, sources, pages, deadline) -> None:
    api, pid, sources, pages = Api(base), int(pid), int(sources), int(pages)
    deadline = time.monotonic() + float(deadline)
    specs = [catalogue_spec(i, site, pages) for i in range(sources)]
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    created, post_s, _ = post_all(api, specs, deadline)
    if len(created) < len(specs):
        raise SystemExit(f"e2e: the node accepted {len(created)} of {len(specs)} sources")
    done = wait_first_runs(api, {s["id"] for s in specs}, deadline, 0.1)
    if len(done) < len(specs):
        raise SystemExit(f"e2e: {len(done)} of {len(specs)} sources finished a run before the deadline")
    wall = time.monotonic() - wall0
    cpu = cpu_seconds(pid) - cpu0
    runs = [s["status"]["last_run"] for s in done.values()]
    errors = [r["error"] for r in runs if r.get("error")]
    first = min(ts(r["started_at"]) for r in runs)
    last = max(ts(r["finished_at"]) for r in runs)
    n_pages = sum(r["pages"] for r in runs)
    n_items = sum(r["items"] for r in runs)
    colls = {c["name"]: c["items"] for c in api.must("GET", "/api/v1/collections")["collections"]}
    secs = last - first
    json.dump(
        {
            "sources": sources,
            "pages": n_pages,
            "items": n_items,
            "stored_items": colls.get("catalogue", 0),
            "errors": errors[:5],
            "seconds": round(secs, 3),
            "pages_per_s": round(n_pages / secs, 1),
            "items_per_s": round(n_items / secs, 1),
            "post_seconds": round(post_s, 3),
            "wall_seconds": round(wall, 3),
            "node_cpu_seconds": round(cpu, 2),
            "node_cpu_ms_per_page": round(1000 * cpu / max(1, n_pages), 3),
            "node_rss_kib": proc_status(pid, "VmRSS"),
        },
        sys.stdout,
    )
    print()
    if errors or n_pages != sources * pages:
        raise SystemExit(f"e2e: {len(errors)} failed runs, {n_pages} of {sources * pages} pages")



def runs_since(api: Api, ids, after: float, deadline: float):
    """Polls GET /sources until every id has a last_run that started after `after`
    (a Unix time) or the deadline passes; returns those runs by id."""
    done = {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        try:
            status, doc = api.call("GET", "/api/v1/sources")
        except OSError:
            status, doc = 0, None
        if status == 200:
            for s in doc["sources"]:
                run = s["status"].get("last_run")
                if s["id"] in ids and run and ts(run["started_at"]) >= after and not s["status"].get("state") == "running":
                    done[s["id"]] = (run, s["status"].get("owner"))
        if len(done) < len(ids):
            time.sleep(0.1)
    return done


def pass_figures(runs, cpu: float) -> dict:
    first = min(ts(r["started_at"]) for r in runs)
    last = max(ts(r["finished_at"]) for r in runs)
    n_pages = sum(r["pages"] for r in runs)
    secs = max(1e-3, last - first)
    return {
        "pages": n_pages,
        "items": sum(r["items"] for r in runs),
        "inserted": sum(r["inserted"] for r in runs),
        "changed": sum(r["changed"] for r in runs),
        "not_modified": sum(r.get("not_modified", 0) for r in runs),
        "errors": [r["error"] for r in runs if r.get("error")][:5],
        "seconds": round(secs, 3),
        "pages_per_s": round(n_pages / secs, 1),
        "node_cpu_seconds": round(cpu, 2),
        "node_cpu_ms_per_page": round(1000 * cpu / max(1, n_pages), 3),
    }


def cmd_again(base, pid, sources, pages, deadline) -> None:
    """Runs every e2e source once more (POST /sources/{id}/run) and measures that pass."""
    api, pid, sources, pages = Api(base), int(pid), int(sources), int(pages)
    deadline = time.monotonic() + float(deadline)
    ids = {f"cat-{i:04d}" for i in range(sources)}
    after = time.time()
    cpu0 = cpu_seconds(pid)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda i: api.must("POST", f"/api/v1/sources/{i}/run", {}, ok=(200, 202)), sorted(ids)))
    done = runs_since(api, ids, after, deadline)
    if len(done) < len(ids):
        raise SystemExit(f"again: {len(done)} of {len(ids)} sources ran again before the deadline")
    out = pass_figures([r for r, _ in done.values()], cpu_seconds(pid) - cpu0)
    out["node_rss_kib"] = proc_status(pid, "VmRSS")
    json.dump(out, sys.stdout)
    print()
    if out["errors"] or out["pages"] != sources * pages:
        raise SystemExit(f"again: {len(out['errors'])} failed runs, {out['pages']} of {sources * pages} pages")


def cmd_cluster(bases, pids, site, sources, pages, deadline) -> None:
    """The e2e sources on a cluster: created through the first node, run where they
    are placed, replicated to every node. Pages/s from the first start to the last
    finish; then how long until every node holds every item."""
    apis = [Api(b) for b in bases.split(",")]
    pids = [int(p) for p in pids.split(",")]
    sources, pages = int(sources), int(pages)
    deadline = time.monotonic() + float(deadline)
    names = None
    while time.monotonic() < deadline:  # every node sees every member up
        views = []
        for a in apis:
            try:
                status, doc = a.call("GET", "/api/v1/cluster")
            except OSError:
                status, doc = 0, None
            views.append(sorted(m["name"] for m in doc["members"] if m.get("state") == "up") if status == 200 else [])
            if status == 200 and not doc.get("settled", True):
                views[-1] = []
        if all(len(v) == len(apis) for v in views):
            names = views[0]
            break
        time.sleep(0.2)
    if names is None:
        raise SystemExit("cluster: the nodes did not all see each other up in time")
    specs = [catalogue_spec(i, site, pages) for i in range(sources)]
    cpu0 = [cpu_seconds(p) for p in pids]
    after = time.time()
    created, _, _ = post_all(apis[0], specs, deadline)
    if len(created) < len(specs):
        raise SystemExit(f"cluster: the node accepted {len(created)} of {len(specs)} sources")
    done = runs_since(apis[0], {s["id"] for s in specs}, after, deadline)
    if len(done) < len(specs):
        raise SystemExit(f"cluster: {len(done)} of {len(specs)} sources finished a run before the deadline")
    runs_end = time.time()
    want = sources * pages * 20
    replicated = None
    while time.monotonic() < deadline:
        counts = []
        for a in apis:
            try:
                status, doc = a.call("GET", "/api/v1/collections")
            except OSError:
                status, doc = 0, None
            c = {x["name"]: x["items"] for x in doc["collections"]} if status == 200 else {}
            counts.append(c.get("catalogue", 0))
        if all(c >= want for c in counts):
            replicated = time.time()
            break
        time.sleep(0.1)
    cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    runs = [r for r, _ in done.values()]
    out = pass_figures(runs, sum(cpu))
    per_node = {}
    for r, owner in done.values():
        per_node.setdefault(owner or "?", 0)
        per_node[owner or "?"] += r["pages"]
    out.update(
        {
            "nodes": len(apis),
            "pages_per_s_per_node": round(out["pages_per_s"] / len(apis), 1),
            "pages_by_owner": per_node,
            "node_cpu_seconds_each": [round(c, 2) for c in cpu],
            "node_rss_kib_each": [proc_status(p, "VmRSS") for p in pids],
            "items_on_every_node": replicated is not None,
            "replicated_after_last_run_s": None if replicated is None else round(replicated - runs_end, 3),
        }
    )
    json.dump(out, sys.stdout)
    print()
    if out["errors"] or out["pages"] != sources * pages or replicated is None:
        raise SystemExit(f"cluster: {len(out['errors'])} failed runs, {out['pages']} of {sources * pages} pages, replicated: {replicated is not None}")

def cmd_cursors(base, collection, pages, outdir) -> None:
    """Walks the collection once (timed) and writes the wrk path lists."""
    api, pages = Api(base), int(pages)
    prefix = f"/api/v1/collections/{urllib.parse.quote(collection)}/items?limit=100"
    plain, cursor, walked, items = [prefix], None, 0, 0
    start = time.monotonic()
    for _ in range(pages + 1):  # bounded: the collection has at most `pages` pages
        path = prefix + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        doc = api.must("GET", path)
        walked += 1
        items += len(doc["items"])
        cursor = doc.get("next")
        if not cursor:
            break
        plain.append(prefix + f"&cursor={urllib.parse.quote(cursor)}")
    walk_s = time.monotonic() - start
    common = [p + "&tags=t1" for p in plain]  # about one item in three matches
    # One item matches: every request scans the collection from its cursor to the end.
    rare = [prefix + "&title=" + urllib.parse.quote("Book 7")]
    for name, paths in (("plain", plain), ("common", common), ("rare", rare)):
        with open(os.path.join(outdir, f"query-{name}.txt"), "w") as f:
            f.write("\n".join(paths) + "\n")
    # Sanity: the filters select what they should.
    doc = api.must("GET", common[len(common) // 2])
    assert doc["items"] and all("t1" in i["data"]["tags"] for i in doc["items"]), "tags filter"
    doc = api.must("GET", rare[0])
    assert [i["data"]["title"] for i in doc["items"]] == ["Book 7"], "title filter"
    json.dump(
        {
            "pages_walked": walked,
            "items_walked": items,
            "walk_seconds": round(walk_s, 3),
            "walk_items_per_s": round(items / walk_s, 1),
        },
        sys.stdout,
    )
    print()


def cmd_sched(base, site, pid, sources, collections, every, window, deadline) -> None:
    api, pid, n, every, window = Api(base), int(pid), int(sources), int(every), float(window)
    collections = int(collections)
    start = time.monotonic()
    deadline = start + float(deadline)
    api.must("GET", "/api/v1/sources")
    idle = proc_status(pid, "VmRSS")
    specs = [tiny_spec(i, site, every, collections) for i in range(1, n + 1)]
    # An overloaded node may refuse some sources or not run them all in time: the
    # bench goes on with what it got and reports it.
    # Registration gets two thirds of the deadline, the first runs the rest.
    specs, post_s, (rate_first, rate_last) = post_all(api, specs, start + (deadline - start) * 2 / 3)
    first = wait_first_runs(api, {s["id"] for s in specs}, deadline, max(1.0, n / 2000))
    # Every source has run once and waits for its next run (a run takes a few ms of
    # every_secs): the memory of a registered, idle source, before the window's runs
    # add their history and log entries. VmRSS is read SETTLE_SECS later, without a
    # request from the bench meanwhile: right after the last poll it still holds
    # what that poll (every source's status in one response) and the registration
    # burst freed, which the allocator hands back within its decay time (10 s).
    # Sources keep running on their schedule meanwhile, so nothing they store is
    # left out.
    rss_first_runs_done = proc_status(pid, "VmRSS")
    settle_end = time.monotonic() + SETTLE_SECS
    while time.monotonic() < settle_end:  # bounded by SETTLE_SECS
        time.sleep(min(1.0, max(0.0, settle_end - time.monotonic())))
    rss_ran_once = proc_status(pid, "VmRSS")
    # The measured window: every source has run once; now let the schedule go on.
    t0 = time.time()
    rss_max = 0
    while time.time() - t0 < window:  # one RSS sample a second, bounded by the window
        rss_max = max(rss_max, proc_status(pid, "VmRSS"))
        time.sleep(min(1.0, max(0.0, window - (time.time() - t0))))
    rss = proc_status(pid, "VmRSS")
    rss_max = max(rss_max, rss)
    t1 = time.time()

    read_deadline = time.monotonic() + 120

    def runs(spec):
        if time.monotonic() > read_deadline:
            return None
        try:
            status, doc = api.call("GET", f"/api/v1/sources/{spec['id']}/runs?limit=100")
        except OSError:
            return None
        return doc["runs"] if status == 200 else None

    read0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        histories = list(pool.map(runs, specs))
    read_s = time.monotonic() - read0
    unread = sum(h is None for h in histories)
    histories = [h for h in histories if h is not None]
    lag, s2s, durations, failed, in_window = [], [], [], 0, 0
    for hist in histories:
        hist = sorted(hist, key=lambda r: r["started_at"])
        for prev, cur in zip(hist, hist[1:], strict=False):
            start = ts(cur["started_at"])
            if not t0 <= start < t1:
                continue
            in_window += 1
            failed += bool(cur.get("error"))
            durations.append(cur["duration_ms"] / 1000)
            if prev.get("error"):
                continue  # after a failure the next run is due after a backoff, not every_secs
            # Lag: how late the run started against the node's own rule, every_secs
            # after the previous run finished (jitter 0).
            lag.append(start - (ts(prev["finished_at"]) + every))
            # Start to start, less the period: lag plus the previous run's duration.
            s2s.append(start - ts(prev["started_at"]) - every)

    def ms(v):
        return None if v is None else round(v * 1000, 1)

    mean_d = sum(durations) / len(durations) if durations else 0.0
    json.dump(
        {
            "sources": n,
            "registered": len(specs),
            "first_runs_done": len(first),
            "collections": collections,
            "every_secs": every,
            "window_seconds": round(t1 - t0, 1),
            "register_seconds": round(post_s, 2),
            "register_per_s": round(len(specs) / post_s, 1),
            "register_per_s_first_tenth": rate_first,
            "register_per_s_last_tenth": rate_last,
            "runs_in_window": in_window,
            "runs_failed": failed,
            "runs_per_s": round(in_window / (t1 - t0), 1),
            "runs_per_s_nominal": round(len(specs) / every, 1),
            "run_ms_mean": ms(mean_d),
            "lag_ms_p50": ms(pct(lag, 50)),
            "lag_ms_p99": ms(pct(lag, 99)),
            "lag_ms_max": ms(max(lag) if lag else None),
            "start_to_start_over_ms_p99": ms(pct(s2s, 99)),
            "idle_rss_kib": idle,
            "rss_kib": rss,
            "rss_max_kib": rss_max,
            "rss_per_source_kib": round((rss - idle) / max(1, len(specs)), 2),
            "rss_ran_once_kib": rss_ran_once,
            "rss_per_idle_source_kib": round((rss_ran_once - idle) / max(1, len(specs)), 2),
            "settle_seconds": SETTLE_SECS,
            "rss_first_runs_done_kib": rss_first_runs_done,
            "rss_per_source_unsettled_kib": round((rss_first_runs_done - idle) / max(1, len(specs)), 2),
            "runs_read_seconds": round(read_s, 2),
            "histories_unread": unread,
        },
        sys.stdout,
    )
    print()


def main() -> None:
    cmds = {
        "listen": cmd_listen,
        "e2e": cmd_e2e,
        "again": cmd_again,
        "cluster": cmd_cluster,
        "cursors": cmd_cursors,
        "sched": cmd_sched,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        raise SystemExit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
