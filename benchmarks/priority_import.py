#!/usr/bin/env python
"""Import cost of exact queue numbers (issue 11): this tree against another checkout.

Revision 0006 added work to every job written: ``normalize.priority_of`` and a
``priority_json`` column (null for ordinary jobs), and on PostgreSQL a ``numeric``
priority sent as a ``Decimal``. This measures, for the code of each tree, in its
own process: normalising N synthetic history jobs (``from_history``) and writing
them batch by batch (``JobsIndex.ingest``, 1,000 per transaction, not a bulk load)
into a fresh index; rounds alternate between the trees, medians are reported.

Usage::

    .venv/bin/python benchmarks/priority_import.py --before /path/to/checkout/before/0006
    .venv/bin/python benchmarks/priority_import.py --before ../main --db postgresql+psycopg://postgres@127.0.0.1:5432/bench

Results: ``benchmarks/results/priority-import-<backend>-<n>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work"

# Runs inside the tree under test (PYTHONPATH): prints {"normalise": s, "ingest": s}.
MEASURE = r"""
import json, sys, time, uuid
from urllib.parse import quote
from sqlalchemy import create_engine, text
from jobs_index import JobsIndex
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
jobs, url = int(sys.argv[1]), sys.argv[2]
schema = None
if url.startswith("postgresql"):
    schema = "prio_" + uuid.uuid4().hex[:12]
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = url + ("&" if "?" in url else "?") + "options=" + quote(f"-csearch_path={schema}")
items = list(synthetic_history(jobs, seed=9))
t0 = time.perf_counter()
records = [from_history(k, v) for k, v in items]
normalise = time.perf_counter() - t0
with JobsIndex.open(url) as index:
    t0 = time.perf_counter()
    index.ingest(records, batch_size=1000)
    ingest = time.perf_counter() - t0
if schema:
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
print(json.dumps({"normalise": normalise, "ingest": ingest}))
"""


def measure(tree: Path, jobs: int, url: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(jobs), url], capture_output=True, text=True, env=env, cwd=tree
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path, help="a checkout of the code before 0006")
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--db", default=None, help="a PostgreSQL URL (default: SQLite files under benchmarks/_work)")
    args = ap.parse_args()
    backend = "postgresql" if args.db else "sqlite"
    trees = {"before": args.before.resolve(), "after": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    WORK.mkdir(parents=True, exist_ok=True)
    for _ in range(args.rounds):
        for name, tree in trees.items():
            url = args.db
            if url is None:
                path = WORK / f"prio-import-{name}.sqlite3"
                for old in WORK.glob(path.name + "*"):
                    old.unlink()
                url = f"sqlite:///{path}"
            runs[name].append(measure(tree, args.jobs, url))
            print(f"  {name}: {runs[name][-1]}", file=sys.stderr)
    for old in WORK.glob("prio-import-*"):
        old.unlink()

    def rate(name: str, part: str) -> float:
        return args.jobs / statistics.median(r[part] for r in runs[name])

    lines = [
        f"# Import with exact queue numbers, {backend}, {args.jobs:,} jobs",
        "",
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores "
        f"(shared with other work: load average {os.getloadavg()[0]:.1f} at the end), "
        f"median of {args.rounds} alternating rounds, each in its own process.",
        "",
        "| code | normalise (`from_history`), jobs/s | write (`ingest`, batches of 1,000), jobs/s |",
        "| --- | --- | --- |",
    ]
    for name in trees:
        lines.append(f"| {name} 0006 | {rate(name, 'normalise'):,.0f} | {rate(name, 'ingest'):,.0f} |")
    change = [100 * (rate("after", p) / rate("before", p) - 1) for p in ("normalise", "ingest")]
    lines += [
        "",
        f"Change: normalise {change[0]:+.1f} %, write {change[1]:+.1f} % "
        "(positive is faster; the machine is shared, so a few % is noise).",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"priority-import-{backend}-{args.jobs}.md").write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
