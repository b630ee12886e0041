"""SQLite: an index that walks the search rows in the listing's order, with each
job's docid, for timeline-first search pages.

A timeline-first page (``search_queries._timeline_batched``) walks jobs newest first
and tests them against the full-text query by FTS5 queries over their docids. It
walked ``jobs``' own ``(create_time, id)`` index and looked each job's docid up in
``job_search`` by ``job_id``: a random B-tree seek per walked job, ~20 us each at 1M
jobs (59 ms for 3,000 jobs, against 1.4 ms for the walk alone;
benchmarks/results/search-notes.md). ``ix_job_search_timeline (create_time, job_id,
status)`` holds the sort key, the tie-break, the status filter and (as every index of
the rowid table ``job_search``) the docid: the walk reads one index, no row.

PostgreSQL: nothing (its timeline probes ``job_search`` by primary key).

Revision ID: 0011_search_timeline
Revises: 0009_search_narrow
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0011_search_timeline"
down_revision = "0010_raw_dictionaries"
branch_labels = None
depends_on = None

TIMELINE = "CREATE INDEX ix_job_search_timeline ON job_search (create_time, job_id, status)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(TIMELINE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX ix_job_search_timeline")
