#!/usr/bin/env python
"""PostgreSQL pages against SQLite's, before and after (issue 16, part 4).

    .venv/bin/python benchmarks/pg_pages.py --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_x
    .venv/bin/python benchmarks/pg_pages.py --db ... --jobs 200000 --requests 300 --base c4aaddd

One run measures, on the same machine, at the same time:

* ``GET /api/jobs`` pages (first page, deep cursor, deep offset, each filter: status,
  workflow_id, source, sort by execution_duration) and a job's detail
  (``GET /api/jobs/{id}``) over HTTP, one keep-alive connection per server, sequential
  requests. Four ``jobs-index serve`` processes answer: the base code (``git archive``
  of ``--base`` under ``_work/``) and this code, each on SQLite and on PostgreSQL (the
  same synthetic jobs, ``bench.py``'s dump, a quarter each in sources ``gpu0``..``gpu3``).
  Requests are interleaved request by request over the four servers, so a burst of
  load from elsewhere on the shared machine hits all of them alike.
* CPU per request: the server process's, and (PostgreSQL) its backend's, read from
  ``/proc`` around the timed requests.
* Round trips per request on PostgreSQL, counted from a libpq trace (each
  ``ReadyForQuery`` is one), and the statements sent, for both codes.
* Where a PostgreSQL page's server time goes: ``EXPLAIN (ANALYZE, SUMMARY)`` of each
  page's statements (planning vs execution).

Prints a markdown report and writes ``benchmarks/results/pg-pages-<N>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
from bench import Case, Target, log, pct
from sqlalchemy import create_engine, text

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
BASE_COMMIT = "c4aaddd"  # main before issue 16 part 4
SOURCES = 4
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------- the data


def prepare(target: Target, n: int) -> None:
    """bench.py's index of n jobs, its jobs spread over SOURCES sources (by create_time),
    the counters repaired to match, then the tables rewritten (``VACUUM FULL`` /
    ``VACUUM``: the UPDATE left every index half empty, as no import does) and
    statistics and visibility fresh."""
    bench.get_or_build(target, n, 1, 6, reuse=True)
    engine = create_engine(target.url)
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT count(*) FROM jobs WHERE source = 'gpu0'")).scalar_one():
                return
            log(f"spreading {target.backend}'s jobs over {SOURCES} sources")
            conn.execute(text(f"UPDATE jobs SET source = 'gpu' || (create_time % {SOURCES})"))
    finally:
        engine.dispose()
    from jobs_index.services import JobsIndex

    with JobsIndex.open(target.url) as index:
        index.repair_counts()  # SQLite's counters are kept by the writer, not by triggers
        with index.engine.connect() as conn:
            if target.backend == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                conn = conn.execution_options(sqlite_begin=None)  # no BEGIN (database._setup_sqlite)
            if target.backend == "postgresql":
                conn.execute(text("VACUUM FULL jobs"))
                conn.execute(text("VACUUM (ANALYZE)"))
            else:
                conn.execute(text("VACUUM"))
                conn.execute(text("ANALYZE"))


def make_cases(url: str) -> list[Case]:
    from jobs_index.services import JobsIndex

    with JobsIndex.open(url) as index:
        cases, _meta = bench.make_cases(index, index.total(), 0)
        with index.engine.connect() as conn:
            job_id = conn.execute(text("SELECT id FROM jobs ORDER BY create_time DESC, id DESC LIMIT 1 OFFSET 777"))
            detail = str(job_id.scalar_one())
    for case in cases:
        case.requests = None
    cases += [
        Case("source filter", {"limit": "50", "source": "gpu1"}, note="a quarter of the jobs"),
        Case("source + status=completed", {"limit": "50", "source": "gpu1", "status": "completed"}),
        Case("job detail", {"_path": "/" + detail}, note="GET /api/jobs/{id}"),
    ]
    return cases


# ------------------------------------------------------------------------ the servers


class Serve:
    """``jobs-index serve`` of the code in ``tree`` on ``url``, in its own process."""

    def __init__(self, label: str, url: str, tree: Path) -> None:
        import socket

        self.label, self.url, self.tree = label, url, tree
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/api/jobs"
        self.backend_pids: list[int] = []

    def __enter__(self) -> Serve:
        command = [
            sys.executable,
            "-c",
            "import sys, jobs_index.cli as c; assert c.__file__.startswith(sys.argv[1]), c.__file__; "
            "del sys.argv[1]; sys.argv[0] = 'jobs-index'; c.cli()",
            str(self.tree),
            "--db",
            self.url,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(command, cwd=self.tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(600):
            try:
                urllib.request.urlopen(self.base + "?limit=1", timeout=5).read()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} exited: {self.process.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.2)
        raise RuntimeError(f"{self.label} did not start")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server process and of its PostgreSQL backends."""
        return _cpu(self.process.pid), sum(_cpu(pid) for pid in self.backend_pids)


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _backends(admin, exclude: set[int]) -> set[int]:
    with admin.connect() as conn:
        rows = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = 'jobs-index'"))
        return {int(pid) for (pid,) in rows} - exclude


async def _series(servers: list[Serve], cases: list[Case], warmup: int, requests: int) -> dict:
    """Sequential requests, one keep-alive connection per server; the timed requests go
    case by case, request by request over the servers (their order rotating)."""
    import aiohttp

    out = {s.label: {c.name: {"times": [], "body": None, "cpu": (0.0, 0.0)} for c in cases} for s in servers}
    sessions = {s.label: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for s in servers}
    try:

        async def get(server: Serve, case: Case) -> tuple[float, bytes]:
            params = dict(case.params)
            url = server.base + params.pop("_path", "")
            t0 = time.perf_counter()
            async with sessions[server.label].get(url, params=params) as response:
                payload = await response.read()
                status = response.status
            elapsed = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"{server.label} {case.name}: HTTP {status}: {payload[:300]!r}")
            return elapsed, payload

        for server in servers:
            for case in cases:
                for i in range(warmup):
                    _, payload = await get(server, case)
                    if i == 0:
                        out[server.label][case.name]["body"] = payload
        for case in cases:
            cpu0 = {s.label: s.cpu() for s in servers}
            for i in range(requests):
                k = i % len(servers)
                for server in servers[k:] + servers[:k]:
                    elapsed, _ = await get(server, case)
                    out[server.label][case.name]["times"].append(elapsed)
            for s in servers:
                spent = zip(cpu0[s.label], s.cpu(), strict=True)
                out[s.label][case.name]["cpu"] = tuple((b - a) / requests for a, b in spent)
    finally:
        for session in sessions.values():
            await session.close()
    return out


# ------------------------------------------------------------------------ round trips


TRIPS_CHILD = r"""
import json, re, sys, tempfile
import psycopg
from sqlalchemy import event
from jobs_index.services import JobsIndex
from jobs_index.params import parse_list_query
assert JobsIndex.__module__ and __import__("jobs_index").__file__.startswith(sys.argv[1])
url, cases = sys.argv[2], json.loads(sys.argv[3])
index = JobsIndex.open(url)
index.engine.dispose()  # every connection from here on is traced
trace = tempfile.NamedTemporaryFile("w+", delete=False)
files = []
@event.listens_for(index.engine, "connect")
def traced(dbapi, _record):
    f = open(trace.name, "a")
    files.append(f)
    dbapi.pgconn.trace(f.fileno())
    dbapi.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
def call(params):
    params = dict(params)
    path = params.pop("_path", None)
    if path is not None:
        return index.get_job(path[1:])
    return index.list_jobs(parse_list_query(params))
out = {}
for name, params in cases:
    for _ in range(3):
        call(params)
    open(trace.name, "w").close()
    call(params)
    text = open(trace.name).read()
    sent = []
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == "F" and parts[2] in ("Query", "Parse"):
            sent.append(" ".join(parts[3].split())[:70])
    out[name] = {"trips": text.count("\tReadyForQuery"), "sent": sent}
index.close()
print(json.dumps(out))
"""


def round_trips(url: str, tree: Path, cases: list[Case]) -> dict:
    arg = json.dumps([[c.name, c.params] for c in cases])
    done = subprocess.run(
        [sys.executable, "-c", TRIPS_CHILD, str(tree), url, arg], cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout)


# ------------------------------------------------------------------- plan vs execute


def plan_times(url: str, cases: list[Case], repeat: int = 20) -> dict:
    """Each page's statements (this code) under ``EXPLAIN (ANALYZE, SUMMARY)``: the
    server's planning and execution time, median of ``repeat``."""
    from sqlalchemy import event

    from jobs_index.params import parse_list_query
    from jobs_index.services import JobsIndex

    out = {}
    with JobsIndex.open(url) as index:
        seen: list = []

        @event.listens_for(index.engine, "before_cursor_execute")
        def capture(_conn, _cursor, statement, parameters, _context, _many):
            seen.append((statement, parameters))

        raw = index.engine.raw_connection()
        try:
            for case in cases:
                params = dict(case.params)
                path = params.pop("_path", None)
                seen.clear()
                index.get_job(path[1:]) if path else index.list_jobs(parse_list_query(params))
                statements = list(seen)
                plan, run = [], []
                for _ in range(repeat):
                    p = r = 0.0
                    for statement, parameters in statements:
                        cur = raw.cursor()
                        cur.execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY) " + statement, parameters)
                        lines = "\n".join(row[0] for row in cur.fetchall())
                        p += float(re.search(r"Planning Time: ([\d.]+)", lines).group(1))
                        r += float(re.search(r"Execution Time: ([\d.]+)", lines).group(1))
                    raw.rollback()
                    plan.append(p)
                    run.append(r)
                out[case.name] = {"plan_ms": statistics.median(plan), "exec_ms": statistics.median(run)}
        finally:
            raw.close()
    return out


def in_process(sqlite_url: str, pg_url: str, cases: list[Case], requests: int) -> dict:
    """p50 of the service call alone (``list_jobs`` + the body text, or ``get_job``),
    no HTTP: SQLite, PostgreSQL (this code), and PostgreSQL with every statement on a
    generic plan (``?generic_plans=off``, so jobs-index never switches the session, and
    the session's ``plan_cache_mode`` set to ``force_generic_plan`` after connecting).
    Interleaved request by request."""
    from sqlalchemy import event

    from jobs_index.params import parse_list_query
    from jobs_index.services import JobsIndex

    every_generic = pg_url + ("&" if "?" in pg_url else "?") + "generic_plans=off"
    indexes = {
        "sqlite": JobsIndex.open(sqlite_url),
        "pg": JobsIndex.open(pg_url),
        "pg generic": JobsIndex.open(every_generic),
    }

    @event.listens_for(indexes["pg generic"].engine, "connect")
    def generic(dbapi_conn, _record):
        dbapi_conn.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_conn.commit()

    indexes["pg generic"].engine.dispose()
    out: dict = {label: {} for label in indexes}
    try:
        for case in cases:
            params = dict(case.params)
            path = params.pop("_path", None)
            query = parse_list_query(params)

            def call(index, query=query, path=path):
                if path is not None:
                    return index.get_job(path[1:])
                return index.list_jobs(query).body_text(query)

            times: dict[str, list[float]] = {label: [] for label in indexes}
            for _ in range(10):
                for index in indexes.values():
                    call(index)
            for _ in range(requests):
                for label, index in indexes.items():
                    t0 = time.perf_counter()
                    call(index)
                    times[label].append(time.perf_counter() - t0)
            for label in indexes:
                out[label][case.name] = pct(times[label], 50) * 1000
    finally:
        for index in indexes.values():
            index.close()
    return out


# ------------------------------------------------------------------------- the report


def render(args, cases, results, trips, plans, loads, direct) -> str:
    labels = ["base sqlite", "base pg", "this sqlite", "this pg"]
    lines = [
        f"# PostgreSQL pages vs SQLite's, {args.jobs:,} jobs (issue 16, part 4)",
        "",
        f"`benchmarks/pg_pages.py --jobs {args.jobs} --requests {args.requests}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC. Base: `{args.base}` (`git archive`); this: the working tree. "
        "Four `jobs-index serve` processes (base/this × SQLite/PostgreSQL, the same synthetic jobs), "
        f"one keep-alive connection each, {args.requests} timed requests per query per server, interleaved "
        "request by request over the four servers. PostgreSQL 15 on the same machine (loopback TCP). "
        f"Load average (1 min) during the run: {min(loads):.1f}–{max(loads):.1f} on "
        f"{os.cpu_count()} CPUs, shared with other work.",
        "",
        "## p50 over HTTP (ms) and PostgreSQL / SQLite",
        "",
        "| query | note | base SQLite | base PG | base PG/SQLite | this SQLite | this PG | **this PG/SQLite** |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    p50 = {lab: {c.name: pct(results[lab][c.name]["times"], 50) * 1000 for c in cases} for lab in labels}
    p99 = {lab: {c.name: pct(results[lab][c.name]["times"], 99) * 1000 for c in cases} for lab in labels}
    for c in cases:
        b, bp, t, tp = (p50[lab][c.name] for lab in labels)
        lines.append(
            f"| {c.name} | {c.note} | {b:.2f} | {bp:.2f} | {bp / b:.2f}x | {t:.2f} | {tp:.2f} | **{tp / t:.2f}x** |"
        )
    lines += [
        "",
        "## p99 over HTTP (ms)",
        "",
        "| query | base SQLite | base PG | this SQLite | this PG | this PG/SQLite |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        b, bp, t, tp = (p99[lab][c.name] for lab in labels)
        lines.append(f"| {c.name} | {b:.2f} | {bp:.2f} | {t:.2f} | {tp:.2f} | {tp / t:.2f}x |")
    lines += [
        "",
        "## CPU per request (µs): server process + its PostgreSQL backend",
        "",
        f"From /proc around each query's timed requests (10 ms ticks: ±{10_000 / args.requests:.0f} µs per request).",
        "",
        "| query | base SQLite | base PG (process + backend) | this SQLite | this PG (process + backend) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def cpu(lab: str, name: str) -> str:
        proc, backend = (x * 1e6 for x in results[lab][name]["cpu"])
        return f"{proc:.0f}" if "sqlite" in lab else f"{proc + backend:.0f} ({proc:.0f} + {backend:.0f})"

    for c in cases:
        lines.append(f"| {c.name} | {' | '.join(cpu(lab, c.name) for lab in labels)} |")
    lines += [
        "",
        "## PostgreSQL round trips per request (libpq trace, in-process, warm pool)",
        "",
        "| query | base trips | base statements | this trips | this statements |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for c in cases:
        b, t = trips["base"][c.name], trips["this"][c.name]
        lines.append(
            f"| {c.name} | {b['trips']} | {'<br>'.join(f'`{s}`' for s in b['sent'])} | {t['trips']} | "
            f"{'<br>'.join(f'`{s}`' for s in t['sent'])} |"
        )
    lines += [
        "",
        "## PostgreSQL server time per request (this code): planning vs execution",
        "",
        "`EXPLAIN (ANALYZE, TIMING OFF, SUMMARY)` of each statement a request sends, summed; median of 20. "
        "EXPLAIN plans the statement anew each time: a page that runs on its generic plan "
        "(`database.PLANS`: no offset or a bucketed one, no time range) pays its planning once per "
        "connection, not per request.",
        "",
        "| query | planning ms | execution ms |",
        "| --- | ---: | ---: |",
    ]
    for c in cases:
        lines.append(f"| {c.name} | {plans[c.name]['plan_ms']:.3f} | {plans[c.name]['exec_ms']:.3f} |")
    lines += [
        "",
        "## In-process p50 (ms): the service call alone, no HTTP",
        "",
        "`list_jobs` + the body text (or `get_job`), interleaved; the last column runs every statement "
        "on a generic plan (`?generic_plans=off` and the session set to `plan_cache_mode = "
        "force_generic_plan`: not what jobs-index does, which keeps a plain OFFSET custom-planned).",
        "",
        "| query | SQLite | PG | PG/SQLite | PG, generic plans | its PG/SQLite |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        sq, pg, gen = direct["sqlite"][c.name], direct["pg"][c.name], direct["pg generic"][c.name]
        lines.append(f"| {c.name} | {sq:.3f} | {pg:.3f} | {pg / sq:.2f}x | {gen:.3f} | {gen / sq:.2f}x |")
    same = all(results["base sqlite"][c.name]["body"] == results[lab][c.name]["body"] for c in cases for lab in labels)
    lines += ["", f"Bodies byte-identical across the four servers: {'yes' if same else 'NO'}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="PostgreSQL URL (a database of its own; schema bench_<N>)")
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--base", default=BASE_COMMIT)
    ap.add_argument("--out", default=None, help="result file (default results/pg-pages-<N>.md)")
    args = ap.parse_args()
    sqlite, pg = Target(None, args.jobs), Target(args.db, args.jobs)
    for target in (sqlite, pg):
        prepare(target, args.jobs)
    cases = make_cases(sqlite.url)
    tree = bench.base_tree(args.base)
    log("round trips and plans")
    trips = {"base": round_trips(pg.url, tree, cases), "this": round_trips(pg.url, ROOT, cases)}
    plans = plan_times(pg.url, cases)
    loads = [os.getloadavg()[0]]
    admin = create_engine(bench.pg_url(args.db))
    servers = [
        Serve("base sqlite", sqlite.url, tree),
        Serve("base pg", pg.url, tree),
        Serve("this sqlite", sqlite.url, ROOT),
        Serve("this pg", pg.url, ROOT),
    ]
    started = []
    try:
        for server in servers:
            before = _backends(admin, set())
            started.append(server.__enter__())
            if "pg" in server.label:
                urllib.request.urlopen(server.base + "?limit=1", timeout=5).read()
                server.backend_pids = sorted(_backends(admin, before))
        log(f"HTTP: {len(cases)} queries x {args.requests} requests x {len(servers)} servers")
        results = asyncio.run(_series(servers, cases, args.warmup, args.requests))
        loads.append(os.getloadavg()[0])
    finally:
        for server in started:
            server.__exit__()
        admin.dispose()
    log("in-process")
    direct = in_process(sqlite.url, pg.url, cases, max(50, args.requests // 2))
    loads.append(os.getloadavg()[0])
    report = render(args, cases, results, trips, plans, loads, direct)
    print(report)
    out = Path(args.out) if args.out else RESULTS / f"pg-pages-{args.jobs}.md"
    out.write_text(report)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
