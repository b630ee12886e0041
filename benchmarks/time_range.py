#!/usr/bin/env python
"""Benchmark of the time range (``since=`` / ``until=`` on ``GET /api/jobs`` and
``/api/jobs-index/counts``, issue 15): what an exact time-bounded total costs.

A bounded total cannot come from ``job_counts`` (keyed by source, workflow and
status): it is ``count(*)`` over the rows of the range, on the ``(create_time, id)``
index (or a status-/source-led one), so its cost grows with the jobs in the range.
Builds (or ``--reuse``s) the index of ``bench.py`` (N synthetic jobs, ~15 s apart),
serves it with ``bench.Server`` and times sequential requests over one keep-alive
connection: the plain API page (the baseline), then the page's list request
(``limit=50&include=source``) and its counts request for the last hour / 24 h /
7 days / everything (``since`` = the newest job's time minus the window, as the
page's presets ask), and a status filter within 7 days.

Writes ``results/time_range-<backend>-<N>.md`` (+ ``.json``).

Usage::

    .venv/bin/python benchmarks/time_range.py --jobs 100000 --reuse
    .venv/bin/python benchmarks/time_range.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/bench_x
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
from bench import ROOT
from sqlalchemy import text

from jobs_index.services import JobsIndex

RESULTS = ROOT / "benchmarks" / "results"
HOUR = 3600_000
WINDOWS = {"last hour": HOUR, "last 24 h": 24 * HOUR, "last 7 days": 7 * 24 * HOUR, "everything": None}


async def measure(base: str, newest: int, oldest: int, requests: int) -> tuple[dict, dict]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(path: str, params: dict) -> tuple[float, dict]:
            t0 = time.perf_counter()
            async with session.get(base + path, params=params) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}: {body[:200]!r}")
            return time.perf_counter() - t0, json.loads(body)

        cases: dict = {"api page (first, no range)": ("/api/jobs", {"limit": "50"})}
        for name, window in WINDOWS.items():
            since = str(oldest if window is None else newest - window)
            cases[f"page list, {name}"] = ("/api/jobs", {"limit": "50", "include": "source", "since": since})
            cases[f"counts, {name}"] = ("/api/jobs-index/counts", {"since": since})
        since = str(newest - WINDOWS["last 7 days"])
        cases["page list, last 7 days, status=failed"] = (
            "/api/jobs",
            {"limit": "50", "include": "source", "since": since, "status": "failed"},
        )
        jobs_in = {}
        for name, (path, params) in cases.items():  # warm-up, and the jobs in each range
            for _ in range(3):
                _, body = await get(path, params)
            jobs_in[name] = body["pagination"]["total"] if "pagination" in body else body["total"]
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(requests):  # round-robin: load from elsewhere hits every case alike
            for name, (path, params) in cases.items():
                times[name].append((await get(path, params))[0])
    return jobs_in, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="PostgreSQL base URL (default: a SQLite file)")
    parser.add_argument("--reuse", action="store_true", help="reuse an index bench.py built with the same N")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="PostgreSQL: VACUUM (ANALYZE) jobs first, as autovacuum does after inserts (sets the visibility "
        "map, so a count is an index-only scan); the results file is named -vacuumed",
    )
    args = parser.parse_args()

    target = bench.Target(args.db, args.jobs)
    bench.get_or_build(target, args.jobs, 1, 2, args.reuse)
    if args.vacuum and target.backend == "postgresql":
        with JobsIndex.open(target.url) as index, index.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM (ANALYZE) jobs"))
    with JobsIndex.open(target.url) as index, index.engine.connect() as conn:
        oldest, newest = conn.execute(text("SELECT MIN(create_time), MAX(create_time) FROM jobs")).one()
        total = index.total()
    with bench.Server(target.url) as server:
        jobs_in, times = asyncio.run(measure(f"http://127.0.0.1:{server.port}", newest, oldest, args.requests))

    p50 = {name: bench.pct(t, 50) for name, t in times.items()}
    p99 = {name: bench.pct(t, 99) for name, t in times.items()}
    base = p50["api page (first, no range)"]
    lines = [
        f"# Time range, {target.backend}{' (after VACUUM)' if args.vacuum else ''}, {total:,} jobs",
        "",
        f"Measured {dt.datetime.now().isoformat(timespec='seconds')} by `benchmarks/time_range.py"
        f" --jobs {args.jobs}`; {args.requests} sequential requests per case, one keep-alive connection.",
        "The windows end at the newest job (the page's presets: `since` = now minus the window).",
        "",
        "| case | jobs in range | p50 | p99 | p50 / API page |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in times:
        lines.append(
            f"| {name} | {jobs_in[name]:,} | {bench.ms(p50[name])} | {bench.ms(p99[name])} | {p50[name] / base:.1f}× |"
        )
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"time_range-{target.backend}-{args.jobs}{'-vacuumed' if args.vacuum else ''}"
    stem.with_suffix(".md").write_text(text_out)
    stem.with_suffix(".json").write_text(
        json.dumps({"jobs": total, "jobs_in": jobs_in, "p50_s": p50, "p99_s": p99, "requests": args.requests}, indent=1)
    )


if __name__ == "__main__":
    main()
