"""The import's write path: one batch of normalised ``JobRecord``s into the index.

Like ``queries``: functions take an open connection (inside ``write_transaction``)
and never commit. The hot path skips SQLAlchemy's per-row work: SQL text is built
once per dialect, rows travel as tuples to the driver (``exec_driver_sql``, so
driver errors still arrive as SQLAlchemy's ``DataError``/``IntegrityError``).

* ``read_existing`` — ``{id: Existing}`` of the batch's ids already stored.
* ``write_batch`` — upsert the rows with the "newer version wins" guard in SQL
  (``ON CONFLICT (id) DO UPDATE ... WHERE``), their ``job_outputs`` and search rows
  (``search_queries.store``), and on SQLite the ``job_counts`` and
  ``job_time_buckets`` deltas.
* ``prepare`` / ``write_prepared`` — an SQLite bulk load's fast path: the import
  workers turn their records into the exact rows ``write_batch`` would write
  (``Prepared``); the writer only orders them and hands them to the driver.

Counters. On SQLite the count triggers stand aside while ``jobs_index_writer`` has
a row (migration 0004); the writer inserts it, writes, adds the batch's deltas
with one upsert per changed counter key, and deletes it, all in its ``BEGIN
IMMEDIATE`` transaction: it holds the write lock, so the rows it read are the rows
it replaces, and no other connection ever sees the row. On PostgreSQL the
statement-level triggers keep the counters (exact under concurrent writers of any
kind); the writer sends each batch as one multi-row ``INSERT`` so they fire once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from itertools import chain
from operator import attrgetter, itemgetter

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from . import schema, search_queries
from .normalize import JobRecord, answer_text, column_text
from .search import MAX_WORD_LENGTH, TSVECTOR_MAX_BYTES, Document, fts_words

JOB_COLUMNS = tuple(c.name for c in schema.table(schema.Job).columns)
_RECORD_COLUMNS = tuple(c for c in JOB_COLUMNS if c != "indexed_at")
_record_values = attrgetter(*_RECORD_COLUMNS)
OUTPUT_COLUMNS = ("job_id", "ordinal", "node_id", "media_type", "filename", "subfolder", "type")
SQLITE_IN_CHUNK = 900  # bound parameters per IN list
PG_MAX_PARAMS = 60_000
PG_ROWS = 1000  # rows per multi-row INSERT
SQLITE_ROWS = {"jobs": 500}  # side tables: executemany measured faster (small rows)


@dataclass(frozen=True, slots=True)
class Existing:
    """What the batch replaces: the stored row's version and its counted columns."""

    stage: int
    raw_digest: str
    status: str
    workflow_id: str | None
    source: str | None
    create_time: int = 0


def _pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _for_ids(conn: Connection, sql: str, ids: Sequence[str]) -> Iterator:
    """Run ``sql + <id condition>`` for ``ids``: one ``= ANY(array)`` on PostgreSQL,
    ``IN (...)`` lists of at most SQLITE_IN_CHUNK ids on SQLite. Yields the results."""
    if _pg(conn):
        yield conn.exec_driver_sql(sql + "= ANY(%s)", (list(ids),))
        return
    for start in range(0, len(ids), SQLITE_IN_CHUNK):
        chunk = tuple(ids[start : start + SQLITE_IN_CHUNK])
        yield conn.exec_driver_sql(sql + f"IN ({', '.join('?' * len(chunk))})", chunk)


def read_existing(conn: Connection, ids: Sequence[str]) -> dict[str, Existing]:
    """``{job id: Existing}`` of the stored rows among ``ids`` (ComfyUI's ids; the
    ``Existing.workflow_id`` is as its column stores it)."""
    sql = "SELECT id, stage, raw_digest, status, workflow_id, source, create_time FROM jobs WHERE id "
    return {
        answer_text(row[0]): Existing(*row[1:])
        for result in _for_ids(conn, sql, [column_text(i) for i in ids])
        for row in result
    }


def newer(record: JobRecord, old: Existing) -> bool:
    """The SQL guard, in Python: a later stage, or the same stage with other content."""
    return record.stage > old.stage or (record.stage == old.stage and record.raw_digest != old.raw_digest)


# -- SQL text, built once per dialect ---------------------------------------------

_GUARD = "excluded.stage > jobs.stage OR (excluded.stage = jobs.stage AND excluded.raw_digest <> jobs.raw_digest)"
_SET = ", ".join(
    f"{c} = COALESCE(excluded.source, jobs.source)" if c == "source" else f"{c} = excluded.{c}"
    for c in JOB_COLUMNS
    if c != "id"
)
_UPSERT_TAIL = f" ON CONFLICT (id) DO UPDATE SET {_SET} WHERE {_GUARD}"


@cache
def _values_sql(table: str, columns: tuple[str, ...], rows: int, tail: str = "") -> str:
    """SQLite: an INSERT of ``rows`` rows as one multi-row VALUES list."""
    return _values_sql_last(table, columns, rows, tail)


def _values_sql_last(table: str, columns: tuple[str, ...], rows: int, tail: str = "", last: int | None = None) -> str:
    """``_values_sql``; with ``last``, the last column's value is this integer in every
    row (its parameters are the other columns')."""
    marks = ["?"] * len(columns)
    if last is not None:
        marks[-1] = str(int(last))
    one = "(" + ", ".join(marks) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * rows) + tail


def _max_params(conn: Connection) -> int:
    dbapi = conn.connection.driver_connection
    if sys.version_info < (3, 11) or dbapi is None:  # no getlimit before Python 3.11: assume SQLite's oldest default
        return 999
    return dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


@cache
def _unnest_sql(table: str, columns: tuple[str, ...], tail: str) -> str:
    """PostgreSQL: one INSERT of N rows sent as one array per column
    (``unnest(%s::text[], ...)``): a short statement whatever N is, so the driver
    need not parse a 20,000-placeholder VALUES list, and statement-level triggers
    fire once."""
    dialect = postgresql.dialect()
    types = {
        c.name: c.type.compile(dialect=dialect).split(" COLLATE")[0].lower()
        for c in schema.Base.metadata.tables[table].columns
    }
    arrays = ", ".join(f"%b::{types[c]}[]" for c in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}){tail}"


def _insert_many(
    conn: Connection, table: str, columns: tuple[str, ...], rows: list[tuple], tail: str = "", *, now: int | None = None
) -> None:
    """INSERT ``rows``. SQLite: ``jobs`` as multi-row ``VALUES`` statements of a fixed
    size (the same SQL each time, prepared once) — one statement for many rows
    journals each touched page once per statement (a statement with triggers keeps
    a statement journal) — and the small side-table rows by ``executemany`` (measured
    faster for them). PostgreSQL: one ``unnest`` statement. ``now`` (SQLite): the
    rows lack their last column, ``indexed_at``, which is this for all of them."""
    if not rows:
        return
    if _pg(conn):
        assert now is None, "PostgreSQL rows carry indexed_at"
        conn.exec_driver_sql(_unnest_sql(table, columns, tail), tuple(list(col) for col in zip(*rows, strict=True)))
        return
    width = len(columns) - (now is not None)  # parameters per row
    per = max(1, min(_max_params(conn) // width, SQLITE_ROWS.get(table, 1)))
    full = len(rows) - len(rows) % per

    def sql(rows: int) -> str:
        return (
            _values_sql(table, columns, rows, tail)
            if now is None
            else _values_sql_last(table, columns, rows, tail, now)
        )

    if full:
        flat = list(chain.from_iterable(rows[:full]))
        step = per * width
        conn.exec_driver_sql(sql(per), [tuple(flat[i : i + step]) for i in range(0, len(flat), step)])
    if full < len(rows):
        conn.exec_driver_sql(sql(1), rows[full:])


def _delete_side_rows(conn: Connection, ids: list[str]) -> None:
    for _ in _for_ids(conn, "DELETE FROM job_outputs WHERE job_id ", ids):
        pass


# -- counters (SQLite) --------------------------------------------------------------


def _count_keys(status: str, workflow_id: str | None, source: str | None) -> set[tuple[str, str, str]]:
    """The job_counts keys a job counts under (as migration 0001's ``_KEYS``)."""
    s, w = source or "", workflow_id or ""
    return {("", "", status), ("", w, status), (s, "", status), (s, w, status)}


def _count_deltas(records: Sequence[JobRecord], existing: dict[str, Existing]) -> Counter:
    """The batch's net change to each ``job_counts`` key: a replaced row leaves the
    keys of its old (status, workflow, source), a written row joins its new ones."""
    deltas: Counter = Counter()
    for r in records:
        old = existing.get(r.id)
        source = r.source
        workflow = column_text(r.workflow_id)  # keys are column values, as the triggers'
        if old is not None:
            if source is None:
                source = old.source  # the upsert keeps a stored source (COALESCE)
            if (old.status, old.workflow_id, old.source) == (r.status, workflow, source):
                continue
            for key in _count_keys(old.status, old.workflow_id, old.source):
                deltas[key] -= 1
        for key in _count_keys(r.status, workflow, source):
            deltas[key] += 1
    return deltas


_COUNT_UPSERT = (
    "INSERT INTO job_counts (source, workflow_id, status, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (source, workflow_id, status) DO UPDATE SET n = n + excluded.n"
)


def bucket_deltas(rows: Iterable[tuple[str, int, int]]) -> Counter:
    """``job_time_buckets`` deltas of ``(status, create_time, +1/-1)`` rows (the
    triggers' keys: each width's bucket ``create_time >> bits``, the status and '')."""
    deltas: Counter = Counter()
    for status, create_time, d in rows:
        for bits in schema.BUCKET_BITS:
            bucket = create_time >> bits
            deltas[(bits, status, bucket)] += d
            deltas[(bits, "", bucket)] += d
    return deltas


def _record_buckets(records: Sequence[JobRecord], existing: dict[str, Existing]) -> Counter:
    """The batch's net change to ``job_time_buckets`` (as ``_count_deltas``)."""

    def rows() -> Iterator[tuple[str, int, int]]:
        for r in records:
            old = existing.get(r.id)
            if old is not None:
                if (old.status, old.create_time) == (r.status, r.create_time):
                    continue
                yield old.status, old.create_time, -1
            yield r.status, r.create_time, 1

    return bucket_deltas(rows())


_BUCKET_UPSERT = (
    "INSERT INTO job_time_buckets (bits, status, bucket, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (bits, status, bucket) DO UPDATE SET n = n + excluded.n"
)


def _add_deltas(conn: Connection, counts: Counter, buckets: Counter) -> None:
    """SQLite, with the writer's row in ``jobs_index_writer``: the set-wise counter upkeep."""
    changed = [key + (n,) for key, n in counts.items() if n]
    if changed:
        conn.exec_driver_sql(_COUNT_UPSERT, changed)
    changed = [key + (n,) for key, n in buckets.items() if n]
    if changed:
        conn.exec_driver_sql(_BUCKET_UPSERT, changed)


# -- the batch ----------------------------------------------------------------------

_ID, _WORKFLOW = JOB_COLUMNS.index("id"), JOB_COLUMNS.index("workflow_id")
_PRIORITY = JOB_COLUMNS.index("priority")


def pg_priority(priority, priority_json: str | None) -> Decimal:
    """The PostgreSQL ``numeric`` of a queue number, exact, with a float's float-ness:
    a float always has a fractional digit (``4.0``, ``10000000000000000.0``), so it
    reads back as a float; an int has none."""
    if priority_json is None:
        return Decimal(priority)
    value = Decimal(priority_json) if priority_json != "NaN" else Decimal("NaN")
    exponent = value.as_tuple().exponent  # an int when the value is finite ('n', 'N', 'F' otherwise)
    if value.is_finite() and any(c in priority_json for c in ".eE") and isinstance(exponent, int) and exponent >= 0:
        value = Decimal(f"{int(value)}.0")  # 1e+16: the float's integral value, as a float
    return value


def job_rows(records: Sequence[JobRecord], now: int, pg: bool = False) -> list[tuple]:
    """The ``jobs`` rows of ``records`` (JOB_COLUMNS order), written at ``now``; the
    id and workflow id as their columns store them (``normalize.column_text``).
    ``pg``: ``priority`` as PostgreSQL's numeric (``pg_priority``)."""
    rows = [_record_values(r) + (now,) for r in records]
    for i, r in enumerate(records):
        if column_text(r.id) is not r.id or column_text(r.workflow_id) is not r.workflow_id:
            row = list(rows[i])
            row[_ID], row[_WORKFLOW] = column_text(r.id), column_text(r.workflow_id)
            rows[i] = tuple(row)
    if pg:
        p = _PRIORITY
        rows = [
            row[:p] + (pg_priority(row[p], r.priority_json),) + row[p + 1 :]
            for row, r in zip(rows, records, strict=True)
        ]
    return rows


def side_rows(records: Sequence[JobRecord]) -> list[tuple]:
    """The ``job_outputs`` rows (OUTPUT_COLUMNS order) of ``records`` (job ids in column form)."""
    return [
        (column_text(r.id), f["ordinal"], f["node_id"], f["media_type"], f["filename"], f["subfolder"], f["type"])
        for r in records
        for f in r.output_files
    ]


def write_batch(conn: Connection, records: Sequence[JobRecord], existing: dict[str, Existing], now: int) -> None:
    """Write ``records`` (each new or ``newer`` than ``existing``), their side rows,
    and (SQLite) their counter deltas. ``existing`` must come from ``read_existing``
    in this transaction."""
    if not records:
        return
    pg = _pg(conn)
    records = sorted(records, key=attrgetter("id"))  # PostgreSQL: one lock order for job rows
    rows = job_rows(records, now, pg)
    replaced = [column_text(r.id) for r in records if r.id in existing]
    search = search_queries.store(conn)
    if replaced:  # before the rows change: SQLite re-derives the old words from raw
        search.forget(conn, replaced)
    if pg:
        _insert_many(conn, "jobs", JOB_COLUMNS, rows, _UPSERT_TAIL)
    else:
        conn.exec_driver_sql("INSERT INTO jobs_index_writer (id) VALUES (1)")
        _insert_many(conn, "jobs", JOB_COLUMNS, rows, _UPSERT_TAIL)
        _add_deltas(conn, _count_deltas(records, existing), _record_buckets(records, existing))
        conn.exec_driver_sql("DELETE FROM jobs_index_writer")
    # job_outputs and the search rows follow their job's row, in its transaction.
    if replaced:
        _delete_side_rows(conn, replaced)
    _insert_many(conn, "job_outputs", OUTPUT_COLUMNS, side_rows(records))
    kept = {r.id: existing[r.id].source for r in records if r.source is None and r.id in existing}
    search.add(conn, records, kept)


# -- bulk load (SQLite, an empty index) ---------------------------------------------

# The fast path. An import worker (``ingest``) turns each chunk of new records into
# ``Prepared`` rows; the writer batches them (``services._bulk_batches``) and, when
# the batch's ids are new to the index, writes them with ``write_prepared``: the
# same rows, in the same order, with the same docids as ``write_batch`` gives the
# same records, without a Python object per record in the writer. A batch that
# repeats an id or replaces a row goes ``write_batch``'s way (``Prepared.records``).

_STATUS, _SOURCE = JOB_COLUMNS.index("status"), JOB_COLUMNS.index("source")
_CREATE_TIME = JOB_COLUMNS.index("create_time")
MIXED = -1  # ``Prepared.dict_id`` of rows written with more than one encoder (no dictionary's id)
_OUTPUT_FIELDS = OUTPUT_COLUMNS[1:]  # a ``JobRecord.output_files`` entry's keys


@dataclass(slots=True)
class Prepared:
    """A chunk of normalised records as the rows an SQLite write of new jobs inserts
    (``prepare``), in the records' order. Picklable (workers send it to the writer)."""

    ids: list[str]  # the jobs' ids (as ComfyUI spells them)
    stages: list[int]
    jobs: list[tuple]  # ``jobs`` rows, JOB_COLUMNS order without ``indexed_at``
    outputs: list[tuple]  # ``job_outputs`` rows (OUTPUT_COLUMNS order), record by record ...
    output_counts: list[int]  # ... this many for each record
    search: list[tuple]  # ``job_search`` rows without ``docid`` (search_queries.ROW_COLUMNS order)
    fts: list[str]  # the FTS5 document of each record ('' for none)
    dict_id: int | None  # the raw dictionary every ``raw`` here is written with (None: zlib)
    counts: dict | None = field(default=None)  # ``job_counts`` deltas of these rows as new jobs

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, at: int) -> tuple[Prepared, Prepared]:
        """The first ``at`` records and the rest."""
        cut = sum(self.output_counts[:at])
        return (
            Prepared(
                self.ids[:at], self.stages[:at], self.jobs[:at], self.outputs[:cut], self.output_counts[:at],
                self.search[:at], self.fts[:at], self.dict_id,
            ),
            Prepared(
                self.ids[at:], self.stages[at:], self.jobs[at:], self.outputs[cut:], self.output_counts[at:],
                self.search[at:], self.fts[at:], self.dict_id,
            ),
        )  # fmt: skip

    @staticmethod
    def joined(first: Prepared, then: Prepared | None) -> Prepared:
        """``first``'s records then ``then``'s."""
        if then is None:
            return first
        return Prepared(
            first.ids + then.ids, first.stages + then.stages, first.jobs + then.jobs, first.outputs + then.outputs,
            first.output_counts + then.output_counts, first.search + then.search, first.fts + then.fts,
            first.dict_id if first.dict_id == then.dict_id else MIXED,
        )  # fmt: skip

    def count_deltas(self) -> Counter:
        """The ``job_counts`` deltas of these rows written as new jobs."""
        if self.counts is None:
            self.counts = Counter(
                key
                for row in self.jobs
                for key in _count_keys(row[_STATUS], row[_WORKFLOW], row[_SOURCE])
            )  # fmt: skip
        return Counter(self.counts)

    def records(self) -> list[JobRecord]:
        """The records these rows were made of (``write_batch``'s way, for a batch
        the fast path does not take)."""
        out, at = [], 0
        for i, row in enumerate(self.jobs):
            values = dict(zip(_RECORD_COLUMNS, row, strict=True))
            values["id"], values["workflow_id"] = self.ids[i], answer_text(values["workflow_id"])
            files = [
                dict(zip(_OUTPUT_FIELDS, o[1:], strict=True)) for o in self.outputs[at : at + self.output_counts[i]]
            ]
            at += self.output_counts[i]
            node_types, models, loras = (tuple(json.loads(v)) for v in self.search[i][-3:])
            words = fts_words(self.fts[i])
            out.append(JobRecord(**values, output_files=files, search=Document(words, node_types, models, loras)))
        return out


def prepare(records: Sequence[JobRecord], source: str | None = None) -> Prepared:
    """``records`` (one worker's chunk, each with its search document) as ``Prepared``
    rows; ``source``, if given, replaces each record's (``jobs-index import --source``)."""
    if source is not None:
        for record in records:
            record.source = source
    jobs = [row[:-1] for row in job_rows(records, 0)]
    docs = [r.search if r.search is not None else search_queries._document(r) for r in records]
    dict_ids = {r.raw_dict_id for r in records}
    return Prepared(
        ids=[r.id for r in records],
        stages=[r.stage for r in records],
        jobs=jobs,
        outputs=side_rows(records),
        output_counts=[len(r.output_files) for r in records],
        search=[search_queries._row_values(r, d, None) for r, d in zip(records, docs, strict=True)],
        fts=[d.fts_text() if d.words else "" for d in docs],
        dict_id=dict_ids.pop() if len(dict_ids) == 1 else MIXED,
        counts=_count_deltas(records, {}),
    )


def write_prepared(conn: Connection, parts: Sequence[Prepared], now: int) -> bool:
    """SQLite: write the rows of ``parts`` (distinct ids, each part's ``raw`` written
    with the index's encoder) as ``write_batch`` writes new records: ``jobs`` rows in
    id order, their ``job_outputs``, counter deltas and search rows (docids in id
    order). Writes nothing and returns False if one of the ids has a row already."""
    ids = list(chain.from_iterable(p.ids for p in parts))
    if not ids or read_existing(conn, ids):
        return not ids
    order = sorted(range(len(ids)), key=ids.__getitem__)  # write_batch's order: by id
    jobs = list(chain.from_iterable(p.jobs for p in parts))
    search = list(chain.from_iterable(p.search for p in parts))
    fts = list(chain.from_iterable(p.fts for p in parts))
    deltas: Counter = Counter()
    for part in parts:
        deltas.update(part.count_deltas())
    conn.exec_driver_sql("INSERT INTO jobs_index_writer (id) VALUES (1)")
    _insert_many(conn, "jobs", JOB_COLUMNS, [jobs[i] for i in order], _UPSERT_TAIL, now=now)
    buckets = bucket_deltas((row[_STATUS], row[_CREATE_TIME], 1) for row in jobs)
    _add_deltas(conn, deltas, buckets)
    conn.exec_driver_sql("DELETE FROM jobs_index_writer")
    outputs = list(chain.from_iterable(p.outputs for p in parts))
    outputs.sort(key=itemgetter(0))  # by job, each job's in order (a stable sort)
    _insert_many(conn, "job_outputs", OUTPUT_COLUMNS, outputs)
    search_queries.store(conn).add_rows(conn, [search[i] for i in order], [fts[i] for i in order])
    return True


BULK_TABLES = ("jobs", "job_outputs", "job_search")


def index_is_empty(conn: Connection) -> bool:
    return not conn.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM jobs)").scalar()


def secondary_indexes(conn: Connection) -> list[tuple[str, str]]:
    """``(name, CREATE INDEX statement)`` of the explicit indexes on the tables an
    import writes, as stored in this SQLite file (primary keys are not among them)."""
    tables = ", ".join(f"'{t}'" for t in BULK_TABLES)
    return [
        (name, sql)
        for name, sql in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({tables}) ORDER BY name"
        )
    ]


@contextmanager
def indexes_deferred(conn: Connection) -> Iterator[None]:
    """Inside a write transaction on an SQLite index: drop the secondary indexes, let
    the body insert, then build them again, each by one sort over its table (SQLite's
    external merge sort, on every core by ``PRAGMA threads``) instead of one random
    B-tree insert per row per index. A failure rolls the whole transaction back, so
    the indexes are never seen missing. (A page cache of 512 MiB instead of the usual
    64 made a 1M-job load 13 % faster at 1.25 GB of RSS instead of 0.46: not taken.)"""
    indexes = secondary_indexes(conn)
    threads = conn.exec_driver_sql("PRAGMA threads").scalar()
    conn.exec_driver_sql(f"PRAGMA threads = {os.cpu_count() or 1}")
    try:
        for name, _ in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
        yield
        for _, sql in indexes:
            conn.exec_driver_sql(sql)
    finally:
        conn.exec_driver_sql(f"PRAGMA threads = {threads}")


# -- bulk load (PostgreSQL, an empty index) -----------------------------------------


@cache
def _pg_types(table: str, columns: tuple[str, ...]) -> list[str]:
    """PostgreSQL type names of ``columns`` (for a binary COPY's ``set_types``)."""
    dialect = postgresql.dialect()
    types = {
        c.name: c.type.compile(dialect=dialect).split(" COLLATE")[0].lower()
        for c in schema.Base.metadata.tables[table].columns
    }
    return [types[c] for c in columns]


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple], types=None) -> None:
    """PostgreSQL: ``COPY table (columns) FROM STDIN`` of ``rows``: binary when
    ``types`` (one PostgreSQL type name per column) is given, else text format (for
    types psycopg has no binary dumper for, e.g. ``tsvector`` from its literal).
    A refused row fails the whole COPY, as SQLAlchemy's error for it (``DataError``
    for a value the column cannot hold, ``IntegrityError``, ...)."""
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN" + (" (FORMAT BINARY)" if types else "")
    with _copying(conn, sql) as (cursor, copy):
        if types:
            if "tsvector" in types:
                cursor.adapters.register_dumper(None, _tsvector_dumper())
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)


@contextmanager
def _copying(conn: Connection, sql: str) -> Iterator:
    """``(cursor, copy)`` of ``sql`` (a ``COPY ... FROM STDIN``) on ``conn``'s driver
    connection; the driver's error raised as SQLAlchemy's for it."""
    import psycopg

    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            yield cursor, copy
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc


@cache
def _tsvector_dumper() -> type:
    """psycopg's dumper for a ``tsvector`` column of a binary COPY whose values are
    already in the binary form (``search.Document.tsvector_binary``): as they are."""
    from psycopg import adapters
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class TsvectorBinaryDumper(Dumper):
        format = Format.BINARY
        oid = adapters.types["tsvector"].oid

        def dump(self, obj: bytes) -> bytes:
            return obj

    return TsvectorBinaryDumper


def copy_new(conn: Connection, records: Sequence[JobRecord], now: int) -> None:
    """PostgreSQL: write ``records``, none of which has a row yet, with ``COPY``: their
    ``jobs`` rows (binary), ``job_outputs`` rows (binary) and search rows
    (``search_queries``). The statement-level counter triggers fire once per COPY
    with its rows, as for the upsert: ``job_counts`` stays exact."""
    if not records:
        return
    records = sorted(records, key=attrgetter("id"))
    copy_rows(conn, "jobs", JOB_COLUMNS, job_rows(records, now, pg=True), _pg_types("jobs", JOB_COLUMNS))
    outputs = side_rows(records)
    if outputs:
        copy_rows(conn, "job_outputs", OUTPUT_COLUMNS, outputs, _pg_types("job_outputs", OUTPUT_COLUMNS))
    search = search_queries.store(conn)
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    rows = search.copy_rows(records, driver.info.encoding)
    copy_rows(conn, "job_search", search.COPY_COLUMNS, rows, search.COPY_TYPES)


# A b-tree entry holds at most ~2,700 bytes (a third of a page). In a bulk load the
# secondary indexes are built at the end, where one entry too large would fail the
# whole load: a record whose indexed text could come near that is written after the
# indexes are back (``late_record``), where a refused row is rejected alone.
LATE_INDEXED_CHARS = 600  # x 4 bytes (UTF-8's widest character) < 2,700


# Likewise a search document whose lexemes might not fit a tsvector (the server says
# so, as a refused row, when it reads the literal; its binary form it would not refuse
# as one row): more words than this could.
LATE_SEARCH_WORDS = TSVECTOR_MAX_BYTES // (4 * MAX_WORD_LENGTH)


def late_record(record: JobRecord) -> bool:
    """A record a PostgreSQL bulk load writes after its indexes are built (by the
    upsert, as ``write_batch``): one whose indexed text (id + workflow id + source; an
    output file name) is long, or whose search document's lexemes exceed a
    tsvector's bytes (``search.TSVECTOR_MAX_BYTES``)."""
    chars = len(record.id) + len(record.workflow_id or "") + len(record.source or "")
    if chars > LATE_INDEXED_CHARS or any(len(f["filename"]) > LATE_INDEXED_CHARS for f in record.output_files):
        return True
    doc = record.search
    return doc is not None and len(doc.words) > LATE_SEARCH_WORDS and doc.tsvector_bytes() > TSVECTOR_MAX_BYTES


# -- bulk load (PostgreSQL, an empty index): COPY data made by the import workers ----

# The fast path, as ``Prepared`` is SQLite's. An import worker (``ingest``) turns each
# chunk of new records into ``CopyRows``: the bytes of their rows in the format of a
# binary ``COPY`` (made by psycopg's own row formatter with the types ``copy_new``
# sets, so the very bytes ``copy_new`` sends), for ``jobs``, ``job_outputs`` and
# ``job_search``. The writer (``services._copy_pipelined``) checks only the ids and
# streams the bytes (``copy_prepared``): no record is unpickled, no row built there.
# ``indexed_at``, the time of writing, is not in the bytes: the column's default,
# set to the batch's time before its COPY (the load's DDL lock is held anyway) and
# dropped after the load (``pg_indexes_deferred``).

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # a binary COPY's header: no flags, no extension
COPY_TRAILER = b"\xff\xff"
COPIED_JOB_COLUMNS = JOB_COLUMNS[:-1]  # all but indexed_at (the last column)
assert JOB_COLUMNS[-1] == "indexed_at"


@dataclass(slots=True)
class CopyRows:
    """A chunk of normalised records as the data of a PostgreSQL bulk load's binary
    COPYs (``prepare_copy``): the rows of the ``ids`` (distinct, in id order), and the
    records the load writes after its indexes (``late_record``) as records.
    Picklable (workers send it to the writer), but for ``redo``."""

    ids: list[str]  # the jobs' ids (as ComfyUI spells them), the rows' order
    jobs: bytes  # ``jobs`` rows, COPIED_JOB_COLUMNS, binary COPY rows without header or trailer
    outputs: bytes  # ``job_outputs`` rows (OUTPUT_COLUMNS)
    search: bytes  # ``job_search`` rows (``search_queries.PostgresStore.COPY_COLUMNS``)
    dict_id: int | None  # the raw dictionary every ``raw`` here is written with (None: zlib; MIXED)
    late: list[JobRecord]  # the chunk's records written after the indexes, in order
    # Set by the reader (``ingest``): the chunk's records made again, in their order,
    # for a chunk the fast path does not take (an id already written, a refused row).
    redo: Callable[[], list[JobRecord]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> tuple:
        return self.ids, self.jobs, self.outputs, self.search, self.dict_id, self.late

    def __setstate__(self, state: tuple) -> None:
        self.ids, self.jobs, self.outputs, self.search, self.dict_id, self.late = state
        self.redo = None

    def all_records(self) -> list[JobRecord]:
        """Every record of the chunk, late ones included, in the input's order."""
        if self.redo is None:
            raise RuntimeError("CopyRows without redo: its records cannot be made again")
        return self.redo()

    def records(self) -> list[JobRecord]:
        """The records of the rows (``all_records`` but the late ones)."""
        return [record for record in self.all_records() if not late_record(record)]


@cache
def _copy_transformer(table: str, columns: tuple[str, ...]):
    """A psycopg transformer dumping ``columns`` of ``table`` as a binary COPY does
    with ``copy_rows``' types (no connection: UTF-8 text, the default client encoding)."""
    import psycopg
    from psycopg.adapt import AdaptersMap, Transformer
    from psycopg.pq import Format

    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_dumper(None, _tsvector_dumper())
    types = _pg_types(table, columns) if table != "job_search" else search_queries.PostgresStore.COPY_TYPES
    transformer = Transformer(adapters)
    transformer.set_dumper_types([adapters.types.get_oid(t) for t in types], Format.BINARY)
    return transformer


@cache
def _row_formatter() -> Callable | None:
    """psycopg's binary COPY row formatter, what ``Copy.write_row`` calls (C when
    available), or None: it lives in a private module (``psycopg._copy_base``, psycopg
    3.2 and later), so where it is not found the workers send records, as before."""
    try:
        from psycopg._copy_base import format_row_binary
    except ImportError:
        return None
    return format_row_binary


def _copy_data(table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> bytes:
    """``rows`` as a binary COPY's rows (psycopg's ``Copy.write_row`` formatter)."""
    format_row_binary = _row_formatter()
    assert format_row_binary is not None, "asked for only where found (takes_copy_rows)"
    transformer, out = _copy_transformer(table, columns), bytearray()
    for row in rows:
        format_row_binary(row, transformer, out)
    return bytes(out)


def prepare_copy(records: Sequence[JobRecord], source: str | None = None) -> CopyRows | list[JobRecord]:
    """``records`` (one worker's chunk, each with its search document) as ``CopyRows``;
    ``source``, if given, replaces each record's. A chunk that repeats an id stays
    records (the writer keeps the right version: ``services._batches``). The text is
    UTF-8: for a connection in another client encoding the load does not ask for these."""
    if source is not None:
        for record in records:
            record.source = source
    if len({r.id for r in records}) < len(records):
        return list(records)
    early = sorted((r for r in records if not late_record(r)), key=attrgetter("id"))  # copy_new's order
    late = [r for r in records if late_record(r)] if len(early) < len(records) else []
    dict_ids = {r.raw_dict_id for r in early}
    store = search_queries.PostgresStore()
    return CopyRows(
        ids=[r.id for r in early],
        jobs=_copy_data("jobs", COPIED_JOB_COLUMNS, (row[:-1] for row in job_rows(early, 0, pg=True))),
        outputs=_copy_data("job_outputs", OUTPUT_COLUMNS, side_rows(early)),
        search=_copy_data("job_search", store.COPY_COLUMNS, store.copy_rows(early)),
        dict_id=dict_ids.pop() if len(dict_ids) == 1 else (None if not dict_ids else MIXED),
        late=late,
    )


# What an import hands the writer: records, or chunks of rows the workers made of theirs.
BulkItem = JobRecord | Prepared | CopyRows  # (``CopyRows``: only a PostgreSQL bulk load's)


def flatten(items: Iterable[BulkItem]) -> Iterator[JobRecord]:
    """Records, ``Prepared`` and ``CopyRows`` chunks expanded into theirs."""
    for item in items:
        if isinstance(item, Prepared):
            yield from item.records()
        elif isinstance(item, CopyRows):
            yield from item.all_records()
        else:
            yield item


def takes_copy_rows(conn: Connection) -> bool:
    """Can ``conn`` take ``CopyRows`` (their text is UTF-8: the client encoding must be;
    and this psycopg has the row formatter the workers use)?"""
    driver = conn.connection.driver_connection
    return driver is not None and driver.info.encoding == "utf-8" and _row_formatter() is not None


def copy_prepared(conn: Connection, parts: Sequence[CopyRows], now: int) -> None:
    """PostgreSQL: write the rows of ``parts`` (ids new to the index and distinct, each
    part's ``raw`` written with the index's encoder) by three binary COPYs, as
    ``copy_new`` writes their records, ``indexed_at`` = ``now`` (the column's default
    meanwhile). The statement-level counter triggers fire once per COPY, as for
    ``copy_new``. A refused row fails the COPY (SQLAlchemy's error for it)."""
    conn.exec_driver_sql(f"ALTER TABLE jobs ALTER COLUMN indexed_at SET DEFAULT {int(now)}")
    for table, columns, data in (
        ("jobs", COPIED_JOB_COLUMNS, [p.jobs for p in parts]),
        ("job_outputs", OUTPUT_COLUMNS, [p.outputs for p in parts if p.outputs]),
        ("job_search", search_queries.PostgresStore.COPY_COLUMNS, [p.search for p in parts]),
    ):
        if not any(data):
            continue
        with _copying(conn, f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as (_, copy):
            copy.write(COPY_SIGNATURE)
            for chunk in data:
                copy.write(chunk)
            copy.write(COPY_TRAILER)


@dataclass(frozen=True)
class Deferred:
    """What a PostgreSQL bulk load sets aside: secondary indexes ``(name, CREATE
    INDEX)`` and foreign keys ``(table, name, definition)``."""

    indexes: list[tuple[str, str]]
    foreign_keys: list[tuple[str, str, str]]


def pg_deferred(conn: Connection) -> Deferred:
    """The secondary indexes (not backing a primary key or unique constraint) and the
    foreign keys of the tables an import writes, in the current schema."""
    tables = ", ".join(f"'{t}'" for t in BULK_TABLES)
    indexes = conn.exec_driver_sql(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index AS x "
        "JOIN pg_class AS i ON i.oid = x.indexrelid JOIN pg_class AS t ON t.oid = x.indrelid "
        f"WHERE t.relnamespace = current_schema()::regnamespace AND t.relname IN ({tables}) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = x.indexrelid) ORDER BY 1"
    ).all()
    keys = conn.exec_driver_sql(
        "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint AS c "
        "JOIN pg_class AS t ON t.oid = c.conrelid "
        f"WHERE c.contype = 'f' AND t.relnamespace = current_schema()::regnamespace AND t.relname IN ({tables}) "
        "ORDER BY 1, 2"
    ).all()
    return Deferred([tuple(row) for row in indexes], [tuple(row) for row in keys])


@contextmanager
def pg_indexes_deferred(conn: Connection, maintenance_work_mem: str = "256MB") -> Iterator[None]:
    """Inside a write transaction on an empty PostgreSQL index: drop the secondary
    indexes and the foreign keys of ``jobs``, ``job_outputs``, ``job_search`` (the
    primary keys stay: the upsert of a job seen twice needs them), let the body
    load, then build each index by one sort and validate each foreign key by one
    join. DDL is transactional: a failure rolls everything back, indexes included.
    Dropping them takes ``ACCESS EXCLUSIVE`` locks: readers of this schema wait
    until the load commits (they would see an empty index anyway)."""
    deferred = pg_deferred(conn)
    for table, name, _ in deferred.foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in deferred.indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    yield
    conn.exec_driver_sql("ALTER TABLE jobs ALTER COLUMN indexed_at DROP DEFAULT")  # ``copy_prepared``'s
    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
    for _, sql in deferred.indexes:
        conn.exec_driver_sql(sql)
    for table, name, definition in deferred.foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def vacuum_analyze(conn: Connection) -> None:
    """PostgreSQL, on an autocommit connection: ``VACUUM (ANALYZE)`` the tables an
    import writes, so the visibility map lets index-only scans skip the heap at once
    and the planner knows the new rows (autovacuum would, some time later)."""
    conn.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(BULK_TABLES)}, job_counts")
