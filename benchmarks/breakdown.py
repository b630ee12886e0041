#!/usr/bin/env python
"""Where the time goes: the experiments behind the recommendations in the bench report.

    .venv/bin/python benchmarks/breakdown.py normalise [--jobs 10000]
    .venv/bin/python benchmarks/breakdown.py write [--jobs 30000] [--preload 200000] [--db URL]
    .venv/bin/python benchmarks/breakdown.py page --db URL
    .venv/bin/python benchmarks/breakdown.py http-floor
    .venv/bin/python benchmarks/breakdown.py bulk-floor [--jobs 1000000]
    .venv/bin/python benchmarks/breakdown.py pg-bulk-floor --db URL [--jobs 100000]

* ``normalise``: the parts of ``normalize.from_history`` (JSON encoding, compression,
  digest, the walk), old (json.dumps, zlib-6) against new (orjson where exact, ISA-L-1),
  alternatives (zlib-1, zstd-1 if installed), parsing an item, the streamed reader, what
  pickling costs between import processes, two processes.
* ``write``: ``JobsIndex.ingest`` of pre-normalised records into a fresh index (``--preload
  N``: one already holding N jobs): the write path before revision 0004 (SQLAlchemy,
  row-level count triggers), the same with the count triggers dropped, with the secondary
  indexes dropped, a plain driver ``executemany`` (no SQLAlchemy, no pre-read, no side
  rows), and the current path (0004: the writer keeps ``job_counts`` set-wise on SQLite,
  prebuilt SQL through the driver) at batches of 1000 and 5000, and re-imported unchanged.
* ``page``: the parts of one ``limit=50`` first page in-process (statement building,
  SQL, ``count_total``, ``list_dict``, ``json.dumps``) on an existing index (e.g. the
  bench's), against hand-written SQL through the bare driver.
* ``pg-bulk-floor``: the same for PostgreSQL (``--db URL``, a schema of its own there):
  ``JobsIndex.bulk_load`` of N pre-normalised jobs as is, then the bare driver (psycopg):
  one binary ``COPY`` per table of prebuilt rows into the schema with its secondary
  indexes and foreign keys dropped, each index built, the foreign keys, COMMIT, and
  ``VACUUM (ANALYZE)``, timed apart, with the server's CPU (its backend's, from /proc)
  beside the client's. What the server costs per job whatever the client does;
  ``benchmarks/pg_import.py --floor`` runs it beside the import.
* ``http-floor``: the cheapest ``GET`` aiohttp can serve on this machine (same client as
  the bench; a canned body of a page's size, answered inline or via the thread pool), i.e.
  the HTTP overhead any implementation pays here.
* ``bulk-floor``: the single SQLite writer's own cost in a bulk load of N pre-normalised
  jobs (no dump reading, no normalising, no pipes): ``JobsIndex.bulk_load`` as is, and the
  bare driver's inserts of prebuilt tuples, index builds and COMMIT, timed apart. What
  no parallel normalising can take off the writer: the bound on ``import``'s rate. The
  schema is the current one (``jobs``, ``job_search`` and its FTS5 index
  ``job_search_fts``, ``job_outputs``; the indexes as migrations left them); the bare
  driver runs without foreign-key checks (sqlite3's default; ``bulk_load`` keeps
  them: ~2 us/job at 100k). ``benchmarks/import_speed.py`` runs it beside the imports.

Nothing here is part of the bench's numbers; it only explains them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text

from jobs_index import normalize, queries, rawcodec, wire
from jobs_index.params import parse_list_query
from jobs_index.sample import synthetic_history
from jobs_index.services import JobsIndex

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench


def timeit(fn, repeat: int, warmup: int = 3) -> tuple[float, float]:
    """(fastest wall seconds, mean CPU seconds of this process) per call. This machine
    is shared: medians wander with the load; minima and CPU time do not."""
    for _ in range(warmup):
        fn()
    times = []
    c0 = time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), (time.process_time() - c0) / repeat


class Clock:
    """Wall and CPU time of a block, per item."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = (time.perf_counter() - self.t0) / self.n
        self.cpu = (time.process_time() - self.c0) / self.n

    @property
    def pair(self) -> tuple[float, float]:
        return self.wall, self.cpu


HEADER = "| step | wall µs | CPU µs (this process) | CPU share | jobs/s by CPU |\n| --- | ---: | ---: | ---: | ---: |"


def row(name: str, times: tuple[float, float], base: tuple[float, float] | None = None) -> None:
    wall, cpu = times
    share = f"{cpu / base[1]:.0%}" if base else ""
    print(f"| {name} | {wall * 1e6:,.1f} | {cpu * 1e6:,.1f} | {share} | {1 / cpu if cpu else 0:,.0f} |")


# ----------------------------------------------------------------------------- normalise


def _normalise_chunk(items):
    return [normalize.from_history(job_id, item) for job_id, item in items]


def _old_encode_raw(item):
    """``encode_raw`` before orjson and ISA-L: json.dumps, zlib level 6, blake2b."""
    data = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return zlib.compress(data, 6), hashlib.blake2b(data, digest_size=16).hexdigest()


def _in_memory(item):
    """The item as ComfyUI's memory holds it (what the custom node normalises): the
    prompt (with its sixth, sensitive element) and each status message are tuples."""
    status = dict(item.get("status") or {})
    status["messages"] = [tuple(m) for m in status.get("messages", [])]
    return {**item, "prompt": (*item["prompt"][:5], {}), "status": status}


def _old_loads(text):
    return json.loads(text)


def cmd_normalise(args) -> None:
    """Per-job CPU of each step of an import's normalising, old (stdlib JSON, zlib-6)
    against new (orjson where exact, ISA-L level 1), on the synthetic items."""
    import gc
    import io
    import multiprocessing as mp
    import pickle

    from isal import isal_zlib

    from jobs_index.ingest import ObjectItems

    gc.collect()
    gc.freeze()  # what was built before does not make the collector's passes dearer
    items = list(synthetic_history(args.jobs))
    n = len(items)
    texts = [json.dumps(item).encode() for _, item in items]  # as in a /history dump
    raws = [{**item, "prompt": list(item["prompt"][:5])} for _, item in items]
    datas = [normalize.json_bytes(raw, True) for raw in raws]
    print(
        f"{n:,} jobs; item JSON {sum(map(len, texts)) / n:,.0f} B/job (dump), "
        f"{sum(map(len, datas)) / n:,.0f} B/job (stored, compact)\n"
    )

    def each(fn, seq, repeat=3):
        """(fastest wall, fastest CPU) per item of ``fn`` over ``seq``."""
        best = (float("inf"), float("inf"))
        for _ in range(repeat):
            with Clock(len(seq)) as clock:
                for x in seq:
                    fn(x)
            best = (min(best[0], clock.wall), min(best[1], clock.cpu))
        return best

    original = normalize.encode_raw
    normalize.encode_raw = lambda item, exact=False: _old_encode_raw(item)
    try:
        old_total = each(lambda kv: normalize.from_history(*kv), items)
    finally:
        normalize.encode_raw = original
    new_total = each(lambda kv: normalize.from_history(kv[0], kv[1], True), items)
    checked_total = each(lambda kv: normalize.from_history(*kv), items)
    memory = [(job_id, _in_memory(item)) for job_id, item in items]
    memory_total = each(lambda kv: normalize.from_history(*kv), memory)
    t_dumps = each(lambda raw: json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode(), raws)
    t_json_exact = each(lambda raw: normalize.json_bytes(raw, True), raws)
    t_json_checked = each(normalize.json_bytes, raws)
    t_zlib6 = each(lambda d: zlib.compress(d, 6), datas)
    t_zlib1 = each(lambda d: zlib.compress(d, 1), datas)
    t_isal = each(lambda d: isal_zlib.compress(d, 1), datas)
    t_hash = each(lambda d: hashlib.blake2b(d, digest_size=16).hexdigest(), datas)
    t_walk = (
        new_total[0] - t_json_exact[0] - t_isal[0] - t_hash[0],
        new_total[1] - t_json_exact[1] - t_isal[1] - t_hash[1],
    )
    t_parse_old = each(_old_loads, texts)
    t_parse_new = each(normalize.loads_exact, texts)
    sizes = {
        "zlib-6": sum(len(zlib.compress(d, 6)) for d in datas) / n,
        "zlib-1": sum(len(zlib.compress(d, 1)) for d in datas) / n,
        "ISA-L-1": sum(len(isal_zlib.compress(d, 1)) for d in datas) / n,
    }

    print(HEADER)
    row("from_history, old (json.dumps, zlib-6)", old_total, old_total)
    row("from_history, new, parsed item (exact: orjson, ISA-L-1)", new_total, old_total)
    row("from_history, new, in-process item (orjson text read back)", checked_total, old_total)
    row("from_history, new, in-memory item (tuples: the custom node)", memory_total, old_total)
    row("  json.dumps of the raw item (old)", t_dumps, old_total)
    row("  orjson.dumps of the raw item (new, exact)", t_json_exact, old_total)
    row("  orjson.dumps + read back (new, in-process items)", t_json_checked, old_total)
    row(f"  zlib.compress level 6 (old; {sizes['zlib-6']:,.0f} B)", t_zlib6, old_total)
    row(f"  zlib.compress level 1 ({sizes['zlib-1']:,.0f} B)", t_zlib1, old_total)
    row(f"  ISA-L level 1 (new, same zlib format; {sizes['ISA-L-1']:,.0f} B)", t_isal, old_total)
    row("  blake2b-128 digest", t_hash, old_total)
    row("  everything else, new (walk status/outputs, record)", t_walk, old_total)
    try:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=1)
        size = sum(len(compressor.compress(d)) for d in datas) / n
        row(f"  alternative: zstd level 1 (another format; {size:,.0f} B)", each(compressor.compress, datas), old_total)
    except ImportError:
        pass
    row("parse one item, old (json.loads)", t_parse_old, old_total)
    row("parse one item, new (loads_exact: orjson)", t_parse_new, old_total)

    # The streamed reader over a whole /history dump (the main process's share).
    dump = (
        b"{"
        + b", ".join(json.dumps(job_id).encode() + b": " + text for (job_id, _), text in zip(items, texts, strict=True))
        + b"}"
    )
    with Clock(n) as t_stream:
        count = sum(1 for _ in ObjectItems("dump", io.BytesIO(dump)).spans())
    assert count == n
    row("ObjectItems over the dump (find + parse each item), new", t_stream.pair, old_total)

    # What crosses between processes per job.
    records = [normalize.from_history(job_id, item, True) for job_id, item in items]
    chunk = records[:250]
    with Clock(len(chunk)) as t_pickle:
        for _ in range(5):
            pickle.loads(pickle.dumps(chunk))
    t_pickle.wall, t_pickle.cpu = t_pickle.wall / 5, t_pickle.cpu / 5
    row("pickle round trip of JobRecords (batch of 250)", t_pickle.pair, old_total)
    objs = [item for _, item in items[:250]]
    with Clock(len(objs)) as t_obj:
        for _ in range(5):
            pickle.loads(pickle.dumps(objs))
    t_obj.wall, t_obj.cpu = t_obj.wall / 5, t_obj.cpu / 5
    row("pickle round trip of parsed items (old: sent to workers)", t_obj.pair, old_total)
    del records

    chunks = [items[i : i + 1000] for i in range(0, n, 1000)]
    with mp.get_context("fork").Pool(2) as pool:
        with Clock(n) as t_pool:
            out = [r for chunk in pool.imap(_normalise_chunk, chunks) for r in chunk]
    assert len(out) == n
    print(
        f"\nfrom_history (in-process items) in 2 processes (pickling both ways): {t_pool.wall * 1e6:,.1f} "
        f"µs/job wall ({1 / t_pool.wall:,.0f} jobs/s) vs {checked_total[0] * 1e6:,.1f} in one"
    )
    print("CPU time is this process's; minima of 3 runs (the machine is shared: wall times wander).")


# --------------------------------------------------------------------------------- write

SECONDARY_INDEXES = (
    "ix_jobs_create_time_id",
    "ix_jobs_status_create_time_id",
    "ix_jobs_workflow_id_status_create_time_id",
    "ix_jobs_source_status_create_time_id",
    "ix_jobs_status_execution_duration_id",
)


def _drop(index: JobsIndex, triggers: bool, indexes: bool) -> None:
    pg = index.engine.dialect.name == "postgresql"
    with index.engine.begin() as conn:
        if triggers:
            if pg:
                conn.execute(text("DROP TRIGGER trg_jobs_count_insert_delete ON jobs"))
                conn.execute(text("DROP TRIGGER trg_jobs_count_update ON jobs"))
            else:
                for name in ("trg_jobs_count_insert", "trg_jobs_count_delete", "trg_jobs_count_update"):
                    conn.execute(text(f"DROP TRIGGER {name}"))
        if indexes:
            for name in SECONDARY_INDEXES:
                conn.execute(text(f'DROP INDEX "{name}"'))


def _raw_insert(index: JobsIndex, records, batch: int = 1000) -> None:
    rows = [r.as_row() for r in records]
    now = int(time.time() * 1000)
    for r in rows:
        r["indexed_at"] = now
    cols = list(rows[0])
    pg = index.engine.dialect.name == "postgresql"
    ph = ", ".join((f"%({c})s" if pg else f":{c}") for c in cols)
    sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({ph})"
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        for i in range(0, len(rows), batch):
            if not pg:
                cur.execute("BEGIN IMMEDIATE")
            cur.executemany(sql, rows[i : i + batch])
            raw.commit() if pg else cur.execute("COMMIT")
    finally:
        raw.close()


OLD_REVISION = "0003_followed_sources"  # row-level count triggers everywhere


def _old_write_batch(self, records):
    """``JobsIndex._write_batch`` before revision 0004 (commit ae5d49c): SQLAlchemy
    upsert and side-table statements, the count triggers firing per row. A frozen
    copy of that code (``queries.existing_versions``/``upsert_jobs``,
    ``toolbox_queries.replace_side_rows``), kept here as the baseline."""
    from sqlalchemy import column, delete, func, insert, select, table
    from sqlalchemy.dialects import postgresql, sqlite

    from jobs_index import schema
    from jobs_index.database import write_transaction
    from jobs_index.services import IngestResult

    jobs, outputs_t = schema.Job.__table__, schema.JobOutput.__table__
    # job_nodes as it was before revision 0008 (no model any more)
    nodes_t = table("job_nodes", column("job_id"), column("node_id"), column("class_type"))

    def chunks(ids):
        return (ids[i : i + 900] for i in range(0, len(ids), 900))

    result = IngestResult()
    now = int(time.time() * 1000)
    with write_transaction(self.engine) as conn:
        existing = {}
        for chunk in chunks([r.id for r in records]):
            stmt = select(jobs.c.id, jobs.c.stage, jobs.c.raw_digest).where(jobs.c.id.in_(chunk))
            existing.update((row.id, (row.stage, row.raw_digest)) for row in conn.execute(stmt))
        rows, written = [], []
        for record in records:
            old = existing.get(record.id)
            if old is None:
                result.inserted += 1
            elif record.stage > old[0] or (record.stage == old[0] and record.raw_digest != old[1]):
                result.updated += 1
            else:
                result.unchanged += 1
                continue
            row = record.as_row()
            row["indexed_at"] = now
            rows.append(row)
            written.append(record)
        if rows:
            stmt = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(jobs)
            updates = {c.name: stmt.excluded[c.name] for c in jobs.columns if c.name != "id"}
            updates["source"] = func.coalesce(stmt.excluded.source, jobs.c.source)
            stmt = stmt.on_conflict_do_update(
                index_elements=[jobs.c.id],
                set_=updates,
                where=(stmt.excluded.stage > jobs.c.stage)
                | ((stmt.excluded.stage == jobs.c.stage) & (stmt.excluded.raw_digest != jobs.c.raw_digest)),
            )
            conn.execute(stmt, rows)
        for chunk in chunks([r.id for r in written]):
            conn.execute(delete(outputs_t).where(outputs_t.c.job_id.in_(chunk)))
            conn.execute(delete(nodes_t).where(nodes_t.c.job_id.in_(chunk)))
        outputs = [{**row, "job_id": r.id} for r in written for row in r.output_files]
        nodes = [
            {"job_id": r.id, "node_id": node_id, "class_type": class_type}
            for r in written
            for node_id, class_type in _graph_nodes(r)
        ]
        if outputs:
            conn.execute(insert(outputs_t), outputs)
        if nodes:
            conn.execute(insert(nodes_t), nodes)
    return result


def _graph_nodes(record) -> list[tuple[str, str]]:
    """(node_id, class_type) of a record's prompt graph: the job_nodes rows before 0008."""
    item = rawcodec.decode_item(record.raw, record.raw_dict_id)
    graph = (item["prompt"] if record.raw_kind == "history" else item)[2]
    return [
        (str(k), v["class_type"])
        for k, v in graph.items()
        if isinstance(v, dict) and isinstance(v.get("class_type"), str)
    ]


def _preload_records(n: int) -> list:
    """``n`` jobs with ids of their own (copies of 10,000 sample jobs under new ids),
    all older than the measured jobs (an index grows at the recent end: its time
    indexes take the new jobs at their right edge, as in a real import)."""
    import dataclasses
    import random
    import uuid

    base = [normalize.from_history(j, it) for j, it in synthetic_history(min(n, 10_000), seed=7)]
    span = base[-1].create_time - base[0].create_time + 1
    rng = random.Random(7)
    out = []
    for i in range(n):
        r = base[i % len(base)]
        shift = span * (n // len(base) - i // len(base))  # copy k lies k spans back
        out.append(
            dataclasses.replace(
                r,
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                create_time=r.create_time - shift,
                execution_start_time=r.execution_start_time and r.execution_start_time - shift,
                execution_end_time=r.execution_end_time and r.execution_end_time - shift,
                output_files=list(r.output_files),
            )
        )
    return out


def _prepared(target, revision: str, preload: list, template: dict) -> JobsIndex:
    """A fresh index at ``revision`` holding the ``preload`` jobs (SQLite: a copy of a
    file filled once)."""
    import shutil

    from alembic import command

    from jobs_index.database import alembic_config, make_engine, migrate, write_transaction

    target.reset()
    if preload and target.backend == "sqlite" and "path" in template:
        shutil.copyfile(template["path"], target.path)
    index = JobsIndex(make_engine(target.url))
    migrate(index.engine)  # head
    if preload and not (target.backend == "sqlite" and "path" in template):
        for i in range(0, len(preload), 10_000):
            index.ingest(preload[i : i + 10_000])
        if target.backend == "sqlite":
            index.engine.dispose()
            template["path"] = target.path.with_name(target.path.stem + "-template.sqlite3")
            shutil.copyfile(target.path, template["path"])
    if revision != "head":
        with write_transaction(index.engine) as conn:
            command.downgrade(alembic_config(conn), revision)
    if target.backend == "postgresql":
        with index.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE jobs")
    return index


def cmd_write(args) -> None:
    from jobs_index import services

    items = list(synthetic_history(args.jobs, seed=99))
    records = [normalize.from_history(j, it) for j, it in items]
    del items
    n = len(records)
    preload = _preload_records(args.preload) if args.preload else []
    backend = bench.backend_of(args.db or "sqlite")
    print(f"{n:,} pre-normalised jobs into a fresh index holding {len(preload):,} jobs, each time ({backend})\n")
    print(
        "| variant | wall µs/job | CPU µs/job (this process) | CPU vs old | jobs/s by CPU |\n"
        "| --- | ---: | ---: | ---: | ---: |"
    )
    # (name, revision, drop triggers, drop indexes, how, batch size)
    variants = [
        (
            "old: JobsIndex.ingest before 0004 (SQLAlchemy, row-level count triggers)",
            OLD_REVISION,
            False,
            False,
            "old",
            1000,
        ),
        ("old, count triggers dropped", OLD_REVISION, True, False, "old", 1000),
        ("old, 6 secondary indexes dropped", OLD_REVISION, False, True, "old", 1000),
        (
            "driver executemany INSERT of jobs rows only (no pre-read, no side rows)",
            OLD_REVISION,
            False,
            False,
            "raw",
            1000,
        ),
        ("driver executemany INSERT, no triggers, no secondary indexes", OLD_REVISION, True, True, "raw", 1000),
        (
            "**new: JobsIndex.ingest** (0004: writer's set-wise counts, driver SQL, batch 1000)",
            "head",
            False,
            False,
            "ingest",
            1000,
        ),
        ("new, batch 5000", "head", False, False, "ingest", 5000),
        ("new, a second time (all unchanged: pre-read only)", "head", False, False, "again", 1000),
    ]
    if args.only:
        variants = [v for i, v in enumerate(variants) if str(i) in args.only.split(",")]
    base = None
    template: dict = {}
    for name, revision, triggers, indexes, how, batch in variants:
        target = bench.Target(args.db, n, label=f"breakdown_{n}")
        index = _prepared(target, revision, preload, template)
        saved = services.JobsIndex._write_batch
        if how == "old":
            services.JobsIndex._write_batch = _old_write_batch
        try:
            _drop(index, triggers, indexes)
            if how == "again":
                for i in range(0, n, 10_000):
                    index.ingest(records[i : i + 10_000], batch_size=batch)
            with Clock(n) as clock:
                if how in ("ingest", "old", "again"):
                    for i in range(0, n, 10_000):
                        index.ingest(records[i : i + 10_000], batch_size=batch)
                else:
                    _raw_insert(index, records)
            if how != "raw" and not triggers:
                assert index.counts_consistent(), name
        finally:
            services.JobsIndex._write_batch = saved
            index.close()
        base = base or clock.pair
        row(name, clock.pair, base)
    if "path" in template:
        template["path"].unlink()  # the preloaded SQLite copy (hundreds of MB)


def cmd_bulk_floor(args) -> None:
    import os
    import sqlite3

    from jobs_index import search_queries, write_queries

    n = args.jobs
    started = time.perf_counter()
    records = _preload_records(n)  # n distinct ids, 10,000 sample jobs' content
    print(
        f"bulk load of {n:,} pre-normalised jobs into a new SQLite file "
        f"(records prepared in {time.perf_counter() - started:.0f} s, not counted)\n"
    )
    print(
        "| part | wall s | CPU s (this process) | µs/job by CPU | jobs/s by CPU |\n| --- | ---: | ---: | ---: | ---: |"
    )

    def show(name: str, wall: float, cpu: float) -> None:
        print(
            f"| {name} | {wall:,.1f} | {cpu:,.1f} | {1e6 * cpu / n:,.1f} | {n / cpu if cpu else 0:,.0f} |", flush=True
        )

    target = bench.Target(None, n, label=f"bulk_floor_{n}")
    target.reset()
    index = JobsIndex.open(target.url)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        result = index.bulk_load(records, batch_size=10_000)
        show(
            "`JobsIndex.bulk_load` (batches of 10,000, set-wise counts, index builds, COMMIT)",
            time.perf_counter() - t0,
            time.process_time() - c0,
        )
        assert result is not None and result.inserted == n and index.counts_consistent()
    finally:
        index.close()

    target.reset()
    with JobsIndex.open(target.url) as index, index.engine.connect() as sa_conn:  # the schema, at head
        indexes = write_queries.secondary_indexes(sa_conn)
    jobs = write_queries.job_rows(records, int(time.time() * 1000))
    outputs = write_queries.side_rows(records)
    # job_search rows name their lists' row in job_search_facets (revision 0014): each
    # distinct (node_types, models, loras) once, as the writer stores them
    narrow = search_queries._NARROW
    search_rows = [search_queries._row_values(r, r.search, None) for r in records]
    facet_id = {lists: i for i, lists in enumerate(dict.fromkeys(row[narrow:] for row in search_rows), 1)}
    facets = [(i, search_queries.facets_hash(lists), *lists) for lists, i in facet_id.items()]
    searched = [(docid, *row[:narrow], facet_id[row[narrow:]]) for docid, row in enumerate(search_rows, 1)]
    del search_rows
    words = [(docid, r.search.fts_text()) for docid, r in enumerate(records, 1)]
    del records
    conn = sqlite3.connect(target.path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA threads={os.cpu_count() or 1}")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO jobs_index_writer (id) VALUES (1)")  # the count triggers stand aside
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    parts = [
        (f"driver: jobs rows ({len(jobs[0])} columns, zlib raw item)", "jobs", write_queries.JOB_COLUMNS, jobs),
        (
            f"driver: job_search_facets rows ({len(facets):,} distinct lists)",
            "job_search_facets",
            ("id", "hash", *search_queries.FACETS),
            facets,
        ),
        (
            "driver: job_search rows",
            "job_search",
            ("docid", *search_queries.ROW_COLUMNS[:narrow], "facets_id"),
            searched,
        ),
        ("driver: job_search_fts (FTS5) documents", "job_search_fts", ("rowid", "doc"), words),
        (
            f"driver: job_outputs rows ({len(outputs) / n:.1f} per job)",
            "job_outputs",
            write_queries.OUTPUT_COLUMNS,
            outputs,
        ),
    ]
    total_wall = total_cpu = 0.0
    for name, table, columns, rows in parts:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(rows), 10_000):
            conn.executemany(sql, rows[i : i + 10_000])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        show(name, wall, cpu)
    t0, c0 = time.perf_counter(), time.process_time()
    for _, sql in indexes:
        conn.execute(sql)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    total_wall, total_cpu = total_wall + wall, total_cpu + cpu
    show(f"driver: build the {len(indexes)} secondary indexes", wall, cpu)
    conn.execute("DELETE FROM jobs_index_writer")
    t0, c0 = time.perf_counter(), time.process_time()
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    total_wall, total_cpu = total_wall + wall, total_cpu + cpu
    show("driver: COMMIT and checkpoint", wall, cpu)
    show("**driver: all of it** (the writer's floor: no counts, no pre-read, no Python per job)", total_wall, total_cpu)
    conn.close()
    target.reset()


# ------------------------------------------------------------------------- pg-bulk-floor


class ServerCpu:
    """CPU seconds of the PostgreSQL backends (and their parallel workers) of this
    database whose ``application_name`` is ``name``, read from /proc (the server runs
    on this machine) by a thread every 0.2 s: a process that ends is counted up to its
    last reading."""

    def __init__(self, base_url: str, name: str) -> None:
        import os
        import threading

        from sqlalchemy import create_engine

        self._engine = create_engine(base_url)
        self._name, self._tick = name, os.sysconf("SC_CLK_TCK")
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._engine.connect() as conn:
            pids = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
                    "(application_name = :n OR leader_pid IN "
                    "(SELECT pid FROM pg_stat_activity WHERE application_name = :n))"
                ),
                {"n": self._name},
            ).scalars()
            for pid in pids:
                self._seen[pid] = self.of_pid(pid, self._seen.get(pid, 0.0))

    def of_pid(self, pid: int, default: float = 0.0) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return default
        return (int(fields[11]) + int(fields[12])) / self._tick

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._read()

    def total(self) -> float:
        self._read()
        return sum(self._seen.values())

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        total = self.total()
        self._engine.dispose()
        return total


def _floor_records(n: int) -> tuple[list, object, list[bytes]]:
    """``_preload_records(n)`` with ``raw`` as an import writes it: zstd with a
    dictionary trained on the first of them (``rawcodec``)."""
    from jobs_index import rawcodec

    records = _preload_records(n)
    head = records[: rawcodec.TRAIN_ITEMS]
    texts = rawcodec.sample_texts(rawcodec.decode(r.raw, r.raw_dict_id) for r in head)
    dictionary = rawcodec.train(texts)
    assert dictionary is not None
    rawcodec.conform(records, rawcodec.Encoder(dictionary))
    return records, dictionary, texts


def pg_bulk_floor(base_url: str, n: int, say=print) -> list[dict]:
    """The PostgreSQL bulk load's floor for ``n`` pre-normalised jobs (see the module
    docstring, ``pg-bulk-floor``). Returns its parts: ``{"part", "wall_s", "cpu_s",
    "server_cpu_s"}`` (client CPU: this process)."""
    import psycopg

    from jobs_index import rawcodec, search_queries, write_queries
    from jobs_index.database import write_transaction

    started = time.perf_counter()
    records, dictionary, texts = _floor_records(n)
    say(f"{n:,} pre-normalised jobs prepared in {time.perf_counter() - started:.0f} s (not counted)")
    parts: list[dict] = []

    def show(name: str, wall: float, cpu: float, server: float) -> None:
        parts.append({"part": name, "wall_s": wall, "cpu_s": cpu, "server_cpu_s": server})
        say(
            f"| {name} | {wall:,.1f} | {cpu:,.1f} | {server:,.1f} | {1e6 * cpu / n:,.1f} | {1e6 * server / n:,.1f} "
            f"| {n / wall if wall else 0:,.0f} |"
        )

    say(
        "| part | wall s | client CPU s | server CPU s | client µs/job | server µs/job | jobs/s by wall |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    target = bench.Target(base_url, n, label=f"pgfloor_{n}")

    def fresh() -> JobsIndex:
        target.reset()
        index = JobsIndex.open(target.url)
        with write_transaction(index.engine) as conn:
            rawcodec.store(conn, dictionary, len(texts), sum(map(len, texts)))
        return index

    # 1. The service as it is, without the dump: JobsIndex.bulk_load of the records.
    index = fresh()
    server = ServerCpu(target.base, "jobs-index")
    try:
        s0, t0, c0 = server.total(), time.perf_counter(), time.process_time()
        result = index.bulk_load(records, batch_size=10_000)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert result is not None and result.inserted == n and index.counts_consistent()
    finally:
        index.close()
        show(
            "`JobsIndex.bulk_load` of the records (batches of 10,000, COPY, indexes, VACUUM)",
            wall,
            cpu,
            server.close() - s0,
        )

    # 2. The bare driver: prebuilt rows, one COPY per table, the index builds, COMMIT, VACUUM.
    index = fresh()
    with index.engine.connect() as sa_conn:
        deferred = write_queries.pg_deferred(sa_conn)
    index.close()
    t0, c0 = time.perf_counter(), time.process_time()
    now = int(time.time() * 1000)
    jobs = write_queries.job_rows(records, now, pg=True)
    outputs = write_queries.side_rows(records)
    store = search_queries.PostgresStore()
    searched = store.copy_rows(records)
    show(
        "client: the rows as the service builds them (not in the floor)",
        time.perf_counter() - t0,
        time.process_time() - c0,
        0.0,
    )
    del records
    conn = psycopg.connect(
        target.base.replace("postgresql+psycopg://", "postgresql://"),
        application_name="jobs-index-floor",
        options=f"-csearch_path={target.schema}",
    )
    server = ServerCpu(target.base, "jobs-index-floor")
    totals = [0.0, 0.0, 0.0]

    def step(name: str, fn) -> None:
        s0, t0, c0 = server.total(), time.perf_counter(), time.process_time()
        fn()
        wall, cpu, srv = time.perf_counter() - t0, time.process_time() - c0, server.total() - s0
        totals[0], totals[1], totals[2] = totals[0] + wall, totals[1] + cpu, totals[2] + srv
        show(name, wall, cpu, srv)

    def copy(table: str, columns, rows, types=None) -> None:
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN" + (" (FORMAT BINARY)" if types else "")
        with conn.cursor() as cursor, cursor.copy(sql) as out:
            if types:
                cursor.adapters.register_dumper(None, write_queries._tsvector_dumper())
                out.set_types(types)
            for row in rows:
                out.write_row(row)

    try:
        with conn.cursor() as cursor:
            for table, name, _ in deferred.foreign_keys:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _ in deferred.indexes:
                cursor.execute(f'DROP INDEX "{name}"')
        types = write_queries._pg_types
        step(
            f"driver: COPY jobs ({len(jobs[0])} columns, binary)",
            lambda: copy("jobs", write_queries.JOB_COLUMNS, jobs, types("jobs", write_queries.JOB_COLUMNS)),
        )
        step(
            f"driver: COPY job_outputs ({len(outputs) / n:.1f} rows per job, binary)",
            lambda: copy(
                "job_outputs", write_queries.OUTPUT_COLUMNS, outputs, types("job_outputs", write_queries.OUTPUT_COLUMNS)
            ),
        )
        step(
            "driver: COPY job_search (binary; the tsvector in its binary form)",
            lambda: copy("job_search", store.COPY_COLUMNS, searched, store.COPY_TYPES),
        )
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for name, sql in deferred.indexes:
            step(f"driver: CREATE INDEX {name}", lambda sql=sql: conn.execute(sql))
        for table, name, definition in deferred.foreign_keys:
            step(
                f"driver: foreign key {name}",
                lambda t=table, m=name, d=definition: conn.execute(f'ALTER TABLE {t} ADD CONSTRAINT "{m}" {d}'),
            )
        step("driver: COMMIT", conn.commit)
        conn.autocommit = True
        step(
            "driver: VACUUM (ANALYZE)",
            lambda: conn.execute(f"VACUUM (ANALYZE) {', '.join(write_queries.BULK_TABLES)}, job_counts"),
        )
    finally:
        conn.close()
        server.close()
    parts.append({"part": "floor", "wall_s": totals[0], "cpu_s": totals[1], "server_cpu_s": totals[2]})
    say(
        f"| **driver: all of it** (the floor) | {totals[0]:,.1f} | {totals[1]:,.1f} | {totals[2]:,.1f} | "
        f"{1e6 * totals[1] / n:,.1f} | {1e6 * totals[2] / n:,.1f} | {n / totals[0]:,.0f} |"
    )
    admin = create_engine(target.base)
    with admin.begin() as sa_conn:
        sa_conn.execute(text(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE'))
    admin.dispose()
    return parts


def cmd_pg_bulk_floor(args) -> None:
    pg_bulk_floor(bench.pg_url(args.db), args.jobs)


# ---------------------------------------------------------------------------------- page


def cmd_page(args) -> None:
    """A first page as the route computes it, split into its parts."""
    from jobs_index.database import read_statement

    index = JobsIndex.open(args.db)
    query = parse_list_query({"limit": "50"})
    repeat = args.repeat
    full = timeit(lambda: index.list_jobs(query).body_text(query), repeat)

    def checkout_only():
        with read_statement(index.engine):
            pass

    def statement():
        with read_statement(index.engine) as conn:
            return queries.select_page(conn, query, limit=51, with_total=True)

    rows = statement()
    shape = queries._Shape(
        index.engine.dialect.name, "created_at", True, 5, "all", False, False, False, True, False, True
    )
    compiled = queries._page_sql(shape, index.engine.dialect)
    sql = compiled.sql
    values = {**compiled.constants, **queries._filter_values(query), "limit": 51}
    params = tuple(values[n] for n in compiled.positional) if compiled.positional is not None else values
    raw = index.engine.raw_connection()
    cur = raw.cursor()

    def bare_driver():
        cur.execute(sql, params)
        out = cur.fetchall()
        if index.engine.dialect.name == "postgresql":
            raw.commit()
        return out

    texts = [r[queries.ROW_JOB_JSON] for r in rows[:50]]
    pagination = {"offset": 0, "limit": 50, "total": 1, "has_more": True, "next_cursor": "x" * 80}
    print(f"first page (limit=50) of {index.total():,} jobs, in-process; wall = fastest of {repeat}, CPU = mean\n")
    print(
        "| part | wall µs (min) | CPU µs (this process) | CPU share | pages/s by CPU |\n"
        "| --- | ---: | ---: | ---: | ---: |"
    )
    row("list_jobs + body_text (what the route does)", full, full)
    row("  pooled connection, no statement (read_statement)", timeit(checkout_only, repeat), full)
    row("  the page statement (rows, job JSON, total) with checkout", timeit(statement, repeat), full)
    row("  the same SQL through the bare driver", timeit(bare_driver, repeat), full)
    row("  body: join of the jobs' JSON texts", timeit(lambda: wire.page_body(texts, pagination), repeat), full)
    raw.close()
    index.close()


# ---------------------------------------------------------------------------- http floor


def _floor_server(conn, size: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web

    body = json.dumps({"jobs": ["x" * (size // 100)] * 100})
    pool = ThreadPoolExecutor(8)

    async def inline(_request):
        return web.json_response(text=body)

    async def threaded(_request):
        text_ = await asyncio.get_running_loop().run_in_executor(pool, lambda: body)
        return web.json_response(text=text_)

    async def run():
        app = web.Application()

        async def route(request):
            return await (threaded if request.query.get("h") == "threaded" else inline)(request)

        app.router.add_get("/", route)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(run())


def cmd_http_floor(args) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_floor_server, args=(child, args.size), daemon=True)
    proc.start()
    port = parent.recv()
    cases = [bench.Case("inline", {"h": "inline"}), bench.Case("threaded", {"h": "threaded"})]
    try:
        print(f"aiohttp floor: canned {args.size:,} B JSON body, {args.requests} sequential keep-alive requests\n")
        print("| handler | p50 ms | p99 ms | min ms |\n| --- | ---: | ---: | ---: |")
        out = bench.http_series(f"http://127.0.0.1:{port}/", cases, 30, args.requests, rounds=3)
        for case in cases:
            times = out[case.name]["times"]
            print(
                f"| {case.name} | {bench.pct(times, 50) * 1000:.2f} | {bench.pct(times, 99) * 1000:.2f} | "
                f"{min(times) * 1000:.2f} |"
            )
    finally:
        parent.send("stop")
        proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("normalise")
    p.add_argument("--jobs", type=int, default=10_000)
    p = sub.add_parser("write")
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("--db", default=None, help="base URL as for bench.py (default: SQLite under _work/)")
    p.add_argument("--preload", type=int, default=0, help="jobs already in the index (a large index)")
    p.add_argument("--only", default="", help="comma-separated variant numbers (0-based)")
    p = sub.add_parser("page")
    p.add_argument("--db", required=True, help="an existing index, e.g. the bench's")
    p.add_argument("--repeat", type=int, default=300)
    p = sub.add_parser("bulk-floor")
    p.add_argument("--jobs", type=int, default=1_000_000)
    p = sub.add_parser("pg-bulk-floor")
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--db", required=True, help="a PostgreSQL database URL (a schema of its own is made there)")
    p = sub.add_parser("http-floor")
    p.add_argument("--size", type=int, default=11_000, help="body bytes (a 50-job page is ~11 KB)")
    p.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    {
        "normalise": cmd_normalise,
        "write": cmd_write,
        "page": cmd_page,
        "http-floor": cmd_http_floor,
        "bulk-floor": cmd_bulk_floor,
        "pg-bulk-floor": cmd_pg_bulk_floor,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
