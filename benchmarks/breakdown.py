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


def timeit(fn, repeat: int, warmup: int = 3) -> tuple[float, float]:
    """(fastest wall seconds, mean CPU seconds of this process) per call. This machine
    is shared: medians wander with the load; minima and CPU time do not."""
    for _ in range(warmup):
        fn()
    times = []
    c0 = time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), (time.process_time() - c0) / repeat


class Clock:
    """Wall and CPU time of a block, per item."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> "Clock":
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = (time.perf_counter() - self.t0) / self.n
        self.cpu = (time.process_time() - self.c0) / self.n

    @property
    def pair(self) -> tuple[float, float]:
        return self.wall, self.cpu


HEADER = "| step | wall µs | CPU µs (this process) | CPU share | jobs/s by CPU |\n| --- | ---: | ---: | ---: | ---: |"


def row(name: str, times: tuple[float, float], base: tuple[float, float] | None = None) -> None:
    wall, cpu = times
    share = f"{cpu / base[1]:.0%}" if base else ""
    print(f"| {name} | {wall * 1e6:,.1f} | {cpu * 1e6:,.1f} | {share} | {1 / cpu if cpu else 0:,.0f} |")


# ----------------------------------------------------------------------------- normalise

def _normalise_chunk(items):
    return [normalize.from_history(job_id, item) for job_id, item in items]


def cmd_normalise(args) -> None:
    import hashlib
    import multiprocessing as mp

    items = list(synthetic_history(args.jobs))
    n = len(items)
    with Clock(n) as total:
        records = _normalise_chunk(items)
    dumps = normalize._dumps
    datas, blobs = [], []
    with Clock(n) as t_dumps:
        for job_id, item in items:
            datas.append(dumps({**item, "prompt": list(item["prompt"][:5])}).encode("utf-8"))
    with Clock(n) as t_zlib6:
        for d in datas:
            blobs.append(zlib.compress(d, 6))
    with Clock(n) as t_zlib1:
        for d in datas:
            zlib.compress(d, 1)
    with Clock(n) as t_hash:
        for d in datas:
            hashlib.blake2b(d, digest_size=16).hexdigest()
    rest = (total.wall - t_dumps.wall - t_zlib6.wall - t_hash.wall, total.cpu - t_dumps.cpu - t_zlib6.cpu - t_hash.cpu)
    print(f"{n:,} jobs; JSON {sum(map(len, datas)) / n:,.0f} B/job, zlib-6 {sum(map(len, blobs)) / n:,.0f} B/job\n")
    print(HEADER)
    row("from_history (all)", total.pair, total.pair)
    row("  json.dumps of the raw item (stdlib, ensure_ascii=False)", t_dumps.pair, total.pair)
    row("  zlib.compress level 6", t_zlib6.pair, total.pair)
    row("  blake2b-128 digest", t_hash.pair, total.pair)
    row("  everything else (walk status/outputs, record)", rest, total.pair)
    row("alternative: zlib.compress level 1", t_zlib1.pair, total.pair)
    try:
        import orjson

        same = 0
        with Clock(n) as t_or:
            for (job_id, item), d in zip(items, datas):
                same += orjson.dumps({**item, "prompt": list(item["prompt"][:5])}) == d
        row("alternative: orjson.dumps", t_or.pair, total.pair)
        print(f"\n(orjson output byte-identical to the stdlib encoding for {same:,}/{n:,} items)")
    except ImportError:
        print("\n(orjson not installed: skipped)")
    chunks = [items[i:i + 1000] for i in range(0, n, 1000)]
    with mp.get_context("fork").Pool(2) as pool:
        with Clock(n) as t_pool:
            out = [r for chunk in pool.imap(_normalise_chunk, chunks) for r in chunk]
    assert len(out) == n
    print(f"from_history in 2 processes (pickling both ways): {t_pool.wall * 1e6:,.1f} µs/job wall "
          f"({1 / t_pool.wall:,.0f} jobs/s) vs {total.wall * 1e6:,.1f} in one")
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


def _light_sqlite_triggers(index: JobsIndex) -> None:
    """The same counts with one plain upsert per key instead of a UNION'ed SELECT per row."""
    keys = [("''", "''", "1"), ("''", "NEW.workflow_id", "COALESCE(NEW.workflow_id, '') <> ''"),
            ("NEW.source", "''", "COALESCE(NEW.source, '') <> ''"),
            ("NEW.source", "NEW.workflow_id", "COALESCE(NEW.source, '') <> '' AND COALESCE(NEW.workflow_id, '') <> ''")]

    def body(row: str, delta: str) -> str:
        out = []
        for source, workflow, cond in keys:
            source, workflow, cond = (x.replace("NEW.", f"{row}.") for x in (source, workflow, cond))
            out.append(f"INSERT INTO job_counts (source, workflow_id, status, n) SELECT {source}, {workflow}, "
                       f"{row}.status, {delta} WHERE {cond} ON CONFLICT (source, workflow_id, status) "
                       f"DO UPDATE SET n = n + excluded.n;")
        return "\n".join(out)

    changed = ("OLD.status IS NOT NEW.status OR OLD.workflow_id IS NOT NEW.workflow_id "
               "OR OLD.source IS NOT NEW.source")
    with index.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TRIGGER trg_light_insert AFTER INSERT ON jobs BEGIN {body('NEW', '1')} END")
        conn.exec_driver_sql(f"CREATE TRIGGER trg_light_delete AFTER DELETE ON jobs BEGIN {body('OLD', '-1')} END")
        conn.exec_driver_sql(f"CREATE TRIGGER trg_light_update AFTER UPDATE OF status, workflow_id, source ON jobs "
                             f"WHEN {changed} BEGIN {body('OLD', '-1')} {body('NEW', '1')} END")


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
    print("| variant | wall µs/job | CPU µs/job (this process) | CPU vs as-is | jobs/s by CPU |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    variants = [
        ("JobsIndex.ingest (as is)", False, False, "ingest"),
        ("JobsIndex.ingest, count triggers dropped", True, False, "ingest"),
        ("JobsIndex.ingest, lighter triggers (SQLite: 1 upsert per key, no UNION)", True, False, "light"),
        ("JobsIndex.ingest, 6 secondary indexes dropped", False, True, "ingest"),
        ("JobsIndex.ingest, triggers and secondary indexes dropped", True, True, "ingest"),
        ("driver executemany INSERT (no SQLAlchemy, no pre-read)", False, False, "raw"),
        ("driver executemany INSERT, no triggers, no secondary indexes", True, True, "raw"),
    ]
    base = None
    for name, triggers, indexes, how in variants:
        if how == "light" and bench.backend_of(args.db or "sqlite") != "sqlite":
            continue
        target = bench.Target(args.db, n, label=f"breakdown_{n}")
        if how == "light" and target.backend != "sqlite":
            continue
        target.reset()
        index = JobsIndex.open(target.url)
        try:
            _drop(index, triggers, indexes)
            if how == "light":
                _light_sqlite_triggers(index)
                how = "ingest"
            with Clock(n) as clock:
                if how == "ingest":
                    for i in range(0, n, 10_000):
                        index.ingest(records[i:i + 10_000])
                else:
                    _raw_insert(index, records)
        finally:
            index.close()
        base = base or clock.pair
        row(name, clock.pair, base)


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

    print(f"first page (limit=50) of {index.total():,} jobs, in-process; wall = fastest of {repeat}, "
          f"CPU = mean\n")
    print("| part | wall µs (min) | CPU µs (this process) | CPU share | pages/s by CPU |\n| --- | ---: | ---: | ---: | ---: |")
    row("list_jobs + body + json.dumps (what the route does)", full, full)
    row("  empty read transaction (connect, BEGIN, COMMIT)", timeit(empty_tx, repeat), full)
    row("  count_total in its transaction", timeit(count_only, repeat), full)
    row("  select_page in its transaction", timeit(page_only, repeat), full)
    row("    building the select (SQLAlchemy, no execution)", timeit(build_only, repeat), full)
    row("  list_dict x 50 (json.loads of preview/error)", timeit(dicts, repeat), full)
    row("  json.dumps of the body", timeit(lambda: json.dumps(body), repeat), full)
    row("same two SQL statements through the bare driver", timeit(raw_sql, repeat), full)
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
        async def route(request):
            return await (threaded if request.query.get("h") == "threaded" else inline)(request)

        app.router.add_get("/", route)
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
    cases = [bench.Case("inline", {"h": "inline"}), bench.Case("threaded", {"h": "threaded"})]
    try:
        print(f"aiohttp floor: canned {args.size:,} B JSON body, {args.requests} sequential keep-alive requests\n")
        print("| handler | p50 ms | p99 ms | min ms |\n| --- | ---: | ---: | ---: |")
        out = bench.http_series(f"http://127.0.0.1:{port}/", cases, 30, args.requests, rounds=3)
        for case in cases:
            times = out[case.name]["times"]
            print(f"| {case.name} | {bench.pct(times, 50) * 1000:.2f} | {bench.pct(times, 99) * 1000:.2f} | "
                  f"{min(times) * 1000:.2f} |")
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
