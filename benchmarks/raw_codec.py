#!/usr/bin/env python
"""Benchmark of the raw codec (issue 16, "half the bytes"): ``jobs.raw`` as zlib per
item (before) against zstd with a trained dictionary (after, ``rawcodec``).

Three parts, each before/after in the same run:

1. **Per item** (in-process, CPU time): bytes, compression and decompression µs per
   item of ISA-L level 1 (what ``normalize`` wrote before), zstd level 3 without a
   dictionary, and zstd with a dictionary trained on the first 4,000 items (levels 3,
   6, 9; 3 is what ``rawcodec`` writes), on ``--items`` items after the training ones;
   the dictionary's training time.
2. **The raw column at ``--column-jobs``** (default 1,000,000; streamed, no database):
   total bytes of ``raw`` written each way, the dictionary trained as a bulk import
   does (on the first 4,000 items).
3. **A full import at ``--jobs``** (default 100,000): the ``GET /history`` dump
   imported by ``jobs-index import`` in its own process (a bulk load into a new SQLite
   file, default workers) with the code of ``--base`` (a ``git archive``, zlib) and with
   this code, interleaved round by round: wall time, CPU of all processes, jobs/s,
   bytes per job of the file (free pages not counted) and by table/index, against the
   dump's bytes per job.

Datasets: ``synthetic`` (``sample.synthetic_history``, the dump ``bench.py`` imports)
and ``realistic`` (``sample.realistic_history``, as ``search.py``).

Usage::

    .venv/bin/python benchmarks/raw_codec.py                       # 100k imports, 1M column
    .venv/bin/python benchmarks/raw_codec.py --jobs 20000 --column-jobs 100000 --items 5000   # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
import search as search_bench
import zstandard
from bench import RESULTS, Target, log
from isal import isal_zlib

from jobs_index import rawcodec
from jobs_index.normalize import json_bytes
from jobs_index.sample import realistic_history, synthetic_history

BASE_COMMIT = "c4aaddd"  # main before the raw codec: zlib per item (ISA-L level 1)
DATASETS: dict[str, Callable[..., Iterator[tuple[str, dict]]]] = {
    "synthetic": synthetic_history,
    "realistic": realistic_history,
}


def texts(dataset: str, n: int) -> Iterator[bytes]:
    """The JSON ``raw`` holds for the first ``n`` items (``json_bytes`` of the item: a
    history item keeps its 5-element prompt, as these are)."""
    for _, item in DATASETS[dataset](n):
        yield json_bytes(item)


def cpu_us(fn: Callable, values: list) -> tuple[float, list]:
    """CPU µs per call of ``fn`` over ``values`` (best of 3 rounds), and its results."""
    best, out = float("inf"), []
    for _ in range(3):
        started = time.process_time()
        out = [fn(v) for v in values]
        best = min(best, time.process_time() - started)
    return best / len(values) * 1e6, out


def per_item(dataset: str, items: int) -> dict:
    sample = list(texts(dataset, rawcodec.TRAIN_ITEMS + items))
    train, test = sample[: rawcodec.TRAIN_ITEMS], sample[rawcodec.TRAIN_ITEMS :]
    started = time.process_time()
    dictionary = rawcodec.train(rawcodec.sample_texts(train))
    train_s = time.process_time() - started
    assert dictionary is not None
    rows = []
    plain = zstandard.ZstdCompressor(level=3, write_checksum=True)
    plain_d = zstandard.ZstdDecompressor()
    codecs: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
        ("ISA-L level 1 (before)", lambda d: isal_zlib.compress(d, 1), isal_zlib.decompress),
        ("zstd 3, no dictionary", plain.compress, plain_d.decompress),
    ]
    for level in (3, 6, 9):
        d = rawcodec.dictionary_of(dictionary.data, level)
        enc = rawcodec.Encoder(d)
        name = f"zstd {level} + dictionary" + (" (after: rawcodec)" if level == rawcodec.LEVEL else "")
        codecs.append((name, enc.encode, lambda b, d=d: rawcodec.decode(b, d.id, lambda _i: d)))
    for name, compress, decompress in codecs:
        c_us, blobs = cpu_us(compress, test)
        d_us, back = cpu_us(decompress, blobs)
        assert back == test, name
        size = sum(map(len, blobs)) / len(blobs)
        rows.append({"codec": name, "bytes": size, "compress_us": c_us, "decompress_us": d_us})
    return {
        "dataset": dataset,
        "items": len(test),
        "json_bytes": sum(map(len, test)) / len(test),
        "train_items": rawcodec.TRAIN_ITEMS,
        "train_cpu_s": train_s,
        "dict_bytes": len(dictionary.data),
        "codecs": rows,
    }


def column(dataset: str, n: int) -> dict:
    """Total ``raw`` bytes of ``n`` items, before (ISA-L 1) and after (trained on the
    first items, as a bulk import does)."""
    stream = texts(dataset, n)
    head = list(islice(stream, rawcodec.TRAIN_ITEMS))
    dictionary = rawcodec.train(rawcodec.sample_texts(head))
    assert dictionary is not None
    encoder = rawcodec.Encoder(dictionary)
    total = {"json": 0, "before": 0, "after": 0}
    count = 0
    started = time.perf_counter()
    for text in _chain(head, stream):
        total["json"] += len(text)
        total["before"] += len(isal_zlib.compress(text, 1))
        total["after"] += len(encoder.encode(text))
        count += 1
        if count % 200_000 == 0:
            log(f"    {dataset}: {count:,} items ({time.perf_counter() - started:,.0f} s)")
    return {
        "dataset": dataset,
        "jobs": count,
        **{k: v / count for k, v in total.items()},
        "dict_bytes": len(dictionary.data),
    }


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def run_import(url: str, path: Path, cwd: Path) -> tuple[float, float, str]:
    before = os.times()
    wall, summary = search_bench.run_import(url, path, cwd)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, summary


def raw_column(target: Target) -> dict:
    """The average ``raw`` and the dictionaries, read without opening the index (which
    would upgrade the base one)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(target.url)
    try:
        with engine.connect() as conn:
            avg = conn.execute(text("SELECT AVG(LENGTH(raw)) FROM jobs")).scalar_one()
            dicts = (0, 0)
            if "raw_dictionaries" in inspect(conn).get_table_names():  # not in the base code
                dicts = tuple(
                    conn.execute(text("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM raw_dictionaries")).one()
                )
    finally:
        engine.dispose()
    return {"raw_avg": float(avg), "dictionaries": dicts[0], "dictionary_bytes": dicts[1]}


def imports(dataset: str, n: int, base: str, rounds: int, db: str | None = None) -> dict:
    path = search_bench.dump(dataset, n)
    dump_bytes = path.stat().st_size
    trees = {"before": bench.base_tree(base), "after": ROOT}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(rounds):
        for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
            target = Target(
                db, n, label=f"rawcodec_{dataset}_{n}_{label}" if db else f"raw-codec-{dataset}-{n}-{label}"
            )
            target.reset()
            load = os.getloadavg()[0]
            log(f"  {dataset} round {r + 1}: import with the {label} code (load {load:.1f})")
            wall, cpu, summary = run_import(target.url, path, trees[label])
            runs[label].append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "jobs_per_s": n / wall,
                    "jobs_per_cpu_s": n / cpu,
                    "load": load,
                    "summary": summary,
                    "disk": search_bench.disk(target, n),
                    **raw_column(target),
                }
            )
    return {"dataset": dataset, "jobs": n, "dump_bytes": dump_bytes, "dump_per_job": dump_bytes / n, "runs": runs}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "python": sys.version.split()[0],
        "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "zstandard": zstandard.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }


def render(args, facts: dict, items: list[dict], columns: list[dict], full: list[dict]) -> str:
    out = [
        f"# Raw codec: zlib per item vs zstd with a trained dictionary ({facts['measured_at']})",
        "",
        f"`benchmarks/raw_codec.py --jobs {args.jobs} --column-jobs {args.column_jobs} --items {args.items} "
        f"--rounds {args.rounds}`; "
        f"{facts['cpus']} CPUs shared with other users (load at start {facts['load'][0]:.1f}), Python "
        f"{facts['python']}, zstd {facts['zstd']} (python-zstandard {facts['zstandard']}), code {facts['commit']}, "
        f"before = `{args.base}` (zlib per item, ISA-L level 1).",
        "",
        "## 1. Per item (CPU µs, best of 3 rounds, in-process)",
        "",
    ]
    for part in items:
        out += [
            f"**{part['dataset']}**: {part['items']:,} items of {part['json_bytes']:,.0f} B of JSON on average; "
            f"dictionary {part['dict_bytes']:,} B trained on {part['train_items']:,} items in "
            f"{part['train_cpu_s']:.2f} s of CPU.",
            "",
            "| codec | B/item | vs before | compress µs/item | decompress µs/item |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        base = part["codecs"][0]["bytes"]
        for row in part["codecs"]:
            out.append(
                f"| {row['codec']} | {row['bytes']:,.0f} | {row['bytes'] / base:.2f}x | "
                f"{row['compress_us']:.1f} | {row['decompress_us']:.1f} |"
            )
        out.append("")
    out += [
        f"## 2. The raw column at {args.column_jobs:,} jobs (no database)",
        "",
        "| dataset | jobs | JSON B/job | before (zlib) B/job | after (zstd + dictionary) B/job | after/before | "
        "column before | column after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in columns:
        out.append(
            f"| {c['dataset']} | {c['jobs']:,} | {c['json']:,.0f} | {c['before']:,.0f} | {c['after']:,.0f} | "
            f"{c['after'] / c['before']:.2f}x | {c['before'] * c['jobs'] / 2**20:,.0f} MiB | "
            f"{c['after'] * c['jobs'] / 2**20:,.0f} MiB |"
        )
    out += [
        "",
        f"## 3. Full import at {args.jobs:,} jobs ({'PostgreSQL, COPY' if args.db else 'SQLite'} bulk load, "
        "`jobs-index import` in its own process)",
        "",
        "Rounds interleaved (before, after; then after, before). Bytes per job: "
        + ("every table with its indexes and TOAST." if args.db else "the file less its free pages."),
        "",
        "| dataset | code | wall s | jobs/s | CPU s (all processes) | jobs per CPU s | load | file B/job | "
        "x dump | raw B/job |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in full:
        for label in ("before", "after"):
            for run in f["runs"][label]:
                out.append(
                    f"| {f['dataset']} | {label} | {run['wall_s']:.1f} | {run['jobs_per_s']:,.0f} | "
                    f"{run['cpu_s']:.1f} | {run['jobs_per_cpu_s']:,.0f} | {run['load']:.1f} | "
                    f"{run['disk']['per_job']:,.0f} | {run['disk']['per_job'] / f['dump_per_job']:.2f}x | "
                    f"{run['raw_avg']:,.0f} |"
                )
    for f in full:
        out += [
            "",
            f"**{f['dataset']}**, dump {f['dump_per_job']:,.0f} B/job ({f['dump_bytes'] / 2**20:,.0f} MiB); "
            "bytes per job by table and index (first round):",
            "",
            "| table / index | before B/job | after B/job |",
            "| --- | ---: | ---: |",
        ]
        sizes = {label: dict(f["runs"][label][0]["disk"]["parts"]) for label in ("before", "after")}
        names = sorted(
            set(sizes["before"]) | set(sizes["after"]),
            key=lambda k: -max(sizes["before"].get(k, 0), sizes["after"].get(k, 0)),
        )
        other = [0, 0]
        for name in names:
            b, a = sizes["before"].get(name, 0), sizes["after"].get(name, 0)
            if max(a, b) / f["jobs"] >= 5:
                out.append(f"| {name} | {b / f['jobs']:,.0f} | {a / f['jobs']:,.0f} |")
            else:
                other[0] += b
                other[1] += a
        out.append(f"| everything else | {other[0] / f['jobs']:,.0f} | {other[1] / f['jobs']:,.0f} |")
        wall = {label: statistics.median(r["wall_s"] for r in f["runs"][label]) for label in ("before", "after")}
        out.append("")
        out.append(
            f"Median import wall time: before {wall['before']:.1f} s, after {wall['after']:.1f} s "
            f"({f['jobs'] / wall['before']:,.0f} → {f['jobs'] / wall['after']:,.0f} jobs/s)."
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs per full import (0: skip part 3)")
    ap.add_argument("--column-jobs", type=int, default=1_000_000, help="items of part 2 (0: skip)")
    ap.add_argument("--items", type=int, default=20_000, help="items timed in part 1")
    ap.add_argument("--datasets", default="synthetic,realistic")
    ap.add_argument("--rounds", type=int, default=1, help="imports per code and dataset (interleaved)")
    ap.add_argument("--base", default=BASE_COMMIT)
    ap.add_argument("--db", default=None, help="PostgreSQL URL for part 3 (a schema per import; default SQLite)")
    ap.add_argument("--name", default="", help="suffix of the results files (raw-codec-<jobs><name>.md)")
    args = ap.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    facts = {**machine(), "measured_at": dt.datetime.now().isoformat(timespec="seconds")}
    items, columns, full = [], [], []
    for dataset in datasets:
        log(f"per item: {dataset}")
        items.append(per_item(dataset, args.items))
    if args.column_jobs:
        for dataset in datasets:
            log(f"raw column: {dataset}, {args.column_jobs:,} items")
            columns.append(column(dataset, args.column_jobs))
    if args.jobs:
        for dataset in datasets:
            log(f"full import: {dataset}, {args.jobs:,} jobs")
            full.append(imports(dataset, args.jobs, args.base, args.rounds, args.db))
    report = render(args, facts, items, columns, full)
    print(report)
    stem = RESULTS / f"raw-codec-{args.jobs}{args.name}"
    stem.with_suffix(".md").write_text(report)
    data = {"facts": facts, "args": vars(args), "per_item": items, "column": columns, "imports": full}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
