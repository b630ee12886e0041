"""SQL of ``jobs-index check``: read ``jobs`` and its side rows in keyset batches,
and write back what the raw items say.

Like ``queries``: every function takes an open connection first and never commits;
transactions belong to ``check`` (the service). A batch is the jobs with ids in
``(after, last]``; side rows are read by the same id range, so side rows whose job
is gone (orphans) are found batch by batch too.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Row, delete, select

from . import schema
from .queries import _chunks

jobs = schema.Job.__table__
job_outputs = schema.JobOutput.__table__
job_nodes = schema.JobNode.__table__

# The columns derived from ``raw`` (``normalize.from_history`` / ``from_queue``).
# Not derived: id, source (the writer's), raw itself, raw_digest (change detection
# of the item as received), indexed_at.
DERIVED_COLUMNS = ("status", "stage", "priority", "priority_json", "create_time", "create_time_missing",
                   "execution_start_time", "execution_end_time", "execution_duration", "outputs_count",
                   "preview_output", "execution_error", "error_type", "error_message", "error_node_id",
                   "error_node_type", "workflow_id")
OUTPUT_COLUMNS = ("ordinal", "node_id", "media_type", "filename", "subfolder", "type")
NODE_COLUMNS = ("node_id", "class_type")


def job_batch(conn: Connection, after: str | None, limit: int, *, for_update: bool = False) -> list[Row]:
    """Up to ``limit`` jobs with id > ``after`` (all when None), by id: id, raw_kind,
    raw and the derived columns. ``for_update``: PostgreSQL locks them until the
    transaction ends (a repair then writes what their current raw says; SQLite's
    writer transaction holds the database's only write lock anyway)."""
    stmt = (select(jobs.c.id, jobs.c.raw_kind, jobs.c.raw, *(jobs.c[name] for name in DERIVED_COLUMNS))
            .order_by(jobs.c.id).limit(limit))
    if after is not None:
        stmt = stmt.where(jobs.c.id > after)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).all()


def _in_range(table, after: str | None, last: str | None):
    conditions = []
    if after is not None:
        conditions.append(table.c.job_id > after)
    if last is not None:
        conditions.append(table.c.job_id <= last)
    return conditions


def side_rows_between(conn: Connection, after: str | None, last: str | None) -> tuple[list[Row], list[Row]]:
    """(job_outputs rows, job_nodes rows) whose job_id is in ``(after, last]``
    (None: unbounded), ordered like the writer writes them."""
    outputs = conn.execute(select(job_outputs.c.job_id, *(job_outputs.c[c] for c in OUTPUT_COLUMNS))
                           .where(*_in_range(job_outputs, after, last))
                           .order_by(job_outputs.c.job_id, job_outputs.c.ordinal)).all()
    nodes = conn.execute(select(job_nodes.c.job_id, *(job_nodes.c[c] for c in NODE_COLUMNS))
                         .where(*_in_range(job_nodes, after, last))
                         .order_by(job_nodes.c.job_id, job_nodes.c.node_id)).all()
    return outputs, nodes


def update_derived(conn: Connection, job_id: str, values: dict) -> None:
    conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def replace_side_rows(conn: Connection, job_ids: Sequence[str], outputs: list[dict], nodes: list[dict]) -> None:
    """Delete every side row of ``job_ids`` (jobs or orphans) and insert the given ones."""
    for chunk in _chunks(list(job_ids)):
        conn.execute(delete(job_outputs).where(job_outputs.c.job_id.in_(chunk)))
        conn.execute(delete(job_nodes).where(job_nodes.c.job_id.in_(chunk)))
    if outputs:
        conn.execute(job_outputs.insert(), outputs)
    if nodes:
        conn.execute(job_nodes.insert(), nodes)
