#!/usr/bin/env python
"""Where a search page's time goes, in-process, on an existing SQLite index (issue 14).

    .venv/bin/python benchmarks/search_floor.py \\
        --db sqlite:///benchmarks/_work/bench-realistic-1000000-search.sqlite3 \\
        --terms '{"50%": "and", "two words": "masterpiece portrait", "prefix": "jugg*"}'

For each query (alone and with ``status=failed``), median of ``--repeat`` runs, cache
warm, through the bare driver (no HTTP, no JSON):

* ``fts5 count``: ``count(*)`` of the FTS5 table alone (walks the doclists);
* ``fts5vocab doc``: the per-term document count of an ``fts5vocab`` table (one word);
* ``joined count``: the count ``count_matches`` runs when it cannot use FTS5 alone
  (each match's narrow ``job_search`` row: filters, orphans);
* ``matches page``: the matches-first page (every match read and its sort key sorted,
  50 + 1 kept) without the count;
* ``timeline page``: the timeline-first page (the listing's index walked in batches,
  one FTS5 query per docid range of a batch) without the count;
* ``timeline, probe per job``: the same page as before the batched walk (one FTS5
  query per walked job);
* ``timeline page, prefix form``: the same with prefixes left unexpanded (as before
  ``SqliteStore.expansions``: FTS5 merges the prefix's doclists for every range query);
* ``prefix words``: reading a prefix's words from ``fts5vocab`` (uncached);
* ``fts5 words count``: ``count(*)`` of all the query's words in any order (a
  phrase: the jobs whose positions FTS5 reads to find its matches);
* ``probe``: one FTS5 probe (``rowid = ? AND MATCH``) of a job, averaged over 200 jobs;
* ``list_jobs``: the whole page as the server builds it, totals cache off (the count,
  the plan, the page, the JSON).

Nothing here is part of ``search.py``'s numbers; it explains them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import RESULTS, log

from jobs_index import search_queries
from jobs_index.database import read_transaction
from jobs_index.params import parse_list_query
from jobs_index.search import expandable
from jobs_index.services import JobsIndex


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, out


def measure(index: JobsIndex, q: str, status: str | None, repeat: int) -> dict:
    params = {"q": q, "limit": "50", **({"status": status} if status else {})}
    query = parse_list_query(params)
    row: dict = {"query": q + (" status=failed" if status else "")}
    with read_transaction(index.engine) as conn:
        values = search_queries._values(conn, query)
        raw = conn.connection.dbapi_connection
        assert raw is not None
        match = values["m"]
        row["fts5 count"], fts = timed(
            lambda: raw.execute(
                "SELECT count(*) FROM job_search_fts WHERE job_search_fts MATCH ?", (match,)
            ).fetchone()[0],
            repeat,
        )
        # fts5vocab's per-term document count (one word, no prefix): does it read less?
        raw.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_vocab USING fts5vocab(main, job_search_fts, row)")
        single = " " not in q and not q.endswith("*") and not q.startswith('"')
        row["fts5vocab doc"], _ = (
            timed(
                lambda: raw.execute("SELECT doc FROM temp.search_vocab WHERE term = ?", (q.lower(),)).fetchall(), repeat
            )
            if single
            else (float("nan"), None)
        )
        sql = search_queries._count_sql("sqlite", 0 if status is None else 1, False, False)
        row["joined count"], total = timed(lambda: search_queries._run(conn, sql, values).scalar_one(), repeat)
        row["matches"] = total
        row["fts5 docs"] = fts
        for plan in ("matches", "timeline"):
            row[f"{plan} page"], _ = timed(
                lambda plan=plan: search_queries.select_page(conn, query, plan=plan, limit=51), max(1, repeat // 2)
            )
        kept = search_queries.PREFIX_EXPANSION_MAX
        search_queries.PREFIX_EXPANSION_MAX = 0
        try:
            row["timeline page, prefix form"], _ = timed(
                lambda: search_queries.select_page(conn, query, plan="timeline", limit=51), max(1, repeat // 2)
            )
        finally:
            search_queries.PREFIX_EXPANSION_MAX = kept
        prefixes = [t.words[0] for t in query.search.terms if expandable(t)]
        row["prefix words"], found = (
            timed(lambda: [search_queries.SqliteStore._expansion(conn, p) for p in prefixes], repeat)
            if prefixes
            else (float("nan"), None)
        )
        row["expanded to"] = sum(len(f) for f in found) if found else 0
        every = " AND ".join(f'"{w}"' for t in query.search.included for w in t.words)
        row["fts5 words count"], _ = timed(
            lambda: raw.execute(
                "SELECT count(*) FROM job_search_fts WHERE job_search_fts MATCH ?", (every,)
            ).fetchone()[0],
            repeat,
        )
        # the timeline as before the batched walk: one FTS5 query per walked job
        shape = search_queries._Shape(
            "sqlite", "timeline", "created_at", True, 0 if status is None else 1, False, False, False, True, False
        )
        row["timeline, probe per job"], _ = timed(
            lambda: search_queries._run(conn, search_queries._page_sql(shape), {**values, "limit": 51}).fetchall(),
            max(1, repeat // 2),
        )
        docids = [
            r[0] for r in raw.execute("SELECT docid FROM job_search ORDER BY create_time DESC LIMIT 200").fetchall()
        ]
        started = time.perf_counter()
        for docid in docids:
            raw.execute(
                "SELECT 1 FROM job_search_fts WHERE rowid = ? AND job_search_fts MATCH ?", (docid, match)
            ).fetchall()
        row["probe us"] = (time.perf_counter() - started) / len(docids) * 1e6
    row["list_jobs"], _ = timed(lambda: index.list_jobs(query), repeat)
    return row


COLUMNS = (
    "fts5 count",
    "fts5vocab doc",
    "joined count",
    "matches page",
    "timeline page",
    "timeline page, prefix form",
    "prefix words",
    "fts5 words count",
    "timeline, probe per job",
    "probe us",
    "list_jobs",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--terms", required=True, help="JSON {label: query}")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="results file stem (default: no file)")
    args = ap.parse_args()
    os.environ[search_queries.TOTALS_CACHE_ENV] = "0"
    terms = json.loads(args.terms)
    index = JobsIndex.open(args.db)
    rows = []
    try:
        for label, q in terms.items():
            for status in (None, "failed"):
                log(f"  {label}: {q} {status or ''}")
                rows.append({"label": label, **measure(index, q, status, args.repeat)})
    finally:
        index.close()
    lines = [
        f"# Search floors, in-process: {args.db.rsplit('/', 1)[-1]}",
        "",
        f"`benchmarks/search_floor.py`, {time.strftime('%Y-%m-%dT%H:%M:%S')}, load average "
        f"{os.getloadavg()[0]:.1f} (2 shared cores). Milliseconds (median of {args.repeat}), probe in us; "
        "totals cache off.",
        "",
        "| query | matches | FTS5 docs | prefix's words | " + " | ".join(COLUMNS) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']}: {r['query']} | {r['matches']:,} | {r['fts5 docs']:,} | {r['expanded to']} | "
            + " | ".join(f"{r[c]:.1f}" for c in COLUMNS)
            + " |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        (RESULTS / f"{args.out}.md").write_text(report)


if __name__ == "__main__":
    main()
