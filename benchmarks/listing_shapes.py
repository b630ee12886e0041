#!/usr/bin/env python
"""``JobsIndex.list_jobs`` + ``body_text`` (what the route does) for several listing
shapes on an existing index, in-process: the cost of the listing path itself.

    .venv/bin/python benchmarks/listing_shapes.py --db sqlite:///benchmarks/_work/x.sqlite3 [--label new]

Written for issue 18 item 2 (a listing reads its rows whatever ``job_counts`` says
and checks the counters by arithmetic): run it on the same index with the code
before and after (``PYTHONPATH=<old checkout>``) and compare. Prints a markdown
table; ``--out FILE`` appends it to FILE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: an older checkout can be measured

from jobs_index import JobsIndex, parse_list_query

SHAPES = [
    ("first page, limit=50", {"limit": "50"}),
    ("status=pending (2 jobs)", {"status": "pending"}),
    ("status=failed, limit=50", {"status": "failed", "limit": "50"}),
    ("workflow_id=<one>, limit=50", None),  # filled in from the data
    ("offset=5000, limit=50", {"offset": "5000", "limit": "50"}),
    ("offset=99990, limit=50 (last page)", {"offset": "99990", "limit": "50"}),
    ("offset=200000, limit=50 (past the end)", {"offset": "200000", "limit": "50"}),
    ("status=pending, offset=10 (past the end)", {"status": "pending", "offset": "10"}),
]


def timed(fn, repeat: int) -> tuple[float, float]:
    for _ in range(max(3, repeat // 10)):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6, min(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    index = JobsIndex.open(args.db)
    with index.engine.connect() as conn:
        workflow = conn.exec_driver_sql("SELECT workflow_id FROM jobs WHERE workflow_id IS NOT NULL LIMIT 1").scalar()
    lines = [
        f"### {args.label or 'run'}: {index.total():,} jobs, {index.engine.dialect.name}, "
        f"median / min of {args.repeat} (µs, in-process)\n",
        "| listing | median µs | min µs | jobs |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, params in SHAPES:
        params = params if params is not None else {"workflow_id": workflow, "limit": "50"}
        query = parse_list_query(params)
        jobs = len(index.list_jobs(query).job_texts)
        median, fastest = timed(lambda query=query: index.list_jobs(query).body_text(query), args.repeat)
        lines.append(f"| {name} | {median:,.0f} | {fastest:,.0f} | {jobs} |")
    index.close()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
