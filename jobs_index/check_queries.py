"""SQL of ``jobs-index check``: read ``jobs`` and its side rows in keyset batches,
and write back what the raw items say.

Like ``queries``: every function takes an open connection first and never commits;
transactions belong to ``check`` (the service). A batch is the jobs with ids in
``(after, last]``; side rows are read by the same id range, so side rows whose job
is gone (orphans) are found batch by batch too.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Row, delete, select, text

from . import schema, search_queries
from .queries import _chunks

jobs = schema.table(schema.Job)
job_outputs = schema.table(schema.JobOutput)

# The columns derived from ``raw`` (``normalize.from_history`` / ``from_queue``).
# Not derived: id, source (the writer's), raw itself, raw_digest (change detection
# of the item as received), indexed_at.
DERIVED_COLUMNS = (
    "status",
    "stage",
    "priority",
    "priority_json",
    "create_time",
    "create_time_missing",
    "execution_start_time",
    "execution_end_time",
    "execution_duration",
    "outputs_count",
    "preview_output",
    "execution_error",
    "error_type",
    "error_message",
    "error_node_id",
    "error_node_type",
    "workflow_id",
)
OUTPUT_COLUMNS = ("ordinal", "node_id", "media_type", "filename", "subfolder", "type")
# job_search (migration 0008): the listing columns it copies from the job's row, and
# the search document's name lists (JSON text); the full-text part (SQLite's
# contentless FTS5, PostgreSQL's tsvector) is rewritten with the row on repair.
SEARCH_LISTED = ("create_time", "execution_duration", "status", "workflow_id", "source")
SEARCH_COLUMNS = (*SEARCH_LISTED, *search_queries.FACETS)  # the lists: SQLite's job_search_facets


def job_batch(conn: Connection, after: str | None, limit: int, *, for_update: bool = False) -> Sequence[Row]:
    """Up to ``limit`` jobs with id > ``after`` (all when None), by id: id, raw_kind,
    raw and the derived columns. ``for_update``: PostgreSQL locks them until the
    transaction ends (a repair then writes what their current raw says; SQLite's
    writer transaction holds the database's only write lock anyway)."""
    stmt = (
        select(
            jobs.c.id,
            jobs.c.raw_kind,
            jobs.c.raw,
            jobs.c.raw_dict_id,
            jobs.c.source,
            *(jobs.c[name] for name in DERIVED_COLUMNS),
        )
        .order_by(jobs.c.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(jobs.c.id > after)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).all()


def _in_range(column: str, after: str | None, last: str | None) -> tuple[str, list]:
    """SQL condition on ``column`` for ids in ``(after, last]`` and its parameters."""
    conditions, params = [], []
    if after is not None:
        conditions.append(f"{column} > :after")
        params.append(("after", after))
    if last is not None:
        conditions.append(f"{column} <= :last")
        params.append(("last", last))
    return " AND ".join(conditions) or "1 = 1", params


def side_rows_between(conn: Connection, after: str | None, last: str | None) -> tuple[Sequence[Row], Sequence[Row]]:
    """(job_outputs rows, job_search rows) whose job_id is in ``(after, last]``
    (None: unbounded), ordered like the writer writes them."""
    bounds = [job_outputs.c.job_id > after] if after is not None else []
    if last is not None:
        bounds.append(job_outputs.c.job_id <= last)
    outputs = conn.execute(
        select(job_outputs.c.job_id, *(job_outputs.c[c] for c in OUTPUT_COLUMNS))
        .where(*bounds)
        .order_by(job_outputs.c.job_id, job_outputs.c.ordinal)
    ).all()
    where, params = _in_range("s.job_id", after, last)
    store = search_queries.store(conn)
    columns = [f"s.{c}" for c in SEARCH_LISTED] + [f"{store.facets_alias}.{c}" for c in search_queries.FACETS]
    search = conn.execute(
        text(f"SELECT s.job_id, {', '.join(columns)} FROM {store.rows_from} WHERE {where} ORDER BY s.job_id"),
        dict(params),
    ).all()
    return outputs, search


def update_derived(conn: Connection, job_id: str, values: dict) -> None:
    conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def replace_side_rows(conn: Connection, job_ids: Sequence[str], outputs: list[dict], records: list) -> None:
    """Delete every side row of ``job_ids`` (jobs or orphans, column form) and insert
    the given ``job_outputs`` rows and the search rows of ``records`` (``JobRecord``s
    with ComfyUI's id and workflow id and the row's source)."""
    search = search_queries.store(conn)
    for chunk in _chunks(list(job_ids)):
        conn.execute(delete(job_outputs).where(job_outputs.c.job_id.in_(chunk)))
        search.forget(conn, chunk)
    if outputs:
        conn.execute(job_outputs.insert(), outputs)
    search.add(conn, records)
