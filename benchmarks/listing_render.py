#!/usr/bin/env python
"""What issue 18's listing changes cost: a whole listing read in chunks (now in one
held snapshot, and rendered by SQL that maps ``jobs.id``/``workflow_id`` back from
their column form) and a first page of 50, in-process, on an index of N bulk jobs.

    .venv/bin/python benchmarks/listing_render.py [--jobs 100000] [--db URL] [--out FILE]

Run it on two checkouts (e.g. ``PYTHONPATH=<old tree>``) to compare; it prints a
table and, with ``--out``, appends it to FILE. Times are the fastest of the repeats
(wall) and the mean CPU of this process; the machine is shared.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs_index import JobsIndex
from jobs_index.params import parse_list_query
from tests.bulkdata import bulk_load


def measure(fn, repeat: int) -> tuple[float, float]:
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), sum(cpus) / len(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", help="an empty database URL (default: a temporary SQLite file)")
    parser.add_argument("--out")
    args = parser.parse_args()
    import jobs_index

    code = Path(jobs_index.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(code), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip() or str(code)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.sqlite3"
        with JobsIndex.open(url) as index:
            bulk_load(index, args.jobs)
            everything = parse_list_query({})
            first_page = parse_list_query({"limit": "50"})
            whole = measure(lambda: index.list_jobs(everything), 15)
            page = measure(lambda: index.list_jobs(first_page), 300)
            assert len(index.list_jobs(everything).job_texts) == args.jobs
            dialect = index.engine.dialect.name
    lines = [
        f"### {dialect}, {args.jobs:,} jobs, code at {commit} (`{code}`)",
        "",
        "| listing | wall ms (min) | CPU ms (mean) | µs/job (wall) |",
        "| --- | ---: | ---: | ---: |",
        f"| whole listing, chunks of 1,000 | {whole[0] * 1e3:,.1f} | {whole[1] * 1e3:,.1f} | "
        f"{whole[0] / args.jobs * 1e6:.2f} |",
        f"| first page, limit=50 | {page[0] * 1e3:,.3f} | {page[1] * 1e3:,.3f} | {page[0] / 50 * 1e6:.2f} |",
        "",
    ]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
