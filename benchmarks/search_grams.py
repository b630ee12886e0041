#!/usr/bin/env python
"""Common grams (issue 14, revision 0012): what a list of common words costs in bytes
and client CPU, and what it buys a phrase, per list size and dataset.

For each dataset (``realistic``: ``sample.realistic_history``; ``synthetic``:
``sample.synthetic_history``, ``bench.py``'s jobs) the N jobs' search documents are
derived once, then for each word list (none: phrases in their plain form; the
shipped ``search.COMMON_WORDS``; wider lists of the dataset's most common words):

* SQLite: a contentless FTS5 table as the index has (``tokenize='ascii'``), filled
  in batches of 2,000 as an import writes it (no ``optimize``): its bytes per job
  (``dbstat``), grams per job; then in-process ms (median of 15) to count the
  matches of phrase queries in the form search sends (``fts5_match(grams=...)``);
* client CPU per document of ``Document.fts_text`` and ``tsvector_binary`` (what
  every import and writer pays);
* PostgreSQL (``--pg URL``): the same documents in a scratch table (tsvector + GIN),
  bytes per job of table and index and the count's ms.

Usage::

    .venv/bin/python benchmarks/search_grams.py --jobs 100000 [--pg postgresql+psycopg://postgres@127.0.0.1:5432/bench_x]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs_index import search
from jobs_index.sample import realistic_history, synthetic_history
from jobs_index.search import COMMON_WORDS, Document, document, fts5_match, parse, tsquery

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work"

PHRASES = {
    "realistic": ['"best quality"', '"masterpiece best quality"', "juggernautXL_v9", '"detail tweaker"'],
    "synthetic": ['"neon city rain"', '"low quality"', "v1-5-pruned-emaonly"],
}


def documents(dataset: str, n: int) -> list[Document]:
    """The jobs' documents, their words interned (1M realistic documents: ~1 GB)."""
    made = realistic_history(n) if dataset == "realistic" else synthetic_history(n)
    out = []
    for _, item in made:
        doc = document("history", item)
        out.append(Document(tuple(map(sys.intern, doc.words)), (), (), ()))
    return out


def timed(fn, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def sqlite_case(docs: list[Document], with_grams: bool, phrases: list[str]) -> dict:
    path = WORK / "search-grams.sqlite3"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE f USING fts5(doc, content='', tokenize='ascii', columnsize=0)")
    for start in range(0, len(docs), 2000):
        with db:
            db.executemany(
                "INSERT INTO f (rowid, doc) VALUES (?, ?)",
                [(i, d.fts_text(with_grams)) for i, d in enumerate(docs[start : start + 2000], start + 1)],
            )
    size = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'f_%'").fetchone()[0]
    out: dict = {"fts_bytes_per_job": size / len(docs), "phrases": {}}
    for q in phrases:
        match = fts5_match(parse(q), grams=with_grams)
        count = db.execute("SELECT count(*) FROM f WHERE f MATCH ?", (match,)).fetchone()[0]
        ms = timed(lambda m=match: db.execute("SELECT count(*) FROM f WHERE f MATCH ?", (m,)).fetchone())
        out["phrases"][q] = {"matches": count, "count_ms": ms}
    db.close()
    path.unlink()
    return out


PG_COUNT = "SELECT count(*) FROM grams_scratch WHERE doc @@ %s::tsquery"


def pg_case(url: str, docs: list[Document], with_grams: bool, phrases: list[str]) -> dict:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS grams_scratch")
        conn.execute("CREATE TABLE grams_scratch (id bigint PRIMARY KEY, doc tsvector NOT NULL)")
        with conn.cursor().copy("COPY grams_scratch (id, doc) FROM STDIN") as copy:
            for i, d in enumerate(docs, 1):
                copy.write_row((i, d.tsvector_text(with_grams)))
        conn.execute("CREATE INDEX grams_scratch_doc ON grams_scratch USING gin (doc)")
        conn.execute("VACUUM ANALYZE grams_scratch")
        table = conn.execute("SELECT pg_table_size('grams_scratch')").fetchone()[0]
        index = conn.execute("SELECT pg_relation_size('grams_scratch_doc')").fetchone()[0]
        out: dict = {"table_bytes_per_job": table / len(docs), "gin_bytes_per_job": index / len(docs), "phrases": {}}
        conn.execute("SET enable_seqscan = off")
        for q in phrases:
            ts = tsquery(parse(q), grams=with_grams)
            sql = PG_COUNT
            count = conn.execute(sql, (ts,)).fetchone()[0]
            ms = timed(lambda t=ts: conn.execute(PG_COUNT, (t,)).fetchone(), repeat=7)
            out["phrases"][q] = {"matches": count, "count_ms": ms}
        conn.execute("DROP TABLE grams_scratch")
    return out


def cpu_case(docs: list[Document], with_grams: bool) -> dict:
    sample = docs[:5000]
    return {
        "fts_text_us": timed(lambda: [d.fts_text(with_grams) for d in sample], 3) * 1000 / len(sample),
        "tsvector_binary_us": timed(lambda: [d.tsvector_binary(with_grams=with_grams) for d in sample], 3)
        * 1000
        / len(sample),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--datasets", default="realistic,synthetic")
    ap.add_argument("--pg", help="PostgreSQL URL of a scratch database (its table grams_scratch is dropped)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lists", default="none,shipped,top100,wide", help="the lists to measure (default: all four)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    facts: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "jobs": args.jobs,
        "datasets": {},
    }
    for dataset in args.datasets.split(","):
        docs = documents(dataset, args.jobs)
        df = Counter(w for d in docs for w in set(d.words))
        ranked = [w for w, _ in df.most_common()]
        lists = {
            "none (plain phrases)": None,
            f"shipped ({len(COMMON_WORDS)} words)": COMMON_WORDS,
            "top 100 of the dataset": frozenset(ranked[:100]),
            "shipped + words in 2 %+ of jobs": COMMON_WORDS | {w for w, c in df.items() if c >= 0.02 * len(docs)},
        }
        keys = dict(zip(("none", "shipped", "top100", "wide"), lists, strict=True))
        lists = {keys[k]: lists[keys[k]] for k in args.lists.split(",")}
        rows = {}
        for name, words in lists.items():
            search.COMMON_WORDS = words if words is not None else frozenset()
            try:
                with_grams = words is not None
                grams_per_job = sum(len(search.grams(d.words)) for d in docs) / len(docs) if with_grams else 0.0
                row = {
                    "words": len(words) if words is not None else 0,
                    "grams_per_job": grams_per_job,
                    "sqlite": sqlite_case(docs, with_grams, PHRASES[dataset]),
                    "cpu": cpu_case(docs, with_grams),
                }
                if args.pg:
                    row["postgresql"] = pg_case(args.pg, docs, with_grams, PHRASES[dataset])
            finally:
                search.COMMON_WORDS = COMMON_WORDS
            rows[name] = row
            print(dataset, name, json.dumps(row), flush=True)
        facts["datasets"][dataset] = rows
    facts["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = render(facts, bool(args.pg))
    print(report)
    if not args.no_write:
        stem = f"search-grams-{args.jobs}"
        (RESULTS / f"{stem}.md").write_text(report)
        (RESULTS / f"{stem}.json").write_text(json.dumps(facts, indent=1))


def render(facts: dict, pg: bool) -> str:
    out = [
        f"# Common grams: bytes and speed per word list, N = {facts['jobs']:,}",
        "",
        f"`benchmarks/search_grams.py`, {facts['date']}, git {facts['git']}. In-process, 2 shared cores "
        f"(`uptime` at the end: {facts['uptime']}). Count ms: median of 15 (SQLite) / 7 (PostgreSQL) "
        "`count(*)` of the phrase in the form search sends. SQLite: a contentless FTS5 table filled in "
        "batches of 2,000, as an import writes it. PostgreSQL: a scratch table (tsvector) and its GIN index.",
    ]
    for dataset, rows in facts["datasets"].items():
        phrases = list(next(iter(rows.values()))["sqlite"]["phrases"])
        out += ["", f"## {dataset}", ""]
        head = "| list | words | grams/job | FTS5 B/job | fts_text us | tsvector_binary us |"
        line = "| --- | ---: | ---: | ---: | ---: | ---: |"
        if pg:
            head += " PG table B/job | PG GIN B/job |"
            line += " ---: | ---: |"
        out += [head, line]
        for name, r in rows.items():
            binary = r["cpu"]["tsvector_binary_us"]
            cells = [
                name,
                str(r["words"]),
                f"{r['grams_per_job']:.1f}",
                f"{r['sqlite']['fts_bytes_per_job']:,.0f}",
                f"{r['cpu']['fts_text_us']:.1f}",
                f"{binary:.1f}" if binary is not None else "",
            ]
            if pg:
                cells += [
                    f"{r['postgresql']['table_bytes_per_job']:,.0f}",
                    f"{r['postgresql']['gin_bytes_per_job']:,.0f}",
                ]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "Phrase counts, ms (matches):", ""]
        head = "| list | " + " | ".join(f"SQLite {q}" for q in phrases)
        line = "| --- |" + " ---: |" * len(phrases)
        if pg:
            head += " | " + " | ".join(f"PG {q}" for q in phrases)
            line += " ---: |" * len(phrases)
        out += [head + " |", line]
        for name, r in rows.items():
            cells = [name] + [
                f"{r['sqlite']['phrases'][q]['count_ms']:.2f} ({r['sqlite']['phrases'][q]['matches']:,})"
                for q in phrases
            ]
            if pg:
                cells += [
                    f"{r['postgresql']['phrases'][q]['count_ms']:.2f} ({r['postgresql']['phrases'][q]['matches']:,})"
                    for q in phrases
                ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
