#!/usr/bin/env python
"""Benchmark of full-text search (issue 14): import cost, bytes per job, search pages.

Builds two indexes from the same ``GET /history`` dump with ``jobs-index import`` in
its own process (as ``bench.py`` does): one with the code *before* search (a
``git archive`` of ``--base``, which still writes ``job_nodes``) and one with this
code (``job_search`` instead). Reports import wall time and jobs/s, bytes per job by
table/index, then over HTTP (``bench.Server``, one keep-alive connection) p50/p99
of search pages: a rare term (< 100 matches), a 1 % term, a 50 % term, two words,
a phrase, a prefix, each alone and with ``status=failed``, first page and a deep
cursor page; the in-process cost of the exact total; and plain listing pages on
both indexes. When ``--base`` already has search (a ``job_search`` table), the
search pages run on the base index with the base code too, in the same run, and
the table shows both.

Datasets: ``realistic`` (``sample.realistic_history``: Zipf-like prompt words,
hundreds of model and LoRA names, 5-60 nodes per job) or ``synthetic``
(``sample.synthetic_history``, the dump ``bench.py`` imports).

Usage::

    .venv/bin/python benchmarks/search.py --jobs 100000
    .venv/bin/python benchmarks/search.py --jobs 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
from bench import RESULTS, WORK, Case, Target, http_series, log, pct
from sqlalchemy import create_engine, text

from jobs_index import queries, search_queries
from jobs_index.cursor import encode_cursor
from jobs_index.database import read_transaction
from jobs_index.params import ListQuery, parse_list_query
from jobs_index.sample import RealisticVocabulary, realistic_history
from jobs_index.search import COMMON_WORDS
from jobs_index.services import JobsIndex

BASE_COMMIT = "d22a2c7"  # the branch point of issue 14: job_nodes, no search


def dump(dataset: str, n: int) -> Path:
    if dataset == "synthetic":
        return bench.dump_file(n)[0]
    path = WORK / f"realistic-{n}.json"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write("{")
        for i, (job_id, item) in enumerate(realistic_history(n)):
            out.write(("" if i == 0 else ", ") + json.dumps(job_id) + ": " + json.dumps(item))
        out.write("}")
    partial.replace(path)
    return path


def run_import(url: str, path: Path, cwd: Path) -> tuple[float, float, str]:
    command = [
        sys.executable,
        "-c",
        "import sys, jobs_index.cli as c; sys.argv[0] = 'jobs-index'; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; del sys.argv[1]; c.cli()",
        str(cwd),
        "--db",
        url,
        "import",
        str(path),
    ]
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stderr[-2000:]}")
    return wall, cpu, (done.stdout.strip().splitlines() or [""])[-1]


def disk(target: Target, n: int) -> dict:
    """Bytes by table and index, read without opening the index (which would
    upgrade the base one)."""
    if target.backend == "sqlite":
        import sqlite3

        raw = sqlite3.connect(target.path, isolation_level=None)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = raw.execute("PRAGMA page_size").fetchone()[0]
            free = raw.execute("PRAGMA freelist_count").fetchone()[0] * page_size
            parts = [
                (str(a), int(b))
                for a, b in raw.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
            ]
        finally:
            raw.close()
        total = target.path.stat().st_size - free
        return {"total": total, "per_job": total / n, "parts": parts}
    engine = create_engine(target.url)
    try:
        with engine.connect() as conn:
            names = [
                r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
            ]
            parts = [
                (name, int(conn.execute(text(f"SELECT pg_total_relation_size('\"{name}\"')")).scalar_one()))
                for name in names
            ]
    finally:
        engine.dispose()
    total = sum(p[1] for p in parts)
    return {"total": total, "per_job": total / n, "parts": sorted(parts, key=lambda p: -p[1])}


def build(target: Target, path: Path, cwd: Path, n: int) -> dict:
    target.reset()
    log(f"  import {path.name} into {target.url} (code: {cwd.name})")
    wall, cpu, summary = run_import(target.url, path, cwd)
    if target.backend == "postgresql":  # what autovacuum would do after a bulk load
        engine = create_engine(target.url)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
        engine.dispose()
    return {"wall_s": wall, "cpu_s": cpu, "jobs_per_s": n / wall, "summary": summary, "disk": disk(target, n)}


def count(index: JobsIndex, q: str, status: str | None = None) -> int:
    params = {"q": q, **({"status": status} if status else {})}
    with read_transaction(index.engine) as conn:
        return search_queries.count_matches(conn, parse_list_query(params))


def pick_terms(index: JobsIndex, n: int, vocab: RealisticVocabulary, dataset: str) -> dict[str, str]:
    """Terms whose match counts fit the issue's bands, found by counting."""

    def band(lo: float, hi: float, candidates) -> str:
        for word in candidates:
            c = count(index, word)
            if lo <= c <= hi:
                return word
        raise RuntimeError(f"no term with {lo}-{hi} matches")

    if dataset == "synthetic":
        with index.engine.connect() as conn:
            seed = conn.execute(text("SELECT id FROM jobs ORDER BY id LIMIT 1")).scalar_one()
        return {
            "rare": seed.split("-")[0],
            "1%": "ComfyUI_0000*",
            "50%": "euler",
            "two words": "watercolor fox",
            "phrase": '"neon city rain"',
            "prefix": "cast*",
        }
    words = vocab.words
    return {
        "rare": band(min(20, n // 1000), 99, (words[i] for i in range(200, len(words), 97))),
        "1%": band(0.005 * n, 0.02 * n, (words[i] for i in range(40, 3000, 7))),
        "50%": band(0.35 * n, 0.65 * n, words[:60]),
        "two words": "masterpiece portrait",
        "phrase": '"best quality"',
        "prefix": "jugg*",
        # common grams (revision 0012): a longer phrase, a name that is a phrase, and a
        # phrase with a word not in search.COMMON_WORDS (the most common such word)
        "phrase of three": '"masterpiece best quality"',
        "name phrase": "juggernautXL_v9",
        "phrase, one word not common": f'"a {next(w for w in words if w not in COMMON_WORDS)}"',
    }


def search_cases(index: JobsIndex, terms: dict[str, str]) -> tuple[list[Case], dict]:
    cases, facts = [], {}
    for label, q in terms.items():
        for status in (None, "failed"):
            params = {"q": q, "limit": "50", **({"status": status} if status else {})}
            name = f"{label}: {q}" + (" status=failed" if status else "")
            total = count(index, q, status)
            started = time.perf_counter()
            for _ in range(5):
                count(index, q, status)
            facts[name] = {"total": total, "count_ms": (time.perf_counter() - started) / 5 * 1000}
            cases.append(Case(name, params, note=f"{total:,} matches"))
            if total > 100:
                mid = index.list_jobs(parse_list_query({**params, "limit": "1", "offset": str(total // 2)})).jobs[0]
                deep = {**params, "after": encode_cursor(mid["create_time"], mid["id"], "desc")}
                cases.append(Case(name + ", deep cursor", deep, note=f"{total // 2:,} matches deep"))
    return cases, facts


def listing_cases() -> list[Case]:
    return [
        Case("first page", {"limit": "50"}),
        Case("status=completed", {"limit": "50", "status": "completed"}),
        Case("status=failed", {"limit": "50", "status": "failed"}),
    ]


def server_env(cache: bool) -> dict[str, str]:
    """The environment of a ``serve`` process: the search totals cache on (its default)
    or off (every request counts its total, as before the cache)."""
    env = {k: v for k, v in os.environ.items() if k != search_queries.TOTALS_CACHE_ENV}
    if not cache:
        env[search_queries.TOTALS_CACHE_ENV] = "0"
    return env


def series(
    url: str, cases: list[Case], args, cwd: Path = ROOT, raw: bool = False, env: dict[str, str] | None = None
) -> dict:
    """p50/p99 over HTTP. The code in ``cwd`` serves (``jobs-index serve`` in its own
    process), so the base index is served, unchanged, by the base code."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "import sys, jobs_index.cli as c; sys.argv[0] = 'jobs-index'; c.cli()",
        "--db",
        url,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or server_env(True)
    )
    base = f"http://127.0.0.1:{port}/api/jobs"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "?limit=1", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        results = http_series(base, cases, args.warmup, args.requests, rounds=3)
    finally:
        server.terminate()
        server.wait(30)
    if raw:
        return results
    return {
        name: {
            "p50": pct(r["times"], 50) * 1000,
            "p99": pct(r["times"], 99) * 1000,
            "jobs": len(r["body"]["jobs"]),
            "total": r["body"]["pagination"]["total"],
        }
        for name, r in results.items()
    }


def has_search(target: Target) -> bool:
    """Whether an index (built by ``--base``) has the search tables."""
    engine = create_engine(target.url)
    try:
        with engine.connect() as conn:
            if target.backend == "sqlite":
                sql = "SELECT count(*) FROM sqlite_master WHERE name = 'job_search'"
            else:
                sql = "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'job_search'"
            return bool(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def series_pair(targets: dict, cases: list[Case], args, cwd: dict, env: dict | None = None) -> dict:
    """``series`` of the base and this code (or of ``env``'s two environments),
    alternating by rounds (one round each, three times), so that both see the same
    load on a shared machine."""
    one = argparse.Namespace(**{**vars(args), "requests": max(1, args.requests // 3)})
    runs: dict[str, list[dict]] = {"base": [], "search": []}
    for _ in range(3):
        for label in ("base", "search"):
            runs[label].append(series(targets[label].url, cases, one, cwd[label], raw=True, env=(env or {}).get(label)))
    out = {}
    for label, parts in runs.items():
        out[label] = {}
        for case in cases:
            times = [t for part in parts for t in part[case.name]["times"]]
            body = parts[-1][case.name]["body"]
            out[label][case.name] = {
                "p50": pct(times, 50) * 1000,
                "p99": pct(times, 99) * 1000,
                "jobs": len(body["jobs"]),
                "total": body["pagination"]["total"],
            }
    return out


def render(args, facts: dict) -> str:
    n, b = args.jobs, facts["build"]
    lines = [
        f"# Search benchmark: {facts['backend']}, {args.dataset} dataset, N = {n:,}",
        "",
        f"`benchmarks/search.py --jobs {n} --dataset {args.dataset}`, {facts['date']}, git {facts['git']}; "
        f"base = `{args.base}`{'' if facts.get('search_base') else ' (before search: `job_nodes`, no `job_search`)'}. "
        "2 shared cores: "
        "other sessions ran on the machine (load average in the JSON twin).",
        "",
        "## Import (`jobs-index import <dump>` in its own process) and disk",
        "",
        "| code | wall s | CPU s | jobs/s | bytes/job | summary |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    labels = [label for label in ("base", "search") if label in b]
    for label in labels:
        r = b[label]
        cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-"
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {cpu} | **{r['jobs_per_s']:,.0f}** | **{r['disk']['per_job']:,.0f}** "
            f"| {r['summary']} |"
        )
    if "base" not in b:
        lines += ["", "The base index was not built in this run (`--no-base`)."]
    lines += [
        "",
        "Bytes per job by table and index (largest first):",
        "",
        "| part | base B/job | search B/job |",
        "| --- | ---: | ---: |",
    ]
    parts = {}
    for label in labels:
        for name, size in b[label]["disk"]["parts"]:
            parts.setdefault(name, {})[label] = size / n
    for name, sizes in sorted(parts.items(), key=lambda kv: -max(kv[1].values())):
        if max(sizes.values()) >= 1:
            lines.append(f"| {name} | {sizes.get('base', 0):,.0f} | {sizes.get('search', 0):,.0f} |")
    lines += [
        "",
        f"## Search pages over HTTP (limit=50; {args.warmup} warm-up + {args.requests} requests each, "
        "3 round-robin rounds)",
        "",
    ]
    before = facts.get("search_base")
    if before:
        lines += [
            f"Before ({facts.get('before', '`--base` code on its own index')}) and after (this code), "
            "interleaved in one run. A repeated request finds its total kept (the totals cache, keyed by "
            "the data version): the first request of a query, and every request after a write, costs "
            "the after p50 plus about the exact total's in-process cost:",
            "",
            "| query | before p50 ms | **after p50 ms** | before p99 | after p99 | jobs | total "
            "| exact total alone, in-process ms (after) | plan (after) | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
    else:
        lines += [
            "| query | p50 ms | p99 ms | jobs | total | exact total alone, in-process ms | plan | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
    for case in facts["cases"]:
        r = facts["search"][case["name"]]
        base_name = case["name"].replace(", deep cursor", "")
        cost = facts["totals"][base_name]["count_ms"]
        if before:
            b = before[case["name"]]
            assert b["total"] == r["total"], (case["name"], b["total"], r["total"])
            lines.append(
                f"| {case['name']} | {b['p50']:.2f} | **{r['p50']:.2f}** | {b['p99']:.2f} | {r['p99']:.2f} "
                f"| {r['jobs']} | {r['total']:,} | {cost:.2f} | {case['plan']} | {case['note']} |"
            )
            continue
        lines.append(
            f"| {case['name']} | **{r['p50']:.2f}** | {r['p99']:.2f} | {r['jobs']} | {r['total']:,} "
            f"| {cost:.2f} | {case['plan']} | {case['note']} |"
        )
    lines += [
        "",
        "## Plain listing pages over HTTP (same code path; only the database differs)",
        "",
        "| query | base index p50 ms | search index p50 ms | base p99 | search p99 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    nothing = {"p50": float("nan"), "p99": float("nan")}
    for name in facts["listing"]["search"]:
        a, s = facts["listing"].get("base", {}).get(name, nothing), facts["listing"]["search"][name]
        lines.append(f"| {name} | {a['p50']:.2f} | {s['p50']:.2f} | {a['p99']:.2f} | {s['p99']:.2f} |")
    if facts.get("load"):
        loads = [entry[2] for entry in facts["load"]]
        lines += [
            "",
            f"1-minute load average during the run (from the log lines): {min(loads):.1f}-{max(loads):.1f}; "
            f"`uptime` at the end: {facts.get('uptime', '')}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--db", default=None, help="PostgreSQL base URL (default: SQLite files under _work/)")
    ap.add_argument("--dataset", choices=("realistic", "synthetic"), default="realistic")
    ap.add_argument("--base", default=BASE_COMMIT)
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reuse", action="store_true", help="reuse indexes built by an earlier run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--no-base",
        action="store_true",
        help="build only this code's index (at 1M the base build costs half an hour); the base's rows "
        "and pages are left out unless an earlier run left its index",
    )
    ap.add_argument("--build-only", action="store_true", help="import (and record the build), no pages")
    ap.add_argument(
        "--grams-pair",
        action="store_true",
        help="before = this code serving this index with phrases in their plain form (no common grams)",
    )
    ap.add_argument(
        "--same-index",
        action="store_true",
        help="before = the --base code serving this code's index (a code-only change: no base build)",
    )
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    ap.add_argument(
        "--no-cache-pair",
        action="store_true",
        help="when the base has no search: do not also serve this code with the totals cache off",
    )
    args = ap.parse_args()
    n = args.jobs
    path = dump(args.dataset, n)
    targets = {
        "base": Target(args.db, n, label=f"{args.dataset}-{n}-base"),
        "search": Target(args.db, n, label=f"{args.dataset}-{n}-search"),
    }
    cwd = {"base": bench.base_tree(args.base), "search": ROOT}
    sidecar = WORK / f"search-{targets['search'].backend}-{args.dataset}-{n}.build.json"
    built = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    if not args.reuse or "search" not in built:
        labels = ("search",) if args.no_base else ("base", "search")
        built = {**built, **{label: build(targets[label], path, cwd[label], n) for label in labels}}
        if args.no_base and not (targets["base"].backend == "sqlite" and targets["base"].path.exists()):
            built.pop("base", None)  # an earlier run's base figures, but its index is gone
        sidecar.write_text(json.dumps(built))
    if args.build_only:
        return
    with_base = "base" in built
    facts = {
        "backend": targets["search"].backend,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "build": built,
        "load": [],
    }
    os.environ[search_queries.TOTALS_CACHE_ENV] = "0"  # in-process counts below: each one counted
    index = JobsIndex.open(targets["search"].url)
    try:
        terms = pick_terms(index, n, RealisticVocabulary(), args.dataset)
        log(f"  terms: {terms}")
        cases, facts["totals"] = search_cases(index, terms)
        with read_transaction(index.engine) as conn:
            for case in cases:
                total = facts["totals"][case.name.replace(", deep cursor", "")]["total"]
                query = parse_list_query(case.params)
                jobs = [
                    queries.count_total(conn, q)
                    for q in (
                        search_queries.walked_query(query, conn.dialect.name),
                        replace(query, search=None),
                        ListQuery(),
                    )
                ]
                case.plan = search_queries.choose_plan(
                    query,
                    total,
                    51,
                    *jobs,
                    dialect=conn.dialect.name,
                    expanded=search_queries.expansions(conn, query),
                )
    finally:
        index.close()
    facts["cases"] = [{"name": c.name, "params": c.params, "note": c.note, "plan": c.plan} for c in cases]
    log(f"  {len(cases)} search cases over HTTP")
    if args.grams_pair:  # this code without and with common grams, same index, same run
        same = {"base": targets["search"], "search": targets["search"]}
        env = {"base": {**server_env(True), search_queries.GRAMS_ENV: "0"}, "search": server_env(True)}
        both = series_pair(same, cases, args, {"base": ROOT, "search": ROOT}, env)
        facts["search_base"], facts["search"] = both["base"], both["search"]
        facts["before"] = f"this code with phrases in their plain form (`{search_queries.GRAMS_ENV}=0`)"
    elif args.same_index:  # the --base code and this code, both serving this code's index, same run
        same = {"base": targets["search"], "search": targets["search"]}
        both = series_pair(same, cases, args, cwd)
        facts["search_base"], facts["search"] = both["base"], both["search"]
        facts["before"] = f"`{args.base}` code serving the same index"
    elif with_base and has_search(targets["base"]):  # the same cases on the base index, base code, same run
        both = series_pair(targets, cases, args, cwd)
        facts["search_base"], facts["search"] = both["base"], both["search"]
    elif not args.no_cache_pair:  # this code, totals cache off (before) and on (after), same index, same run
        same = {"base": targets["search"], "search": targets["search"]}
        env = {"base": server_env(False), "search": server_env(True)}
        both = series_pair(same, cases, args, {"base": ROOT, "search": ROOT}, env)
        facts["search_base"], facts["search"] = both["base"], both["search"]
        facts["before"] = f"this code with the totals cache off (`{search_queries.TOTALS_CACHE_ENV}=0`)"
    else:
        facts["search"] = series(targets["search"].url, cases, args)
    facts["listing"] = {
        label: series(targets[label].url, listing_cases(), args, cwd[label])
        for label in (("base", "search") if with_base else ("search",))
    }
    facts["load"] = [list(entry) for entry in bench.LOADS]
    facts["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = render(args, facts)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = f"search-{facts['backend']}-{args.dataset}-{n}{'-' + args.tag if args.tag else ''}"
        (RESULTS / f"{stem}.md").write_text(report)
        (RESULTS / f"{stem}.json").write_text(json.dumps(facts, indent=1, default=str))


if __name__ == "__main__":
    main()
