"""Exact job counts per time bucket, so a deep ``offset`` page skips whole buckets.

``job_time_buckets(bits, status, bucket, n)``: how many jobs of each status (and,
under status '', of every status) have ``create_time >> bits`` = ``bucket``, at two
widths: ``bits`` 22 (2**22 ms, about 70 minutes) and 28 (about 3.1 days, 64 fine
buckets); an arithmetic shift, i.e. floor division, on both engines. An offset
page finds the coarse bucket its offset falls in, then the fine one inside it, and
seeks ``jobs``' timeline index at that bucket's edge with the small rest of the
offset (``queries``), instead of walking every skipped job.

Kept exact like ``job_counts`` (revision 0004): SQLite row-level triggers that stand
aside while ``jobs_index_writer`` has a row (jobs-index's own writer adds its
batch's deltas set-wise), PostgreSQL statement-level triggers with transition
tables. The table is filled from ``jobs`` in this transaction.

Revision ID: 0013_time_buckets
Revises: 0012_search_grams
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_time_buckets"
down_revision = "0012_search_grams"
branch_labels = None
depends_on = None

# frozen: schema.BUCKET_BITS when this revision was written
_WIDTHS = "(SELECT 22 AS bits UNION ALL SELECT 28)"
_UPSERT_TAIL = "ON CONFLICT (bits, status, bucket) DO UPDATE SET n = job_time_buckets.n + excluded.n"


def _sqlite_delta(row: str, delta: str) -> str:
    return (
        f"INSERT INTO job_time_buckets (bits, status, bucket, n) "
        f"SELECT w.bits, s.s, {row}.create_time >> w.bits, {delta} "
        f"FROM (SELECT '' AS s UNION ALL SELECT {row}.status) AS s CROSS JOIN {_WIDTHS} AS w "
        f"WHERE true {_UPSERT_TAIL}"
    )


_SQLITE_WHEN = "NOT EXISTS (SELECT 1 FROM jobs_index_writer)"
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER trg_jobs_bucket_insert AFTER INSERT ON jobs WHEN {_SQLITE_WHEN} BEGIN
        {_sqlite_delta("NEW", "1")};
    END""",
    f"""CREATE TRIGGER trg_jobs_bucket_delete AFTER DELETE ON jobs WHEN {_SQLITE_WHEN} BEGIN
        {_sqlite_delta("OLD", "-1")};
    END""",
    f"""CREATE TRIGGER trg_jobs_bucket_update AFTER UPDATE OF status, create_time ON jobs
        WHEN (OLD.status IS NOT NEW.status OR OLD.create_time IS NOT NEW.create_time) AND {_SQLITE_WHEN} BEGIN
        {_sqlite_delta("OLD", "-1")};
        {_sqlite_delta("NEW", "1")};
    END""",
]

# One aggregated upsert per statement, key-ordered (as 0004's counters).
_PG_DELTA = f"""
        INSERT INTO job_time_buckets (bits, status, bucket, n)
        SELECT w.bits, k.s, r.create_time >> w.bits, sum(r.d)
        FROM ({{rows}}) AS r CROSS JOIN LATERAL (VALUES (''), (r.status)) AS k(s) CROSS JOIN {_WIDTHS} AS w
        GROUP BY 1, 2, 3 HAVING sum(r.d) <> 0 ORDER BY 1, 2, 3
        {_UPSERT_TAIL};"""
_NEW = "SELECT status, create_time, 1 AS d FROM new_rows"
_OLD = "SELECT status, create_time, -1 AS d FROM old_rows"

POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION jobs_bucket_statement_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {_PG_DELTA.format(rows=_NEW)}
        ELSIF TG_OP = 'DELETE' THEN {_PG_DELTA.format(rows=_OLD)}
        ELSE {_PG_DELTA.format(rows=_NEW + " UNION ALL " + _OLD)}
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER trg_jobs_bucket_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_bucket_statement_trigger()""",
    """CREATE TRIGGER trg_jobs_bucket_update AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_bucket_statement_trigger()""",
    """CREATE TRIGGER trg_jobs_bucket_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_bucket_statement_trigger()""",
]
TRIGGER_NAMES = ("trg_jobs_bucket_insert", "trg_jobs_bucket_update", "trg_jobs_bucket_delete")

FILL = f"""
    INSERT INTO job_time_buckets (bits, status, bucket, n)
    SELECT w.bits, j.status, j.create_time >> w.bits, count(*) FROM jobs AS j CROSS JOIN {_WIDTHS} AS w
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT w.bits, '', j.create_time >> w.bits, count(*) FROM jobs AS j CROSS JOIN {_WIDTHS} AS w
    GROUP BY 1, 3
"""


def upgrade() -> None:
    op.create_table(
        "job_time_buckets",
        sa.Column("bits", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bits", "status", "bucket", name=op.f("pk_job_time_buckets")),
    )
    op.execute(FILL)
    pg = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_TRIGGERS if pg else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {name} ON jobs" if pg else f"DROP TRIGGER {name}")
    if pg:
        op.execute("DROP FUNCTION jobs_bucket_statement_trigger()")
    op.drop_table("job_time_buckets")
