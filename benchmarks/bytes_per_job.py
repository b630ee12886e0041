#!/usr/bin/env python
"""Bytes on disk per job, table by table and index by index (issue 16, "half the bytes").

For each tree (a checkout of jobs-index with its own ``.venv``) and each kind of dump
(``synthetic``: ``bench.py``'s jobs; ``realistic``: ``sample.realistic_history``), the
dump is written once as a ``GET /history`` JSON file, imported with that tree's
``jobs-index import`` into a new SQLite file (a bulk load), checkpointed, and measured
with SQLite's ``dbstat``: pages of each table and index, over the jobs. The file's
bytes per job are set against the dump's (target: at most 0.5x).

    .venv/bin/python benchmarks/bytes_per_job.py --trees before=/path/to/main,after=. --jobs 100000

Writes ``benchmarks/results/bytes-<jobs>.md``. Bytes do not depend on the machine's
load; the import times printed beside them do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs_index.sample import realistic_history, synthetic_history

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"


def dump(kind: str, n: int) -> Path:
    path = WORK / f"bytes-{kind}-{n}.json"
    if not path.exists():
        items = synthetic_history(n) if kind == "synthetic" else realistic_history(n, seed=5)
        with path.open("w") as out:
            out.write("{")
            for i, (job_id, item) in enumerate(items):
                out.write(("" if i == 0 else ", ") + json.dumps(job_id) + ": " + json.dumps(item))
            out.write("}")
    return path


def measure(tree: Path, source: Path, n: int, db: Path) -> dict:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-m", "jobs_index", "--db", f"sqlite:///{db}", "import", str(source)],
        cwd=tree,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        parts = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()
    size = db.stat().st_size
    db.unlink()
    return {"file": size / n, "parts": {k: v / n for k, v in parts.items()}, "import_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="label=path,... (each with its .venv)")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--kinds", default="synthetic,realistic")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    trees = [(label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in args.trees.split(","))]
    out = [
        f"# Bytes on disk per job, {args.jobs:,} jobs, SQLite",
        "",
        f"`benchmarks/bytes_per_job.py --jobs {args.jobs}`, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        "Each tree's `jobs-index import` of the same dump into a new file (a bulk load), checkpointed; "
        "`dbstat` pages per table and index over the jobs. Trees: "
        + ", ".join(
            f"`{label}` = {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=path, capture_output=True, text=True).stdout.strip()}"  # noqa: E501
            for label, path in trees
        )
        + ".",
    ]
    for kind in args.kinds.split(","):
        source = dump(kind, args.jobs)
        dump_per_job = source.stat().st_size / args.jobs
        runs = {}
        for label, tree in trees:
            runs[label] = measure(tree, source, args.jobs, WORK / f"bytes-{label}.sqlite3")
            print(f"{kind} {label}: {runs[label]['file']:,.0f} B/job ({runs[label]['file'] / dump_per_job:.3f}x dump)")
        names = sorted(
            {name for r in runs.values() for name in r["parts"]},
            key=lambda k: -max(r["parts"].get(k, 0) for r in runs.values()),
        )
        out += [
            "",
            f"## {kind}: the dump {dump_per_job:,.0f} B per job",
            "",
            "| table / index | " + " | ".join(f"{label} B/job" for label, _ in trees) + " |",
            "| --- | " + " | ".join("---:" for _ in trees) + " |",
        ]
        for name in names:
            if max(r["parts"].get(name, 0) for r in runs.values()) >= 1:
                out.append(
                    f"| {name} | "
                    + " | ".join(f"{runs[label]['parts'].get(name, 0):,.1f}" for label, _ in trees)
                    + " |"
                )
        out.append("| **the file** | " + " | ".join(f"**{runs[label]['file']:,.0f}**" for label, _ in trees) + " |")
        out.append(
            "| x the dump | "
            + " | ".join(f"**{runs[label]['file'] / dump_per_job:.3f}x**" for label, _ in trees)
            + " |"
        )
        out.append(
            "| import s (load-dependent) | "
            + " | ".join(f"{runs[label]['import_s']:,.1f}" for label, _ in trees)
            + " |"
        )
    out.append("")
    out.append(f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    path = RESULTS / f"bytes-{args.jobs}.md"
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
