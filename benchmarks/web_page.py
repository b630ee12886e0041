#!/usr/bin/env python
"""Benchmark of the history page (issue 15): what a browser transfers on a first load,
and the page's requests against a plain API page.

Builds (or ``--reuse``s) the index of ``bench.py`` (N synthetic jobs, imported as a
user does), serves it with ``bench.Server`` (``http.create_app`` in its own process,
so the page is mounted at ``/ui/``) and, over one keep-alive connection, times
sequential requests:

* the page's files (``/ui/``, ``static/app.js``, ``static/style.css``): bytes as sent
  (aiohttp does not compress) and gzipped (a reverse proxy's ``gzip on``);
* ``api page``: ``GET /api/jobs?limit=50`` (what the page is compared with), and the
  same at a cursor half-way down;
* ``page first list``: the page's list request, as app.js sends it (``include=source``:
  the jobs' sources in the same answer); the counts per status (``/api/jobs-index/counts``,
  sent alongside, with the sources list), timed on their own; ``page scroll``:
  the cursor page half-way down; ``page poll``: one poll (first page
  + counts, the sum of both).

Writes ``results/web_page-<backend>-<N>.md`` (+ ``.json``).

Usage::

    .venv/bin/python benchmarks/web_page.py --jobs 100000 --reuse
    .venv/bin/python benchmarks/web_page.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
from bench import ROOT

from jobs_index.cursor import encode_cursor
from jobs_index.services import JobsIndex

RESULTS = ROOT / "benchmarks" / "results"


async def measure(base: str, cursor: str, requests: int) -> tuple[dict, dict]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(path: str, params=None) -> tuple[float, bytes]:
            t0 = time.perf_counter()
            async with session.get(base + path, params=params) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}: {body[:200]!r}")
            return time.perf_counter() - t0, body

        files = {}
        for path in ("/ui/", "/ui/static/app.js", "/ui/static/style.css"):
            _, body = await get(path)
            files[path] = {"bytes": len(body), "gzip": len(gzip.compress(body, 6))}

        async def page_list(params) -> float:  # as app.js asks: with its jobs' sources
            took, body = await get("/api/jobs", {**params, "include": "source"})
            assert len(json.loads(body)["job_sources"]) == 50
            return took

        async def first_list() -> float:
            return await page_list({"limit": "50"})

        async def counts() -> float:
            return (await get("/api/jobs-index/counts"))[0]

        async def failed_counts() -> float:  # a filter's counts ignore its status: the same request
            return (await get("/api/jobs-index/counts", {"status": "failed"}))[0]

        async def scroll() -> float:
            return await page_list({"limit": "50", "after": cursor})

        async def poll() -> float:
            took = await page_list({"limit": "50"})
            return took + await counts()

        async def api_first() -> float:
            return (await get("/api/jobs", {"limit": "50"}))[0]

        async def api_cursor() -> float:
            return (await get("/api/jobs", {"limit": "50", "after": cursor}))[0]

        async def failed_view() -> float:
            return await page_list({"limit": "50", "status": "failed"})

        async def api_failed() -> float:
            return (await get("/api/jobs", {"limit": "50", "status": "failed"}))[0]

        cases = {
            "api page (first)": api_first,
            "page first list": first_list,
            "api page (cursor, half-way)": api_cursor,
            "page scroll (cursor, half-way)": scroll,
            "api page (status=failed)": api_failed,
            "page status=failed list": failed_view,
            "page counts (sent alongside)": counts,
            "page counts, status=failed": failed_counts,
            "page poll (list + counts)": poll,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up
            for _ in range(5):
                await fn()
        for _ in range(requests):  # round-robin: load from elsewhere hits every case alike
            for name, fn in cases.items():
                times[name].append(await fn())
    return files, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="PostgreSQL base URL (default: a SQLite file)")
    parser.add_argument("--reuse", action="store_true", help="reuse an index bench.py built with the same N")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    target = bench.Target(args.db, args.jobs)
    bench.get_or_build(target, args.jobs, 1, 2, args.reuse)
    with JobsIndex.open(target.url) as index:
        create_time, job_id, _ = bench._mid_row(index)
        total = index.total()
    cursor = encode_cursor(create_time, job_id, "desc")
    with bench.Server(target.url) as server:
        files, times = asyncio.run(measure(f"http://127.0.0.1:{server.port}", cursor, args.requests))

    p50 = {name: bench.pct(t, 50) for name, t in times.items()}
    p99 = {name: bench.pct(t, 99) for name, t in times.items()}
    pairs = [
        ("page first list", "api page (first)"),
        ("page scroll (cursor, half-way)", "api page (cursor, half-way)"),
        ("page status=failed list", "api page (status=failed)"),
        ("page counts (sent alongside)", "api page (first)"),
    ]
    lines = [
        f"# History page, {target.backend}, {total:,} jobs",
        "",
        f"Measured {dt.datetime.now().isoformat(timespec='seconds')} by `benchmarks/web_page.py"
        f" --jobs {args.jobs}`; {args.requests} sequential requests per case, one keep-alive connection.",
        "",
        "## First load: the page's files",
        "",
        "| file | bytes sent | gzipped |",
        "|---|---:|---:|",
    ]
    for path, size in files.items():
        lines.append(f"| `{path}` | {size['bytes']:,} | {size['gzip']:,} |")
    lines.append(
        f"| **total** | **{sum(s['bytes'] for s in files.values()):,}** | "
        f"**{sum(s['gzip'] for s in files.values()):,}** |"
    )
    lines += [
        "",
        "## Requests",
        "",
        "A page list is `GET /api/jobs?limit=50&include=source` (its jobs' sources in the same answer);",
        "the counts request is sent alongside the first list and with each poll.",
        "",
        "| case | p50 | p99 |",
        "|---|---:|---:|",
    ]
    for name in times:
        lines.append(f"| {name} | {bench.ms(p50[name])} | {bench.ms(p99[name])} |")
    lines += ["", "| page view / its API page (p50) | ratio |", "|---|---:|"]
    for page, api in pairs:
        lines.append(f"| {page} / {api} | {p50[page] / p50[api]:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"web_page-{target.backend}-{args.jobs}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({"jobs": total, "files": files, "p50_s": p50, "p99_s": p99, "requests": args.requests}, indent=1)
    )


if __name__ == "__main__":
    main()
