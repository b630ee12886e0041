"""Create the jobs table, its keyset indexes, and trigger-maintained counts.

Revision ID: 0001_create_jobs
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_create_jobs"
down_revision = None
branch_labels = None
depends_on = None

ID_TYPE = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

# Each job counts once in up to four job_counts rows: (all sources, all workflows),
# (all sources, its workflow), (its source, all workflows), (its source, its
# workflow); '' stands for "all". UNION removes the duplicates when the job has no
# source or no workflow. Triggers keep this exact for every write, including SQL.
_KEYS = """
    SELECT s.k AS source, w.k AS workflow_id, {row}.status AS status
    FROM (SELECT '' AS k UNION SELECT COALESCE({row}.source, '')) AS s
    CROSS JOIN (SELECT '' AS k UNION SELECT COALESCE({row}.workflow_id, '')) AS w
"""


def _count_sql(row: str, delta: str) -> str:
    return (
        "INSERT INTO job_counts (source, workflow_id, status, n) "
        f"SELECT source, workflow_id, status, {delta} FROM ({_KEYS.format(row=row)}) AS keys "
        "WHERE true ON CONFLICT (source, workflow_id, status) "
        "DO UPDATE SET n = job_counts.n + excluded.n"
    )


_COUNTED = "OLD.status IS NOT NEW.status OR OLD.workflow_id IS NOT NEW.workflow_id OR OLD.source IS NOT NEW.source"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER trg_jobs_count_insert AFTER INSERT ON jobs BEGIN
        {_count_sql("NEW", "1")};
    END""",
    f"""CREATE TRIGGER trg_jobs_count_delete AFTER DELETE ON jobs BEGIN
        {_count_sql("OLD", "-1")};
    END""",
    f"""CREATE TRIGGER trg_jobs_count_update AFTER UPDATE OF status, workflow_id, source ON jobs
        WHEN {_COUNTED} BEGIN
        {_count_sql("OLD", "-1")};
        {_count_sql("NEW", "1")};
    END""",
]

POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION jobs_count_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            {_count_sql("OLD", "-1")};
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            {_count_sql("NEW", "1")};
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER trg_jobs_count_insert_delete AFTER INSERT OR DELETE ON jobs
        FOR EACH ROW EXECUTE FUNCTION jobs_count_trigger()""",
    f"""CREATE TRIGGER trg_jobs_count_update AFTER UPDATE OF status, workflow_id, source ON jobs
        FOR EACH ROW WHEN ({_COUNTED.replace("IS NOT", "IS DISTINCT FROM")})
        EXECUTE FUNCTION jobs_count_trigger()""",
]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("stage", sa.SmallInteger(), nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("create_time_missing", sa.Boolean(), nullable=False),
        sa.Column("execution_start_time", sa.BigInteger(), nullable=True),
        sa.Column("execution_end_time", sa.BigInteger(), nullable=True),
        sa.Column("execution_duration", sa.BigInteger(), nullable=False),
        sa.Column("outputs_count", sa.Integer(), nullable=False),
        sa.Column("preview_output", sa.Text(), nullable=True),
        sa.Column("execution_error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_node_id", sa.Text(), nullable=True),
        sa.Column("error_node_type", sa.Text(), nullable=True),
        sa.Column("workflow_id", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("raw_kind", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("raw_digest", sa.Text(), nullable=False),
        sa.Column("indexed_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint("stage IN (0, 1, 2)", name=op.f("ck_jobs_stage")),
        sa.CheckConstraint("raw_kind IN ('history', 'queue')", name=op.f("ck_jobs_raw_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_create_time_id", "jobs", ["create_time", "id"])
    op.create_index("ix_jobs_status_create_time_id", "jobs", ["status", "create_time", "id"])
    op.create_index(
        "ix_jobs_workflow_id_status_create_time_id",
        "jobs",
        ["workflow_id", "status", "create_time", "id"],
    )
    op.create_index("ix_jobs_source_status_create_time_id", "jobs", ["source", "status", "create_time", "id"])
    op.create_index("ix_jobs_execution_duration_id", "jobs", ["execution_duration", "id"])
    op.create_index("ix_jobs_status_execution_duration_id", "jobs", ["status", "execution_duration", "id"])
    op.create_table(
        "job_counts",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("workflow_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "workflow_id", "status", name=op.f("pk_job_counts")),
    )
    dialect = op.get_bind().dialect.name
    for statement in POSTGRES_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_jobs_count_update ON jobs")
        op.execute("DROP TRIGGER IF EXISTS trg_jobs_count_insert_delete ON jobs")
        op.execute("DROP FUNCTION IF EXISTS jobs_count_trigger()")
    op.drop_table("job_counts")
    op.drop_table("jobs")  # drops its indexes and (SQLite) triggers
