"""SQL behind ``/metrics`` and ``/readyz``. Like ``queries``: connection first, never
commits; the read transaction belongs to the caller (``metrics``).

``source_status_counts`` reads the trigger-kept ``job_counts`` without scanning it:
the table holds one row per (source, workflow, status), so it grows with the number
of workflows, and a plain ``WHERE workflow_id = ''`` would read all of it. Its
primary key starts with ``source``, so a recursive query hops from one source to the
next (one index seek each) and reads each source's five ``workflow_id = ''`` rows by
seek: O(sources x log rows), whatever the history size or the number of workflows.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# ``source = ''`` rows are the all-sources totals (a job without a source counts
# only there). The hop stops at NULL (no greater source).
_COUNTS_SQL = text("""
WITH RECURSIVE sources(source) AS (
    SELECT min(source) FROM job_counts WHERE source > ''
    UNION ALL
    SELECT (SELECT min(c.source) FROM job_counts c WHERE c.source > sources.source)
    FROM sources WHERE sources.source IS NOT NULL
)
SELECT c.source, c.status, c.n FROM job_counts c
WHERE c.source = '' AND c.workflow_id = ''
UNION ALL
SELECT c.source, c.status, c.n FROM sources s
JOIN job_counts c ON c.source = s.source AND c.workflow_id = ''
WHERE s.source IS NOT NULL
""")


def source_status_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """``{(source, status): n}`` from ``job_counts``; source ``''`` is all sources."""
    return {(source, status): int(n) for source, status, n in conn.execute(_COUNTS_SQL)}


def ping(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT 1").scalar()
