"""Queue numbers exactly as ComfyUI holds them: floats stay floats (issue 11).

ComfyUI's ``POST /prompt`` stores ``float(number)`` for a client-chosen ``"number"``
(``4`` becomes ``4.0``, ``"7"`` becomes ``7.0``, ``2.5`` stays ``2.5``) and
``GET /api/jobs`` answers the priority as stored. Until this revision the index
rejected every non-integral number and turned an integral float into an int.

* ``jobs.priority_json`` (new, text, null): the number as ComfyUI's ``json.dumps``
  writes it (``4.0``, ``2.5``, ``NaN``, ``Infinity``, a 30-digit integer) when it is
  not a 64-bit integer; NULL when ``priority`` holds it as an integer (every row
  before this revision but the integral floats, so adding it writes nothing).
* PostgreSQL: ``jobs.priority`` becomes ``numeric`` (one ``ALTER ... TYPE``, a
  rewrite of the table in this transaction), which holds every value exactly (a
  float keeps a fractional digit, so ``4.0`` reads back as a float).
  SQLite keeps its column (no rebuild of ``jobs``): integers as integers, other
  floats as reals; ``4.0`` reads back as 4 there and NaN is stored as the text
  ``'NaN'`` (SQLite has no NaN and the column is NOT NULL).
* ``jobs_v.priority`` reads as the number ComfyUI holds on both engines (a real
  for a float on SQLite).
* Every row is re-derived from ``raw``: its queue number is read from the stored
  item (usually from the first bytes of the decompressed JSON, the full item only
  when they do not say), and the rows whose number is not a 64-bit integer (the
  integral floats older versions flattened) get their exact value.

It does not rebuild ``jobs`` on either engine, so it needs none of the table-copy
safety of issue 18. One transaction, like every revision here: killed, it rolls
back and the index stays at 0005 with all its rows; run again, it starts over.
Progress is logged (every ``PROGRESS_EVERY`` rows) when the index is large.
Time at 1M jobs: ``benchmarks/results/migration-0006.md``.

Revision ID: 0006_priority_as_stored
Revises: 0005_filter_timeline_indexes
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006_priority_as_stored"
down_revision = "0005_filter_timeline_indexes"
branch_labels = None
depends_on = None

log = logging.getLogger("jobs_index.migrations")

CHUNK = 2000  # rows read per statement
PROGRESS_EVERY = 100_000
PROGRESS_MIN_ROWS = 50_000  # smaller indexes migrate in seconds, silently
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# -- jobs_v (0002's view; only ``priority`` changed) ---------------------------------


def _iso_sqlite(ms: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')"


def _iso_postgresql(ms: str) -> str:
    return (
        f"to_char(TIMESTAMP '1970-01-01 00:00:00' + {ms} * INTERVAL '1 millisecond', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
    )


def view_sql(dialect: str, exact_priority: bool = True) -> str:
    """jobs_v. ``exact_priority``: the priority as ComfyUI holds it (this revision);
    else 0002's plain column (for the downgrade)."""
    iso = _iso_postgresql if dialect == "postgresql" else _iso_sqlite
    duration = "(execution_end_time - execution_start_time) / 1000.0"
    priority = "priority"
    if dialect == "postgresql":
        duration = f"round({duration}, 3)"
    elif exact_priority:
        # An integral float (4.0) is stored as the integer 4 by SQLite's column affinity.
        priority = (
            "CASE WHEN priority_json IS NOT NULL AND typeof(priority) = 'integer' "
            "THEN CAST(priority AS REAL) ELSE priority END AS priority"
        )
    return f"""CREATE VIEW jobs_v AS
SELECT
    id,
    status,
    {priority},
    CASE WHEN create_time_missing THEN NULL ELSE {iso("create_time")} END AS created_at,
    {iso("execution_start_time")} AS started_at,
    {iso("execution_end_time")} AS ended_at,
    CASE WHEN execution_start_time <> 0 AND execution_end_time <> 0
         THEN {duration} END AS duration_s,
    outputs_count,
    error_type,
    error_message,
    error_node_id,
    error_node_type,
    workflow_id,
    source,
    create_time,
    execution_start_time,
    execution_end_time
FROM jobs"""


# -- the queue number of a stored item (frozen copy of normalize.priority_of) ---------


def priority_of(number: Any) -> tuple[Any, str | None]:
    """``(priority, priority_json)`` as ``normalize.priority_of`` at this revision."""
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"queue number must be a number, got {number!r}")
    if isinstance(number, int):
        if _INT64_MIN <= number <= _INT64_MAX:
            return number, None
        try:
            value = float(number)
        except OverflowError:
            value = math.copysign(math.inf, number)
        return value, str(number)
    number = float(number)
    return ("NaN" if number != number else number), json.dumps(number)


def pg_priority(priority: Any, priority_json: str | None) -> Decimal:
    """As ``write_queries.pg_priority``: exact, a float with a fractional digit."""
    if priority_json is None:
        return Decimal(priority)
    value = Decimal(priority_json) if priority_json != "NaN" else Decimal("NaN")
    if value.is_finite() and any(c in priority_json for c in ".eE") and value.as_tuple().exponent >= 0:
        value = Decimal(f"{int(value)}.0")
    return value


# The stored JSON is compact and keeps ComfyUI's key order: a history item almost
# always starts with its prompt tuple, a queue item is the tuple.
_PREFIXES = {"history": b'{"prompt":[', "queue": b"["}
_PLAIN_INT = re.compile(rb"(-?[0-9]{1,18}),")


def stored_number(raw_kind: str, raw: bytes) -> tuple[bool, Any]:
    """``(plain, number)``: ``plain`` when the item's queue number is an integer of at
    most 18 digits (read from the first bytes only); else the number itself."""
    head = zlib.decompressobj().decompress(raw, 64)
    prefix = _PREFIXES.get(raw_kind, b"\x00")
    if head.startswith(prefix) and _PLAIN_INT.match(head, len(prefix)):
        return True, None
    item = json.loads(zlib.decompress(raw))
    prompt = item.get("prompt") if raw_kind == "history" else item
    return False, prompt[0]


def _rederive(bind, pg: bool) -> None:
    jobs = sa.table("jobs", sa.column("id", sa.Text), sa.column("raw_kind", sa.Text), sa.column("raw", sa.LargeBinary))
    total = bind.exec_driver_sql(
        "SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE source = '' AND workflow_id = ''"
    ).scalar()
    loud = int(total or 0) >= PROGRESS_MIN_ROWS
    update = sa.text("UPDATE jobs SET priority = :priority, priority_json = :priority_json WHERE id = :id")
    started, seen, changed, last, next_report = time.monotonic(), 0, 0, None, PROGRESS_EVERY
    while True:
        stmt = sa.select(jobs.c.id, jobs.c.raw_kind, jobs.c.raw).order_by(jobs.c.id).limit(CHUNK)
        if last is not None:
            stmt = stmt.where(jobs.c.id > last)
        rows = bind.execute(stmt).all()
        if not rows:
            break
        fixes = []
        for job_id, raw_kind, raw in rows:
            plain, number = stored_number(raw_kind, raw)
            if plain:
                continue
            priority, priority_json = priority_of(number)
            if priority_json is None:
                continue  # a 64-bit int: the column holds it already
            fixes.append(
                {
                    "id": job_id,
                    "priority_json": priority_json,
                    "priority": pg_priority(priority, priority_json) if pg else priority,
                }
            )
        if fixes:
            bind.execute(update, fixes)
        changed += len(fixes)
        seen += len(rows)
        last = rows[-1][0]
        if loud and seen >= next_report:
            next_report += PROGRESS_EVERY
            log.warning(
                "0006_priority_as_stored: %s of ~%s jobs checked, %s changed (%.0f s)",
                f"{seen:,}",
                f"{total:,}",
                f"{changed:,}",
                time.monotonic() - started,
            )
    if loud:
        log.warning(
            "0006_priority_as_stored: done, %s jobs checked, %s changed (%.0f s)",
            f"{seen:,}",
            f"{changed:,}",
            time.monotonic() - started,
        )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    pg = dialect == "postgresql"
    op.execute("DROP VIEW IF EXISTS jobs_v")
    if pg:
        if bind.exec_driver_sql("SELECT count(*) FROM jobs").scalar() >= PROGRESS_MIN_ROWS:
            log.warning("0006_priority_as_stored: PostgreSQL rewrites jobs (priority becomes numeric)")
        op.execute("ALTER TABLE jobs ALTER COLUMN priority TYPE numeric USING priority::numeric")
    op.add_column("jobs", sa.Column("priority_json", sa.Text(), nullable=True))
    _rederive(bind, pg)
    op.execute(view_sql(dialect))
    if pg:  # the rewrite dropped priority's statistics: give the planner fresh ones
        op.execute("ANALYZE jobs")


def downgrade() -> None:
    """Back to integer priorities: a row whose number is not a 64-bit integer keeps
    the integer nearest to it (NaN and infinities become 0); its raw item is intact,
    so upgrading again restores it."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.execute("DROP VIEW IF EXISTS jobs_v")
    if dialect == "postgresql":
        op.execute(
            "UPDATE jobs SET priority = 0 WHERE priority = 'NaN' OR priority IN ('Infinity', '-Infinity') "
            "OR priority NOT BETWEEN -9223372036854775808 AND 9223372036854775807"
        )
        op.execute("ALTER TABLE jobs ALTER COLUMN priority TYPE bigint USING round(priority)::bigint")
    else:
        op.execute(
            "UPDATE jobs SET priority = CASE WHEN typeof(priority) = 'real' "
            "AND abs(priority) < 9.2e18 THEN CAST(round(priority) AS INTEGER) ELSE 0 END "
            "WHERE typeof(priority) <> 'integer'"
        )
    # Native DROP COLUMN on both engines (SQLite >= 3.35): no copy of the table.
    op.execute("ALTER TABLE jobs DROP COLUMN priority_json")
    op.execute(view_sql(dialect, exact_priority=False))
