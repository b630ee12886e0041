"""Large tables built fast, for plan and fleet tests (SQLite and PostgreSQL).

``bulk_load(index, n)`` writes ``n`` finished jobs with one server-side
``INSERT ... SELECT`` (a recursive CTE on SQLite, ``generate_series`` on
PostgreSQL). Row-level counter triggers would make that slow (on PostgreSQL
quadratic: every row of one statement updates the same few ``job_counts`` rows, so
each update walks a longer chain of row versions), so for the bulk statement the
triggers are set aside and ``job_counts`` is rebuilt exactly from ``jobs`` in the
same transaction, then the triggers are back before anything else can write.
Rare rows (pending / running) are then added through ``JobsIndex.ingest``, i.e.
through the triggers, and callers check ``index.counts_consistent()``.

Data shape: ids ``job-0000000``.., create_time one second apart (unique),
statuses ~90 % completed / ~7 % failed / ~3 % cancelled, 50 workflows (every 10th
job has none), 4 sources, durations spread over 0..10 min.
"""

from __future__ import annotations

from sqlalchemy import text

from jobs_index import JobsIndex, queries
from jobs_index.database import write_transaction
from jobs_index.normalize import encode_raw, from_queue

T0 = 1_700_000_000_000  # create_time of job 0 (epoch ms)
STEP = 1000
WORKFLOWS = 50
SOURCES = 4

_RAW, _DIGEST = encode_raw({"prompt": [0, "bulk", {}, {}, []], "outputs": {}, "status": None})

# One expression list for both engines: only operators both understand.
_COLUMNS = (
    "id, status, stage, priority, create_time, create_time_missing, execution_start_time, "
    "execution_end_time, execution_duration, outputs_count, workflow_id, source, raw_kind, "
    "raw, raw_digest, indexed_at"
)
_VALUES = """
    {id_expr},
    CASE WHEN i % 13 = 0 THEN 'failed' WHEN i % 37 = 0 THEN 'cancelled' ELSE 'completed' END,
    2, i, :t0 + i * :step, {false},
    :t0 + i * :step + 10, :t0 + i * :step + 10 + (i * 7919) % 600000, (i * 7919) % 600000, 1,
    CASE WHEN i % 10 = 0 THEN NULL ELSE {wf_expr} END,
    {src_expr}, 'history', :raw, :digest, :t0
"""


def job_id(i: int) -> str:
    return f"job-{i:07d}"


def create_time(i: int) -> int:
    return T0 + i * STEP


def _bulk_insert_sql(dialect: str, n: int) -> str:
    if dialect == "sqlite":
        values = _VALUES.format(
            id_expr="printf('job-%07d', i)",
            false="0",
            wf_expr="printf('wf-%02d', (i * 31) % 50)",
            src_expr="printf('host-%d', i % 4)",
        )
        return (
            f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1}) "
            f"INSERT INTO jobs ({_COLUMNS}) SELECT {values} FROM seq"
        )
    values = _VALUES.format(
        id_expr="'job-' || lpad(i::text, 7, '0')",
        false="false",
        wf_expr="'wf-' || lpad(((i * 31) % 50)::text, 2, '0')",
        src_expr="'host-' || (i % 4)::text",
    )
    return f"INSERT INTO jobs ({_COLUMNS}) SELECT {values} FROM generate_series(0, {n - 1}::bigint) AS i"


def _rebuild_counts(conn) -> None:
    conn.execute(queries.counts.delete())
    rows = [{"source": s, "workflow_id": w, "status": st, "n": n} for (s, w, st), n in queries.recount(conn).items()]
    if rows:
        conn.execute(queries.counts.insert(), rows)
    queries.repair_buckets(conn)


def bulk_load(index: JobsIndex, n: int) -> None:
    """Insert ``n`` finished jobs into an empty index; counts exact; then ANALYZE."""
    engine = index.engine
    params = {"t0": T0, "step": STEP, "raw": _RAW, "digest": _DIGEST}
    with write_transaction(engine) as conn:
        if engine.dialect.name == "sqlite":
            # SQLite cannot disable a trigger: keep the DDL, drop, load, recreate.
            # Indexes are rebuilt after the load too (faster than row-by-row upkeep).
            saved = conn.exec_driver_sql(
                "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'jobs' "
                "AND type IN ('trigger', 'index') AND sql IS NOT NULL"
            ).all()
            for kind, name, _ in saved:
                conn.exec_driver_sql(f'DROP {kind.upper()} "{name}"')
            conn.execute(text(_bulk_insert_sql("sqlite", n)), params)
            for _kind, _, sql in sorted(saved, key=lambda r: r[0] != "index"):  # indexes first
                conn.exec_driver_sql(sql)
        else:
            # Transaction-scoped: ALTER TABLE holds an exclusive lock until commit.
            indexes = conn.exec_driver_sql(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "WHERE i.indrelid = 'jobs'::regclass AND NOT i.indisprimary"
            ).all()
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            conn.exec_driver_sql("ALTER TABLE jobs DISABLE TRIGGER USER")
            for name, _ in indexes:
                conn.exec_driver_sql(f"DROP INDEX {name}")
            conn.execute(text(_bulk_insert_sql("postgresql", n)), params)
            for _, ddl in indexes:
                conn.exec_driver_sql(ddl)
            conn.exec_driver_sql("ALTER TABLE jobs ENABLE TRIGGER USER")
        _rebuild_counts(conn)


def queue_item(i: int, *, workflow: str | None = "wf-07") -> list:
    extra = {"create_time": create_time(i) + 1}  # never equal to a bulk row's time
    if workflow is not None:
        extra["extra_pnginfo"] = {"workflow": {"id": workflow}}
    return [i, f"live-{i:07d}", {}, extra, []]


def add_live(index: JobsIndex, positions: list[int], status: str, *, source: str = "host-1") -> list[str]:
    """Pending / running jobs at the timeline ``positions``, ingested normally (triggers)."""
    records = [from_queue(queue_item(i), status) for i in positions]
    index.ingest(records, source=source)
    return [r.id for r in records]


def analyze(index: JobsIndex) -> None:
    """Fresh planner statistics (SQLite: a full ANALYZE; PostgreSQL: our two tables)."""
    with index.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE jobs, job_counts" if index.engine.dialect.name == "postgresql" else "ANALYZE")
