#!/usr/bin/env python
"""Time revision 0006 (queue numbers as ComfyUI holds them) on an existing index.

Builds an index at revision 0005 holding N synthetic jobs (``sample.synthetic_history``,
~3 KB each) as the code before 0006 wrote them — every ``--float-every``-th job has a
client-chosen integral float number (``4.0``), flattened to an int in its row — then
runs ``jobs-index --db URL migrate`` in its own process, as a user would, and reports:

* the wall time of that process (for SQLite it includes the automatic backup copy of
  the file, which the migration's own log line leaves out), its CPU time;
* the migration's own time and rows changed (its last log line);
* the listing page before/after the new ``priority`` expression (the page's JSON is
  rendered by the database; 0006 renders ``COALESCE(priority_json, priority)``):
  ``list_jobs(limit=50)`` p50 over ``--pages`` requests, both expressions interleaved
  on the migrated index.

Usage::

    .venv/bin/python benchmarks/migration_0006.py --jobs 100000
    .venv/bin/python benchmarks/migration_0006.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/bench

SQLite files live under ``benchmarks/_work/``; a PostgreSQL URL gets a fresh schema
``mig0006_<n>`` (dropped and re-created). Results: ``benchmarks/results/migration-0006-<backend>-<n>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text

from jobs_index import JobsIndex, parse_list_query, queries
from jobs_index.database import make_engine, migrate
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history

REV_5 = "0005_filter_timeline_indexes"
WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
OLD_COLUMNS = (
    "id",
    "status",
    "stage",
    "priority",
    "create_time",
    "create_time_missing",
    "execution_start_time",
    "execution_end_time",
    "execution_duration",
    "outputs_count",
    "preview_output",
    "execution_error",
    "error_type",
    "error_message",
    "error_node_id",
    "error_node_type",
    "workflow_id",
    "source",
    "raw_kind",
    "raw",
    "raw_digest",
    "indexed_at",
)
BATCH = 5000


def target_url(args) -> tuple[str, str]:
    """(URL of the index, backend name)."""
    if args.db is None:
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / f"mig0006-{args.jobs}.sqlite3"
        for old in WORK.glob(f"{path.name}*"):
            old.unlink()
        return f"sqlite:///{path}", "sqlite"
    schema = f"mig0006_{args.jobs}"
    admin = create_engine(args.db)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in args.db else "?"
    return f"{args.db}{sep}options={quote(f'-csearch_path={schema}')}", "postgresql"


def build_old_index(url: str, jobs: int, float_every: int) -> tuple[float, int]:
    """An index at 0005 with ``jobs`` rows as pre-0006 code wrote them. Returns
    (seconds, rows whose number is an integral float)."""
    t0 = time.monotonic()
    engine = make_engine(url)
    floats = 0
    try:
        migrate(engine, REV_5)
        placeholders = ", ".join(f":{c}" for c in OLD_COLUMNS)
        insert = text(f"INSERT INTO jobs ({', '.join(OLD_COLUMNS)}) VALUES ({placeholders})")
        rows = []
        for n, (job_id, item) in enumerate(synthetic_history(jobs, seed=6)):
            if n % float_every == 0:
                item["prompt"][0] = float(item["prompt"][0])
                floats += 1
            row = from_history(job_id, item).as_row()
            row["priority"], row["indexed_at"] = int(row["priority"]), 1  # as _as_int stored it
            rows.append({c: row[c] for c in OLD_COLUMNS})
            if len(rows) == BATCH:
                with engine.begin() as conn:
                    conn.execute(insert, rows)
                rows = []
                if (n + 1) % 100_000 == 0:
                    print(f"  built {n + 1:,} jobs ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
        if rows:
            with engine.begin() as conn:
                conn.execute(insert, rows)
    finally:
        engine.dispose()
    return time.monotonic() - t0, floats


def run_migrate(url: str) -> tuple[float, float, str]:
    """``jobs-index migrate`` in its own process: (wall s, CPU s of the process, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jobs_index", "--db", url, "migrate"], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"migrate failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr


NEW_PRIORITY = {"sqlite": "COALESCE(priority_json, priority)", "postgresql": "COALESCE(priority_json, priority::text)"}
PLAIN_PRIORITY = {"sqlite": "priority", "postgresql": "priority::text"}


def page_p50s(url: str, dialect: str, pages: int, before: bool = False) -> tuple[float, float]:
    """p50 ms of ``list_jobs(limit=50)``: (0006's expression, the plain column), interleaved.
    ``before``: on the index still at 0005, the plain column only (the first is nan)."""
    new_sql = queries._JOB_JSON_SQL[dialect]
    old_sql = new_sql.replace(NEW_PRIORITY[dialect], PLAIN_PRIORITY[dialect])
    assert old_sql != new_sql
    query = parse_list_query({"limit": "50"})
    timings = {"new": [], "old": []}
    with JobsIndex(make_engine(url)) if before else JobsIndex.open(url) as index:
        for i in range(pages * 2):
            which = "new" if i % 2 == 0 else "old"
            if before and which == "new":
                continue
            queries._JOB_JSON_SQL[dialect] = new_sql if which == "new" else old_sql
            queries._page_sql.cache_clear()
            index.list_jobs(query)  # compile outside the timing
            t0 = time.perf_counter()
            index.list_jobs(query)
            timings[which].append((time.perf_counter() - t0) * 1000)
    queries._JOB_JSON_SQL[dialect] = new_sql
    queries._page_sql.cache_clear()
    return (statistics.median(timings["new"]) if timings["new"] else math.nan), statistics.median(timings["old"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", help="a PostgreSQL URL (default: a SQLite file under benchmarks/_work)")
    parser.add_argument("--float-every", type=int, default=100, help="every n-th job's number is a float")
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    url, backend = target_url(args)
    print(f"building {args.jobs:,} jobs at {REV_5} ({backend}) ...", file=sys.stderr)
    build_s, floats = build_old_index(url, args.jobs, args.float_every)
    size = None
    if backend == "sqlite":
        path = url.removeprefix("sqlite:///")
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    before_p50 = page_p50s(url, backend, args.pages, before=True)[1]
    load = os.getloadavg()[0]
    print(f"migrating (built in {build_s:.0f} s, load {load:.1f}) ...", file=sys.stderr)
    wall, cpu, log = run_migrate(url)
    done = re.findall(r"0006_priority_as_stored: done, ([\d,]+) jobs checked, ([\d,]+) changed \((\d+) s\)", log)
    checked, changed, own = done[-1] if done else ("?", "?", "?")
    progress = [line for line in log.splitlines() if "0006_priority_as_stored" in line]
    engine = make_engine(url)
    with engine.connect() as conn:
        exact = conn.execute(text("SELECT count(*) FROM jobs WHERE priority_json IS NOT NULL")).scalar_one()
    engine.dispose()
    assert exact == floats, (exact, floats)
    new_p50, old_p50 = page_p50s(url, backend, args.pages)

    lines = [
        f"# Migration 0006 on {backend}, {args.jobs:,} jobs",
        "",
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores "
        f"(shared; load average {load:.1f} when the migration started), Python {platform.python_version()}.",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| jobs in the index | {args.jobs:,} ({size / 1e9:.2f} GB) |"
        if size
        else f"| jobs in the index | {args.jobs:,} |",
        f"| rows with an integral float number (flattened before 0006) | {floats:,} |",
        f"| `jobs-index migrate` wall time | {wall:.1f} s |",
        f"| its CPU time | {cpu:.1f} s |",
        f"| the migration's own time (log) | {own} s, {checked} jobs checked, {changed} changed |",
        f"| rows with `priority_json` after | {exact:,} |",
        f"| page `limit=50`, p50, 0006's `COALESCE(priority_json, priority)`, after 0006 | {new_p50:.3f} ms |",
        f"| page `limit=50`, p50, the plain `priority` column, after 0006 | {old_p50:.3f} ms |",
        f"| page `limit=50`, p50, the plain `priority` column, before 0006 | {before_p50:.3f} ms |",
        "",
    ]
    if backend == "sqlite":
        lines += [
            "On SQLite the wall time includes the backup copy `migrate` makes of the file "
            "before any upgrade (`<file>.bak-0005_filter_timeline_indexes`).",
            "",
        ]
    lines += ["Progress as logged:", "", "```", *progress, "```", ""]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"migration-0006-{backend}-{args.jobs}.md").write_text(report, encoding="utf-8")
    if backend == "sqlite":
        for leftover in WORK.glob(f"mig0006-{args.jobs}.sqlite3*"):
            leftover.unlink()
    else:
        admin = create_engine(args.db)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "mig0006_{args.jobs}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
