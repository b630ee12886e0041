"""Counters the importer keeps set-wise: cheaper ``job_counts`` upkeep on every write.

Migration 0001 keeps ``job_counts`` exact with row-level triggers: every row
written to ``jobs`` upserts up to four counter rows, the largest part of an
import's write cost. This revision keeps the counters exact for every write path
and makes them cheap for jobs-index's own writer:

* **SQLite**: the same three row-level triggers, now with a ``WHEN`` that is false
  while a row exists in ``jobs_index_writer``. jobs-index's writer inserts that row
  at the start of its ``BEGIN IMMEDIATE`` transaction and deletes it before
  committing, so no other connection ever sees it (uncommitted); inside the
  transaction the writer adds the batch's counter deltas itself with one upsert
  per changed key (it holds the write lock, so its pre-read of the replaced rows
  is exact). Any other write — ``sqlite3`` shell, ``prune``, deletes — fires the
  triggers as before.
* **PostgreSQL**: statement-level triggers with transition tables replace the
  row-level ones: one aggregated, key-ordered counter upsert per statement
  (``docs/postgresql.md``, "Writers"), for every write path, ad-hoc SQL included.
  Exact under any concurrency (the transition tables are what the statement
  changed), and linear in a statement's rows. ``jobs_index_writer`` exists here
  too but is not used.

Revision ID: 0004_writer_counts
Revises: 0003_followed_sources
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_writer_counts"
down_revision = "0003_followed_sources"
branch_labels = None
depends_on = None

# -- frozen copy of 0001's counter SQL ---------------------------------------------

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
SQLITE_TRIGGER_NAMES = ("trg_jobs_count_insert", "trg_jobs_count_delete", "trg_jobs_count_update")


def _sqlite_triggers(when: str) -> list[str]:
    """0001's triggers; ``when`` (if any) is ANDed to each one's condition."""
    extra = f" AND {when}" if when else ""
    return [
        f"""CREATE TRIGGER trg_jobs_count_insert AFTER INSERT ON jobs
        {"WHEN " + when if when else ""} BEGIN
        {_count_sql("NEW", "1")};
    END""",
        f"""CREATE TRIGGER trg_jobs_count_delete AFTER DELETE ON jobs
        {"WHEN " + when if when else ""} BEGIN
        {_count_sql("OLD", "-1")};
    END""",
        f"""CREATE TRIGGER trg_jobs_count_update AFTER UPDATE OF status, workflow_id, source ON jobs
        WHEN ({_COUNTED}){extra} BEGIN
        {_count_sql("OLD", "-1")};
        {_count_sql("NEW", "1")};
    END""",
    ]


# While jobs-index's writer has its row in jobs_index_writer (inside its own
# transaction only), it keeps job_counts itself.
SQLITE_WHEN = "NOT EXISTS (SELECT 1 FROM jobs_index_writer)"

POSTGRES_ROW_TRIGGERS = [  # 0001's, for the downgrade
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

# One aggregated upsert per statement; counter rows are locked once each, in key
# order. A job counts under (all, all), (its source, all), (all, its workflow) and
# (its source, its workflow); DISTINCT collapses them when it has no source/workflow.
_PG_DELTA = """
        INSERT INTO job_counts (source, workflow_id, status, n)
        SELECT k.s, k.w, r.status, sum(r.d)
        FROM ({rows}) AS r
        CROSS JOIN LATERAL (SELECT DISTINCT s, w FROM (VALUES ('', ''), (COALESCE(r.source, ''), ''),
            ('', COALESCE(r.workflow_id, '')), (COALESCE(r.source, ''), COALESCE(r.workflow_id, '')))
            AS v(s, w)) AS k
        GROUP BY k.s, k.w, r.status HAVING sum(r.d) <> 0 ORDER BY k.s, k.w, r.status
        ON CONFLICT (source, workflow_id, status) DO UPDATE SET n = job_counts.n + excluded.n;"""
_NEW = "SELECT status, source, workflow_id, 1 AS d FROM new_rows"
_OLD = "SELECT status, source, workflow_id, -1 AS d FROM old_rows"

POSTGRES_STATEMENT_TRIGGERS = [
    f"""CREATE FUNCTION jobs_count_statement_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {_PG_DELTA.format(rows=_NEW)}
        ELSIF TG_OP = 'DELETE' THEN {_PG_DELTA.format(rows=_OLD)}
        ELSE {_PG_DELTA.format(rows=_NEW + " UNION ALL " + _OLD)}
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER trg_jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement_trigger()""",
    """CREATE TRIGGER trg_jobs_count_update AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement_trigger()""",
    """CREATE TRIGGER trg_jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement_trigger()""",
]


def upgrade() -> None:
    op.create_table(
        "jobs_index_writer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs_index_writer")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER trg_jobs_count_update ON jobs")
        op.execute("DROP TRIGGER trg_jobs_count_insert_delete ON jobs")
        op.execute("DROP FUNCTION jobs_count_trigger()")
        for statement in POSTGRES_STATEMENT_TRIGGERS:
            op.execute(statement)
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER {name}")
        for statement in _sqlite_triggers(SQLITE_WHEN):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("trg_jobs_count_insert", "trg_jobs_count_update", "trg_jobs_count_delete"):
            op.execute(f"DROP TRIGGER {name} ON jobs")
        op.execute("DROP FUNCTION jobs_count_statement_trigger()")
        for statement in POSTGRES_ROW_TRIGGERS:
            op.execute(statement)
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER {name}")
        for statement in _sqlite_triggers(""):
            op.execute(statement)
    op.drop_table("jobs_index_writer")
