"""The cost of one Prometheus scrape (``GET /metrics``) at a large index (issue 17).

Builds an index of N synthetic history jobs spread over K sources (SQLite: a bulk
load into ``_work/scrape-<N>.sqlite3``; PostgreSQL: schema ``bench_scrape_<N>``), with
the metrics observer attached so the duration histograms are filled as a real
writer fills them, then times, sequentially:

* ``counts SQL``: the one query a scrape runs (``metrics_queries.source_status_counts``);
* ``naive SQL``: ``SELECT ... FROM job_counts WHERE workflow_id = ''``, the scan that
  query avoids;
* ``scrape in-process``: ``Metrics.scrape()`` (query + prometheus-client rendering);
* ``GET /metrics``: over HTTP on loopback (aiohttp app of ``http.create_app`` in a
  thread, one keep-alive connection).

Then gives every job its own workflow id (``job_counts`` grows by ~4 rows per job,
the worst case for a table keyed by workflow) and times the same again.

    .venv/bin/python benchmarks/scrape.py --jobs 100000
    .venv/bin/python benchmarks/scrape.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs_index import JobsIndex
from jobs_index.database import read_transaction
from jobs_index.http import METRICS_KEY, AppRunner, ServerConfig, create_app
from jobs_index.metrics import Metrics
from jobs_index.metrics_queries import source_status_counts
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"


def target_url(base: str | None, n: int) -> tuple[str, str]:
    if not base or base.startswith("sqlite"):
        path = WORK / f"scrape-{n}.sqlite3"
        WORK.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return "sqlite", f"sqlite:///{path}"
    schema = f"bench_scrape_{n}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in base else "?"
    return "postgresql", f"{base}{sep}options={quote('-csearch_path=' + schema)}"


def records(n: int, sources: int):
    for i, (job_id, item) in enumerate(synthetic_history(n)):
        record = from_history(job_id, item)
        record.source = f"gpu{i % sources:02d}:8188"
        yield record


def timed(fn, repeats: int) -> list[float]:
    for _ in range(min(20, repeats)):  # warm-up
        fn()
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "min": ordered[0],
    }


class Served:
    """``create_app(index=...)`` on a loopback port, in a thread with its own loop."""

    def __init__(self, index: JobsIndex) -> None:
        self.app = create_app(ServerConfig(pool_size=2), index=index)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.runner = AppRunner(self.app, access_log=None)
            await self.runner.setup()
            from aiohttp import web

            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Served:
        self.thread.start()
        self.ready.wait(60)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def measure(index: JobsIndex, metrics: Metrics, repeats: int) -> tuple[dict, int, int]:
    def counts() -> None:
        with read_transaction(index.engine) as conn:
            source_status_counts(conn)

    def naive() -> None:
        with read_transaction(index.engine) as conn:
            conn.execute(text("SELECT source, status, n FROM job_counts WHERE workflow_id = ''")).all()

    out = {
        "counts SQL": summary(timed(counts, repeats)),
        "naive SQL": summary(timed(naive, repeats)),
        "scrape in-process": summary(timed(metrics.scrape, repeats)),
    }
    with Served(index) as served:
        served.app[METRICS_KEY].finished = metrics.finished  # the same histograms as the writer's
        served.app[METRICS_KEY].registry = metrics.registry
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        size = 0

        def get() -> None:
            nonlocal size
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, response.status
            size = len(body)

        out["GET /metrics (HTTP)"] = summary(timed(get, repeats))
        conn.close()
    with index.engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM job_counts")).scalar_one()
    return out, rows, size


def render(args, backend: str, n: int, build_s: float, phases: list[tuple[str, dict, int, int]]) -> str:
    load = os.getloadavg()
    lines = [
        f"# Scrape cost at {n:,} jobs ({backend}, {args.sources} sources)",
        "",
        f"`benchmarks/scrape.py --jobs {n} --sources {args.sources} --repeats {args.repeats}`"
        f"{' --db <postgresql>' if backend == 'postgresql' else ''}; index built in {build_s:.0f} s.",
        "Times in ms over sequential calls (p50 / p99 / fastest). Target (issue 17): a scrape under 5 ms.",
        "",
    ]
    for title, results, rows, size in phases:
        lines += [
            f"## {title}",
            "",
            f"`job_counts` rows: {rows:,}; exposition: {size:,} bytes",
            "",
            "| measured | p50 ms | p99 ms | min ms |",
            "|---|---:|---:|---:|",
        ]
        for name, s in results.items():
            lines.append(f"| {name} | {s['p50'] * 1e3:.2f} | {s['p99'] * 1e3:.2f} | {s['min'] * 1e3:.2f} |")
        lines.append("")
    lines += [f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument(
        "--no-workflow-phase", action="store_true", help="skip the second phase (every job its own workflow)"
    )
    ap.add_argument("--db", default=None, help="PostgreSQL base URL (default: a SQLite file in _work/)")
    args = ap.parse_args()
    backend, url = target_url(args.db, args.jobs)
    index = JobsIndex.open(url, pool_size=4)
    metrics = Metrics(index)
    started = time.perf_counter()
    index.ingest(records(args.jobs, args.sources), batch_size=10_000, bulk=True)
    build_s = time.perf_counter() - started
    print(f"built {args.jobs:,} jobs in {build_s:.0f} s", flush=True)
    phases = []
    results, rows, size = measure(index, metrics, args.repeats)
    phases.append((f"{args.jobs:,} jobs, 50 workflows", results, rows, size))
    print(results, flush=True)
    if not args.no_workflow_phase:
        with index.engine.begin() as conn:  # every job its own workflow: job_counts ~4 rows per job
            conn.execute(text("UPDATE jobs SET workflow_id = id"))
        results, rows, size = measure(index, metrics, args.repeats)
        phases.append((f"{args.jobs:,} jobs, every job its own workflow", results, rows, size))
        print(results, flush=True)
    assert index.counts_consistent()
    index.close()
    report = render(args, backend, args.jobs, build_s, phases)
    out = RESULTS / f"scrape-{backend}-{args.jobs}.md"
    out.write_text(report)
    print(report)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
