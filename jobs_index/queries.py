"""SQL for the jobs index. Every function takes an open connection first and never
commits: transactions belong to ``services``.

Listing is keyset pagination in SQL. For the created_at timeline a page is

    SELECT ... FROM jobs WHERE (create_time, id) < (:t, :id)
    ORDER BY create_time DESC, id DESC LIMIT :n + 1

on ``ix_jobs_create_time_id`` (or the ascending twin). Every other listing (a
status, workflow or source filter, or the sort by duration, of any statuses, all
five included) is one seek per selected status on an index that starts with the
filter columns and the status and ends in the sort key, merged with UNION ALL
(``_winners_page``: each arm reads only as far as the page needs). Migration 0015
dropped the status-less twins of these indexes for the bytes (issue 16).
On SQLite each arm names its index (``INDEXED BY``), so no statistics ``ANALYZE``
gathers can turn it into a table walk. PostgreSQL has no hints: every query gets a
custom plan for its actual values, which picks these indexes (tests/test_plans.py);
docs/postgresql.md records the one stale-statistics case seen and its remedy.

A time range (``since``/``until``, on ``create_time``) is one more condition of each
arm: on the created_at timeline every one of these indexes has ``create_time`` right
after its equality columns, so it narrows the seek. Its total cannot come from
``job_counts`` (keyed by source, workflow and status only): it is counted from the
rows, ``count(*)`` over the index range (O(jobs in the range); see the README).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    Row,
    Select,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import array

from . import schema
from .cursor import MAX_ID_LENGTH
from .database import PLANS
from .normalize import answer_text, column_text
from .params import STATUSES as LISTED_STATUSES
from .params import ListQuery

log = logging.getLogger(__name__)
# Execution options (``database.PLANS``): a page whose plan cannot depend on its
# values (generic plans), and a lookup by key that is as good in either mode.
_GENERIC, _EITHER = {PLANS: "generic"}, {PLANS: "any"}
jobs = schema.table(schema.Job)
counts = schema.table(schema.JobCount)
buckets = schema.table(schema.JobTimeBucket)


# A job of ``GET /api/jobs`` as JSON text, rendered by the database from the row's
# columns: keys in ComfyUI's order, optional keys left out as ComfyUI leaves them out,
# the stored JSON of ``execution_error``/``preview_output`` embedded as it is. It
# equals ``json.dumps(normalize.list_dict(row))`` after parsing (tests/test_wire.py).
# A page is then a join of strings: no per-row Python objects, no JSON re-encoding.
def _job_json_sql(quote: str, number: str) -> str:
    """The SQL expression; ``quote``/``number`` format a JSON string / integer."""
    q, n = quote.format, number.format

    def optional(key: str, column: str, value: str, missing: str | None = None) -> str:
        return f"CASE WHEN {missing or column + ' IS NULL'} THEN '' ELSE ', \"{key}\": ' || {value} END"

    parts = [
        f"""'{{"id": ' || {q("id")}""",
        f"""', "status": ' || {q("status")}""",
        # the exact JSON of a float ("4.0", "NaN"), else the 64-bit integer (migration 0006)
        f"""', "priority": ' || COALESCE(priority_json, {n("priority")})""",
        optional("create_time", "create_time", n("create_time"), missing="create_time_missing"),
        optional("execution_start_time", "execution_start_time", n("execution_start_time")),
        optional("execution_end_time", "execution_end_time", n("execution_end_time")),
        optional("execution_error", "execution_error", "execution_error"),
        f"""', "outputs_count": ' || {n("outputs_count")}""",
        optional("preview_output", "preview_output", "preview_output"),
        optional("workflow_id", "workflow_id", q("workflow_id")),
        "'}'",
    ]
    return "\n || ".join(parts)


_JOB_JSON_SQL = {
    "sqlite": _job_json_sql("json_quote({})", "{}"),
    "postgresql": _job_json_sql("to_json({})::text", "{}::text"),
}

# The id and workflow id columns hold ``normalize.column_text`` of ComfyUI's value,
# which differs from it only if it has a "\x01" (the escape of NUL; both engines
# write it "\u0001" in JSON). Such a rare job's text is completed here, in Python:
# undoing the mapping in SQL cost PostgreSQL more planning time on every page.
ESCAPED_IN_JSON = "\\u0001"


def answered_job_json(text: str) -> str:
    """A listing row's job JSON with its id and workflow id as ComfyUI answers them
    (``text`` itself for every job whose columns hold no "\x01")."""
    if ESCAPED_IN_JSON not in text:
        return text
    job = json.loads(text)
    job["id"] = answer_text(job["id"])
    if "workflow_id" in job:
        job["workflow_id"] = answer_text(job["workflow_id"])
    return json.dumps(job, ensure_ascii=False)


def page_columns(dialect: str) -> tuple:
    """The columns of a listing row: the keyset key, and the job's JSON text."""
    return (
        jobs.c.id,
        jobs.c.create_time,
        jobs.c.execution_duration,
        literal_column(_JOB_JSON_SQL[dialect]).label("job_json"),
    )


def page_columns_sql(dialect: str) -> str:
    """``page_columns`` as SQL text (for statements written as text: ``search_queries``)."""
    return f"jobs.id, jobs.create_time, jobs.execution_duration, {_JOB_JSON_SQL[dialect]} AS job_json"


SQLITE_PRIMARY_KEY_INDEX = "sqlite_autoindex_jobs_1"  # SQLite's own index of jobs.id

# Positions in a listing row (``select_page``).
ROW_ID, ROW_CREATE_TIME, ROW_DURATION, ROW_JOB_JSON, ROW_TOTAL = 0, 1, 2, 3, -1
LIVE_STATUSES = ("pending", "in_progress")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Stored ids this long and longer (ComfyUI accepts any prompt id) could sort wrongly
# against a cursor id with a lone surrogate (``storable_position``): far beyond any id
# a PostgreSQL index can hold (~2,700 bytes).
SPLIT_ID_LENGTH = max(MAX_ID_LENGTH, 8192)


@dataclass(frozen=True)
class Position:
    """A keyset position: rows strictly after ``(value, id)`` in the sort direction."""

    value: int
    id: str


def _sort_column(sort_by: str):
    return jobs.c.create_time if sort_by == "created_at" else jobs.c.execution_duration


def _index_for(shape: _Shape, per_status: bool) -> str:
    """The index an arm seeks: one status's range (every filtered or duration-sorted
    listing, one arm per status), or the whole timeline (unfiltered, every status)."""
    if shape.workflow:
        return schema.IX_WORKFLOW_STATUS
    if shape.source:
        return schema.IX_SOURCE_STATUS
    if shape.sort_by == "execution_duration":
        return schema.IX_STATUS_DURATION
    return schema.IX_STATUS_CREATE_TIME if per_status else schema.IX_CREATE_TIME


def _order(descending: bool, sort, id_column) -> tuple:
    if descending:
        return sort.desc(), id_column.desc()
    return sort.asc(), id_column.asc()


@dataclass(frozen=True)
class _Shape:
    """Everything about a listing that changes its SQL text (values are parameters).

    ``arms``: "all" (one seek over every job), "one" (one status) or "union" (one
    LIMIT-ed seek per status, merged). Statuses are bound as ``s0``..``s{n-1}``.
    """

    dialect: str
    sort_by: str
    descending: bool
    statuses: int
    arms: str
    workflow: bool
    source: bool
    after: bool
    limit: bool
    offset: bool
    total: bool
    since: bool = False  # create_time >= :since
    until: bool = False  # create_time < :until
    buckets: bool = False  # the offset is skipped bucket by bucket (``_bucket_position``)
    # PostgreSQL, a page of a plan-stable shape (``_plan_stable``): its LIMIT written
    # as this constant, so a generic plan still knows how few rows the page takes
    page_size: int | None = None


def _time_conditions(shape, table) -> list:
    """The time range's conditions on ``table`` (``jobs``, or an alias of it)."""
    conditions = []
    if shape.since:
        conditions.append(table.c.create_time >= bindparam("since", type_=BigInteger))
    if shape.until:
        conditions.append(table.c.create_time < bindparam("until", type_=BigInteger))
    return conditions


def _pg_lead(shape: _Shape):
    """PostgreSQL, a workflow's or a source's timeline: the filter column that leads
    each arm's ORDER BY (``_arm``); else None."""
    if shape.dialect != "postgresql" or shape.sort_by != "created_at":
        return None
    return jobs.c.workflow_id if shape.workflow else jobs.c.source if shape.source else None


def _arm(shape: _Shape, status, limit, columns: tuple, ordered: bool = True) -> Select:
    """One ordered, LIMIT-ed seek: all jobs (status None: the unfiltered timeline) or
    one status. ``ordered`` False: no ORDER BY (an arm of SQLite's merged compound,
    which orders every arm itself)."""
    assert status is not None or not (shape.workflow or shape.source or shape.sort_by != "created_at"), shape
    sort = _sort_column(shape.sort_by)
    stmt = select(*columns)
    if shape.dialect == "sqlite":
        index = _index_for(shape, status is not None)
        stmt = stmt.with_hint(jobs, f"INDEXED BY {index}", "sqlite")
    # A workflow's / source's timeline, on PostgreSQL, which has no hints: the filter
    # that leads the arm's index also leads its ORDER BY, written ``= ANY(ARRAY[v])``
    # (an equality for the B-tree, so the scan still stops at the end of the status's
    # entries, but no constant for the planner, which therefore cannot drop the column
    # from the order). Only the index that starts with it yields that order: no plan
    # can walk the timeline index filtering its way through other jobs instead (a
    # walk that statistics blind to time make look cheap for a workflow or source
    # whose jobs are all old; docs/postgresql.md).
    lead = _pg_lead(shape) if status is not None else None
    if status is not None:
        stmt = stmt.where(jobs.c.status == status)
    for flag, column, name in (
        (shape.workflow, jobs.c.workflow_id, "workflow"),
        (shape.source, jobs.c.source, "source"),
    ):
        if not flag:
            continue
        value = bindparam(name, type_=Text)
        stmt = stmt.where(column == any_(array([value])) if column is lead else column == value)
    for condition in _time_conditions(shape, jobs):
        stmt = stmt.where(condition)
    if shape.buckets:  # the rows from the bucket the offset falls in, onwards
        edge = select(_bucket_position(shape).c.bound).scalar_subquery()
        stmt = stmt.where(jobs.c.create_time <= edge if shape.descending else jobs.c.create_time >= edge)
    if shape.after:
        key = tuple_(sort, jobs.c.id)
        bound = tuple_(bindparam("after_value", type_=BigInteger), bindparam("after_id", type_=Text))
        stmt = stmt.where(key < bound if shape.descending else key > bound)
    if ordered:
        order = _order(shape.descending, sort, jobs.c.id)
        if lead is not None:
            order = (lead.desc() if shape.descending else lead.asc(), *order)
        stmt = stmt.order_by(*order)
    return stmt if limit is None else stmt.limit(limit)


def _total_column(statuses: list):
    """``total`` as a scalar subquery: the sum of at most five ``job_counts`` rows."""
    return (
        select(func.coalesce(func.sum(counts.c.n), 0))
        .where(
            counts.c.source == bindparam("count_source", type_=Text),
            counts.c.workflow_id == bindparam("count_workflow", type_=Text),
            counts.c.status.in_(statuses),
        )
        .scalar_subquery()
        .label("total")
    )


@dataclass(frozen=True)
class _CountShape:
    """A count of the rows themselves (a time-bounded total): its SQL text's shape."""

    workflow: bool
    source: bool
    since: bool
    until: bool


def _counted_column(shape, statuses: list | None):
    """The exact number of jobs passing the filters and the time range, counted from
    the rows (a scalar subquery over an alias of ``jobs``, so it never correlates with
    a listing's own ``jobs``). ``statuses`` None: every status (no condition: the
    count reads the ``(create_time, id)`` index range)."""
    counted = jobs.alias("counted")
    stmt = select(func.count()).select_from(counted)
    if statuses is not None:
        stmt = stmt.where(counted.c.status == statuses[0] if len(statuses) == 1 else counted.c.status.in_(statuses))
    if shape.workflow:
        stmt = stmt.where(counted.c.workflow_id == bindparam("workflow", type_=Text))
    if shape.source:
        stmt = stmt.where(counted.c.source == bindparam("source", type_=Text))
    for condition in _time_conditions(shape, counted):
        stmt = stmt.where(condition)
    return stmt.scalar_subquery()


def _limit(shape: _Shape):
    if shape.page_size is not None:
        return literal_column(str(int(shape.page_size)))
    return bindparam("limit", type_=Integer) if shape.limit else None


def _window(shape: _Shape):
    """How far each arm of a PostgreSQL merge reads: the page and the offset (a
    bucketed page adds the rest to skip itself, ``_winners_page``)."""
    if shape.page_size is not None:  # no plain offset (``_plan_stable``): the page alone
        return _limit(shape)
    return bindparam("window", type_=Integer) if shape.limit else None


def _plan_stable(shape: _Shape) -> bool:
    """A PostgreSQL page whose best plan is the same for every value of its
    parameters, so it may run on a generic plan (``database.PLANS``): each arm
    has one index that yields its order with its filters as equalities (the status,
    the workflow or source as ``= ANY(ARRAY[v])``), the keyset bound is a range of
    that order, the LIMIT is a constant (``page_size``) and the total is a lookup
    of ``job_counts``' key. A deep offset skipped by ``job_time_buckets`` is one too:
    the offset enters its plan only through subqueries (the bucket it falls in, the
    rest to skip), which no plan knows in advance. Not a time range (the range's
    width decides between indexes and counts rows) nor a plain OFFSET (how far it
    skips decides the plan; measured at 1M jobs, a generic plan made a 5,000-row
    skip 1.4x slower): those keep a custom plan."""
    return (
        shape.dialect == "postgresql"
        and shape.limit
        and (shape.buckets or not shape.offset)
        and not (shape.since or shape.until)
    )


def _page_select(shape: _Shape) -> Select:
    statuses = _status_params(shape.statuses)
    limit = _limit(shape)
    offset = bindparam("offset", type_=Integer) if shape.offset else None
    arms = {"all": [None], "one": statuses[:1]}.get(shape.arms, statuses)
    if len(arms) == 1 and not shape.offset:  # a single seek: read the page's rows directly
        stmt = _arm(shape, arms[0], limit, page_columns(shape.dialect))
    elif shape.dialect == "postgresql" and not shape.offset:
        stmt = _merged_rows(shape, arms, limit)
    else:
        stmt = _winners_page(shape, arms, limit, offset)
    if shape.total and (shape.since or shape.until):
        every = shape.statuses == len(LISTED_STATUSES)
        stmt = stmt.add_columns(_counted_column(shape, None if every else statuses).label("total"))
    elif shape.total:
        if shape.buckets:  # checked against the total (``select_page``)
            stmt = stmt.add_columns(_bucket_total(shape))
        stmt = stmt.add_columns(_total_column(statuses))
    return stmt


# Deep offsets. ``job_time_buckets`` counts the jobs of each status (and of all, '')
# per bucket of ``create_time >> bits``, at two widths: fine (2**22 ms, ~70 min) and
# coarse (2**28 ms, ~3.1 days: 64 fine buckets). An offset page of the timeline (no
# workflow, source or time range) sums the coarse buckets in the listing's order (a
# window function over ~span/3 days rows), takes the one the offset falls in, sums
# its 64 fine buckets the same way, and seeks the timeline at the fine bucket's edge,
# skipping only the rest of the offset (at most one fine bucket of jobs). Buckets
# partition create_time, so the rows and their order are exactly those of the plain
# OFFSET. ``benchmarks/deep_offset.py`` measured one width against the other.
BUCKETS_FROM_OFFSET = 20_000  # below this, walking the skipped index entries is cheaper
_FINE, _COARSE = schema.FINE_BUCKET_BITS, schema.COARSE_BUCKET_BITS


def _bucket_statuses(shape: _Shape):
    """The bucket rows of the listing's statuses: the all-status rows ('') when every
    status is listed, else the listed statuses' own."""
    if shape.arms == "all":
        return buckets.c.status == literal_column("''")
    return buckets.c.status.in_(_status_params(shape.statuses))


def _running(shape: _Shape, bits: int, *conditions):
    """One row per bucket of width ``bits`` (of the listing's statuses, passing
    ``conditions``) with ``n`` and ``upto``: the jobs in it and in every bucket before
    it, in the listing's order."""
    per_bucket = (
        select(buckets.c.bucket, func.sum(buckets.c.n).label("n"))
        .where(buckets.c.bits == literal_column(str(bits)), _bucket_statuses(shape), *conditions)
        .group_by(buckets.c.bucket)
        .subquery(f"per_bucket_{bits}")
    )
    order = per_bucket.c.bucket.desc() if shape.descending else per_bucket.c.bucket.asc()
    return select(
        per_bucket.c.bucket,
        per_bucket.c.n,
        func.sum(per_bucket.c.n).over(order_by=order, rows=(None, 0)).label("upto"),
    ).subquery(f"running_{bits}")


@lru_cache(maxsize=64)
def _bucket_position(shape: _Shape):
    """One row (none when the offset is past the end): ``bound``, the create_time
    edge of the fine bucket the offset falls in (its newest possible time descending,
    its oldest ascending), and ``skip``, how many of the offset's rows are in that
    bucket and those beyond it (in the listing's order)."""
    offset = bindparam("offset", type_=Integer)

    def first_past(running, before):  # the first bucket whose running sum passes the offset
        order = running.c.bucket.desc() if shape.descending else running.c.bucket.asc()
        return (
            select(running.c.bucket, (before + running.c.upto - running.c.n).label("before"))
            .where(before + running.c.upto > offset)
            .order_by(order)
            .limit(1)
        )

    coarse = first_past(_running(shape, _COARSE), literal_column("0")).cte("coarse_position")
    first_fine = select(coarse.c.bucket * (1 << (_COARSE - _FINE))).scalar_subquery()
    last_fine = select(coarse.c.bucket * (1 << (_COARSE - _FINE)) + ((1 << (_COARSE - _FINE)) - 1)).scalar_subquery()
    fine = _running(shape, _FINE, buckets.c.bucket >= first_fine, buckets.c.bucket <= last_fine)
    found = first_past(fine, select(coarse.c.before).scalar_subquery()).subquery("fine_position")
    width = 1 << _FINE
    edge = found.c.bucket * width + (width - 1 if shape.descending else 0)
    return select(edge.label("bound"), cast(offset - found.c.before, BigInteger).label("skip")).cte("bucket_position")


def _bucket_total(shape: _Shape):
    """The jobs the coarse buckets count for the listing's statuses: equal to
    ``total`` (``job_counts``) unless the buckets drifted (a trigger disabled, rows
    edited by hand, a load that rebuilt only ``job_counts``)."""
    where = (buckets.c.bits == literal_column(str(_COARSE)), _bucket_statuses(shape))
    return select(func.coalesce(func.sum(buckets.c.n), 0)).where(*where).scalar_subquery().label("bucket_total")


def _bucket_skip(shape: _Shape):
    position = _bucket_position(shape)
    return func.coalesce(select(position.c.skip).scalar_subquery(), 0)


def _merged_rows(shape: _Shape, statuses: list, limit) -> Select:
    """PostgreSQL, a page without an offset of one seek per status: each arm reads
    and renders its rows, ordered and LIMIT-ed to the page, and a Merge Append pulls
    from each only the rows the LIMIT takes (plus one it looks at), so about a page
    of rows is read and rendered, with no second lookup by id. (Measured at 100k
    jobs, a source's five arms: 0.25-0.36 ms of execution against 1.1-1.3 ms for
    keys first and rows by id, ``_winners_page``, which an offset needs.)"""
    columns = page_columns(shape.dialect)
    merged, order = _pg_merge(shape, statuses, _window(shape), columns, _sort_column(shape.sort_by).name, "id")
    return select(*(merged.c[column.name] for column in columns)).order_by(*order).limit(limit)


def _pg_merge(shape: _Shape, statuses: list, window, columns: tuple, key: str, id_name: str):
    """PostgreSQL: one ordered arm per status, each LIMIT-ed to ``window``, as one
    UNION ALL subquery of ``columns``, and the ORDER BY that merges them (by the
    columns named ``key`` and ``id_name``) with a Merge Append. A workflow's or a
    source's arms lead their order with its column (one value, ``_arm``): the merge
    orders by it too, as ``w_lead``."""
    lead = _pg_lead(shape)
    arm_columns = columns if lead is None else (lead.label("w_lead"), *columns)
    merged = union_all(*(select(_arm(shape, s, window, arm_columns).subquery()) for s in statuses)).subquery()
    order = _order(shape.descending, merged.c[key], merged.c[id_name])
    if lead is not None:
        order = (merged.c.w_lead.desc() if shape.descending else merged.c.w_lead.asc(), *order)
    return merged, order


def _winners_page(shape: _Shape, statuses: list, limit, offset) -> Select:
    """Keys first, rows last: the seeks (one per status, merged) read only ``(id, sort
    key)`` from their covering index, skip the offset and keep the page's winners,
    which alone are then read from ``jobs`` by id and rendered. Skipped rows are
    never rendered (PostgreSQL would compute the select list of every skipped row).

    The merge reads each arm only as far as the page needs. SQLite: one compound
    SELECT whose ORDER BY merges the arms (``MERGE (UNION ALL)``: each arm a
    co-routine walking its index in that order, no sort), LIMIT and OFFSET on the
    merge. PostgreSQL: each arm ordered and LIMIT-ed to the page's window (without
    the LIMIT its planner sorts whole arms), the arms merged by a Merge Append that
    pulls from each only what the outer LIMIT takes."""
    sort = _sort_column(shape.sort_by)
    keys = (jobs.c.id.label("w_id"), sort.label("w_key"))
    if shape.buckets:
        offset = _bucket_skip(shape)
    if len(statuses) == 1:
        winners = _arm(shape, statuses[0], limit, keys).offset(offset).subquery("winners")
    elif shape.dialect == "sqlite":
        compound = union_all(*(_arm(shape, s, None, keys, ordered=False) for s in statuses))
        merged_keys = compound.selected_columns
        winners = (
            compound.order_by(*_order(shape.descending, merged_keys.w_key, merged_keys.w_id))
            .limit(limit)
            .offset(offset)
            .subquery("winners")
        )
    else:
        window = _window(shape)  # each arm may feed the skip
        if shape.buckets:
            window = limit + _bucket_skip(shape)
        merged, order = _pg_merge(shape, statuses, window, keys, "w_key", "w_id")
        winners = select(merged.c.w_id, merged.c.w_key).order_by(*order).limit(limit).offset(offset).subquery("winners")
    stmt = (
        select(*page_columns(shape.dialect))
        .select_from(winners.join(jobs, jobs.c.id == winners.c.w_id))
        .order_by(*_order(shape.descending, winners.c.w_key, winners.c.w_id))
    )
    if shape.dialect == "sqlite":  # the winners are read by primary key, whatever ANALYZE says
        stmt = stmt.with_hint(jobs, f"INDEXED BY {SQLITE_PRIMARY_KEY_INDEX}", "sqlite")
    return stmt


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled once: its SQL text, its positional parameter names (None:
    the driver takes named parameters) and the values of its constant parameters.
    Listing pages are the hot path: building and compiling the statement each time
    cost more than running it."""

    sql: str
    positional: tuple[str, ...] | None
    constants: dict
    options: dict | None = None  # execution options (``database.PLANS``)

    @classmethod
    def of(cls, stmt, dialect, options: dict | None = None) -> _Compiled:
        compiled = stmt.compile(dialect=dialect)
        sql = str(compiled)
        assert "POSTCOMPILE" not in sql, sql
        constants = {name: value for name, value in compiled.params.items() if value is not None}
        positional = tuple(compiled.positiontup) if compiled.positional else None
        return cls(sql, positional, constants, options)

    def run(self, conn: Connection, values: dict):
        values = {**self.constants, **values}
        params = tuple(values[name] for name in self.positional) if self.positional is not None else values
        return conn.exec_driver_sql(self.sql, params, execution_options=self.options)


@lru_cache(maxsize=1024)
def _page_sql(shape: _Shape, dialect) -> _Compiled:
    return _Compiled.of(_page_select(shape), dialect, _GENERIC if shape.page_size is not None else None)


@lru_cache(maxsize=64)
def _bucket_check_sql(shape: _Shape, dialect) -> _Compiled:
    """The coarse buckets' sum and ``total``, for an empty bucketed page (sums of a
    few rows by key, as good on either plan)."""
    columns = select(_bucket_total(shape), _total_column(_status_params(shape.statuses)))
    return _Compiled.of(columns, dialect, _EITHER)


@lru_cache(maxsize=64)
def _count_sql(statuses: int, dialect) -> _Compiled:
    """A listing's total: a lookup of ``job_counts``' key (plan-stable)."""
    return _Compiled.of(select(_total_column(_status_params(statuses))), dialect, _EITHER)


@lru_cache(maxsize=64)
def _counted_sql(shape: _CountShape, statuses: int, dialect) -> _Compiled:
    every = statuses == len(LISTED_STATUSES)
    return _Compiled.of(select(_counted_column(shape, None if every else _status_params(statuses))), dialect)


@lru_cache(maxsize=16)
def _counted_by_status_sql(shape: _CountShape, dialect) -> _Compiled:
    """One statement, one count per status (each a seek of a status-led index)."""
    columns = [_counted_column(shape, [param]) for param in _status_params(len(LISTED_STATUSES))]
    return _Compiled.of(select(*columns), dialect)


def _count_shape(query: ListQuery) -> _CountShape:
    return _CountShape(query.workflow_id is not None, query.source is not None, *_bounded(query))


def _bounded(query: ListQuery) -> tuple[bool, bool]:
    return query.since is not None, query.until is not None


def _status_params(n: int) -> list:
    return [bindparam(f"s{i}", type_=Text) for i in range(n)]


def _filter_values(query: ListQuery) -> dict:
    """The parameter values of a listing's filters (arms and total alike)."""
    values: dict[str, object] = {f"s{i}": status for i, status in enumerate(query.statuses)}
    workflow = column_text(query.workflow_id)
    values.update(
        workflow=workflow, source=query.source, count_source=query.source or "", count_workflow=workflow or ""
    )
    values.update(since=query.since, until=query.until)
    return values


def clamp_position(position: Position, descending: bool) -> Position | Literal[False] | None:
    """Map a cursor value outside BIGINT onto the table: None = no bound, False = nothing."""
    if position.value > _INT64_MAX:
        return None if descending else False
    if position.value < _INT64_MIN:
        return False if descending else None
    return position


def _unstorable(conn: Connection, char: str) -> bool:
    """A character no stored text can hold: a lone surrogate (not UTF-8), or NUL on
    PostgreSQL (an id or workflow id holds none: ``normalize.column_text``)."""
    return "\ud800" <= char <= "\udfff" or (char == "\x00" and conn.dialect.name == "postgresql")


def unmatchable(conn: Connection, *values: str | None) -> bool:
    """True when a filter value can equal no stored text (the driver would refuse it)."""
    return any(value is not None and any(_unstorable(conn, c) for c in value) for value in values)


def storable_position(conn: Connection, position: Position, descending: bool) -> Position:
    """The same keyset bound, spelled with an id the driver accepts.

    A cursor may carry an id that no row can have (see ``_unstorable``). Cut it at the
    first such character and use the storable string that splits every stored id
    (up to SPLIT_ID_LENGTH characters: ids longer than a cursor carries are stored
    too, issue 11) the same way.
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
        bound = prefix + "\ud7ff" + "\U0010ffff" * (SPLIT_ID_LENGTH - cut - 1)
    return Position(position.value, bound)


def page_start(
    conn: Connection, query: ListQuery, limit: int | None, offset: int, after: Position | None
) -> Position | None | Literal[False]:
    """Where a page starts, as SQL can take it: ``after`` clamped and spelled with a
    storable id (None: from the first row), or False when the page is empty without
    a query (a filter no stored text can equal, an offset beyond 2**63, a cursor
    past either end). Shared by ``select_page`` and ``search_queries.select_page``."""
    if not query.statuses or unmatchable(conn, column_text(query.workflow_id), query.source):
        return False
    if offset + (limit or 0) > _INT64_MAX:  # no table holds 2**63 rows; SQL cannot take the number
        return False
    if after is None:
        return None
    clamped = clamp_position(after, query.descending)
    if clamped is False:
        return False
    return clamped and storable_position(conn, clamped, query.descending)


def select_page(
    conn: Connection,
    query: ListQuery,
    *,
    limit: int | None,
    offset: int = 0,
    after: Position | None = None,
    with_total: bool = False,
) -> list[tuple]:
    """Up to ``limit`` rows of ``query``, skipping ``offset`` rows or starting ``after``.

    Rows are ``page_columns`` tuples (``ROW_*`` indexes; ``ROW_ID`` as the column
    stores it, and ``after.id`` too: ``normalize.column_text``). With ``with_total``
    each row ends with the listing's ``total``, read by the same statement (one
    snapshot, one round trip); an empty page then carries no total (``count_total``).
    """
    start = page_start(conn, query, limit, offset, after)
    if start is False:
        return []
    after = start
    filtered = query.workflow_id is not None or query.source is not None
    if query.all_statuses and not filtered and query.sort_by == "created_at":
        arms = "all"  # one seek: the timeline
    else:  # one seek per status (a workflow's, a source's, by duration: every status too)
        arms = "one" if len(query.statuses) == 1 else "union"
    shape = _Shape(
        conn.dialect.name,
        query.sort_by,
        query.descending,
        len(query.statuses),
        arms,
        query.workflow_id is not None,
        query.source is not None,
        after is not None,
        limit is not None,
        bool(offset),
        with_total,
        *_bounded(query),
        buckets=(
            bool(offset)
            and offset >= BUCKETS_FROM_OFFSET
            and after is None
            and limit is not None
            and query.sort_by == "created_at"
            and not filtered
            and not query.time_bounded
        ),
    )
    if _plan_stable(shape):
        shape = replace(shape, page_size=limit)
    values = _filter_values(query)
    values.update(limit=limit, offset=offset, window=None if limit is None else limit + offset)
    if after is not None:
        values.update(after_value=after.value, after_id=after.id)
    rows = _page_sql(shape, conn.dialect).run(conn, values).fetchall()
    if not (shape.buckets and with_total):
        return rows
    # The buckets are trusted only when they count what job_counts counts (the same
    # snapshot; an empty page, which carries no total, asks a second statement).
    if rows:
        bucket_total, total = rows[0][-2], rows[0][-1]
    else:
        bucket_total, total = _bucket_check_sql(shape, conn.dialect).run(conn, values).one()
    if int(bucket_total) == int(total):
        return [(*row[:-2], row[-1]) for row in rows]
    log.warning(
        "jobs-index: job_time_buckets count %d jobs where job_counts counts %d: this offset page skips by "
        "OFFSET; run `jobs-index check --repair`",
        bucket_total,
        total,
    )
    return _page_sql(replace(shape, buckets=False, page_size=None), conn.dialect).run(conn, values).fetchall()


def merged_by_status(conn: Connection, arm: Callable[[str], Select], statuses: Sequence[str], limit: int) -> list:
    """The first ``limit`` rows, in ``(create_time, id)`` order, of one seek per
    status: ``arm(status)`` is one status's SELECT of ``jobs`` (unordered, with
    ``create_time`` and ``id`` among its columns), on an index that starts with its
    equality filters and the status and ends in ``(create_time, id)`` (a workflow's
    or a source's jobs of every status, whose status-less indexes revision 0015
    drops). Merged as a listing's arms are (``_winners_page``), each read only as
    far as the rows taken from it: SQLite, one compound SELECT ordered by its ORDER
    BY; PostgreSQL, each arm ordered and LIMIT-ed, then merged (Merge Append)."""
    if not statuses:
        return []
    if conn.dialect.name == "sqlite":
        compound = union_all(*(arm(status) for status in statuses))
        merged_columns = compound.selected_columns
        return list(conn.execute(compound.order_by(merged_columns.create_time, merged_columns.id).limit(limit)))
    ordered = [arm(status).order_by(jobs.c.create_time, jobs.c.id).limit(limit) for status in statuses]
    merged = union_all(*(select(each.subquery()) for each in ordered)).subquery()
    return list(conn.execute(select(merged).order_by(merged.c.create_time, merged.c.id).limit(limit)))


def count_total(conn: Connection, query: ListQuery) -> int:
    """Exact number of jobs passing the status/workflow/source filters (≤ 5 rows read)."""
    if not query.statuses or unmatchable(conn, column_text(query.workflow_id), query.source):
        return 0
    if query.time_bounded:  # job_counts has no time: count the rows of the range
        compiled = _counted_sql(_count_shape(query), len(query.statuses), conn.dialect)
        return int(compiled.run(conn, _filter_values(query)).scalar_one())
    return int(_count_sql(len(query.statuses), conn.dialect).run(conn, _filter_values(query)).scalar_one())


def get_job(conn: Connection, job_id: str) -> Row | None:
    """The row of ComfyUI's job ``job_id`` (its columns as stored)."""
    stored = column_text(job_id)
    if unmatchable(conn, stored):
        return None
    # a lookup of the primary key whatever the id: planned once per connection
    return conn.execute(select(jobs).where(jobs.c.id == stored), execution_options=_GENERIC).first()


def _chunks(items: Sequence, size: int = 900) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def live_ids(conn: Connection, source: str | None) -> set[str]:
    """Ids of pending/in_progress rows of one source (None = rows with no source)."""
    stmt = select(jobs.c.id).where(jobs.c.status.in_(LIVE_STATUSES), jobs.c.source.is_not_distinct_from(source))
    return {answer_text(job_id) for job_id in conn.execute(stmt).scalars()}


def delete_jobs(conn: Connection, ids: Sequence[str]) -> int:
    """Delete ComfyUI's jobs ``ids``; returns how many rows went."""
    from . import search_queries  # (it imports this module)

    deleted = 0
    search = search_queries.store(conn)
    for chunk in _chunks([column_text(job_id) for job_id in ids]):
        search.forget(conn, chunk)  # before the rows go (SQLite's contentless FTS5 needs their words)
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


def count_rows(conn: Connection, query: ListQuery) -> int:
    """Jobs passing the listing's filters, counted from the rows themselves (an index
    scan, O(matching rows)): the truth ``count_total``'s counters must equal."""
    workflow = column_text(query.workflow_id)
    if not query.statuses or unmatchable(conn, workflow, query.source):
        return 0
    stmt = select(func.count()).select_from(jobs).where(jobs.c.status.in_(list(query.statuses)))
    if workflow is not None:
        stmt = stmt.where(jobs.c.workflow_id == workflow)
    if query.source is not None:
        stmt = stmt.where(jobs.c.source == query.source)
    if query.since is not None:
        stmt = stmt.where(jobs.c.create_time >= query.since)
    if query.until is not None:
        stmt = stmt.where(jobs.c.create_time < query.until)
    return int(conn.execute(stmt).scalar_one())


def recount_buckets(conn: Connection) -> dict[tuple[int, str, int], int]:
    """``job_time_buckets`` computed from ``jobs`` itself (a full scan per width):
    ``{(bits, status, bucket): n}``, its check."""
    result: dict[tuple[int, str, int], int] = {}
    for bits in schema.BUCKET_BITS:
        bucket = jobs.c.create_time.op(">>")(literal_column(str(bits)))
        stmt = select(jobs.c.status, bucket, func.count()).group_by(jobs.c.status, bucket)
        for status, key, n in conn.execute(stmt):
            result[(bits, status, int(key))] = int(n)
            result[(bits, "", int(key))] = result.get((bits, "", int(key)), 0) + int(n)
    return result


def stored_buckets(conn: Connection) -> dict[tuple[int, str, int], int]:
    stmt = select(buckets.c.bits, buckets.c.status, buckets.c.bucket, buckets.c.n).where(buckets.c.n != 0)
    return {(int(bits), status, int(key)): int(n) for bits, status, key, n in conn.execute(stmt)}


def repair_buckets(conn: Connection) -> dict[tuple[int, str, int], tuple[int, int]]:
    """Make ``job_time_buckets`` equal a recount of ``jobs`` (rewritten whole, which
    also drops the rows of emptied buckets); returns the keys that were wrong as
    ``{key: (stored, actual)}``. Call under ``lock_jobs_for_recount`` in a writer's
    transaction."""
    actual, stored = recount_buckets(conn), stored_buckets(conn)
    wrong = {
        key: (stored.get(key, 0), actual.get(key, 0))
        for key in stored.keys() | actual.keys()
        if stored.get(key, 0) != actual.get(key, 0)
    }
    conn.execute(buckets.delete())
    rows = [
        {"bits": bits, "status": status, "bucket": key, "n": n} for (bits, status, key), n in sorted(actual.items())
    ]
    if rows:
        conn.execute(buckets.insert(), rows)
    return wrong


def lock_jobs_for_recount(conn: Connection) -> None:
    """PostgreSQL: block writes to ``jobs`` (SHARE mode: reads go on) until the
    transaction ends, so a recount and the counters written from it are exact even
    against ad-hoc SQL writers. SQLite's ``BEGIN IMMEDIATE`` already does."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE jobs IN SHARE MODE")


def repair_counts(conn: Connection) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Make ``job_counts`` equal a recount of ``jobs``; returns the keys that were
    wrong as ``{key: (stored, actual)}``. Call under ``lock_jobs_for_recount`` in a
    writer's transaction."""
    actual, stored = recount(conn), stored_counts(conn)
    wrong = {
        key: (stored.get(key, 0), actual.get(key, 0))
        for key in stored.keys() | actual.keys()
        if stored.get(key, 0) != actual.get(key, 0)
    }
    for (source, workflow_id, status), (_, n) in sorted(wrong.items()):
        key = (counts.c.source == source) & (counts.c.workflow_id == workflow_id) & (counts.c.status == status)
        if conn.execute(counts.update().where(key).values(n=n)).rowcount == 0:
            conn.execute(counts.insert().values(source=source, workflow_id=workflow_id, status=status, n=n))
    return wrong


def status_counts(conn: Connection, query: ListQuery) -> dict[str, int]:
    """Exact number of jobs of each status passing the workflow/source filters and the
    time range (its statuses are ignored): the ``job_counts`` rows of that key, or
    with a time range the rows counted, one statement."""
    found = {row_status: 0 for row_status in LISTED_STATUSES}
    workflow = column_text(query.workflow_id)
    if unmatchable(conn, workflow, query.source):
        return found
    if query.time_bounded:  # counted from the rows of the range, one seek per status
        values = {**_filter_values(query), **{f"s{i}": s for i, s in enumerate(LISTED_STATUSES)}}
        row = _counted_by_status_sql(_count_shape(query), conn.dialect).run(conn, values).one()
        return {row_status: int(n) for row_status, n in zip(LISTED_STATUSES, row, strict=True)}
    stmt = select(counts.c.status, counts.c.n).where(
        counts.c.source == (query.source or ""), counts.c.workflow_id == (workflow or "")
    )
    for row_status, n in conn.execute(stmt, execution_options=_EITHER):  # a prefix of job_counts' key
        if row_status in found:
            found[row_status] = int(n)
    return found


def source_counts(conn: Connection) -> dict[str, int]:
    """Each source that has jobs, with its exact number of jobs (``job_counts``)."""
    stmt = (
        select(counts.c.source, func.sum(counts.c.n))
        .where(counts.c.workflow_id == "", counts.c.source != "", counts.c.n != 0)
        .group_by(counts.c.source)
    )
    return {source: int(n) for source, n in conn.execute(stmt)}


def _storable_text(value: str) -> bool:
    """``not unmatchable(conn, column_text(value))``, at C speed (a lone surrogate
    fails to encode; a NUL is stored as ``column_text`` spells it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# One statement of one shape for any number of ids (no IN list to expand and compile):
# a primary-key probe per id.
_JOB_SOURCES_SQL = {
    "sqlite": text("SELECT id, source FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))"),
    "postgresql": text("SELECT id, source FROM jobs WHERE id = ANY(CAST(:ids AS text[]))"),
}


def job_sources(conn: Connection, ids: Sequence[str]) -> dict[str, str | None]:
    """``{id: source}`` of the stored jobs among ``ids`` (by primary key), one statement."""
    storable = [column_text(i) for i in ids if _storable_text(i)]
    if not storable:
        return {}
    value = json.dumps(storable) if conn.dialect.name == "sqlite" else storable
    rows = conn.execute(_JOB_SOURCES_SQL[conn.dialect.name], {"ids": value}, execution_options=_EITHER)
    return {answer_text(i): s for i, s in rows}
