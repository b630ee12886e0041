#!/usr/bin/env python
"""SQLite bulk import: the single writer's floor, before and after (issue 16, part 2).

In one run, on the same ``GET /history`` dump of N synthetic jobs (``bench.dump_file``,
the dump ``bench.py`` imports, written once to ``_work/``):

* ``floor``: ``breakdown.py bulk-floor --jobs N`` in its own process: the bare
  driver's inserts of prebuilt rows into ``jobs``, ``job_search``, ``job_search_fts``
  (FTS5) and ``job_outputs``, the index builds and the COMMIT, with no Python per
  job: what one SQLite writer cannot go below with this schema;
* ``before``: ``jobs-index import <dump>`` with the code of ``--base`` (a ``git
  archive`` under ``_work/``, never the live worktree), in its own process, into a
  new file (a bulk load), with its default worker processes;
* ``after``: the same with this tree's code.

``before`` and ``after`` are interleaved round by round (the order alternates). Each
row gives wall seconds, the CPU seconds of the command and its workers (user +
system), jobs/s by wall time and jobs per CPU second, and the 1-minute load average
at its start and end: this machine is shared, so wall times measure our share of
it; CPU seconds are the fairer comparison. The two indexes of a round are then
compared: every ``jobs`` column but ``indexed_at``, ``job_outputs``, ``job_search``,
``job_counts`` and the FTS5 index's (word, document, position) rows.

    .venv/bin/python benchmarks/import_speed.py --jobs 1000000

Writes ``results/import-sqlite-<N>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
from bench import RESULTS, WORK, log

BASE_COMMIT = "c4aaddd"  # main before issue 16 part 2 (job_search + FTS5, import as it was)


def _cpu_of_children() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_import(db: Path, dump: Path, tree: Path) -> dict:
    """``jobs-index --db <db> import <dump>`` with the code under ``tree``."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    command = [
        sys.executable,
        "-c",
        "import sys, jobs_index.cli as c; sys.argv[0] = 'jobs-index'; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; del sys.argv[1]; c.cli()",
        str(tree),
        "--db",
        f"sqlite:///{db}",
        "import",
        str(dump),
    ]
    load_start = os.getloadavg()[0]
    cpu0, started = _cpu_of_children(), time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _cpu_of_children() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "summary": (done.stdout.strip().splitlines() or [""])[-1],
        "bytes": db.stat().st_size,
    }


FLOOR_ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<wall>[\d,.]+) \| [\d,.]+ \| (?P<us>[\d,.]+) \| [\d,.]+ \|$")


def run_floor(n: int) -> dict:
    """``breakdown.py bulk-floor --jobs n`` in its own process: its table's rows."""
    load_start = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "breakdown.py"), "bulk-floor", "--jobs", str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {}
    for line in done.stdout.splitlines():
        match = FLOOR_ROW.match(line)
        if match:
            rows[match["name"].strip()] = {
                "wall_s": float(match["wall"].replace(",", "")),
                "cpu_s": float(match["us"].replace(",", "")) * n / 1e6,  # µs/job: more digits than CPU s
            }
    floor = next(v for k, v in rows.items() if k.startswith("**driver: all of it**"))
    return {**floor, "rows": rows, "table": done.stdout, "load_start": load_start, "load_end": os.getloadavg()[0]}


DIGESTS = {
    "jobs": "SELECT id, status, stage, priority, create_time, create_time_missing, execution_start_time, "
    "execution_end_time, execution_duration, outputs_count, preview_output, execution_error, error_type, "
    "error_message, error_node_id, error_node_type, workflow_id, source, raw_kind, raw, raw_digest, priority_json "
    "FROM jobs ORDER BY id",
    "job_outputs": "SELECT * FROM job_outputs ORDER BY job_id, ordinal",
    # (before revision 0014_search_facets the lists were job_search's own columns)
    "job_search": "SELECT s.docid, s.job_id, s.create_time, s.execution_duration, s.status, s.workflow_id, "
    "s.source, f.node_types, f.models, f.loras FROM job_search AS s JOIN job_facets AS f ON f.job_id = s.job_id "
    "ORDER BY s.docid",
    "job_counts": "SELECT source, workflow_id, status, n FROM job_counts WHERE n <> 0 ORDER BY 1, 2, 3",
    # the FTS5 index: every (word, document, position), in its own order
    "job_search_fts": "SELECT term, doc, offset FROM temp.fts_rows",
}


def digests(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts_rows USING fts5vocab(main, job_search_fts, 'instance')")
        out = {}
        facets = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_facets'").fetchone()
        for table, sql in DIGESTS.items():
            if table == "job_search" and facets is None:
                sql = sql.replace("job_facets AS f ON f.job_id = s.job_id", "job_search AS f ON f.docid = s.docid")
            h, count = hashlib.blake2b(digest_size=16), 0
            for row in conn.execute(sql):
                h.update(repr(row).encode())
                count += 1
            out[table] = f"{count}:{h.hexdigest()}"
        return out
    finally:
        conn.close()


def render(args, floor: dict | None, runs: list[dict], same: list[dict]) -> str:
    n = args.jobs
    out = [
        f"# SQLite bulk import of {n:,} jobs: the writer's floor, before and after (issue 16, part 2)",
        "",
        f"`benchmarks/import_speed.py --jobs {n} --rounds {args.rounds}`, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs shared with other "
        "users (see the load columns). Dump: `bench.dump_file` (the synthetic `/history` dump `bench.py` "
        f"imports, {args.dump_mib:,.0f} MiB). `before`: `jobs-index import` of `{args.base}` (a `git archive`); "
        "`after`: this tree; each in its own process with its default workers, into a new SQLite file "
        "(a bulk load). CPU s: the command and its worker processes, user + system.",
        "",
        "| round | run | wall s | jobs/s | CPU s | µs CPU/job | jobs per CPU s | load start → end | file MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    if floor:
        out.append(
            f"| – | floor (`breakdown.py bulk-floor`: bare driver, prebuilt rows) | {floor['wall_s']:,.1f} | "
            f"{n / floor['wall_s']:,.0f} | {floor['cpu_s']:,.1f} | {1e6 * floor['cpu_s'] / n:,.1f} | "
            f"{n / floor['cpu_s']:,.0f} | {floor['load_start']:.1f} → {floor['load_end']:.1f} | |"
        )
    for run in runs:
        out.append(
            f"| {run['round']} | {run['name']} | {run['wall_s']:,.1f} | {n / run['wall_s']:,.0f} | "
            f"{run['cpu_s']:,.1f} | {1e6 * run['cpu_s'] / n:,.1f} | {n / run['cpu_s']:,.0f} | "
            f"{run['load_start']:.1f} → {run['load_end']:.1f} | {run['bytes'] / 2**20:,.0f} |"
        )
    out.append("")
    if floor:
        target = min(10_000, 0.8 * n / floor["cpu_s"])
        out.append(
            f"Target (issue 16): 10,000 jobs/s or 80 % of the floor, whichever is lower: the floor is "
            f"{n / floor['cpu_s']:,.0f} jobs/s by CPU ({n / floor['wall_s']:,.0f} by wall time in this run), "
            f"so the target is **{target:,.0f} jobs/s**."
        )
        out.append("")
        out.append("The floor's parts:")
        out.append("")
        out.extend(line for line in floor["table"].splitlines() if line.startswith("|"))
        out.append("")
    for s in same:
        out.append(
            f"* round {s['round']}: the same index before and after: "
            + ", ".join(f"{table} {'yes' if ok else '**NO**'}" for table, ok in s["same"].items())
        )
    out.append("")
    out.append("Load average at each step:")
    out.append("")
    out.extend(f"* {when} ({load:.1f}) {msg}" for when, msg, load in bench.LOADS)
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--base", default=BASE_COMMIT, help="the commit to compare with (default: %(default)s)")
    parser.add_argument("--no-floor", action="store_true", help="skip breakdown.py bulk-floor")
    parser.add_argument("--no-compare", action="store_true", help="skip comparing the indexes (minutes at 1M)")
    parser.add_argument("--tag", default="", help="results/import-sqlite-<N>-<tag>.md instead of -<N>.md")
    args = parser.parse_args()
    dump, _ = bench.dump_file(args.jobs)
    args.dump_mib = dump.stat().st_size / 2**20
    trees = {"before": bench.base_tree(args.base), "after": ROOT}
    floor = None
    runs: list[dict] = []
    same: list[dict] = []

    def save() -> str:
        report = render(args, floor, runs, same)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / (f"import-sqlite-{args.jobs}" + (f"-{args.tag}" if args.tag else ""))
        out.with_suffix(".md").write_text(report)
        data = {"jobs": args.jobs, "base": args.base, "floor": floor, "runs": runs, "same": same, "loads": bench.LOADS}
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        return report

    if not args.no_floor:
        log(f"floor: breakdown.py bulk-floor --jobs {args.jobs}")
        floor = run_floor(args.jobs)
        log(f"  floor {floor['wall_s']:.1f} s wall, {floor['cpu_s']:.1f} s CPU")
        save()
    for round_no in range(1, args.rounds + 1):
        order = ["before", "after"] if round_no % 2 else ["after", "before"]
        dbs = {}
        for name in order:
            db = WORK / f"import-{name}-{args.jobs}.sqlite3"
            log(f"round {round_no}: import {dump.name} ({name})")
            run = {"round": round_no, "name": name, **run_import(db, dump, trees[name])}
            log(
                f"  {run['wall_s']:.1f} s, {args.jobs / run['wall_s']:,.0f} jobs/s, "
                f"{run['cpu_s']:.1f} s CPU; {run['summary']}"
            )
            runs.append(run)
            dbs[name] = db
            save()
        if not args.no_compare:
            log(f"round {round_no}: comparing the two indexes")
            a, b = digests(dbs["before"]), digests(dbs["after"])
            same.append({"round": round_no, "same": {t: a[t] == b[t] for t in a}, "before": a, "after": b})
        for db in dbs.values():
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        save()
    print(save())


if __name__ == "__main__":
    main()
