#!/usr/bin/env python
"""PostgreSQL import: batch by batch (before issue 16) against the bulk load with COPY.

The same ``GET /history`` dump of N synthetic jobs (``bench.dump_file``, written once to
``_work/``) is imported by ``jobs-index --db URL import`` in its own process, as a user
runs it, into a fresh schema each time, the two ways interleaved round by round:

* ``batches``: ``import --no-bulk``: one transaction per batch, each an ``unnest`` upsert
  with every index and foreign key in place: what PostgreSQL always did before issue 16;
* ``bulk``: ``import`` (the default) into the empty schema: one transaction, secondary
  indexes and foreign keys dropped, rows by ``COPY``, indexes built by one sort each,
  then ``VACUUM (ANALYZE)`` (the command's own phase times are read from its ``-v`` log).

Then, right after each import (no manual ``ANALYZE``): a deep ``offset`` page (half way
down, ``limit=50``) and the first page, in-process, p50 of repeated calls; and checks that
both schemas hold the same rows (every column but ``indexed_at``, by digest), the same
``job_outputs``, ``job_search`` and ``job_counts``, and that the counters are exact.

    .venv/bin/python benchmarks/pg_import.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/bench_i16

``--workers 1,2`` runs the bulk load once per number of normalising workers
(``bulk-w1``, ``bulk-w2``: ``import --workers N``). ``--base COMMIT`` adds ``bulk-base``:
the bulk load by that commit's code (``bench.base_tree``), the before of a change, in the
same run. ``--modes bulk`` runs only the bulk load (at 1M the batches take long); ``--floor``
then runs ``breakdown.py pg-bulk-floor`` of as many jobs in the same run (what the
server and the bare driver cost: the bound on the import's rate); ``--tag T`` names the
files ``pg-import-<N>-T``.

Writes ``results/pg-import-<N>.md`` and ``.json``. Wall times on a shared machine
wander with the load: every row gives the 1-minute load average when it started and
the client's CPU seconds (the server's are not separated from other users').
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
import breakdown
from sqlalchemy import create_engine, text

from jobs_index.database import current_revision, head_revision
from jobs_index.params import parse_list_query
from jobs_index.services import JobsIndex

RESULTS = ROOT / "benchmarks" / "results"
MODES = {"batches": ["--no-bulk"], "bulk-base": [], "bulk": []}  # bulk-base: ``--base``'s code
DIGESTS = {
    "jobs": "SELECT count(*), md5(string_agg(md5(row(id, status, stage, priority, create_time, create_time_missing, "
    "execution_start_time, execution_end_time, execution_duration, outputs_count, preview_output, execution_error, "
    "error_type, error_message, error_node_id, error_node_type, workflow_id, source, raw_kind, raw, raw_digest, "
    "priority_json)::text), '' ORDER BY id)) FROM jobs",
    "job_outputs": "SELECT count(*), md5(string_agg(md5(o::text), '' ORDER BY job_id, ordinal)) FROM job_outputs AS o",
    # The search document without its common grams (``search.GRAM_JOINER`` lexemes,
    # revision 0012_search_grams), so that an index built before them compares too.
    "job_search": (
        "SELECT count(*), md5(string_agg(md5(s::text), '' ORDER BY job_id)) FROM (SELECT job_id, create_time, "
        "execution_duration, status, workflow_id, source, ts_delete(doc, ARRAY(SELECT lexeme FROM unnest(doc) "
        "WHERE lexeme LIKE '\u2027%')) AS doc, node_types, models, loras FROM job_search) AS s"
    ),
    "job_counts": "SELECT count(*), md5(string_agg(md5(c::text), '' ORDER BY source, workflow_id, status)) "
    "FROM job_counts AS c WHERE n <> 0",
}


def schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def reset_schema(base: str, schema: str) -> None:
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()


def drop_schema(base: str, schema: str) -> None:
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def backend_cpu(admin, seen: dict[int, float]) -> None:
    """Record the CPU seconds so far (from /proc: the server runs on this machine) of
    each jobs-index session in the benchmark's database: the import's, as only it
    connects there meanwhile."""
    with admin.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = 'jobs-index' AND datname = current_database()"
            )
        ).scalars()
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seen[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_import(url: str, dump: Path, options: list[str], admin, code: Path = ROOT) -> dict:
    command = [sys.executable, "-m", "jobs_index", "-v", "--db", url, "import", *options, str(dump)]
    before, load = os.times(), os.getloadavg()[0]
    started = time.perf_counter()
    server: dict[int, float] = {}
    with subprocess.Popen(command, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            backend_cpu(admin, server)
            time.sleep(0.5)
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"import failed ({proc.returncode}): {stderr[-2000:]}")
    phases = re.findall(r"bulk load(?::|'s COPY thread:) .*", stderr)
    return {
        "wall_s": wall,
        "cpu_s": (after.children_user - before.children_user) + (after.children_system - before.children_system),
        "server_cpu_s": sum(server.values()),
        "load": load,
        "summary": stdout.strip().splitlines()[-1],
        "phases": "; ".join(phases),
    }


def page_p50(index: JobsIndex, params: dict, repeats: int) -> float:
    query = parse_list_query(params)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        index.list_jobs(query)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _or_dash(value, spec: str) -> str:
    """``value`` formatted, or "–" where it was not measured (an index at an older revision)."""
    return "–" if value is None else format(value, spec)


def inspect(url: str, n: int, repeats: int) -> dict:
    """Pages, totals and content digests of the index just imported. An index the base
    code made at an older schema revision is compared as it is (digests, visibility)
    and not upgraded (its pages would be this code's on an upgraded index): no pages."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            digests = {table: list(conn.execute(text(sql)).one()) for table, sql in DIGESTS.items()}
            visible = conn.execute(
                text(
                    "SELECT relallvisible::float / greatest(relpages, 1) FROM pg_class "
                    "WHERE relname = 'jobs' AND relnamespace = current_schema()::regnamespace"
                )
            ).scalar()
            at_head = current_revision(conn) == head_revision()
    finally:
        engine.dispose()
    found: dict = {"all_visible": visible, "digests": digests}
    if not at_head:
        return found | {"deep_offset_p50_ms": None, "first_page_p50_ms": None, "total": None, "counts_exact": None}
    with JobsIndex.open(url) as index:
        deep = page_p50(index, {"limit": "50", "offset": str(n // 2)}, repeats)  # first: as right after the import
        first = page_p50(index, {"limit": "50"}, repeats)
        return found | {
            "deep_offset_p50_ms": deep * 1000,
            "first_page_p50_ms": first * 1000,
            "total": index.total(),
            "counts_exact": index.counts_consistent(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_i16")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="calls per page timing")
    parser.add_argument("--keep", action="store_true", help="keep the schemas (default: dropped at the end)")
    parser.add_argument("--order", choices=["batches-first", "bulk-first"], default="batches-first")
    parser.add_argument("--tag", default="", help="suffix of the result files' names (pg-import-<N>-<tag>)")
    parser.add_argument(
        "--floor", action="store_true", help="then the floor: `breakdown.py pg-bulk-floor` of as many jobs"
    )
    parser.add_argument(
        "--base", metavar="COMMIT", help="also bulk-load with the code of COMMIT (`bulk-base`, first in each round)"
    )
    parser.add_argument("--modes", default="batches,bulk", help="comma-separated: batches, bulk (default both)")
    parser.add_argument(
        "--workers",
        metavar="N[,N...]",
        help="the bulk load (this code) once per number of normalising workers (`bulk-wN`: `import --workers N`); "
        "default: the command's own default, once",
    )
    args = parser.parse_args()
    dump, _ = bench.dump_file(args.jobs)
    admin = create_engine(args.db)
    runs = []
    for round_no in range(args.rounds):
        modes = args.modes.split(",") + (["bulk-base"] if args.base else [])
        order = [(m, o) for m, o in MODES.items() if m in modes]
        order = order if args.order == "batches-first" else order[::-1]
        if args.workers:
            order = [
                expanded
                for mode, options in order
                for expanded in (
                    [(f"bulk-w{n}", [*options, "--workers", n]) for n in args.workers.split(",")]
                    if mode == "bulk"
                    else [(mode, options)]
                )
            ]
        for mode, options in order:
            schema = f"pgimp_{mode.replace('-', '_')}"
            reset_schema(args.db, schema)
            url = schema_url(args.db, schema)
            code = bench.base_tree(args.base) if mode == "bulk-base" else ROOT
            bench.log(f"round {round_no + 1}: import {dump.name} ({mode})")
            run = {"round": round_no + 1, "mode": mode, **run_import(url, dump, options, admin, code)}
            run.update(inspect(url, args.jobs, args.repeats))
            bench.log(f"  {run['wall_s']:.1f} s, {args.jobs / run['wall_s']:,.0f} jobs/s; {run['phases']}")
            runs.append(run)
            save(args, runs)  # after each import: a run stopped part-way keeps what it measured
        for run in runs[len(runs) - len(order) + 1 :]:  # this round's imports against its first
            first = runs[len(runs) - len(order)]
            run["same_as"] = first["mode"]
            run["same_as_batches"] = {table: run["digests"][table] == first["digests"][table] for table in DIGESTS}
    if not args.keep:
        for mode in {run["mode"] for run in runs}:
            drop_schema(args.db, f"pgimp_{mode.replace('-', '_')}")
    floor: list[dict] = []
    if args.floor:
        bench.log(f"floor: pg-bulk-floor of {args.jobs:,} jobs")
        floor = breakdown.pg_bulk_floor(args.db, args.jobs, say=lambda line: None)
        bench.log(f"  floor: {floor[-1]['wall_s']:.1f} s, {args.jobs / floor[-1]['wall_s']:,.0f} jobs/s")
    print(save(args, runs, floor))


def save(args, runs: list[dict], floor: list[dict] | None = None) -> str:
    report = render(args, runs, floor or [])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (f"pg-import-{args.jobs}" + (f"-{args.tag}" if args.tag else ""))
    out.with_suffix(".md").write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps({"jobs": args.jobs, "runs": runs, "floor": floor or [], "loads": bench.LOADS}, indent=1)
    )
    return report


def command_line() -> str:
    """This run's arguments, the database URL left out."""
    argv = sys.argv[1:]
    return " ".join(a for i, a in enumerate(argv) if a != "--db" and (i == 0 or argv[i - 1] != "--db"))


def render(args, runs: list[dict], floor: list[dict]) -> str:
    n = args.jobs
    lines = [
        f"# PostgreSQL import of {n:,} jobs: batch by batch vs bulk load with COPY",
        "",
        f"`benchmarks/pg_import.py {command_line()}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs (shared with other users: see the load column). Each import: "
        "`jobs-index import [--no-bulk] history.json` in its own process into a fresh schema; "
        "`batches` is what PostgreSQL did before issue 16. Pages: in-process `list_jobs`, p50 of "
        f"{args.repeats}, right after the import (no manual ANALYZE).",
        "",
        "| round | mode | wall s | jobs/s | client CPU s | server CPU s | client µs/job | server µs/job "
        "| jobs per CPU s | load | deep offset page p50 ms | first page p50 ms | heap all-visible | total "
        "| counters exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r['round']} | {r['mode']} | {r['wall_s']:.1f} | {n / r['wall_s']:,.0f} | {r['cpu_s']:.1f} | "
            f"{r['server_cpu_s']:.1f} | {1e6 * r['cpu_s'] / n:,.0f} | {1e6 * r['server_cpu_s'] / n:,.0f} | "
            f"{n / (r['cpu_s'] + r['server_cpu_s']):,.0f} | {r['load']:.1f} | "
            f"{_or_dash(r['deep_offset_p50_ms'], '.1f')} | {_or_dash(r['first_page_p50_ms'], '.2f')} | "
            f"{r['all_visible']:.0%} | {_or_dash(r['total'], ',')} | {_or_dash(r['counts_exact'], '')} |"
        )
    lines += ["", "Bulk load phases (from the command's `-v` log):", ""]
    lines += [f"* round {r['round']} ({r['mode']}): {r['phases']}" for r in runs if r["phases"]]
    lines += ["", "Same content as the round's first import (digest of every column but `indexed_at`):", ""]
    for r in runs:
        if "same_as_batches" in r:
            lines.append(
                f"* round {r['round']}, {r['mode']} against {r.get('same_as', 'batches')}: "
                + ", ".join(f"{t} {ok}" for t, ok in r["same_as_batches"].items())
            )
    if floor:
        lines += [
            "",
            f"The floor in the same run (`breakdown.py pg-bulk-floor`, {n:,} pre-normalised jobs: no dump, "
            "no normalising): the service's `bulk_load` of them, then the bare driver's binary COPY of prebuilt "
            "rows, index builds, COMMIT and VACUUM (ANALYZE); client CPU is the benchmark process's, server CPU "
            "its backend's:",
            "",
            "| part | wall s | client CPU s | server CPU s | client µs/job | server µs/job | jobs/s by wall |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for part in floor:
            name = "**driver: all of it (the floor)**" if part["part"] == "floor" else part["part"]
            lines.append(
                f"| {name} | {part['wall_s']:,.1f} | {part['cpu_s']:,.1f} | {part['server_cpu_s']:,.1f} | "
                f"{1e6 * part['cpu_s'] / n:,.1f} | {1e6 * part['server_cpu_s'] / n:,.1f} | "
                f"{n / part['wall_s'] if part['wall_s'] else 0:,.0f} |"
            )
    lines += ["", "Load average at each step:", ""]
    lines += [f"* {at} ({load:.1f}) {msg}" for at, msg, load in bench.LOADS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
