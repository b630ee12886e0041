#!/usr/bin/env python
"""Where the time goes: the experiments behind the recommendations in the bench report.

    .venv/bin/python benchmarks/breakdown.py normalise [--jobs 10000]
    .venv/bin/python benchmarks/breakdown.py write [--jobs 30000] [--db URL]
    .venv/bin/python benchmarks/breakdown.py page --db URL
    .venv/bin/python benchmarks/breakdown.py http-floor

* ``normalise``: the parts of ``normalize.from_history`` (JSON encoding, zlib, digest),
  and alternatives (orjson if installed, zlib level 1, two processes).
* ``write``: ``JobsIndex.ingest`` of pre-normalised records into a fresh index, then the
  same with the count triggers dropped, with the secondary indexes dropped, and a plain
  driver ``executemany`` (no SQLAlchemy, no ``existing_versions`` read), to price each part.
* ``page``: the parts of one ``limit=50`` first page in-process (statement building,
  SQL, ``count_total``, ``list_dict``, ``json.dumps``) on an existing index (e.g. the
  bench's), against hand-written SQL through the bare driver.
* ``http-floor``: the cheapest ``GET`` aiohttp can serve on this machine (same client as
  the bench; a canned body of a page's size, answered inline or via the thread pool), i.e.
  the HTTP overhead any implementation pays here.

Nothing here is part of the bench's numbers; it only explains them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from jobs_index import normalize, queries  # noqa: E402
from jobs_index.database import read_transaction  # noqa: E402
from jobs_index.params import parse_list_query  # noqa: E402
from jobs_index.sample import synthetic_history  # noqa: E402
from jobs_index.services import JobsIndex  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def timeit(fn, repeat: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(name: str, seconds: float, per: str = "job", base: float | None = None) -> None:
    extra = f"  ({seconds / base:5.1%} of total)" if base else ""
    print(f"| {name:58s} | {seconds * 1e6:9.1f} µs/{per} | {1 / seconds:10,.0f} /s |{extra}")


# ----------------------------------------------------------------------------- normalise

def _normalise_chunk(items):
    return [normalize.from_history(job_id, item) for job_id, item in items]


def cmd_normalise(args) -> None:
    import hashlib
    import multiprocessing as mp

    items = list(synthetic_history(args.jobs))
    n = len(items)
    t0 = time.perf_counter()
    records = _normalise_chunk(items)
    total = (time.perf_counter() - t0) / n
    dumps = normalize._dumps
    datas, blobs = [], []
    t0 = time.perf_counter()
    for job_id, item in items:
        datas.append(dumps({**item, "prompt": list(item["prompt"][:5])}).encode("utf-8"))
    t_dumps = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for d in datas:
        blobs.append(zlib.compress(d, 6))
    t_zlib6 = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for d in datas:
        zlib.compress(d, 1)
    t_zlib1 = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for d in datas:
        hashlib.blake2b(d, digest_size=16).hexdigest()
    t_hash = (time.perf_counter() - t0) / n
    print(f"{n:,} jobs; JSON {sum(map(len, datas)) / n:,.0f} B/job, zlib-6 {sum(map(len, blobs)) / n:,.0f} B/job\n")
    print("| step | time | rate |\n| --- | ---: | ---: |")
    row("from_history (all)", total)
    row("  json.dumps of the raw item (stdlib, ensure_ascii=False)", t_dumps, base=total)
    row("  zlib.compress level 6", t_zlib6, base=total)
    row("  blake2b-128 digest", t_hash, base=total)
    row("  everything else (walk status/outputs, record)", total - t_dumps - t_zlib6 - t_hash, base=total)
    row("alternative: zlib.compress level 1", t_zlib1)
    try:
        import orjson

        t0 = time.perf_counter()
        same = 0
        for (job_id, item), d in zip(items, datas):
            o = orjson.dumps({**item, "prompt": list(item["prompt"][:5])})
            same += o == d
        row("alternative: orjson.dumps", (time.perf_counter() - t0) / n)
        print(f"(orjson output byte-identical to the stdlib encoding for {same:,}/{n:,} items)")
    except ImportError:
        print("(orjson not installed: skipped)")
    for procs in (2,):
        chunks = [items[i:i + 1000] for i in range(0, n, 1000)]
        with mp.get_context("fork").Pool(procs) as pool:
            t0 = time.perf_counter()
            out = [r for chunk in pool.imap(_normalise_chunk, chunks) for r in chunk]
            wall = (time.perf_counter() - t0) / n
        assert len(out) == n
        row(f"from_history in {procs} processes (incl. pickling both ways)", wall)
    del records


# --------------------------------------------------------------------------------- write

SECONDARY_INDEXES = ("ix_jobs_create_time_id", "ix_jobs_status_create_time_id",
                     "ix_jobs_workflow_id_status_create_time_id", "ix_jobs_source_status_create_time_id",
                     "ix_jobs_execution_duration_id", "ix_jobs_status_execution_duration_id")


def _drop(index: JobsIndex, triggers: bool, indexes: bool) -> None:
    pg = index.engine.dialect.name == "postgresql"
    with index.engine.begin() as conn:
        if triggers:
            if pg:
                conn.execute(text("DROP TRIGGER trg_jobs_count_insert_delete ON jobs"))
                conn.execute(text("DROP TRIGGER trg_jobs_count_update ON jobs"))
            else:
                for name in ("trg_jobs_count_insert", "trg_jobs_count_delete", "trg_jobs_count_update"):
                    conn.execute(text(f"DROP TRIGGER {name}"))
        if indexes:
            for name in SECONDARY_INDEXES:
                conn.execute(text(f'DROP INDEX "{name}"'))


def _raw_insert(index: JobsIndex, records, batch: int = 1000) -> None:
    rows = [r.as_row() for r in records]
    now = int(time.time() * 1000)
    for r in rows:
        r["indexed_at"] = now
    cols = list(rows[0])
    pg = index.engine.dialect.name == "postgresql"
    ph = ", ".join((f"%({c})s" if pg else f":{c}") for c in cols)
    sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({ph})"
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        for i in range(0, len(rows), batch):
            if not pg:
                cur.execute("BEGIN IMMEDIATE")
            cur.executemany(sql, rows[i:i + batch])
            raw.commit() if pg else cur.execute("COMMIT")
    finally:
        raw.close()


def cmd_write(args) -> None:
    items = list(synthetic_history(args.jobs, seed=99))
    records = [normalize.from_history(j, it) for j, it in items]
    del items
    n = len(records)
    print(f"{n:,} pre-normalised jobs into a fresh index each time ({bench.backend_of(args.db or 'sqlite')})\n")
    print("| variant | time | rate |\n| --- | ---: | ---: |")
    variants = [
        ("JobsIndex.ingest (as is)", False, False, "ingest"),
        ("JobsIndex.ingest, count triggers dropped", True, False, "ingest"),
        ("JobsIndex.ingest, 6 secondary indexes dropped", False, True, "ingest"),
        ("JobsIndex.ingest, triggers and secondary indexes dropped", True, True, "ingest"),
        ("driver executemany INSERT (no SQLAlchemy, no pre-read)", False, False, "raw"),
        ("driver executemany INSERT, no triggers, no secondary indexes", True, True, "raw"),
    ]
    base = None
    for name, triggers, indexes, how in variants:
        target = bench.Target(args.db, n, label=f"breakdown_{n}")
        target.reset()
        index = JobsIndex.open(target.url)
        try:
            _drop(index, triggers, indexes)
            t0 = time.perf_counter()
            if how == "ingest":
                for i in range(0, n, 10_000):
                    index.ingest(records[i:i + 10_000])
            else:
                _raw_insert(index, records)
            per = (time.perf_counter() - t0) / n
        finally:
            index.close()
        base = base or per
        row(name, per, base=None if per == base else base)


# ---------------------------------------------------------------------------------- page

def cmd_page(args) -> None:
    index = JobsIndex.open(args.db)
    query = parse_list_query({"limit": "50"})
    repeat = args.repeat
    full = timeit(lambda: json.dumps(index.list_jobs(query).body(query)), repeat)

    def count_only():
        with read_transaction(index.engine) as conn:
            queries.count_total(conn, query)

    def page_only():
        with read_transaction(index.engine) as conn:
            return queries.select_page(conn, query, limit=51)

    def empty_tx():
        with read_transaction(index.engine):
            pass

    def build_only():
        with index.engine.connect() as conn:
            queries._arm(conn, query, None, None, 51)

    rows = page_only()
    dicts = lambda: [normalize.list_dict(r) for r in rows[:50]]  # noqa: E731
    body = index.list_jobs(query).body(query)
    pg = index.engine.dialect.name == "postgresql"
    cols = ", ".join(c.name for c in queries.LIST_COLUMNS)
    hint = "" if pg else " INDEXED BY ix_jobs_create_time_id"
    page_sql = f"SELECT {cols} FROM jobs{hint} ORDER BY create_time DESC, id DESC LIMIT 51"
    count_sql = ("SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE source = '' AND workflow_id = '' "
                 "AND status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')")
    raw = index.engine.raw_connection()
    cur = raw.cursor()

    def raw_sql():
        if not pg:
            cur.execute("BEGIN")
        cur.execute(count_sql)
        cur.fetchall()
        cur.execute(page_sql)
        out = cur.fetchall()
        raw.commit() if pg else cur.execute("COMMIT")
        return out

    print(f"first page (limit=50) of {index.total():,} jobs, in-process, median of {repeat}\n")
    print("| part | time | rate |\n| --- | ---: | ---: |")
    row("list_jobs + body + json.dumps (what the route does)", full, "page")
    row("  empty read transaction (connect, BEGIN, COMMIT)", timeit(empty_tx, repeat), "page", full)
    row("  count_total in its transaction", timeit(count_only, repeat), "page", full)
    row("  select_page in its transaction", timeit(page_only, repeat), "page", full)
    row("    building the select (SQLAlchemy, no execution)", timeit(build_only, repeat), "page", full)
    row("  list_dict x 50 (json.loads of preview/error)", timeit(dicts, repeat), "page", full)
    row("  json.dumps of the body", timeit(lambda: json.dumps(body), repeat), "page", full)
    row("same two SQL statements through the bare driver", timeit(raw_sql, repeat), "page")
    raw.close()
    index.close()


# ---------------------------------------------------------------------------- http floor

def _floor_server(conn, size: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web

    body = json.dumps({"jobs": ["x" * (size // 100)] * 100})
    pool = ThreadPoolExecutor(8)

    async def inline(_request):
        return web.json_response(text=body)

    async def threaded(_request):
        text_ = await asyncio.get_running_loop().run_in_executor(pool, lambda: body)
        return web.json_response(text=text_)

    async def run():
        app = web.Application()
        app.router.add_get("/inline", inline)
        app.router.add_get("/threaded", threaded)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(run())


def cmd_http_floor(args) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_floor_server, args=(child, args.size), daemon=True)
    proc.start()
    port = parent.recv()
    cases = [bench.Case("inline", {}), bench.Case("threaded", {})]
    try:
        print(f"aiohttp floor: canned {args.size:,} B JSON body, {args.requests} sequential keep-alive requests\n")
        print("| handler | p50 ms | p99 ms |\n| --- | ---: | ---: |")
        for case in cases:
            out = bench.http_series(f"http://127.0.0.1:{port}/{case.name}", [case], 30, args.requests)
            times = out[case.name]["times"]
            print(f"| {case.name} | {bench.pct(times, 50) * 1000:.2f} | {bench.pct(times, 99) * 1000:.2f} |")
    finally:
        parent.send("stop")
        proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("normalise")
    p.add_argument("--jobs", type=int, default=10_000)
    p = sub.add_parser("write")
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("--db", default=None, help="base URL as for bench.py (default: SQLite under _work/)")
    p = sub.add_parser("page")
    p.add_argument("--db", required=True, help="an existing index, e.g. the bench's")
    p.add_argument("--repeat", type=int, default=300)
    p = sub.add_parser("http-floor")
    p.add_argument("--size", type=int, default=11_000, help="body bytes (a 50-job page is ~11 KB)")
    p.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    {"normalise": cmd_normalise, "write": cmd_write, "page": cmd_page,
     "http-floor": cmd_http_floor}[args.cmd](args)


if __name__ == "__main__":
    main()
