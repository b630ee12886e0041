"""SQLite: a narrow index for counting and sorting matches; the words of a job
deleted by other SQL are known (``job_search_orphans``).

``job_search_fts`` (0008) is contentless: a document leaves it only when told its
words, so a job deleted by other SQL (which loses its ``job_search`` row by trigger)
leaves its words behind, matching a ``docid`` nothing refers to. Every search count
therefore joined ``job_search`` once per match (~2 us each: 120 ms for the 62k
matches of a common word at 100k jobs) only to leave those out, though FTS5 alone
counts them in ~4 ms.

This revision records them: ``job_search_orphans(docid)`` gets the ``docid`` of every
``job_search`` row deleted (trigger ``trg_job_search_orphan``); jobs-index's own
``forget`` removes the words first and then takes its docids out again, so the table
holds exactly the documents whose words are still indexed without a row (or a few
without words at all, which match nothing). An unfiltered count is then the FTS5
count minus the orphans that match (``search_queries``). The upgrade finds the
orphans an index already has by listing every document of the FTS index
(``fts5vocab`` instance table: ~15 s at 100k jobs), in the upgrade's one transaction.

``ix_job_search_narrow`` (docid, status, create_time, execution_duration, source,
workflow_id, job_id) covers what counting, filtering and sorting the matches read,
so a search no longer visits a ~660 B ``job_search`` row per match (the JSON lists
make it wide): ~110 B per job, 1.5-2x faster filtered counts and matches-first
pages at 100k jobs (benchmarks/results/search-notes.md).

PostgreSQL: nothing (``job_search`` rows go with their job: no orphans).

Revision ID: 0009_search_narrow
Revises: 0008_search
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0009_search_narrow"
down_revision = "0008_search"
branch_labels = None
depends_on = None

# job_search's rows are ~660 B (node_types, models, loras): a search reading one
# per match pays for the width. This index holds what counting, filtering and
# sorting the matches read (~110 B per job): 1.5-2x faster counts and pages.
NARROW = (
    "CREATE INDEX ix_job_search_narrow ON job_search "
    "(docid, status, create_time, execution_duration, source, workflow_id, job_id)"
)
CREATE = [
    NARROW,
    "CREATE TABLE job_search_orphans (docid INTEGER PRIMARY KEY)",
    """CREATE TRIGGER trg_job_search_orphan AFTER DELETE ON job_search
BEGIN
    INSERT OR IGNORE INTO job_search_orphans (docid) VALUES (OLD.docid);
END""",
]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for sql in CREATE:
        op.execute(sql)
    bind.exec_driver_sql(
        "CREATE VIRTUAL TABLE temp.job_search_fts_docs USING fts5vocab(main, job_search_fts, instance)"
    )
    try:
        bind.exec_driver_sql(
            "INSERT INTO job_search_orphans (docid) SELECT DISTINCT doc FROM temp.job_search_fts_docs "
            "WHERE doc NOT IN (SELECT docid FROM job_search)"
        )
    finally:
        bind.exec_driver_sql("DROP TABLE temp.job_search_fts_docs")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER trg_job_search_orphan")
    op.execute("DROP TABLE job_search_orphans")
    op.execute("DROP INDEX ix_job_search_narrow")
