"""SQL for the jobs index. Every function takes an open connection first and never
commits: transactions belong to ``services``.

Listing is keyset pagination in SQL. For the created_at timeline a page is

    SELECT ... FROM jobs WHERE (create_time, id) < (:t, :id)
    ORDER BY create_time DESC, id DESC LIMIT :n + 1

on ``ix_jobs_create_time_id`` (or the ascending twin). A status, workflow or source
filter becomes one seek per selected status on an index that starts with the
filter columns and ends in the sort key, each arm LIMIT-ed, merged with UNION ALL.
On SQLite each arm names its index (``INDEXED BY``), so no statistics ``ANALYZE``
gathers can turn it into a table walk. PostgreSQL has no hints: every query gets a
custom plan for its actual values, which picks these indexes (tests/test_plans.py);
docs/postgresql.md records the one stale-statistics case seen and its remedy.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Row, Select, func, select, tuple_, union_all
from sqlalchemy.dialects import postgresql, sqlite

from . import schema
from .cursor import MAX_ID_LENGTH
from .params import ListQuery

jobs = schema.Job.__table__
counts = schema.JobCount.__table__

LIST_COLUMNS = (
    jobs.c.id, jobs.c.status, jobs.c.priority, jobs.c.create_time, jobs.c.create_time_missing,
    jobs.c.execution_start_time, jobs.c.execution_end_time, jobs.c.execution_duration,
    jobs.c.execution_error, jobs.c.outputs_count, jobs.c.preview_output, jobs.c.workflow_id,
)
LIVE_STATUSES = ("pending", "in_progress")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Position:
    """A keyset position: rows strictly after ``(value, id)`` in the sort direction."""

    value: int
    id: str


def _sort_column(query: ListQuery):
    return jobs.c.create_time if query.sort_by == "created_at" else jobs.c.execution_duration


def _index_for(query: ListQuery, per_status: bool) -> str:
    """The index an arm seeks; filtered listings always use one arm per status."""
    if query.workflow_id is not None:
        return schema.IX_WORKFLOW_STATUS
    if query.source is not None:
        return schema.IX_SOURCE_STATUS
    if query.sort_by == "execution_duration":
        return schema.IX_STATUS_DURATION if per_status else schema.IX_DURATION
    return schema.IX_STATUS_CREATE_TIME if per_status else schema.IX_CREATE_TIME


def _order(query: ListQuery, sort, id_column) -> tuple:
    if query.descending:
        return sort.desc(), id_column.desc()
    return sort.asc(), id_column.asc()


def _arm(conn: Connection, query: ListQuery, status: str | None,
         after: Position | None, limit: int | None) -> Select:
    """One ordered, LIMIT-ed seek: all jobs (status None) or one status."""
    sort = _sort_column(query)
    stmt = select(*LIST_COLUMNS)
    if conn.dialect.name == "sqlite":
        index = _index_for(query, status is not None)
        stmt = stmt.with_hint(jobs, f"INDEXED BY {index}", "sqlite")
    if status is not None:
        stmt = stmt.where(jobs.c.status == status)
    if query.workflow_id is not None:
        stmt = stmt.where(jobs.c.workflow_id == query.workflow_id)
    if query.source is not None:
        stmt = stmt.where(jobs.c.source == query.source)
    if after is not None:
        key, bound = tuple_(sort, jobs.c.id), tuple_(after.value, after.id)
        stmt = stmt.where(key < bound if query.descending else key > bound)
    stmt = stmt.order_by(*_order(query, sort, jobs.c.id))
    return stmt if limit is None else stmt.limit(limit)


def clamp_position(position: Position, descending: bool) -> Position | None | bool:
    """Map a cursor value outside BIGINT onto the table: None = no bound, False = nothing."""
    if position.value > _INT64_MAX:
        return None if descending else False
    if position.value < _INT64_MIN:
        return False if descending else None
    return position


def _unstorable(conn: Connection, char: str) -> bool:
    """A character no stored text can hold: a lone surrogate (not UTF-8), or NUL on PostgreSQL."""
    return "\ud800" <= char <= "\udfff" or (char == "\x00" and conn.dialect.name == "postgresql")


def unmatchable(conn: Connection, *values: str | None) -> bool:
    """True when a filter value can equal no stored text (the driver would refuse it)."""
    return any(value is not None and any(_unstorable(conn, c) for c in value) for value in values)


def storable_position(conn: Connection, position: Position, descending: bool) -> Position:
    """The same keyset bound, spelled with an id the driver accepts.

    A cursor may carry an id that no row can have (see ``_unstorable``). Cut it at the
    first such character and use the storable string that splits every stored id
    (at most MAX_ID_LENGTH characters) the same way.
    """
    cut = next((i for i, c in enumerate(position.id) if _unstorable(conn, c)), None)
    if cut is None:
        return position
    prefix, char = position.id[:cut], position.id[cut]
    if char == "\x00":  # nothing stored sorts between prefix and prefix + "\x01"
        bound = prefix + "\x01" if descending else prefix
    elif descending:  # a surrogate: ids below it are exactly the ids below U+E000
        bound = prefix + "\ue000"
    else:  # ids above it are exactly the ids above the largest one below U+E000
        bound = prefix + "\ud7ff" + "\U0010ffff" * (MAX_ID_LENGTH - cut - 1)
    return Position(position.value, bound)


def select_page(conn: Connection, query: ListQuery, *, limit: int | None, offset: int = 0,
                after: Position | None = None) -> Sequence[Row]:
    """Up to ``limit`` rows of ``query``, skipping ``offset`` rows or starting ``after``."""
    if not query.statuses or unmatchable(conn, query.workflow_id, query.source):
        return []
    if after is not None:
        clamped = clamp_position(after, query.descending)
        if clamped is False:
            return []
        after = clamped and storable_position(conn, clamped, query.descending)
    if query.all_statuses and query.workflow_id is None and query.source is None:
        stmt = _arm(conn, query, None, after, limit)
    elif len(query.statuses) == 1:
        stmt = _arm(conn, query, query.statuses[0], after, limit)
    else:
        window = None if limit is None else limit + offset  # each arm may feed the skip
        arms = [select(_arm(conn, query, s, after, window).subquery()) for s in query.statuses]
        merged = union_all(*arms).subquery()
        sort = merged.c.create_time if query.sort_by == "created_at" else merged.c.execution_duration
        stmt = select(merged).order_by(*_order(query, sort, merged.c.id))
        if limit is not None:
            stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return conn.execute(stmt).all()


def count_total(conn: Connection, query: ListQuery) -> int:
    """Exact number of jobs passing the status/workflow/source filters (≤ 5 rows read)."""
    if not query.statuses or unmatchable(conn, query.workflow_id, query.source):
        return 0
    stmt = select(func.coalesce(func.sum(counts.c.n), 0)).where(
        counts.c.source == (query.source or ""),
        counts.c.workflow_id == (query.workflow_id or ""),
        counts.c.status.in_(query.statuses),
    )
    return int(conn.execute(stmt).scalar_one())


def get_job(conn: Connection, job_id: str) -> Row | None:
    if unmatchable(conn, job_id):
        return None
    return conn.execute(select(jobs).where(jobs.c.id == job_id)).first()


def _chunks(items: Sequence, size: int = 900) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def existing_versions(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``{id: (stage, raw_digest)}`` of the rows that already exist."""
    found: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(ids):
        stmt = select(jobs.c.id, jobs.c.stage, jobs.c.raw_digest).where(jobs.c.id.in_(chunk))
        found.update((row.id, (row.stage, row.raw_digest)) for row in conn.execute(stmt))
    return found


def _insert(conn: Connection):
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(jobs)


def upsert_jobs(conn: Connection, rows: Sequence[dict]) -> None:
    """Insert rows, or replace an existing row with a newer version of the job.

    A row replaces another when it is further along (pending → running → history)
    or at the same stage with different content; an older stage never overwrites a
    newer one, so a stale queue snapshot cannot resurrect a finished job. The guard
    is in the SQL, so it also holds for concurrent writers.
    """
    if not rows:
        return
    stmt = _insert(conn)
    updates = {c.name: stmt.excluded[c.name] for c in jobs.columns if c.name != "id"}
    updates["source"] = func.coalesce(stmt.excluded.source, jobs.c.source)
    stmt = stmt.on_conflict_do_update(
        index_elements=[jobs.c.id],
        set_=updates,
        where=(stmt.excluded.stage > jobs.c.stage)
        | ((stmt.excluded.stage == jobs.c.stage) & (stmt.excluded.raw_digest != jobs.c.raw_digest)),
    )
    conn.execute(stmt, list(rows))


def live_ids(conn: Connection, source: str | None) -> set[str]:
    """Ids of pending/in_progress rows of one source (None = rows with no source)."""
    stmt = select(jobs.c.id).where(
        jobs.c.status.in_(LIVE_STATUSES), jobs.c.source.is_not_distinct_from(source))
    return set(conn.execute(stmt).scalars())


def delete_jobs(conn: Connection, ids: Sequence[str]) -> int:
    deleted = 0
    for chunk in _chunks(list(ids)):
        deleted += conn.execute(jobs.delete().where(jobs.c.id.in_(chunk))).rowcount
    return deleted


def recount(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Counts computed from ``jobs`` itself (a full scan): the check for ``job_counts``."""
    result: dict[tuple[str, str, str], int] = {}
    source, workflow = func.coalesce(jobs.c.source, ""), func.coalesce(jobs.c.workflow_id, "")
    for by_source in (False, True):
        for by_workflow in (False, True):
            keys = [key for key, used in ((source, by_source), (workflow, by_workflow)) if used]
            stmt = select(*keys, jobs.c.status, func.count()).group_by(*keys, jobs.c.status)
            for row in conn.execute(stmt):
                values = list(row)
                s = values.pop(0) if by_source else ""
                w = values.pop(0) if by_workflow else ""
                if (by_source and s == "") or (by_workflow and w == ""):
                    continue  # jobs without a source/workflow count only in the "all" rows
                result[(s, w, values[0])] = values[1]
    return result


def stored_counts(conn: Connection) -> dict[tuple[str, str, str], int]:
    stmt = select(counts.c.source, counts.c.workflow_id, counts.c.status, counts.c.n).where(counts.c.n != 0)
    return {(s, w, st): n for s, w, st, n in conn.execute(stmt)}

