#!/usr/bin/env python
"""Deep ``offset`` pages by time buckets (revision 0012), before and after, SQLite and
PostgreSQL in one run.

    .venv/bin/python benchmarks/deep_offset.py --pg postgresql+psycopg://postgres@127.0.0.1:5432 \\
        --jobs 1000000 --requests 40 --dump benchmarks/_work/history-100000.json

* The index: ``n`` synthetic finished jobs written server-side (``tests/bulkdata.py``:
  one ``INSERT ... SELECT``), ``--step-ms`` apart (default 15 s, the mean gap of
  ``sample.synthetic_history``: 1M jobs span 174 days, ~3,600 buckets of ~290 jobs),
  ~90 % completed / 7 % failed / 3 % cancelled, 4 sources. Built at head with this
  code; a copy (SQLite file / ``CREATE DATABASE ... TEMPLATE``) is downgraded to
  ``0011_search_timeline`` for the base code. The upgrade 0011 -> 0012 (creating and
  filling ``job_time_buckets``) is timed on that copy first.
* HTTP: four ``jobs-index serve`` processes (base ``git archive`` / this code x SQLite
  / PostgreSQL), one keep-alive connection each, requests interleaved request by
  request over the four (``pg_pages._series``); bodies compared byte for byte.
* PostgreSQL round trips per page (libpq trace, ``pg_pages.round_trips``).
* The bucket width: in-process, this code, the table rebuilt at each width, the
  page at the middle offset and the bucket-position query alone (median).
* Import cost: ``jobs-index import`` of ``--dump`` (bulk, and ``--no-bulk`` batch by
  batch) into an empty index, base and this code, both engines.

Writes ``benchmarks/results/deep-offset-<n>-step<ms>.md`` and ``.json``; drops its databases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
import pg_pages
from bench import Case, log, pct
from pg_pages import Serve
from sqlalchemy import create_engine, text

from tests import bulkdata

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
BASE_COMMIT = "73012f7"
BEFORE = "0011_search_timeline"
LIMIT = "50"


def build(url: str, n: int, step: int) -> float:
    from jobs_index.services import JobsIndex

    bulkdata.STEP = step
    started = time.perf_counter()
    with JobsIndex.open(url) as index:
        bulkdata.bulk_load(index, n)
        bulkdata.analyze(index)
    return time.perf_counter() - started


def migrate_to(url: str, revision: str) -> float:
    """Up or down to ``revision`` with this code's migrations; seconds taken."""
    from alembic import command

    from jobs_index.database import alembic_config, current_revision, make_engine, migrate, write_transaction

    engine = make_engine(url)
    try:
        started = time.perf_counter()
        with engine.connect() as conn:
            now = current_revision(conn)
        if now == revision:
            return 0.0
        if revision == BEFORE:
            with write_transaction(engine) as conn:
                command.downgrade(alembic_config(conn), revision)
        else:
            migrate(engine, revision)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def vacuum(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")
    engine.dispose()


def make_cases(n: int) -> list[Case]:
    mid = n // 2
    return [
        Case("offset 1,000", {"limit": LIMIT, "offset": "1000"}, note="below the threshold: plain OFFSET"),
        Case("offset 20,000", {"limit": LIMIT, "offset": "20000"}),
        Case("offset 100,000", {"limit": LIMIT, "offset": "100000"}),
        Case(f"offset {mid:,} (middle)", {"limit": LIMIT, "offset": str(mid)}),
        Case(f"offset {n - 100:,} (near the end)", {"limit": LIMIT, "offset": str(n - 100)}),
        Case(f"asc, offset {mid:,}", {"limit": LIMIT, "offset": str(mid), "sort_order": "asc"}),
        Case(f"status=completed, offset {mid // 2:,}",
             {"limit": LIMIT, "offset": str(mid // 2), "status": "completed"}),
        Case(
            "status=failed,cancelled, offset 30,000",
            {"limit": LIMIT, "offset": "30000", "status": "failed,cancelled"},
        ),
        Case("offset past the end", {"limit": LIMIT, "offset": str(n + 10)}),
        Case("workflow filter, offset 10,000", {"limit": LIMIT, "offset": "10000", "workflow_id": "wf-07"},
             note="unchanged shape"),
    ]  # fmt: skip


def width_sweep(url: str, n: int, bits_list: list[int], repeat: int) -> list[dict]:
    """The trade-off of one bucket width, in-process, in plain SQL: a table of the
    all-status buckets at each width (``sweep_buckets``, dropped after), the position
    query alone (a window sum over every bucket) and the middle-offset page's keys
    (position, then the seek at the bucket's edge with the rest of the offset),
    median of ``repeat``; then the same keys by plain OFFSET, and this code's whole
    page (two widths, 2^28 then 2^22; rendered JSON and total)."""
    from jobs_index import parse_list_query, queries
    from jobs_index.database import read_statement, write_transaction
    from jobs_index.services import JobsIndex

    mid = n // 2
    out = []

    def timed(index, run) -> float:
        times = []
        for i in range(repeat + 3):
            with read_statement(index.engine) as conn:
                t0 = time.perf_counter()
                run(conn)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    with JobsIndex.open(url) as index:
        try:
            for bits in bits_list:
                with write_transaction(index.engine) as conn:
                    conn.exec_driver_sql("DROP TABLE IF EXISTS sweep_buckets")
                    conn.exec_driver_sql("CREATE TABLE sweep_buckets (bucket BIGINT PRIMARY KEY, n BIGINT NOT NULL)")
                    conn.exec_driver_sql(
                        f"INSERT INTO sweep_buckets SELECT create_time >> {bits}, count(*) FROM jobs GROUP BY 1"
                    )
                    rows = conn.exec_driver_sql("SELECT count(*) FROM sweep_buckets").scalar()
                vacuum(url)
                position = (
                    "SELECT bucket, upto - n AS before FROM (SELECT bucket, n, sum(n) OVER (ORDER BY bucket DESC "
                    "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS upto FROM sweep_buckets) AS r "
                    f"WHERE upto > {mid} ORDER BY bucket DESC LIMIT 1"
                )
                page = (
                    f"WITH p AS ({position}) SELECT id FROM jobs WHERE create_time <= "
                    f"(SELECT bucket * {1 << bits} + {(1 << bits) - 1} FROM p) ORDER BY create_time DESC, id DESC "
                    f"LIMIT 50 OFFSET (SELECT CAST({mid} - before AS BIGINT) FROM p)"
                )
                out.append(
                    {
                        "bits": bits,
                        "width_min": round((1 << bits) / 60000, 1),
                        "buckets": rows,
                        "jobs_per_bucket": round(n / rows),
                        "position_ms": timed(index, lambda c, q=position: c.exec_driver_sql(q).all()),
                        "keys_ms": timed(index, lambda c, q=page: c.exec_driver_sql(q).all()),
                    }
                )
                log(f"  width 2^{bits}: {out[-1]}")
            plain = f"SELECT id FROM jobs ORDER BY create_time DESC, id DESC LIMIT 50 OFFSET {mid}"
            query = parse_list_query({"limit": LIMIT, "offset": str(mid)})
            out.append(
                {
                    "bits": "plain OFFSET (keys)",
                    "keys_ms": timed(index, lambda c: c.exec_driver_sql(plain).all()),
                }
            )
            out.append(
                {
                    "bits": "this code: 2^28 then 2^22, whole page",
                    "keys_ms": timed(
                        index, lambda c: queries.select_page(c, query, limit=51, offset=mid, with_total=True)
                    ),
                }
            )
            log(f"  {out[-2]} {out[-1]}")
        finally:
            with write_transaction(index.engine) as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS sweep_buckets")
    return out


# ---------------------------------------------------------------------------- import


def run_import(tree: Path, url: str, dump: Path, *options: str) -> dict:
    command = [
        sys.executable,
        "-c",
        "import sys, jobs_index.cli as c; assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "del sys.argv[1]; sys.argv[0] = 'jobs-index'; c.cli()",
        str(tree),
        "--db",
        url,
        "import",
        *options,
        str(dump),
    ]
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0], "last": last}


def import_costs(pg_admin: str, dump: Path, tree: Path, rounds: int) -> list[dict]:
    jobs = len(json.loads(dump.read_text()))
    out = []
    for r in range(rounds):
        for engine in ("sqlite", "postgresql"):
            for mode in ("bulk", "--no-bulk"):
                for label, code in (("base", tree), ("this", ROOT)):
                    if engine == "sqlite":
                        path = WORK / "deep-offset-import.sqlite3"
                        for p in WORK.glob("deep-offset-import.sqlite3*"):
                            p.unlink()
                        url = f"sqlite:///{path}"
                    else:
                        url = recreate_db(pg_admin, "bench_i16off_import")
                    options = ("--no-bulk",) if mode == "--no-bulk" else ()
                    result = run_import(code, url, dump.resolve(), *options)
                    result.update(engine=engine, mode=mode, code=label, round=r, jobs=jobs)
                    result["rate"] = jobs / result["wall_s"]
                    log(f"import {engine} {mode} {label}: {result['rate']:.0f} jobs/s, CPU {result['cpu_s']:.1f} s")
                    out.append(result)
    if pg_admin:
        drop_db(pg_admin, "bench_i16off_import")
    return out


WRITE_CHILD = r"""
import json, sys, time
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
from jobs_index.services import JobsIndex
assert __import__("jobs_index").__file__.startswith(sys.argv[1])
url, n = sys.argv[2], int(sys.argv[3])
records = [from_history(k, v) for k, v in synthetic_history(n, seed=11)]
index = JobsIndex.open(url)
index.ingest(records[:1000])  # warm: the first batch trains nothing (below 1,000 jobs), compiles SQL
t0, c0 = time.perf_counter(), time.process_time()
index.ingest(records[1000:])
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "jobs": n - 1000}))
index.close()
"""


def write_costs(pg_admin: str, tree: Path, n: int, rounds: int) -> list[dict]:
    """Incremental ingest (``JobsIndex.ingest``, batches of 1,000, records normalised
    beforehand) of ``n`` synthetic jobs into a fresh index, in a child process of each
    code, alternating: the writer's own cost, without the dump reader and workers."""
    out = []
    for r in range(rounds):
        for engine in ("sqlite", "postgresql"):
            for label, code in (("base", tree), ("this", ROOT)) if r % 2 == 0 else (("this", ROOT), ("base", tree)):
                if engine == "sqlite":
                    for p in WORK.glob("deep-offset-write.sqlite3*"):
                        p.unlink()
                    url = f"sqlite:///{WORK / 'deep-offset-write.sqlite3'}"
                else:
                    url = recreate_db(pg_admin, "bench_i16off_write")
                done = subprocess.run(
                    [sys.executable, "-c", WRITE_CHILD, str(code), url, str(n)],
                    cwd=code,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(done.stderr[-2000:])
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result.update(engine=engine, code=label, round=r, load=os.getloadavg()[0])
                log(
                    f"write {engine} {label}: {result['jobs'] / result['wall_s']:.0f} jobs/s, "
                    f"CPU {result['cpu_s']:.2f} s"
                )
                out.append(result)
    drop_db(pg_admin, "bench_i16off_write")
    for p in WORK.glob("deep-offset-write.sqlite3*"):
        p.unlink()
    return out


def render_writes(writes: list[dict]) -> str:
    lines = [
        f"## The writer alone: incremental ingest of {writes[0]['jobs']:,} normalised jobs (batches of 1,000)",
        "",
        "| engine | base µs/job (wall) | this µs/job (wall) | this/base | base / this client CPU µs/job | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for engine in ("sqlite", "postgresql"):
        rows = [w for w in writes if w["engine"] == engine]

        def med(code: str, key: str, rows=rows) -> float:
            return statistics.median(w[key] / w["jobs"] * 1e6 for w in rows if w["code"] == code)

        base, this = med("base", "wall_s"), med("this", "wall_s")
        lines.append(
            f"| {engine} | {base:.0f} | {this:.0f} | {this / base:.2f} | "
            f"{med('base', 'cpu_s'):.0f} / {med('this', 'cpu_s'):.0f} | {max(w['load'] for w in rows):.1f} |"
        )
    lines.append(
        f"Median of {len({w['round'] for w in writes})} rounds, the two codes alternating (order swapped each "
        "round). PostgreSQL's wall time includes the server's trigger work; its client CPU does not."
    )
    return "\n".join(lines)


def trigger_costs(pg_admin: str, batch: int, repeat: int) -> list[dict]:
    """PostgreSQL: the server time of each statement-level trigger (``EXPLAIN
    ANALYZE`` reports it per trigger) for an INSERT / UPDATE of the status / DELETE of
    ``batch`` jobs in an index of 100k (``tests/bulkdata.py`` rows), each rolled back;
    the median of ``repeat``."""
    import re

    from jobs_index.services import JobsIndex

    url = recreate_db(pg_admin, "bench_i16off_trig")
    try:
        with JobsIndex.open(url) as index:
            bulkdata.STEP = 15_000
            bulkdata.bulk_load(index, 100_000)
            bulkdata.analyze(index)
        engine = create_engine(url)
        insert_sql = bulkdata._bulk_insert_sql("postgresql", batch).replace("'job-'", "'new-'")
        params = {
            "t0": bulkdata.T0 + 100_000 * 15_000,
            "step": 15_000,
            "raw": bulkdata._RAW,
            "digest": bulkdata._DIGEST,
        }
        statements = {
            f"INSERT {batch} jobs": (insert_sql, params),
            f"UPDATE status of {batch} jobs": (
                f"UPDATE jobs SET status = 'cancelled' WHERE id >= 'job-0050000' AND id < 'job-{50_000 + batch:07d}'",
                {},
            ),
            f"DELETE {batch} jobs": (
                f"DELETE FROM jobs WHERE id >= 'job-0050000' AND id < 'job-{50_000 + batch:07d}'",
                {},
            ),
        }
        out = []
        for name, (sql, values) in statements.items():
            times: dict[str, list[float]] = {}
            for _ in range(repeat):
                with engine.connect() as conn:
                    plan = conn.execute(text("EXPLAIN (ANALYZE) " + sql), values).scalars().all()
                    conn.rollback()
                for line in plan:
                    found = re.match(r"\s*(Trigger|Execution Time)(?: (\S+))?: (?:time=)?([\d.]+)", line)
                    if found:
                        times.setdefault(found.group(2) or "whole statement", []).append(float(found.group(3)))
            row = {"statement": name, **{k: statistics.median(v) for k, v in times.items()}}
            log(f"triggers: {row}")
            out.append(row)
        engine.dispose()
        return out
    finally:
        drop_db(pg_admin, "bench_i16off_trig")


def render_triggers(rows: list[dict]) -> str:
    names = sorted({k for r in rows for k in r} - {"statement"})
    lines = [
        "## PostgreSQL: server time per statement-level trigger, ms (median; EXPLAIN ANALYZE, rolled back)",
        "",
        "| statement | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for r in rows:
        lines.append(f"| {r['statement']} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in names) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------ databases


def recreate_db(admin_url: str, name: str, template: str | None = None) -> str:
    drop_db(admin_url, name)
    admin = create_engine(admin_url + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    admin.dispose()
    return f"{admin_url}/{name}"


def drop_db(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


# ---------------------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def render(args, cases, http, trips, sweeps, imports, facts, loads) -> str:
    lines = [
        f"# Deep offset pages by time buckets: {args.jobs:,} jobs, base {BASE_COMMIT} vs this code",
        "",
        f"`benchmarks/deep_offset.py --jobs {args.jobs} --step-ms {args.step_ms} --requests {args.requests}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Synthetic finished jobs written server-side "
        f"(`tests/bulkdata.py`), {args.step_ms / 1000:g} s apart ({facts['buckets']:,} fine buckets of 2^22 ms, "
        f"~{args.jobs // max(1, facts['buckets']):,} jobs each; {facts['coarse']:,} coarse ones of 2^28 ms). "
        f"{len(http)} `jobs-index serve` processes, one keep-alive "
        f"connection each, {args.requests} timed requests per query per server, interleaved request by request. "
        + ("PostgreSQL 15 on the same machine (loopback TCP). " if trips else "SQLite only (`--no-pg`). ")
        + "The machine (2 CPUs) is shared with two other "
        f"sessions' work: load average (1 min) {', '.join(f'{x:.1f}' for x in loads)} during the run.",
        "",
        f"Upgrade 0011 -> 0012 (create and fill `job_time_buckets`) on the {args.jobs:,}-job index: "
        f"SQLite {facts['upgrade_sqlite_s']:.1f} s (with the backup copy of the file it makes first), "
        f"PostgreSQL {facts.get('upgrade_pg_s', float('nan')):.1f} s.",
        "",
        "## HTTP `GET /api/jobs`, ms (p50 / p99)",
        "",
        "| query | SQLite base | SQLite this | PostgreSQL base | PostgreSQL this | PG round trips base/this |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    same = True
    for case in cases:
        cells = []
        for label in ("base sqlite", "this sqlite", "base pg", "this pg"):
            if label not in http:
                cells.append("-")
                continue
            t = http[label][case.name]["times"]
            cells.append(f"{ms(pct(t, 50))} / {ms(pct(t, 99))}")
        bodies = {http[label][case.name]["body"] for label in http}
        same &= len(bodies) == 1
        trip = f"{trips['base'][case.name]['trips']}/{trips['this'][case.name]['trips']}" if trips else "-"
        lines.append(f"| {case.name} | {' | '.join(cells)} | {trip} |")
    lines += [
        "",
        f"Bodies byte-identical across the {len(http)} servers, every query: {'yes' if same else 'NO'}.",
        "",
        "## Bucket width (in-process, median, the page at the middle offset; plain SQL on a scratch table)",
        "",
    ]
    for engine, sweep in sweeps.items():
        lines += [
            f"### {engine}",
            "",
            "| one width | minutes | buckets | jobs per bucket | position alone ms | page keys ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in sweep:
            if "buckets" in row:
                lines.append(
                    f"| 2^{row['bits']} | {row['width_min']:g} | {row['buckets']:,} | {row['jobs_per_bucket']:,} | "
                    f"{row['position_ms']:.2f} | {row['keys_ms']:.2f} |"
                )
            else:
                lines.append(f"| {row['bits']} | | | | | {row['keys_ms']:.2f} |")
        lines.append("")
    if imports:
        lines.append(render_imports(imports))
    return "\n".join(lines)


def render_imports(imports: list[dict]) -> str:
    lines: list[str] = []
    if imports:
        lines += [
            f"## Import cost ({imports[0]['jobs']:,}-job dump, `jobs-index import`, wall jobs/s)",
            "",
            "| engine | mode | base | this | this/base | client CPU s base / this | load |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        keys = sorted({(r["engine"], r["mode"]) for r in imports})
        for engine, mode in keys:
            rows = [r for r in imports if r["engine"] == engine and r["mode"] == mode]
            base = statistics.median(r["rate"] for r in rows if r["code"] == "base")
            this = statistics.median(r["rate"] for r in rows if r["code"] == "this")
            load = max(r["load"] for r in rows)
            cpu_base = statistics.median(r["cpu_s"] for r in rows if r["code"] == "base")
            cpu_this = statistics.median(r["cpu_s"] for r in rows if r["code"] == "this")
            lines.append(
                f"| {engine} | {mode} | {base:,.0f} | {this:,.0f} | {this / base:.2f} | "
                f"{cpu_base:.1f} / {cpu_this:.1f} | {load:.1f} |"
            )
        lines.append(
            f"Median of {len({r['round'] for r in imports})} round(s), base and this alternating; wall-clock rates on "
            "a shared machine (see the load), client CPU (the import process and its workers) steadier."
        )
        lines.append("")
    return "\n".join(lines)


def _write(name: str, what: str, report: str, data) -> None:
    """Print ``report`` and write it as ``results/<name>.md`` (``data`` as its JSON twin)."""
    print(report)
    out = RESULTS / f"{name}.md"
    out.write_text(f"# {what} of job_time_buckets, base {BASE_COMMIT} vs this code\n\n{report}\n")
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", required=True, help="PostgreSQL server URL without a database")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--step-ms", type=int, default=15_000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dump", type=Path, default=None, help="a /history dump for the import cost (skipped: none)")
    ap.add_argument("--import-rounds", type=int, default=1)
    ap.add_argument("--imports-only", action="store_true", help="only the import cost (deep-offset-imports.md)")
    ap.add_argument("--triggers", action="store_true", help="only PostgreSQL's trigger cost per statement")
    ap.add_argument("--writes-only", type=int, default=0, help="N: only the writer's cost of N jobs (and rounds)")
    ap.add_argument("--sweep", default="18,20,22,24,26,28")
    ap.add_argument("--sweep-repeat", type=int, default=15)
    ap.add_argument("--no-pg", action="store_true", help="SQLite only (no PostgreSQL database is made)")
    ap.add_argument("--no-upgrade", action="store_true", help="do not time the upgrade (SQLite: no backup copy)")
    args = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.triggers:
        rows = trigger_costs(args.pg, 1000, args.sweep_repeat)
        report = render_triggers(rows)
        print(report)
        out = RESULTS / "deep-offset-triggers-pg.md"
        out.write_text(f"# Trigger cost of job_time_buckets on PostgreSQL\n\n{report}\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        return
    if args.writes_only:
        writes = write_costs(args.pg, bench.base_tree(BASE_COMMIT), args.writes_only, args.import_rounds)
        _write(f"deep-offset-writes-{args.writes_only}", "Write cost", render_writes(writes), writes)
        return
    if args.imports_only:
        imports = import_costs(args.pg, args.dump, bench.base_tree(BASE_COMMIT), args.import_rounds)
        _write(f"deep-offset-imports-{imports[0]['jobs']}", "Import cost", render_imports(imports), imports)
        return
    loads = [os.getloadavg()[0]]
    n = args.jobs
    this_sqlite = WORK / f"deep-offset-{n}.sqlite3"
    base_sqlite = WORK / f"deep-offset-{n}-base.sqlite3"
    for p in list(WORK.glob(f"deep-offset-{n}*.sqlite3*")):
        p.unlink()
    urls = {"this sqlite": f"sqlite:///{this_sqlite}", "base sqlite": f"sqlite:///{base_sqlite}"}
    tree = bench.base_tree(BASE_COMMIT)
    facts: dict = {}
    try:
        log(f"building {n:,} jobs on SQLite")
        facts["build_sqlite_s"] = build(urls["this sqlite"], n, args.step_ms)
        shutil.copy(this_sqlite, base_sqlite)
        if not args.no_pg:
            urls["this pg"] = recreate_db(args.pg, "bench_i16off")
            log(f"building {n:,} jobs on PostgreSQL")
            facts["build_pg_s"] = build(urls["this pg"], n, args.step_ms)
            vacuum(urls["this pg"])
            urls["base pg"] = recreate_db(args.pg, "bench_i16off_base", template="bench_i16off")
        for engine, url in (("sqlite", urls["base sqlite"]), ("pg", urls.get("base pg"))):
            if url is None:
                continue
            migrate_to(url, BEFORE)
            vacuum(url)
            if args.no_upgrade:
                facts[f"upgrade_{engine}_s"] = float("nan")
                continue
            facts[f"upgrade_{engine}_s"] = migrate_to(url, "head")
            log(f"upgrade 0011 -> head on {engine}: {facts[f'upgrade_{engine}_s']:.1f} s")
            migrate_to(url, BEFORE)
            vacuum(url)
        with create_engine(urls["this sqlite"]).connect() as conn:
            for key, bits in (("buckets", 22), ("coarse", 28)):
                facts[key] = conn.exec_driver_sql(
                    f"SELECT count(*) FROM job_time_buckets WHERE status = '' AND bits = {bits}"
                ).scalar()
        cases = make_cases(n)
        trips: dict = {}
        if not args.no_pg:
            log("round trips (PostgreSQL)")
            trips = {
                "base": pg_pages.round_trips(urls["base pg"], tree, cases),
                "this": pg_pages.round_trips(urls["this pg"], ROOT, cases),
            }
        servers = [Serve(label, urls[label], ROOT if label.startswith("this") else tree) for label in urls]
        servers.sort(key=lambda s: s.label)
        started = []
        try:
            for server in servers:
                started.append(server.__enter__())
            log(f"HTTP: {len(cases)} queries x {args.requests} requests x {len(servers)} servers")
            loads.append(os.getloadavg()[0])
            http = asyncio.run(pg_pages._series(servers, cases, args.warmup, args.requests))
            loads.append(os.getloadavg()[0])
        finally:
            for server in started:
                server.__exit__()
        for label in http:
            for case in cases:
                log(f"{label:12} {case.name:40} p50 {ms(pct(http[label][case.name]['times'], 50))} ms")
        sweeps = {}
        bits = [int(b) for b in args.sweep.split(",") if b]
        for engine, url in (("SQLite", urls["this sqlite"]), ("PostgreSQL", urls.get("this pg"))):
            if url is None:
                continue
            log(f"width sweep on {engine}")
            sweeps[engine] = width_sweep(url, n, bits, args.sweep_repeat)
        loads.append(os.getloadavg()[0])
        drop_db(args.pg, "bench_i16off_base")
        drop_db(args.pg, "bench_i16off")
        for p in list(WORK.glob(f"deep-offset-{n}*.sqlite3*")):
            p.unlink()
        imports = import_costs(args.pg, args.dump, tree, args.import_rounds) if args.dump else []
        loads.append(os.getloadavg()[0])
    finally:
        drop_db(args.pg, "bench_i16off_base")
        drop_db(args.pg, "bench_i16off")
        drop_db(args.pg, "bench_i16off_import")
    report = render(args, cases, http, trips, sweeps, imports, facts, loads)
    print(report)
    out = RESULTS / f"deep-offset-{n}-step{args.step_ms}{'-sqlite' if args.no_pg else ''}.md"
    out.write_text(report)
    data = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "facts": facts,
        "loads": loads,
        "http": {
            label: {name: {"p50": pct(v["times"], 50), "p99": pct(v["times"], 99)} for name, v in per.items()}
            for label, per in http.items()
        },
        "trips": trips,
        "sweeps": sweeps,
        "imports": imports,
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
