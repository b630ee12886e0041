"""SQL for the operator's toolbox: side tables, stats, retention and export.

Like ``queries``: every function takes an open connection first and never commits;
transactions belong to the services (``services``, ``toolbox``). Times are epoch ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Row, and_, delete, false, func, literal, or_, select, true, tuple_

from . import schema, search_queries
from .normalize import column_text
from .queries import _chunks, merged_by_status

jobs = schema.table(schema.Job)
job_outputs = schema.table(schema.JobOutput)

FINISHED_STATUSES = ("completed", "failed", "cancelled")
DAY_MS = 86_400_000


# -- stats ---------------------------------------------------------------------


def _window(since_ms: int | None):
    """Jobs created in the window (jobs without a create_time have 0: never inside a
    bounded window). None: every job."""
    return true() if since_ms is None else jobs.c.create_time >= since_ms


def status_counts(conn: Connection, since_ms: int | None) -> dict[str, int]:
    stmt = select(jobs.c.status, func.count()).where(_window(since_ms)).group_by(jobs.c.status)
    return {status: n for status, n in conn.execute(stmt)}


def per_day(conn: Connection, since_ms: int | None) -> list[tuple[int, str, int]]:
    """``(day number since the epoch (UTC), status, jobs)`` for days with jobs."""
    day = (jobs.c.create_time // DAY_MS).label("day")  # floor division: the UTC day
    stmt = (
        select(day, jobs.c.status, func.count())
        .where(_window(since_ms), jobs.c.create_time_missing == false())
        .group_by(day, jobs.c.status)
        .order_by(day)
    )
    return [(int(d), status, n) for d, status, n in conn.execute(stmt)]


def per_workflow(conn: Connection, since_ms: int | None) -> Sequence[Row]:
    """``(workflow_id, status, jobs)`` for the window."""
    stmt = (
        select(jobs.c.workflow_id, jobs.c.status, func.count())
        .where(_window(since_ms))
        .group_by(jobs.c.workflow_id, jobs.c.status)
    )
    return conn.execute(stmt).all()


def _timed(since_ms: int | None):
    """Completed jobs of the window whose start and end are both known (non-zero)."""
    return and_(
        _window(since_ms),
        jobs.c.status == "completed",
        jobs.c.execution_start_time != 0,
        jobs.c.execution_end_time != 0,
    )


def duration_percentiles(
    conn: Connection, since_ms: int | None, percents: Sequence[int], by_workflow: bool
) -> list[tuple[str | None, int, dict[int, int], float]]:
    """Nearest-rank percentiles of ``execution_duration`` (ms) over completed jobs.

    One query for every group: each group's durations are numbered in order by a
    window function (SQLite ≥ 3.25 and PostgreSQL), and only the rows at rank
    ``ceil(p * n / 100)`` come back, so the work is one sort in the database and
    the answer is a few rows per group. Returns ``(workflow_id or None, n,
    {percent: ms}, mean ms)`` per group (one group, key None, unless by_workflow).
    """
    duration = jobs.c.execution_duration
    partition = [jobs.c.workflow_id] if by_workflow else []
    group = jobs.c.workflow_id if by_workflow else literal(None)
    ranked = (
        select(
            group.label("grp"),
            duration.label("ms"),
            func.row_number().over(partition_by=partition, order_by=[duration, jobs.c.id]).label("rn"),
            func.count().over(partition_by=partition).label("n"),
            func.avg(duration).over(partition_by=partition).label("mean"),
        )
        .where(_timed(since_ms))
        .subquery()
    )
    # ceil(p * n / 100) in integer arithmetic, portable to both engines.
    ranks = [(p * ranked.c.n + 99) // 100 for p in percents]
    stmt = select(ranked).where(or_(*(ranked.c.rn == r for r in ranks)))
    groups: dict = {}
    for grp, ms, rn, n, mean in conn.execute(stmt):
        entry = groups.setdefault(grp, (grp, int(n), {}, float(mean)))
        for p in percents:
            if rn == (p * n + 99) // 100:
                entry[2][p] = int(ms)
    return list(groups.values())


# -- retention -----------------------------------------------------------------


@dataclass(frozen=True)
class PruneFilter:
    """Which jobs go: status in ``statuses`` and (older than ``before_ms`` or older
    than ``keep_boundary``, the oldest of the newest N kept). With neither an age nor
    a count criterion, every job of ``statuses`` goes."""

    statuses: tuple[str, ...]
    before_ms: int | None = None
    keep: int | None = None  # keep the newest N jobs of ``statuses``
    keep_boundary: tuple[int, str] | None = None  # (create_time, id) of the N-th newest; None: fewer than N


def _age_condition(before_ms: int):
    """Older than ``before_ms``. A job without a create_time (older ComfyUI) is dated by
    its execution end, else start, else when it was indexed, never taken as epoch 0."""
    fallback = func.coalesce(jobs.c.execution_end_time, jobs.c.execution_start_time, jobs.c.indexed_at)
    return or_(
        and_(jobs.c.create_time_missing == false(), jobs.c.create_time < before_ms),
        and_(jobs.c.create_time_missing != false(), fallback < before_ms),
    )


def prune_condition(f: PruneFilter):
    criteria = []
    if f.before_ms is not None:
        criteria.append(_age_condition(f.before_ms))
    if f.keep == 0:
        criteria.append(true())  # keep none
    elif f.keep is not None and f.keep_boundary is not None:
        criteria.append(tuple_(jobs.c.create_time, jobs.c.id) < tuple_(*f.keep_boundary))
    condition = jobs.c.status.in_(f.statuses)
    if criteria:
        return and_(condition, or_(*criteria))
    if f.before_ms is None and f.keep is None:
        return condition  # by status alone
    return false()  # a count criterion that keeps everything


def keep_boundary(conn: Connection, statuses: Sequence[str], keep: int) -> tuple[int, str] | None:
    """``(create_time, id)`` of the ``keep``-th newest job of ``statuses`` (None: fewer)."""
    if keep <= 0:
        return None
    stmt = (
        select(jobs.c.create_time, jobs.c.id)
        .where(jobs.c.status.in_(statuses))
        .order_by(jobs.c.create_time.desc(), jobs.c.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    row = conn.execute(stmt).first()
    return (row.create_time, row.id) if row else None


def prune_counts(conn: Connection, f: PruneFilter) -> dict[str, int]:
    stmt = select(jobs.c.status, func.count()).where(prune_condition(f)).group_by(jobs.c.status)
    return {status: n for status, n in conn.execute(stmt)}


def prune_batch(conn: Connection, f: PruneFilter, limit: int) -> dict[str, int]:
    """Delete up to ``limit`` matching jobs; ``{status: deleted}``.

    One ordered seek per status on ``(status, create_time, id)``, oldest first: the
    jobs to prune are a prefix of that order (bar the few without a create_time), so
    a batch reads about ``limit`` index entries however many jobs remain — no sort
    of every candidate per batch.
    """
    condition = prune_condition(f)
    removed: dict[str, int] = {}
    ids: list[str] = []
    for status in f.statuses:
        if len(ids) >= limit:
            break
        stmt = (
            select(jobs.c.id)
            .where(jobs.c.status == status, condition)
            .order_by(jobs.c.create_time, jobs.c.id)
            .limit(limit - len(ids))
        )
        found = list(conn.execute(stmt).scalars())
        if found:
            removed[status] = len(found)
            ids.extend(found)
    search_queries.store(conn).forget(conn, ids)
    for chunk in _chunks(ids):
        conn.execute(delete(jobs).where(jobs.c.id.in_(chunk)))
    return removed


# -- export --------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilter:
    statuses: tuple[str, ...] | None = None
    workflow_id: str | None = None
    since_ms: int | None = None


def export_chunk(conn: Connection, f: ExportFilter, after: tuple[int, str] | None, limit: int) -> Sequence[Row]:
    """Full rows in ``(create_time, id)`` order, strictly after ``after`` (keyset).
    A workflow's jobs: one seek per status on ``(workflow_id, status, create_time,
    id)``, merged (``queries.merged_by_status``), so a chunk reads about a chunk of
    rows, not the rest of the workflow."""
    stmt = _export_filtered(select(jobs), replace(f, statuses=None) if f.workflow_id is not None else f)
    if after is not None:
        stmt = stmt.where(tuple_(jobs.c.create_time, jobs.c.id) > tuple_(*after))
    if f.workflow_id is not None:
        statuses = schema.STATUS_VALUES if f.statuses is None else [s for s in schema.STATUS_VALUES if s in f.statuses]
        return merged_by_status(conn, lambda status: stmt.where(jobs.c.status == status), statuses, limit)
    return conn.execute(stmt.order_by(jobs.c.create_time, jobs.c.id).limit(limit)).all()


def export_count(conn: Connection, f: ExportFilter) -> int:
    stmt = _export_filtered(select(func.count()).select_from(jobs), f)
    return int(conn.execute(stmt).scalar_one())


def _export_filtered(stmt, f: ExportFilter):
    """``stmt`` restricted to the jobs an export selects."""
    if f.statuses is not None:
        stmt = stmt.where(jobs.c.status.in_(f.statuses))
    if f.workflow_id is not None:
        stmt = stmt.where(jobs.c.workflow_id == column_text(f.workflow_id))
    if f.since_ms is not None:
        stmt = stmt.where(jobs.c.create_time >= f.since_ms)
    return stmt


__all__ = [
    "FINISHED_STATUSES",
    "ExportFilter",
    "PruneFilter",
    "duration_percentiles",
    "export_chunk",
    "export_count",
    "keep_boundary",
    "per_day",
    "per_workflow",
    "prune_batch",
    "prune_counts",
    "status_counts",
]
