#!/usr/bin/env python
"""Scale benchmark (issue 16 item 3): the same index at several sizes, in one run.

For each size N (ascending; default 1M and 10M) on one engine:

1. **Import**, as a user streams a dump too big to write: the synthetic ``GET /history``
   dump (``sample.synthetic_history``, ``bench.py``'s jobs) is generated in this process
   and piped into ``jobs-index --db URL import -`` (a new SQLite file or an empty
   PostgreSQL schema: a bulk load). Wall time, CPU of the import and its workers, and
   the generator's own CPU (it shares the machine's cores with the import).
2. **Pages over HTTP** (``bench.Server``: ``create_app`` in its own process, one
   keep-alive connection, sequential requests, rounds interleaved): ``bench.py``'s
   listing cases (first/deep cursor pages, deep OFFSET page, every filter, sort) and
   ``search.py``'s synthetic search cases (rare, 1 %, 50 %, two words, phrase, prefix,
   each alone and with ``status=failed``, first page and a deep cursor page).
3. The server's **RSS** (``VmRSS`` after the requests, ``VmHWM`` its peak), which must
   not grow with N.
4. **total** (``JobsIndex.total``, checked against ``COUNT(*)``) and **bytes per job**.

The report puts each size's p50 beside the smallest size's, with the ratio (target:
within 1.2x of the 1M figures). Usage::

    .venv/bin/python benchmarks/scale.py                          # SQLite, 1M and 10M
    .venv/bin/python benchmarks/scale.py --sizes 20000,200000     # a quick try
    .venv/bin/python benchmarks/scale.py --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_scale

Writes ``benchmarks/results/scale-<backend>-<sizes>.md`` and its ``.json`` twin. SQLite
files live under ``benchmarks/_work/`` and are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import search
from bench import RESULTS, ROOT, WORK, Case, Target, log, pct
from sqlalchemy import create_engine, text

from jobs_index.sample import synthetic_history
from jobs_index.services import JobsIndex

CHUNK = 2000  # items per write to the import's stdin


def stream_import(target: Target, n: int) -> dict:
    """Generate the n-job dump here and pipe it into ``jobs-index import -``."""
    target.reset()
    WORK.mkdir(parents=True, exist_ok=True)
    log_path = WORK / f"scale-import-{target.label}.log"
    command = [sys.executable, "-m", "jobs_index", "--db", target.url, "-v", "import", "-"]
    before = os.times()
    gen_cpu = time.process_time()
    started = time.perf_counter()
    sent = 0
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=log_file, stderr=log_file)
        assert process.stdin is not None
        out = process.stdin
        out.write(b"{")
        parts: list[str] = []
        for i, (job_id, item) in enumerate(synthetic_history(n)):
            parts.append(("" if i == 0 else ", ") + json.dumps(job_id) + ": " + json.dumps(item))
            if len(parts) == CHUNK:
                block = "".join(parts).encode()
                out.write(block)
                sent += len(block)
                parts.clear()
            if i and i % 1_000_000 == 0:
                log(f"  {i:,} items sent ({time.perf_counter() - started:,.0f} s)")
        block = ("".join(parts) + "}").encode()
        out.write(block)
        sent += len(block) + 1
        out.close()
        code = process.wait()
    wall = time.perf_counter() - started
    gen_cpu = time.process_time() - gen_cpu
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    lines = log_path.read_text().strip().splitlines()
    if code != 0:
        raise RuntimeError(f"import failed ({code}): {' | '.join(lines[-5:])}")
    phases = [line for line in lines if "bulk load" in line or "dictionary" in line]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "generator_cpu_s": gen_cpu,
        "dump_bytes": sent,
        "jobs_per_s": n / wall,
        "summary": lines[-1] if lines else "",
        "phases": phases[-4:],
    }


def drop(target: Target) -> None:
    """Delete a size's SQLite files, or drop its PostgreSQL schema."""
    if target.backend == "sqlite":
        target.reset()
        return
    engine = create_engine(target.base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE'))
    engine.dispose()


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def first_seed() -> str:
    """The seed of the first synthetic job (an integer input: a searchable word)."""
    _, item = next(synthetic_history(1))
    seeds = [v["inputs"]["seed"] for v in item["prompt"][2].values() if "seed" in v.get("inputs", {})]
    return str(seeds[0])


def cases_for(target: Target, offset_requests: int) -> tuple[list[Case], dict]:
    index = JobsIndex.open(target.url)
    try:
        listing, meta = bench.make_cases(index, index.total(), offset_requests)
        terms = search.pick_terms(index, index.total(), None, "synthetic")  # type: ignore[arg-type]
        terms["rare"] = first_seed()  # a seed: one job (search.py's id prefix is not a word of any job)
        searching, facts = search.search_cases(index, terms)
    finally:
        index.close()
    return listing + searching, {"meta": meta, "search": facts}


def measure(target: Target, n: int, args) -> dict:
    log(f"{target.backend} N={n:,}: streaming the dump into `jobs-index import -`")
    imp = stream_import(target, n)
    log(f"  {imp['jobs_per_s']:,.0f} jobs/s ({imp['wall_s']:,.0f} s wall, {imp['cpu_s']:,.0f} s CPU); {imp['summary']}")
    bench.add_live(target, args.running, args.pending)
    cases, facts = cases_for(target, args.offset_requests)
    log(f"  HTTP: {len(cases)} queries x {args.requests} requests")
    with bench.Server(target.url) as server:
        rss_start = rss_kib(server.process.pid)
        http = bench.http_series(server.base, cases, args.warmup, args.requests, args.rounds)
        rss_end = rss_kib(server.process.pid)
    pages = {
        c.name: {
            "p50": pct(http[c.name]["times"], 50) * 1000,
            "p99": pct(http[c.name]["times"], 99) * 1000,
            "requests": len(http[c.name]["times"]),
            "jobs": len(http[c.name]["body"]["jobs"]),
            "total": http[c.name]["body"]["pagination"]["total"],
            "note": c.note,
        }
        for c in cases
    }
    log("  total() vs COUNT(*), disk")
    totals = bench.measure_totals(target, facts["meta"]["workflow_id"], repeats=100, count_repeats=2)
    disk = bench.measure_disk(target, n + args.running + args.pending)
    if not args.parts:
        disk.pop("parts", None)
    return {
        "n": n,
        "import": imp,
        "pages": pages,
        "rss_kib": {"after_start": rss_start, "after_requests": rss_end},
        "totals": totals,
        "disk": disk,
        "search": facts["search"],
        "load": os.getloadavg(),
    }


def render(args, runs: list[dict], facts: dict) -> str:
    first, sizes = runs[0], [r["n"] for r in runs]
    heads = " | ".join(f"N={n:,} p50 ms" for n in sizes)
    ratios = " | ".join(f"{n // first['n']}x N: ratio" for n in sizes[1:])
    out = [
        f"# Scale: {facts['backend']}, {', '.join(f'{n:,}' for n in sizes)} jobs",
        "",
        f"`benchmarks/scale.py --sizes {args.sizes}`, {facts['when']}, git {facts['git']}; "
        f"{os.cpu_count()} CPUs; load average before/after each size in the last table.",
        "",
        "## Import (the dump generated here and piped into `jobs-index import -`)",
        "",
        "| N | wall s | jobs/s | import CPU s | µs CPU/job | generator CPU s | dump MiB | bytes/job | dump x "
        "| summary |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        i, d = r["import"], r["disk"]
        dump_per_job = i["dump_bytes"] / r["n"]
        out.append(
            f"| {r['n']:,} | {i['wall_s']:,.0f} | {i['jobs_per_s']:,.0f} | {i['cpu_s']:,.0f} | "
            f"{i['cpu_s'] / r['n'] * 1e6:,.1f} | {i['generator_cpu_s']:,.0f} | {i['dump_bytes'] / 2**20:,.0f} | "
            f"{d['per_job']:,.0f} | {d['per_job'] / dump_per_job:.2f}x | {i['summary']} |"
        )
    out += ["", "Bulk-load phases (the import's `-v` log):", ""]
    for r in runs:
        for line in r["import"]["phases"]:
            out.append(f"* N={r['n']:,}: {line.split(': ', 1)[-1] if ': ' in line else line}")
    out += [
        "",
        f"## Pages over HTTP (limit=50; {args.warmup} warm-up + {args.requests} requests each, {args.rounds} rounds)",
        "",
        f"| query | {heads} | {ratios} | p99 ms at largest N | jobs | total at largest N | note |",
        "| --- | "
        + " | ".join("---:" for _ in sizes)
        + " | "
        + " | ".join("---:" for _ in sizes[1:])
        + " | ---: | ---: | ---: | --- |",
    ]
    for name in first["pages"]:
        p50s = [r["pages"][name]["p50"] for r in runs]
        last = runs[-1]["pages"][name]
        out.append(
            f"| {name} | "
            + " | ".join(f"{v:.2f}" for v in p50s)
            + " | "
            + " | ".join(f"**{v / p50s[0]:.2f}x**" for v in p50s[1:])
            + f" | {last['p99']:.2f} | {last['jobs']} | {last['total']:,} | {last['note']} |"
        )
    out += [
        "",
        "## `total` (in-process `JobsIndex.total`, p50) against `SELECT COUNT(*)`",
        "",
        "| filter | " + " | ".join(f"N={n:,} total ms" for n in sizes) + " | COUNT(*) ms at largest N |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |",
    ]
    for k, row in enumerate(first["totals"]):
        out.append(
            f"| {row['name']} | "
            + " | ".join(f"{r['totals'][k]['total_p50'] * 1000:.3f}" for r in runs)
            + f" | {runs[-1]['totals'][k]['count_p50'] * 1000:,.0f} |"
        )
    out += [
        "",
        "## The server's memory (`/proc/<pid>/status`, KiB)",
        "",
        "| N | VmRSS after start | VmRSS after all requests | VmHWM (peak) | load average (1, 5, 15 min) at the end |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        s, e = r["rss_kib"]["after_start"], r["rss_kib"]["after_requests"]
        out.append(
            f"| {r['n']:,} | {s['VmRSS']:,} | {e['VmRSS']:,} | {e['VmHWM']:,} | "
            + ", ".join(f"{x:.1f}" for x in r["load"])
            + " |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma list of N (default 1,000,000,10,000,000)")
    ap.add_argument("--db", default=None, help="PostgreSQL URL (one schema per size); default SQLite files")
    ap.add_argument("--requests", type=int, default=100, help="timed requests per query (default 100)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--offset-requests", type=int, default=10)
    ap.add_argument("--running", type=int, default=1)
    ap.add_argument("--pending", type=int, default=20)
    ap.add_argument("--parts", action="store_true", help="keep bytes per table/index in the JSON")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite files / PostgreSQL schemas")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    backend = bench.backend_of(args.db or "sqlite")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    facts = {
        "backend": backend,
        "git": git.stdout.strip(),
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    runs = []
    for n in sizes:
        target = Target(args.db, n, label=f"scale-{n}")
        try:
            runs.append(measure(target, n, args))
        finally:
            if not args.keep:
                drop(target)
        log(f"  done N={n:,}")
    report = render(args, runs, facts)
    print(report)
    if not args.no_write:
        name = f"scale-{backend}-" + "-".join(f"{n // 1000}k" if n < 10**6 else f"{n // 10**6}M" for n in sizes)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.md").write_text(report)
        (RESULTS / f"{name}.json").write_text(json.dumps({"facts": facts, "runs": runs}, indent=1, default=str))
        log(f"wrote benchmarks/results/{name}.md")


if __name__ == "__main__":
    main()
