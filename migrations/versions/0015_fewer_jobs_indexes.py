"""Three indexes of ``jobs`` fewer: listings of every status merge per-status seeks.

``(workflow_id, create_time, id)`` and ``(source, create_time, id)`` (revision
0005) and ``(execution_duration, id)`` (0001) served only a listing with no status
filter, as one seek: a workflow's or a source's timeline, and the jobs by duration.
Each has a per-status twin, ``(workflow_id, status, create_time, id)``,
``(source, status, create_time, id)`` and ``(status, execution_duration, id)``, so
those listings are now what a listing of several statuses already was: one seek
per status, merged (``queries``; search timelines likewise, ``search_queries``).
The same rows, order, cursors and totals.

Bytes (issue 16, "half the bytes"; 100,000 synthetic jobs, one dump of 3,030
B/job): on SQLite (``dbstat``) the three took 90.4 + 53.1 + 48.7 = 192 B/job and
the file goes from 1,787 to 1,595 B/job, 0.590x to 0.526x of the dump; on
PostgreSQL they took 113.6 + 77.2 + 67.8 B/job, every table with its indexes 2,661
to 2,403 B/job. Every write maintains three index entries fewer per job.

Page cost (``benchmarks/fewer_indexes.py``: both codes in one process, interleaved,
in-process p50 at 100k jobs; ``benchmarks/results/fewer-indexes-100000.md``): the
merged seeks read only the covering index's (sort key, id), each only as far as the
page needs (SQLite: one compound SELECT merged by its ORDER BY; PostgreSQL: a Merge
Append of LIMIT-ed arms), then the page's rows by id. On a quiet 2-CPU machine,
first pages and cursor pages of the three listings: SQLite 1.12-1.17x (a workflow's
1.03 -> 1.15 ms), PostgreSQL 1.38-1.64x (1.67 -> 2.54 ms: planning five arms, about
0.5 ms against 0.25); ``offset=10000``: SQLite 2.7-3.5x (the merge costs ~0.25-0.5
us per skipped row, one index ~0.01-0.05), PostgreSQL 1.37-1.50x. Under load 4-6
(a benchmark beside): the same picture, SQLite 1.09-1.22x and 2.9-4.1x, PostgreSQL
1.37-1.97x and ~1.45x. Revision 0005 had measured its one seek at 1.7 ms against
2.5 ms over HTTP at 1M for the merge of the time (arms that each sorted their
window).

Revision ID: 0015_fewer_jobs_indexes
Revises: 0014_search_facets
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0015_fewer_jobs_indexes"
down_revision = "0014_search_facets"
branch_labels = None
depends_on = None

# frozen: the indexes as revisions 0001 and 0005 created them
DROPPED = (
    ("ix_jobs_workflow_id_create_time_id", ["workflow_id", "create_time", "id"]),
    ("ix_jobs_source_create_time_id", ["source", "create_time", "id"]),
    ("ix_jobs_execution_duration_id", ["execution_duration", "id"]),
)


def upgrade() -> None:
    for name, _ in DROPPED:
        op.drop_index(name, table_name="jobs")


def downgrade() -> None:
    for name, columns in DROPPED:
        op.create_index(name, "jobs", columns)
