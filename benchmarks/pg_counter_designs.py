"""PostgreSQL counter designs for ``job_counts``: measurements behind docs/postgresql.md.

Not part of the product or the test suite: a script to reproduce the numbers in
"Writers: counters, locks and what they cost". It measures the schema and writer
before revision 0004 (row-level triggers; ``stmt`` is the design 0004 adopted):
run it from a checkout of commit 8174a66 (at head, opening an index migrates to
0004, whose triggers this script does not know). Each run uses a fresh schema in
the database of PG_URL and drops it afterwards.

Designs (``variant``):
  row          today: row-level counter triggers, the writers' advisory lock,
               one upsert statement per row (psycopg executemany).
  row-nolock   the same without the advisory lock; deadlocks are retried and counted.
  stmt         statement-level triggers with transition tables (one aggregated,
               key-sorted counter upsert per statement) and a multi-row upsert
               (INSERT .. VALUES x 1000 .. RETURNING, rows sorted by id); lock kept.
  stmt-nolock  the same without the advisory lock; deadlocks retried and counted.

Workloads:
  txn-size     one transaction, one INSERT .. SELECT of N rows, then UPDATE and
               DELETE of all of them: how a transaction's cost grows with its rows.
  live         WRITERS processes upsert the same 400 jobs x 3 stages in different
               orders in batches of 7 (tests/test_concurrency.py's race).
  import       WRITERS processes each import N new sample jobs in batches of 1000.

Usage (from the repo root):
  .venv/bin/python benchmarks/pg_counter_designs.py PG_URL txn-size row,stmt 1000 2000 4000 8000
  .venv/bin/python benchmarks/pg_counter_designs.py PG_URL live row 4
  .venv/bin/python benchmarks/pg_counter_designs.py PG_URL import stmt 4 4000
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text

SPAWN = multiprocessing.get_context("spawn")

STMT_FUNCTION = """
CREATE OR REPLACE FUNCTION jobs_count_stmt_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts (source, workflow_id, status, n)
        SELECT k.s, k.w, r.status, sum(r.d)
        FROM (SELECT status, source, workflow_id, 1 AS d FROM new_rows) AS r
        CROSS JOIN LATERAL (SELECT DISTINCT s, w FROM (VALUES ('', ''), (COALESCE(r.source, ''), ''),
            ('', COALESCE(r.workflow_id, '')), (COALESCE(r.source, ''), COALESCE(r.workflow_id, ''))) AS v(s, w)) AS k
        GROUP BY k.s, k.w, r.status HAVING sum(r.d) <> 0 ORDER BY k.s, k.w, r.status
        ON CONFLICT (source, workflow_id, status) DO UPDATE SET n = job_counts.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_counts (source, workflow_id, status, n)
        SELECT k.s, k.w, r.status, sum(r.d)
        FROM (SELECT status, source, workflow_id, -1 AS d FROM old_rows) AS r
        CROSS JOIN LATERAL (SELECT DISTINCT s, w FROM (VALUES ('', ''), (COALESCE(r.source, ''), ''),
            ('', COALESCE(r.workflow_id, '')), (COALESCE(r.source, ''), COALESCE(r.workflow_id, ''))) AS v(s, w)) AS k
        GROUP BY k.s, k.w, r.status HAVING sum(r.d) <> 0 ORDER BY k.s, k.w, r.status
        ON CONFLICT (source, workflow_id, status) DO UPDATE SET n = job_counts.n + excluded.n;
    ELSE
        INSERT INTO job_counts (source, workflow_id, status, n)
        SELECT k.s, k.w, r.status, sum(r.d)
        FROM (SELECT status, source, workflow_id, 1 AS d FROM new_rows
              UNION ALL SELECT status, source, workflow_id, -1 FROM old_rows) AS r
        CROSS JOIN LATERAL (SELECT DISTINCT s, w FROM (VALUES ('', ''), (COALESCE(r.source, ''), ''),
            ('', COALESCE(r.workflow_id, '')), (COALESCE(r.source, ''), COALESCE(r.workflow_id, ''))) AS v(s, w)) AS k
        GROUP BY k.s, k.w, r.status HAVING sum(r.d) <> 0 ORDER BY k.s, k.w, r.status
        ON CONFLICT (source, workflow_id, status) DO UPDATE SET n = job_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END $$"""

STMT_TRIGGERS = [
    "DROP TRIGGER trg_jobs_count_insert_delete ON jobs",
    "DROP TRIGGER trg_jobs_count_update ON jobs",
    STMT_FUNCTION,
    "CREATE TRIGGER trg_jobs_count_ins AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_stmt_trigger()",
    "CREATE TRIGGER trg_jobs_count_upd AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows "
    "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_stmt_trigger()",
    "CREATE TRIGGER trg_jobs_count_del AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_stmt_trigger()",
]


def patch(variant: str) -> None:
    """Swap the upsert / write transaction of this process for the variant's."""
    from sqlalchemy import func
    from sqlalchemy.exc import DBAPIError

    from jobs_index import queries, services

    if variant == "row":
        return
    if variant == "row-nolock":
        _nolock(services, DBAPIError)
        return

    def upsert_multirow(conn, rows):
        if not rows:
            return
        rows = sorted(rows, key=lambda r: r["id"])  # one lock order for job rows
        stmt = queries._insert(conn)
        updates = {c.name: stmt.excluded[c.name] for c in queries.jobs.columns if c.name != "id"}
        updates["source"] = func.coalesce(stmt.excluded.source, queries.jobs.c.source)
        stmt = stmt.on_conflict_do_update(
            index_elements=[queries.jobs.c.id],
            set_=updates,
            where=(stmt.excluded.stage > queries.jobs.c.stage)
            | ((stmt.excluded.stage == queries.jobs.c.stage) & (stmt.excluded.raw_digest != queries.jobs.c.raw_digest)),
        ).returning(queries.jobs.c.id)
        conn.execute(stmt, rows).all()  # insertmanyvalues: one statement per 1000 rows

    queries.upsert_jobs = upsert_multirow

    if variant == "stmt-nolock":
        _nolock(services, DBAPIError)


def _nolock(services, DBAPIError):
    """Write transactions without the advisory lock; a deadlocked batch is retried."""

    @contextmanager
    def write_transaction(engine):
        conn = engine.connect()
        try:
            with conn.begin():
                conn.exec_driver_sql("SELECT set_config('plan_cache_mode', 'auto', true)")
                yield conn
        finally:
            conn.close()

    services.write_transaction = write_transaction
    original = services.JobsIndex._write_batch

    def with_retry(self, records):
        for _ in range(20):
            try:
                return original(self, records)
            except DBAPIError as exc:
                if "deadlock" not in str(exc):
                    raise
                STATS["retries"] += 1
        raise RuntimeError("too many deadlocks")

    services.JobsIndex._write_batch = with_retry


STATS = {"retries": 0}


def records_for(workload: str, writer: int, n: int):
    from jobs_index.normalize import from_history
    from jobs_index.sample import synthetic_history

    if workload == "import":
        return [from_history(j, item) for j, item in synthetic_history(n, seed=1000 + writer, workflows=20)]
    # live: overlapping jobs, stages in writer-specific order
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_concurrency import version, writer_plan

    return [version(i, s) for i, s in writer_plan(writer)]


def worker(url, variant, workload, writer, n, start, results):
    try:
        patch(variant)
        from jobs_index import JobsIndex

        recs = records_for(workload, writer, n)
        batch = 7 if workload == "live" else 1000
        with JobsIndex.open(url) as index:
            start.wait()
            t = time.perf_counter()
            for off in range(0, len(recs), batch):
                index.ingest(recs[off : off + batch], source=f"host-{writer % 2}", batch_size=batch)
            results.put((writer, time.perf_counter() - t, len(recs), STATS["retries"], None))
    except Exception:
        results.put((writer, 0, 0, 0, traceback.format_exc()))


def txn_size(base: str, variants: list[str], sizes: list[int]) -> None:
    from jobs_index import JobsIndex
    from tests.bulkdata import _DIGEST, _RAW, STEP, T0, _bulk_insert_sql

    for n in sizes:
        for variant in variants:
            with fresh_schema(base) as url, JobsIndex.open(url) as index:
                if variant.startswith("stmt"):
                    with index.engine.begin() as c:
                        for sql in STMT_TRIGGERS:
                            c.exec_driver_sql(sql)
                timings = {}
                for step, sql, params in (
                    (
                        "insert",
                        _bulk_insert_sql("postgresql", n),
                        {"t0": T0, "step": STEP, "raw": _RAW, "digest": _DIGEST},
                    ),
                    ("update", "UPDATE jobs SET source = 'moved'", {}),
                    ("delete", "DELETE FROM jobs", {}),
                ):
                    with index.engine.begin() as c:
                        t = time.perf_counter()
                        c.execute(text(sql), params)
                        timings[step] = time.perf_counter() - t
                print(
                    f"{variant:12s} rows={n:6d} "
                    + " ".join(f"{k}={v:7.2f}s" for k, v in timings.items())
                    + f" consistent={index.counts_consistent()}",
                    flush=True,
                )


@contextmanager
def fresh_schema(base: str):
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def writers_run(base: str, variant: str, workload: str, writers: int, n: int) -> None:
    from jobs_index import JobsIndex

    with fresh_schema(base) as url:
        with JobsIndex.open(url) as index:
            if variant.startswith("stmt"):
                with index.engine.begin() as c:
                    for sql in STMT_TRIGGERS:
                        c.exec_driver_sql(sql)
        start, results = SPAWN.Barrier(writers), SPAWN.Queue()
        procs = [
            SPAWN.Process(target=worker, args=(url, variant, workload, w, n, start, results)) for w in range(writers)
        ]
        for p in procs:
            p.start()
        outs = [results.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        errs = [o[4] for o in outs if o[4]]
        wall = max(o[1] for o in outs) or 1e-9
        rows = sum(o[2] for o in outs)
        with JobsIndex.open(url) as index:
            ok, total = index.counts_consistent(), index.total()
        print(
            f"{variant:12s} {workload:6s} writers={writers} rows={rows} wall={wall:.2f}s "
            f"rows/s={rows / wall:.0f} deadlocks_retried={sum(o[3] for o in outs)} consistent={ok} "
            f"total={total} errors={len(errs)}",
            flush=True,
        )
        for e in errs[:2]:
            print(e)


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    base, workload = sys.argv[1], sys.argv[2]
    if workload == "txn-size":
        txn_size(base, sys.argv[3].split(","), [int(a) for a in sys.argv[4:]])
        return
    variant, writers = sys.argv[3], int(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    writers_run(base, variant, workload, writers, n)


if __name__ == "__main__":
    main()
