"""ComfyUI's "clear history" in the index while another writer works (issue 19 item 2).

    .venv/bin/python benchmarks/clear_history.py                  # SQLite, N = 100,000
    .venv/bin/python benchmarks/clear_history.py --jobs 20000 --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench

For each way of clearing, a fresh index holds N finished jobs of the clearing source
(``comfy-a``) plus 1,000 of another (``comfy-b``). While the clear runs, a second writer
(its own engine, as another ComfyUI) ingests one job of ``comfy-b`` every 20 ms; we
report how long the clear took and the second writer's longest and median wait. Ways:

* ``one statement``: the node before issue 19, ``DELETE FROM jobs WHERE stage = 2 AND
  source = 'comfy-a'`` in one write transaction;
* ``batches of B``: ``JobsIndex.delete_finished(source=, batch_size=B)``, what the node
  does now (B = 1000, its default), one short write transaction per batch.

Writes ``results/clear-history-<backend>-<N>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from jobs_index import JobsIndex
from jobs_index.database import write_transaction
from jobs_index.errors import StorageError
from jobs_index.normalize import from_history, from_queue
from jobs_index.sample import synthetic_history

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"


def fresh_url(db: str | None, n: int, tag: str) -> tuple[str, callable]:
    if db is None:
        WORK.mkdir(exist_ok=True)
        path = WORK / f"clear-{n}-{tag}.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", lambda: [Path(f"{path}{s}").unlink(missing_ok=True) for s in ("", "-wal", "-shm")]
    from sqlalchemy import create_engine

    schema = f"bench_clear_{tag}"
    admin = create_engine(db)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop():
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in db else "?"
    return f"{db}{sep}options=-csearch_path%3D{schema}", drop


def fill(url: str, n: int) -> None:
    with JobsIndex.open(url) as index:
        records = (from_history(job_id, item) for job_id, item in synthetic_history(n, seed=1))
        index.ingest(records, source="comfy-a", bulk=True)
        index.ingest([from_history(job_id, item) for job_id, item in synthetic_history(1000, seed=2)], source="comfy-b")


def one_statement(index: JobsIndex) -> int:
    with write_transaction(index.engine) as conn:
        return conn.execute(text("DELETE FROM jobs WHERE stage = 2 AND source = 'comfy-a'")).rowcount


def other_writer(url: str, stop: threading.Event, waits: list[float], failed: list[float]) -> None:
    """One job every 20 ms; a write refused after the busy timeout (30 s) counts as failed."""
    with JobsIndex.open(url) as index:
        while not stop.is_set():
            record = from_queue([1, str(uuid.uuid4()), {}, {"create_time": int(time.time() * 1000)}, []], "pending")
            started = time.perf_counter()
            try:
                index.ingest([record], source="comfy-b")
            except StorageError:
                failed.append(time.perf_counter() - started)
            waits.append(time.perf_counter() - started)
            stop.wait(0.02)


def measure(db: str | None, n: int, name: str, clear) -> dict:
    url, drop = fresh_url(db, n, name.split()[0])
    try:
        fill(url, n)
        waits: list[float] = []
        failed: list[float] = []
        stop = threading.Event()
        with JobsIndex.open(url) as index:
            thread = threading.Thread(target=other_writer, args=(url, stop, waits, failed))
            thread.start()
            time.sleep(0.5)
            before = len(waits)
            started = time.perf_counter()
            removed = clear(index)
            elapsed = time.perf_counter() - started
            time.sleep(0.2)
            stop.set()  # (a write waiting on the busy timeout still finishes: joined below)
            thread.join()
            during = waits[before:]
            left = index.total()
            assert removed == n, (removed, n)
            assert index.counts_consistent()
            assert left == 1000 + len(waits) - len(failed), (left, len(waits), len(failed))
        return {
            "way": name,
            "removed": removed,
            "seconds": elapsed,
            "left": left,
            "max_wait": max(during) if during else float("nan"),
            "p50_wait": statistics.median(during) if during else float("nan"),
            "writes": len(during),
            "failed": len(failed),
        }
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", help="PostgreSQL base URL (default: SQLite files in benchmarks/_work)")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    backend = "sqlite" if args.db is None else "postgresql"
    rows = [
        measure(args.db, args.jobs, "one statement", one_statement),
        measure(
            args.db,
            args.jobs,
            f"batches of {args.batch}",
            lambda index: index.delete_finished(source="comfy-a", batch_size=args.batch),
        ),
    ]
    lines = [
        f"# Clear history of {args.jobs:,} finished jobs ({backend}), another writer ingesting every 20 ms",
        "",
        "| way | removed | clear took (s) | other writer: longest wait (s) | median wait (ms) "
        "| its writes during the clear | of which refused (busy timeout) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['way']} | {row['removed']:,} | {row['seconds']:.2f} | {row['max_wait']:.3f} | "
            f"{row['p50_wait'] * 1000:.1f} | {row['writes']} | {row['failed']} |"
        )
    load = os.getloadavg()[0]
    lines += [
        "",
        f"Generated by `benchmarks/clear_history.py` ({os.cpu_count()} CPUs, load average {load:.1f} "
        "at the end: a shared machine); the other source's 1,000 jobs and every write of the other "
        "writer that was not refused are kept (checked), and the counts stay exact.",
    ]
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"clear-history-{backend}-{args.jobs}.md").write_text(text_out)


if __name__ == "__main__":
    main()
