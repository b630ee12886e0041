#!/usr/bin/env python
"""End-to-end benchmark of jobs-index (import, HTTP pages, totals, disk, writers).

One run prints a markdown report and writes it to ``benchmarks/results/<backend>-<N>.md``
(plus a ``.json`` twin with every number). Sections:

1. ComfyUI's in-memory baseline at 10k/100k jobs (``tests/reference.py``: normalise every
   item, filter, sort, slice on each request), next to the index's p50 at the same size;
   at the smallest size every benchmarked query is also checked against the reference.
2. Import of N synthetic jobs (``jobs_index.sample.synthetic_history``, ~3 KB each) as a
   user runs it: ``jobs-index import history.json`` in its own process (with its worker
   processes) on a ``GET /history`` dump of them, written once to ``_work/`` (not
   counted), timed from start to exit, with the CPU time of all its processes. Into the
   new SQLite file that is a bulk load; ``--also-no-bulk`` times ``import --no-bulk``
   (batch by batch) too, into a scratch file.
3. ``GET /api/jobs`` latency over HTTP: ``create_app`` served by aiohttp's
   ``AppRunner``/``TCPSite`` in a separate process; one keep-alive client connection,
   sequential requests. Also the same call in-process (``JobsIndex.list_jobs`` +
   ``json.dumps``) to separate HTTP overhead from index work.
4. ``JobsIndex.total`` vs a plain ``SELECT COUNT(*)``.
5. Bytes on disk per job.
6. ``--writers K``: K processes ingesting disjoint or overlapping jobs into the same DB.

Usage::

    .venv/bin/python benchmarks/bench.py                      # SQLite, N=1,000,000
    .venv/bin/python benchmarks/bench.py --jobs 20000 --writers 4
    .venv/bin/python benchmarks/bench.py --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench

SQLite databases live under ``benchmarks/_work/`` (git-ignored). With a PostgreSQL URL
every index gets its own schema (``bench_<n>``, dropped and re-created) in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text

from jobs_index import normalize
from jobs_index.cursor import encode_cursor
from jobs_index.params import parse_list_query
from jobs_index.sample import queue_item, synthetic_history
from jobs_index.services import JobsIndex

WORK = ROOT / "benchmarks" / "_work"


def base_tree(commit: str) -> Path:
    """The code of ``commit`` (package, migrations, alembic.ini), exported once under
    _work/ by ``git archive``: a benchmark runs a *before* from it, never from the live
    worktree."""
    tree = WORK / f"base-{commit}"
    if not (tree / "jobs_index").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, "jobs_index", "migrations", "alembic.ini"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 10_000  # jobs generated/normalised/ingested per step of the import loop
LIVE_SEED = 7  # queue items (running + pending) appended after the history


LOADS: list[tuple[str, str, float]] = []  # (time, message, 1-minute load average)


def log(msg: str) -> None:
    load = os.getloadavg()[0]
    LOADS.append((time.strftime("%H:%M:%S"), msg.strip(), load))
    print(f"[{time.strftime('%H:%M:%S')}] (load {load:.1f}) {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- stats


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    value = seconds * 1000
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


def rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "n/a"


# ------------------------------------------------------------------------ databases


def backend_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


def pg_url(base: str) -> str:
    return base.replace("postgresql://", "postgresql+psycopg://", 1)


class Target:
    """One benchmark index: a fresh SQLite file or a fresh PostgreSQL schema."""

    def __init__(self, base_url: str | None, n: int, *, label: str | None = None) -> None:
        self.n = n
        self.label = label or str(n)
        self.backend = backend_of(base_url or "sqlite")
        if self.backend == "sqlite":
            if base_url:
                path = Path(base_url.split(":///", 1)[1])
                if label:
                    path = path.with_name(f"{path.stem}-{label}{path.suffix}")
            else:
                path = WORK / f"bench-{self.label}.sqlite3"
            self.path = path
            self.url = f"sqlite:///{path}"
        else:
            self.base = pg_url(base_url)
            self.schema = f"bench_{self.label}"
            sep = "&" if "?" in self.base else "?"
            self.url = f"{self.base}{sep}options={quote('-csearch_path=' + self.schema)}"

    def reset(self) -> None:
        if self.backend == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm", "-journal"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    p.unlink()
        else:
            admin = create_engine(self.base)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            admin.dispose()

    def sidecar(self) -> Path:
        name = self.path.stem if self.backend == "sqlite" else self.schema
        return WORK / f"{self.backend}-{name}.import.json"

    def exists_with(self, expected_rows: int) -> bool:
        try:
            index = JobsIndex.open(self.url)
        except Exception:
            return False
        try:
            return index.total() == expected_rows
        finally:
            index.close()


# --------------------------------------------------------------------- synthetic jobs


def live_items(after_ms: int, running: int, pending: int) -> tuple[list, list]:
    """Queue items (raw ComfyUI shape) newer than the history: the running job first."""
    rng = random.Random(LIVE_SEED)
    workflows = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3)]
    items = []
    for i in range(running + pending):
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        items.append(queue_item(rng, job_id, 10**9 + i, after_ms + 1000 * (i + 1), rng.choice(workflows)))
    return items[:running], items[running:]


def history_dict(n: int) -> dict:
    return dict(synthetic_history(n))


@dataclass
class ImportStats:
    n: int
    generate_s: float = 0.0  # writing the dump file (0 when an earlier run's file was reused)
    dump_bytes: int = 0
    import_s: float = 0.0  # wall time of `jobs-index import <dump>`, start to exit
    cpu_s: float = 0.0  # CPU time of that command and its worker processes (user + system)
    inserted: int = 0
    summary: str = ""  # the command's last line
    bulk: bool = False  # loaded by a bulk load (SQLite, empty index: the default)
    no_bulk_s: float = 0.0  # the same import with --no-bulk (batch by batch), when measured
    no_bulk_cpu_s: float = 0.0
    live_running: int = 0
    live_pending: int = 0
    last_create_time: int = 0
    measured_at: str = ""


def dump_file(n: int) -> tuple[Path, float]:
    """``_work/history-<n>.json``: a ``GET /history`` dump of the n synthetic jobs, in
    ComfyUI's own encoding (``json.dumps`` defaults). Written once, then reused (the
    synthetic jobs are deterministic). Returns the path and the seconds spent writing it."""
    path = WORK / f"history-{n}.json"
    if path.exists():
        return path, 0.0
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    partial = path.with_suffix(".json.partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write("{")
        for i, (job_id, item) in enumerate(synthetic_history(n)):
            out.write(("" if i == 0 else ", ") + json.dumps(job_id) + ": " + json.dumps(item))
        out.write("}")
    partial.replace(path)
    return path, time.perf_counter() - started


def run_import(url: str, path: Path, *options: str) -> tuple[float, float, str]:
    """``jobs-index --db URL import [options] <dump>`` in its own process: (wall s,
    CPU s of it and its workers, its last line)."""
    command = [sys.executable, "-m", "jobs_index", "--db", url, "import", *options, str(path)]
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, cpu, (done.stdout.strip().splitlines() or [""])[-1]


def build_index(
    target: Target, n: int, running: int, pending: int, *, quiet: bool = False, no_bulk: bool = False
) -> ImportStats:
    """Import n history jobs as a user does (``jobs-index import history.json``, a
    separate process with its default worker processes), then the live (queue) jobs."""
    target.reset()
    path, generate_s = dump_file(n)
    stats = ImportStats(
        n=n,
        generate_s=generate_s,
        dump_bytes=path.stat().st_size,
        measured_at=dt.datetime.now().isoformat(timespec="seconds"),
    )
    if not quiet:
        log(f"  jobs-index import {path.name} ({stats.dump_bytes / 2**20:,.0f} MiB)")
    stats.import_s, stats.cpu_s, stats.summary = run_import(target.url, path)
    stats.bulk = target.backend == "sqlite"  # the file is new, so `import` bulk-loads it
    if no_bulk and target.backend == "sqlite":
        scratch = Target(None, n, label=f"{n}-no-bulk")
        scratch.reset()
        if not quiet:
            log(f"  again with --no-bulk into {scratch.path.name}")
        stats.no_bulk_s, stats.no_bulk_cpu_s, _ = run_import(scratch.url, path, "--no-bulk")
        scratch.reset()  # deleted: only its time is kept
    stats.inserted, stats.last_create_time = add_live(target, running, pending)
    stats.live_running, stats.live_pending = running, pending
    return stats


def add_live(target: Target, running: int, pending: int) -> tuple[int, int]:
    """Add the queue (running, pending jobs newer than the history) to a freshly
    imported index, then, on PostgreSQL, ANALYZE as autovacuum would after a bulk load.
    Returns (history jobs, their newest create_time)."""
    index = JobsIndex.open(target.url)
    try:
        inserted = index.total()
        with index.engine.connect() as conn:
            last = int(conn.execute(text("SELECT MAX(create_time) FROM jobs")).scalar_one())
        run, pend = live_items(last, running, pending)
        live = [normalize.from_queue(i, normalize.IN_PROGRESS) for i in run] + [
            normalize.from_queue(i, normalize.PENDING) for i in pend
        ]
        index.ingest(live)
        if target.backend == "postgresql":
            with index.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    finally:
        index.close()
    return inserted, last


def get_or_build(
    target: Target, n: int, running: int, pending: int, reuse: bool, no_bulk: bool = False
) -> tuple[ImportStats, bool]:
    sidecar = target.sidecar()
    if reuse and sidecar.exists() and target.exists_with(n + running + pending):
        data = json.loads(sidecar.read_text())
        if data.get("n") == n and data.get("url") == target.url:
            data.pop("url")
            log(f"reusing {target.url} (import measured {data['measured_at']})")
            return ImportStats(**data), True
    stats = build_index(target, n, running, pending, quiet=n < 100_000, no_bulk=no_bulk)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps({**asdict(stats), "url": target.url}))
    return stats, False


# -------------------------------------------------------------------------- server


def _server_main(url: str, conn) -> None:
    from aiohttp import web

    from jobs_index.http import ServerConfig, create_app

    async def run() -> None:
        app = create_app(ServerConfig(db_url=url))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
        await runner.cleanup()

    asyncio.run(run())


class Server:
    """The jobs-index HTTP API in its own process (spawned: no inherited connections)."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_server_main, args=(url, child), daemon=True)

    def __enter__(self) -> Server:
        self.process.start()
        if not self._conn.poll(120):
            raise RuntimeError("server did not start")
        self.port = self._conn.recv()
        self.base = f"http://127.0.0.1:{self.port}/api/jobs"
        return self

    def __exit__(self, *exc) -> None:
        self._conn.send("stop")
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


async def _http_series(base: str, cases: list[Case], warmup: int, requests: int, rounds: int) -> dict[str, dict]:
    """Sequential requests on one keep-alive connection. The timed requests of each
    query are split into ``rounds`` blocks, round-robin over the queries, so a burst
    of load from elsewhere on the machine hits every query alike."""
    import aiohttp

    out: dict[str, dict] = {c.name: {"times": [], "body": None, "bytes": 0} for c in cases}
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(case: Case) -> tuple[float, bytes]:
            t0 = time.perf_counter()
            async with session.get(base, params=case.params) as response:
                payload = await response.read()
                status = response.status
            elapsed = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"{case.name}: HTTP {status}: {payload[:300]!r}")
            return elapsed, payload

        for case in cases:  # warm-up, and the body checked against the reference
            for i in range(warmup):
                _, payload = await get(case)
                if i == 0:
                    out[case.name].update(body=json.loads(payload), bytes=len(payload))
        for r in range(rounds):
            for case in cases:
                n = case.requests or requests
                share = n // rounds + (1 if r < n % rounds else 0)
                for _ in range(share):
                    elapsed, _ = await get(case)
                    out[case.name]["times"].append(elapsed)
    return out


def http_series(base: str, cases: list[Case], warmup: int, requests: int, rounds: int = 1) -> dict[str, dict]:
    return asyncio.run(_http_series(base, cases, warmup, requests, rounds))


def in_process_series(index: JobsIndex, cases: list[Case], requests: int) -> dict[str, list[float]]:
    """The same requests without HTTP: parse + list_jobs + the body text."""
    out: dict[str, list[float]] = {case.name: [] for case in cases}
    rounds = 3
    for case in cases:
        for _ in range(5):
            query = parse_list_query(case.params)
            index.list_jobs(query).body_text(query)
    for r in range(rounds):  # round-robin, as for HTTP
        for case in cases:
            n = min(case.requests or requests, requests)
            for _ in range(n // rounds + (1 if r < n % rounds else 0)):
                t0 = time.perf_counter()
                query = parse_list_query(case.params)
                index.list_jobs(query).body_text(query)
                out[case.name].append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    params: dict[str, str]
    requests: int | None = None  # None: --requests
    note: str = ""


def _mid_row(index: JobsIndex, where: str = "", args: dict | None = None) -> tuple[int, str, int]:
    """(create_time, id, rows above it) of the row half-way down the created_at desc order."""
    with index.engine.connect() as conn:
        count = conn.execute(text(f"SELECT COUNT(*) FROM jobs {where}"), args or {}).scalar_one()
        row = conn.execute(
            text(f"SELECT create_time, id FROM jobs {where} ORDER BY create_time DESC, id DESC LIMIT 1 OFFSET :k"),
            {**(args or {}), "k": count // 2},
        ).one()
    return int(row[0]), str(row[1]), count // 2


def busiest_workflow(index: JobsIndex) -> tuple[str, int]:
    with index.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT workflow_id, SUM(n) FROM job_counts WHERE source = '' AND workflow_id <> '' "
                "GROUP BY workflow_id ORDER BY SUM(n) DESC, workflow_id LIMIT 1"
            )
        ).one()
    return str(row[0]), int(row[1])


def make_cases(index: JobsIndex, n_total: int, offset_requests: int) -> tuple[list[Case], dict]:
    ct, job_id, depth = _mid_row(index)
    cct, cid, cdepth = _mid_row(index, "WHERE status = :s", {"s": "completed"})
    workflow, wcount = busiest_workflow(index)
    cases = [
        Case("first page", {"limit": "50"}),
        Case(
            "deep cursor page", {"limit": "50", "after": encode_cursor(ct, job_id, "desc")}, note=f"{depth:,} rows deep"
        ),
        Case(
            "deep offset page",
            {"limit": "50", "offset": str(depth)},
            requests=offset_requests,
            note=f"offset={depth:,} (OFFSET, not keyset)",
        ),
        Case("status=completed", {"limit": "50", "status": "completed"}),
        Case(
            "status=completed, deep cursor",
            {"limit": "50", "status": "completed", "after": encode_cursor(cct, cid, "desc")},
            note=f"{cdepth:,} completed rows deep",
        ),
        Case("status=pending", {"limit": "50", "status": "pending"}, note="rare"),
        Case("status=pending,in_progress", {"limit": "50", "status": "pending,in_progress"}),
        Case("workflow_id filter", {"limit": "50", "workflow_id": workflow}, note=f"{wcount:,} jobs"),
        Case("sort_by=execution_duration", {"limit": "50", "sort_by": "execution_duration"}),
    ]
    return cases, {"workflow_id": workflow, "mid_depth": depth}


# ---------------------------------------------------------------------- measurements


def measure_pages(target: Target, args, offset_requests: int) -> dict:
    index = JobsIndex.open(target.url)
    try:
        total = index.total()
        cases, meta = make_cases(index, total, offset_requests)
        log(f"HTTP latency: {len(cases)} queries x {args.requests} sequential requests")
        with Server(target.url) as server:
            http = http_series(server.base, cases, args.warmup, args.requests, args.rounds)
        log("in-process latency")
        direct = in_process_series(index, cases, args.requests)
    finally:
        index.close()
    rows = []
    for case in cases:
        h = http[case.name]
        body = h["body"]
        rows.append(
            {
                "name": case.name,
                "params": case.params,
                "note": case.note,
                "requests": len(h["times"]),
                "http_p50": pct(h["times"], 50),
                "http_p99": pct(h["times"], 99),
                "http_min": min(h["times"]),
                "http_mean": statistics.fmean(h["times"]),
                "inproc_p50": pct(direct[case.name], 50),
                "inproc_min": min(direct[case.name]),
                "jobs": len(body["jobs"]),
                "total": body["pagination"]["total"],
                "bytes": h["bytes"],
            }
        )
    return {"rows": rows, "meta": meta, "cases": cases, "bodies": {k: v["body"] for k, v in http.items()}}


def measure_totals(target: Target, workflow: str, repeats: int = 200, count_repeats: int = 5) -> list[dict]:
    index = JobsIndex.open(target.url)
    cases = [
        ("all jobs", {}, "", {}),
        ("status=completed", {"status": "completed"}, "WHERE status = :s", {"s": "completed"}),
        ("status=pending", {"status": "pending"}, "WHERE status = :s", {"s": "pending"}),
        (
            "status=pending,in_progress",
            {"status": "pending,in_progress"},
            "WHERE status IN ('pending', 'in_progress')",
            {},
        ),
        ("workflow_id filter", {"workflow_id": workflow}, "WHERE workflow_id = :w", {"w": workflow}),
    ]
    rows = []
    try:
        for name, params, where, sql_args in cases:
            query = parse_list_query(params)
            times = []
            for i in range(repeats + 10):
                t0 = time.perf_counter()
                value = index.total(query)
                if i >= 10:
                    times.append(time.perf_counter() - t0)
            counts = []
            with index.engine.connect() as conn:
                for _ in range(count_repeats):
                    t0 = time.perf_counter()
                    counted = conn.execute(text(f"SELECT COUNT(*) FROM jobs {where}"), sql_args).scalar_one()
                    counts.append(time.perf_counter() - t0)
                conn.rollback()
            if counted != value:
                raise AssertionError(f"total {value} != COUNT(*) {counted} for {name}")
            rows.append(
                {
                    "name": name,
                    "value": value,
                    "total_p50": pct(times, 50),
                    "total_p99": pct(times, 99),
                    "count_p50": pct(counts, 50),
                }
            )
    finally:
        index.close()
    return rows


def measure_disk(target: Target, jobs: int) -> dict:
    index = JobsIndex.open(target.url)
    out: dict = {"parts": []}
    try:
        with index.engine.connect() as conn:
            out["raw_avg"] = float(conn.execute(text("SELECT AVG(LENGTH(raw)) FROM jobs")).scalar_one())
            conn.rollback()
            if target.backend == "postgresql":
                q = lambda sql: int(conn.execute(text(sql)).scalar_one())  # noqa: E731
                out["jobs_and_counts"] = q(
                    "SELECT pg_total_relation_size('jobs') + pg_total_relation_size('job_counts')"
                )
                # every table of the schema (search, outputs, buckets...) with its indexes and TOAST
                out["total"] = q(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c "
                    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'm')"
                )
                heap = q("SELECT pg_relation_size('jobs')")
                toast = q(
                    "SELECT COALESCE(pg_total_relation_size(reltoastrelid), 0) FROM pg_class "
                    "WHERE oid = 'jobs'::regclass"
                )
                parts = [("jobs (heap)", heap), ("jobs (TOAST)", toast)]
                for (name,) in conn.execute(
                    text(
                        "SELECT indexname FROM pg_indexes WHERE tablename = 'jobs' "
                        "AND schemaname = current_schema() ORDER BY indexname"
                    )
                ):
                    parts.append((name, q(f"SELECT pg_relation_size('\"{name}\"')")))
                parts.append(("job_counts (all)", q("SELECT pg_total_relation_size('job_counts')")))
                out["parts"] = sorted(parts, key=lambda p: -p[1])
                conn.rollback()
    finally:
        index.close()
    if target.backend == "sqlite":
        import sqlite3

        raw = sqlite3.connect(target.path, isolation_level=None)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = raw.execute("PRAGMA page_size").fetchone()[0]
            out["free"] = raw.execute("PRAGMA freelist_count").fetchone()[0] * page_size
            try:
                parts = raw.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
                out["parts"] = [(str(a), int(b)) for a, b in parts]
            except sqlite3.Error as exc:  # dbstat not compiled in
                out["parts_error"] = str(exc)
        finally:
            raw.close()
        files = {s: Path(f"{target.path}{s}") for s in ("", "-wal")}
        out["files"] = {s or "db": p.stat().st_size if p.exists() else 0 for s, p in files.items()}
        out["total"] = sum(out["files"].values()) - out["free"]  # free pages: left by deletes, reused later
    out["per_job"] = out["total"] / jobs
    out["jobs"] = jobs
    return out


# ------------------------------------------------------------------ in-memory baseline


def reference_class():
    from tests.reference import Reference  # noqa: WPS433 (the contract's in-memory oracle)

    return Reference


def measure_reference(history: dict, running: list, pending: list, repeats: int) -> dict:
    Reference = reference_class()
    n = len(history)
    ref = Reference(history, running, pending)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        status, _body = ref.list_jobs({"limit": "50"})
        times.append(time.perf_counter() - t0)
        assert status == 200
    times = times[1:]
    return {"n": n, "ref": ref, "p50": pct(times, 50), "min": min(times), "repeats": repeats}


def check_against_reference(ref, bodies: dict, cases: list[Case]) -> list[tuple[str, bool]]:
    results = []
    for case in cases:
        status, expected = ref.list_jobs(case.params)
        results.append((case.name, status == 200 and expected == bodies[case.name]))
    return results


# --------------------------------------------------------------------------- writers


def _writer_main(url: str, seed: int, count: int, skip: int, start_ms: int, barrier, results) -> None:
    index = JobsIndex.open(url)
    items = list(islice(synthetic_history(skip + count, seed=seed, start_ms=start_ms), skip, None))
    gc.collect()
    barrier.wait()
    t_start = time.monotonic()
    norm = write = 0.0
    inserted = updated = unchanged = 0
    for i in range(0, len(items), 1000):
        t0 = time.perf_counter()
        records = [normalize.from_history(j, it) for j, it in items[i : i + 1000]]
        t1 = time.perf_counter()
        r = index.ingest(records)
        write += time.perf_counter() - t1
        norm += t1 - t0
        inserted, updated, unchanged = inserted + r.inserted, updated + r.updated, unchanged + r.unchanged
    t_end = time.monotonic()
    index.close()
    results.put(
        {
            "seed": seed,
            "skip": skip,
            "offered": len(items),
            "start": t_start,
            "end": t_end,
            "normalise_s": norm,
            "write_s": write,
            "inserted": inserted,
            "updated": updated,
            "unchanged": unchanged,
        }
    )


def run_writers(url: str, k: int, per_writer: int, mode: str, run_no: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    start_ms = 2_000_000_000_000 + run_no * 10**10  # newer than the history, like new jobs
    procs = []
    for w in range(k):
        if mode == "disjoint":
            seed, skip = 10_000 + 100 * run_no + w, 0
        else:  # overlapping: each job is offered by two writers (neighbouring half-shifted windows)
            seed, skip = 10_000 + 100 * run_no, w * (per_writer // 2)
        procs.append(ctx.Process(target=_writer_main, args=(url, seed, per_writer, skip, start_ms, barrier, results)))
    for p in procs:
        p.start()
    out = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    offered = sum(r["offered"] for r in out)
    written = sum(r["inserted"] + r["updated"] for r in out)
    return {
        "mode": mode,
        "writers": k,
        "per_writer": per_writer,
        "wall": wall,
        "offered": offered,
        "written": written,
        "unchanged": sum(r["unchanged"] for r in out),
        "normalise_s": sum(r["normalise_s"] for r in out),
        "write_s": sum(r["write_s"] for r in out),
        "offered_rate": offered / wall,
        "written_rate": written / wall,
    }


# ---------------------------------------------------------------------- machine facts


def machine_facts(url: str) -> dict:
    import aiohttp
    import sqlalchemy

    facts = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        facts["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        facts["nproc"] = str(os.cpu_count())
    with open("/proc/meminfo") as f:
        kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    facts["ram"] = f"{kb / 1024 / 1024:.1f} GiB"
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        facts["cpu"] = platform.processor()
    import sqlite3

    facts["python"] = platform.python_version()
    facts["sqlite"] = sqlite3.sqlite_version
    facts["sqlalchemy"] = sqlalchemy.__version__
    facts["aiohttp"] = aiohttp.__version__
    if backend_of(url) == "postgresql":
        import psycopg

        engine = create_engine(pg_url(url))
        with engine.connect() as conn:
            facts["postgresql"] = conn.execute(text("SHOW server_version")).scalar_one()
            facts["pg_shared_buffers"] = conn.execute(text("SHOW shared_buffers")).scalar_one()
        engine.dispose()
        facts["psycopg"] = psycopg.__version__
    import jobs_index

    facts["jobs_index code"] = str(Path(jobs_index.__file__).resolve().parent)
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    facts["git"] = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "jobs_index", "migrations"):
        facts["git"] += " (jobs_index/ or migrations/ modified in the working tree)"
    return facts


# ---------------------------------------------------------------------------- report


def render(args, facts, imp: ImportStats, reused: bool, pages, totals, disk, baseline, checks, writers) -> str:
    n = imp.n
    backend = backend_of(args.db or "sqlite")
    out = [f"# jobs-index benchmark: {backend}, N = {n:,}", ""]
    out.append(f"`{' '.join(['benchmarks/bench.py', *sys.argv[1:]])}`")
    out.append("")
    out.append("| fact | value |\n| --- | --- |")
    for key, value in facts.items():
        out.append(f"| {key} | {value} |")
    out.append(f"| N (history jobs) | {n:,} (+{imp.live_running} running, +{imp.live_pending} pending) |")
    out.append("")

    out.append("## Import")
    out.append("")
    if reused:
        out.append(f"_Index reused; import measured in an earlier run at {imp.measured_at}._")
        out.append("")
    out.append("| jobs | dump file | `jobs-index import` wall | jobs/s | CPU (all processes) | CPU µs/job |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    out.append(
        f"| {n:,} | {imp.dump_bytes / 2**20:,.0f} MiB | {imp.import_s:,.1f} s | **{rate(n, imp.import_s)}** | "
        f"{imp.cpu_s:,.1f} s | {1e6 * imp.cpu_s / n:,.0f} |"
    )
    if imp.no_bulk_s:
        out.append(
            f"| {n:,} with `--no-bulk` | | {imp.no_bulk_s:,.1f} s | {rate(n, imp.no_bulk_s)} | "
            f"{imp.no_bulk_cpu_s:,.1f} s | {1e6 * imp.no_bulk_cpu_s / n:,.0f} |"
        )
    out.append("")
    how = (
        "a bulk load into the empty index: one transaction, secondary indexes dropped and built again at the end"
        if imp.bulk
        else "batch by batch, 10,000 jobs per transaction"
    )
    out.append(
        f"What a user runs: `jobs-index --db URL import history-{n}.json` in its own process, with "
        "its default worker processes (all cores but the writer's) normalising while the main "
        f"process writes ({how}); timed from start to exit. CPU covers that process and its "
        f"workers. The command said: `{imp.summary}`."
        + (
            " The `--no-bulk` row is the same command committing batch by batch into a scratch file (deleted after)."
            if imp.no_bulk_s
            else ""
        )
    )
    out.append("")
    if imp.generate_s:
        out.append(
            f"Writing the dump file (`GET /history` shape, ComfyUI's JSON encoding) took a further "
            f"{imp.generate_s:,.1f} s; not counted."
        )
        out.append("")

    out.append(
        f"## GET /api/jobs over HTTP (limit=50; {args.warmup} warm-up + {args.requests} sequential "
        f"keep-alive requests each, in {args.rounds} round-robin rounds)"
    )
    out.append("")
    out.append(
        "| query | HTTP p50 ms | HTTP p99 ms | HTTP min ms | in-process p50 ms | in-process min ms | jobs | total "
        "| note |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in pages["rows"]:
        note = r["note"] + (f"; {r['requests']} requests" if r["requests"] != args.requests else "")
        out.append(
            f"| {r['name']} | **{ms(r['http_p50'])}** | {ms(r['http_p99'])} | {ms(r['http_min'])} | "
            f"{ms(r['inproc_p50'])} | {ms(r['inproc_min'])} | "
            f"{r['jobs']} | {r['total']:,} | {note} |"
        )
    out.append("")
    out.append(
        "In-process = `parse_list_query` + `JobsIndex.list_jobs` + `body_text` in the client process "
        "(no HTTP); HTTP = aiohttp client → `create_app` served by `AppRunner`/`TCPSite` in a separate "
        "process on 127.0.0.1. min = the fastest request: what the code costs when nothing else "
        "wants the CPU (see the load table below)."
    )
    out.append("")

    out.append("## Cost of `total`")
    out.append("")
    out.append("| filter | total | `JobsIndex.total()` p50 ms | p99 ms | `SELECT COUNT(*)` p50 ms | COUNT / total() |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in totals:
        out.append(
            f"| {r['name']} | {r['value']:,} | {ms(r['total_p50'])} | {ms(r['total_p99'])} | "
            f"{ms(r['count_p50'])} | {ratio(r['count_p50'] / r['total_p50'])} |"
        )
    out.append("")

    out.append("## Disk")
    out.append("")
    if backend == "sqlite":
        files = disk["files"]
        free = f" - {disk['free']:,} B of free pages" if disk.get("free") else ""
        out.append(
            f"SQLite file {files['db']:,} B + WAL {files['-wal']:,} B (after `wal_checkpoint(TRUNCATE)`){free} "
            f"= **{disk['total'] / 2**20:,.0f} MiB, {disk['per_job']:,.0f} B/job** "
            f"({disk['jobs']:,} jobs; the raw item averages {disk['raw_avg']:,.0f} B)."
        )
    else:
        out.append(
            f"`pg_total_relation_size` of every table of the schema (indexes, TOAST) = "
            f"**{disk['total'] / 2**20:,.0f} MiB, {disk['per_job']:,.0f} B/job**; jobs and job_counts alone "
            f"{disk['jobs_and_counts'] / disk['jobs']:,.0f} B/job "
            f"({disk['jobs']:,} jobs; the raw item averages {disk['raw_avg']:,.0f} B)."
        )
    if disk.get("parts"):
        out.append("")
        out.append("| part | MiB | B/job |")
        out.append("| --- | ---: | ---: |")
        for name, size in disk["parts"]:
            out.append(f"| {name} | {size / 2**20:,.1f} | {size / disk['jobs']:,.0f} |")
    out.append("")

    out.append("## ComfyUI's in-memory approach (baseline)")
    out.append("")
    out.append(
        "`tests/reference.py` `Reference(history, running, pending).list_jobs({'limit': '50'})`, called "
        "directly (no HTTP): normalise every item, filter, sort by (key, id), slice - what ComfyUI does "
        "on every request."
    )
    out.append("")
    first_p50 = pages["rows"][0]["http_p50"]
    out.append(
        f"| jobs | in-memory p50 ms | index HTTP p50 ms (same N) | in-memory / index | in-memory / index at N={n:,} |"
    )
    out.append("| ---: | ---: | ---: | ---: | ---: |")
    for b in baseline:
        out.append(
            f"| {b['n']:,} | {ms(b['p50'])} | {ms(b['index_p50'])} | {ratio(b['p50'] / b['index_p50'])} | "
            f"{ratio(b['p50'] / first_p50)} |"
        )
    if baseline:
        big = max(baseline, key=lambda b: b["n"])
        if big["n"] < n:
            est = big["p50"] * n / big["n"]
            out.append("")
            out.append(
                f"Linear extrapolation of the in-memory approach to {n:,} jobs: ~{est:,.1f} s per "
                f"request (~{est / first_p50:,.0f}x the index's first page); not measured "
                f"(the history alone would need ~{12.5 * n / 1e6:,.0f} GB of Python objects)."
            )
    if checks:
        ok = sum(1 for _, good in checks if good)
        out.append("")
        out.append(
            f"Correctness check at {min(b['n'] for b in baseline):,} jobs: the index's HTTP body equals "
            f"the reference's for {ok}/{len(checks)} benchmarked queries"
            + ("." if ok == len(checks) else f" (mismatch: {', '.join(name for name, good in checks if not good)}).")
        )
    out.append("")

    if writers:
        out.append(
            f"## Concurrent writers ({writers[0]['per_writer']:,} jobs offered per writer, into the {n:,}-job index)"
        )
        out.append("")
        out.append(
            "Each writer is a process: items generated beforehand, then after a barrier "
            "`from_history` + `JobsIndex.ingest` in batches of 1000. *disjoint*: distinct jobs per writer; "
            "*overlapping*: each job offered by two writers (half-shifted windows of the same jobs)."
        )
        out.append("")
        out.append(
            "| writers | mode | wall s | jobs offered | rows written | offered jobs/s (total) | "
            "written rows/s | normalise / write time (sum over writers) |"
        )
        out.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for w in writers:
            out.append(
                f"| {w['writers']} | {w['mode']} | {w['wall']:,.1f} | {w['offered']:,} | {w['written']:,} | "
                f"**{w['offered_rate']:,.0f}** | {w['written_rate']:,.0f} | "
                f"{w['normalise_s']:,.1f} s / {w['write_s']:,.1f} s |"
            )
        out.append("")

    out.append("## Machine load during the run")
    out.append("")
    out.append("Other work may share this machine; the 1-minute load average at each step (2 cores = 2.0 busy):")
    out.append("")
    out.append("| time | load | step |")
    out.append("| --- | ---: | --- |")
    for when, msg, load in LOADS:
        out.append(f"| {when} | {load:.1f} | {msg} |")
    out.append("")

    out.append("## Targets (issue)")
    out.append("")
    deep = next(r for r in pages["rows"] if r["name"] == "deep cursor page")
    out.append(
        f"* page p50 over HTTP < 2 ms: first page {ms(first_p50)} ms, deep cursor {ms(deep['http_p50'])} ms"
        f" -> {'met' if max(first_p50, deep['http_p50']) < 0.002 else 'MISSED'}"
    )
    flat = deep["http_p50"] / first_p50
    out.append(f"* flat from first to deepest cursor page: deep/first = {flat:.2f}")
    out.append(
        f"* import > 20,000 jobs/s: {rate(n, imp.import_s)} jobs/s -> "
        f"{'met' if n / imp.import_s > 20_000 else 'MISSED'}"
    )
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1_000_000, help="history jobs in the index (default 1,000,000)")
    ap.add_argument(
        "--db",
        default=None,
        help="database URL (default: SQLite file under benchmarks/_work/); a PostgreSQL URL gets one schema per index",
    )
    ap.add_argument("--writers", type=int, default=0, help="also measure K concurrent writer processes")
    ap.add_argument("--writer-jobs", type=int, default=20_000, help="jobs offered per writer (default 20,000)")
    ap.add_argument("--requests", type=int, default=300, help="timed requests per query (default 300)")
    ap.add_argument("--warmup", type=int, default=30, help="warm-up requests per query (default 30)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each query's timed requests into this many round-robin blocks (default 3)",
    )
    ap.add_argument("--offset-requests", type=int, default=20, help="timed requests for the deep OFFSET page")
    ap.add_argument(
        "--baseline-sizes",
        default="10000,100000",
        help="in-memory baseline sizes (comma list; sizes above --jobs are dropped)",
    )
    ap.add_argument("--running", type=int, default=1, help="running (in_progress) queue jobs to add")
    ap.add_argument("--pending", type=int, default=20, help="pending queue jobs to add")
    ap.add_argument(
        "--also-no-bulk",
        action="store_true",
        help="SQLite: also time the import with --no-bulk (batch by batch) into a scratch file",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse an index built by an earlier run with the same N (import numbers from then)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    args = ap.parse_args()

    if args.db and backend_of(args.db) == "sqlite" and not args.db.startswith("sqlite:///"):
        ap.error("--db: use sqlite:///path or postgresql+psycopg://...")
    backend = backend_of(args.db or "sqlite")
    n = args.jobs
    facts = machine_facts(args.db or "sqlite")
    log(f"{backend}, N={n:,}; {facts['nproc']} cores, {facts['ram']}")

    # 1. ComfyUI's in-memory baseline, and the index at the same sizes.
    baseline, checks = [], []
    sizes = sorted({int(s) for s in args.baseline_sizes.split(",") if s.strip() and int(s) <= n})
    for size in sizes:
        log(f"baseline at {size:,} jobs: in-memory reference")
        history = history_dict(size)
        # The live items sit after the newest history job, exactly as in the index.
        newest = max(item["prompt"][3]["create_time"] for item in history.values())
        running, pending = live_items(newest, args.running, args.pending)
        ref = measure_reference(history, running, pending, repeats=20 if size <= 20_000 else 5)
        del history
        log(f"  in-memory p50 {ms(ref['p50'])} ms")
        if size == n:
            baseline.append({**ref, "index_p50": None})
            continue
        target = Target(args.db, size, label=f"{size}")
        get_or_build(target, size, args.running, args.pending, args.reuse)
        small = measure_pages(
            target, argparse.Namespace(**{**vars(args), "requests": min(args.requests, 100)}), offset_requests=5
        )
        if size == sizes[0]:
            checks = check_against_reference(ref["ref"], small["bodies"], small["cases"])
        baseline.append({**ref, "index_p50": small["rows"][0]["http_p50"]})
        del ref, small
        gc.collect()
    for b in baseline:
        b.pop("ref", None)

    # 2. Import N jobs.
    target = Target(args.db, n, label=None if args.db else f"{n}")
    if args.db and backend == "postgresql":
        target = Target(args.db, n, label=f"{n}")
    log(f"import {n:,} jobs into {target.url}")
    imp, reused = get_or_build(target, n, args.running, args.pending, args.reuse, args.also_no_bulk)
    log(f"  import: {rate(n, imp.import_s)} jobs/s ({imp.import_s:,.0f} s wall, {imp.cpu_s:,.0f} s CPU)")

    # 3. Pages over HTTP.
    pages = measure_pages(target, args, args.offset_requests)
    for b in baseline:
        if b["index_p50"] is None:
            b["index_p50"] = pages["rows"][0]["http_p50"]
    if not checks and sizes and sizes[0] == n:
        log("checking against the reference")
        running, pending = live_items(imp.last_create_time, args.running, args.pending)
        ref = reference_class()(history_dict(n), running, pending)
        checks = check_against_reference(ref, pages["bodies"], pages["cases"])
        del ref

    # 4. total, 5. disk.
    log("total() vs COUNT(*)")
    totals = measure_totals(target, pages["meta"]["workflow_id"])
    log("disk")
    disk = measure_disk(target, n + imp.live_running + imp.live_pending)

    # 6. Writers (last: they add jobs to the index).
    writers = []
    if args.writers:
        run_no = int(time.time()) % 1000  # fresh job ids even when the index is reused
        for k, mode in ((1, "disjoint"), (args.writers, "disjoint"), (args.writers, "overlapping")):
            log(f"writers: {k} x {args.writer_jobs:,} ({mode})")
            run_no += 1
            w = run_writers(target.url, k, args.writer_jobs, mode, run_no)
            log(f"  {w['offered_rate']:,.0f} offered jobs/s, {w['written_rate']:,.0f} written rows/s")
            writers.append(w)

    report = render(args, facts, imp, reused, pages, totals, disk, baseline, checks, writers)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"{backend}-{n}"
        stem.with_suffix(".md").write_text(report + "\n")
        data = {
            "facts": facts,
            "args": vars(args),
            "import": {**asdict(imp), "reused": reused},
            "pages": [{k: v for k, v in r.items()} for r in pages["rows"]],
            "totals": totals,
            "disk": disk,
            "baseline": baseline,
            "checks": checks,
            "writers": writers,
        }
        stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
