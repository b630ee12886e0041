"""Services: the jobs index's operations. Each owns its transaction(s).

``JobsIndex`` is the library entry point used by the HTTP server, the CLI and the
custom node: list and get jobs with ComfyUI's semantics, ingest job rows in batched
transactions, and reconcile live (pending/running) rows with a queue snapshot.
Every method is blocking; async callers run them in a thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain, groupby
from operator import itemgetter
from types import EllipsisType
from typing import TypeGuard, cast

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from . import live_queries, queries, rawcodec, search_queries, wire, write_queries
from .cursor import CURSOR_SORT_FIELD, cursor_can_carry, decode_cursor, encode_cursor
from .database import HeldSnapshot, open_engine, read_statement, read_transaction, write_transaction
from .errors import JobNotFound, JobsIndexError, LeaseLost, StorageError
from .normalize import KIND_HISTORY, STAGE_HISTORY, JobRecord, answer_text, column_text, detail_dict
from .params import STATUSES, ListQuery
from .queries import ROW_CREATE_TIME, ROW_DURATION, ROW_ID, ROW_JOB_JSON, ROW_TOTAL, Position
from .search import snippet

log = logging.getLogger(__name__)

ID_OFFSET = len('{"id": ')  # where the id string starts in a job's JSON text (``queries._job_json_sql``)
_ID_DECODER = json.JSONDecoder()
DEFAULT_BATCH_SIZE = 1000
# A live index without a raw dictionary looks again after this many rows written.
TRAIN_CHECK_ROWS = 1000
STREAM_CHUNK = 1000  # rows per query when a listing is larger than one page
REPAIR_RETRY_S = 60.0  # after a failed counter repair, pages count their rows without retrying it


@dataclass
class JobsPage:
    """One listing page. ``job_texts`` holds each job's JSON text, rendered by the
    database (``queries.page_columns``)."""

    job_texts: list[str]
    total: int
    has_more: bool
    next_cursor: str | None

    @property
    def ids(self) -> list[str]:
        """The jobs' ids, in page order (each job's text starts ``{"id": "...``: only
        that string is decoded)."""
        return [_ID_DECODER.raw_decode(text, ID_OFFSET)[0] for text in self.job_texts]

    @property
    def jobs(self) -> list[dict]:
        """The job dicts (parsed from their JSON text)."""
        return [json.loads(text) for text in self.job_texts]

    def pagination(self, query: ListQuery) -> dict:
        cursor = self.next_cursor if query.next_cursor else None
        return wire.pagination(query.offset, query.limit, self.total, self.has_more, cursor)

    def body(self, query: ListQuery) -> dict:
        """The exact ``GET /api/jobs`` response body."""
        return {"jobs": self.jobs, "pagination": self.pagination(query)}

    def body_text(self, query: ListQuery, extra: dict | None = None) -> str:
        """``body`` as JSON text, assembled without re-encoding the jobs (``extra``:
        more top-level keys, after ``pagination``)."""
        return wire.page_body(self.job_texts, self.pagination(query), extra)


@dataclass(frozen=True)
class SearchHit:
    """One job found by ``JobsIndex.search``: what ``jobs-index search`` prints."""

    create_time: int | None  # None when ComfyUI recorded none
    status: str
    source: str | None
    id: str
    output: str | None  # the first output file's name
    text: str  # the first matching text, the matched words marked


@dataclass
class IngestResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)

    def add(self, other: IngestResult) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.removed += other.removed
        self.rejected.extend(other.rejected)

    @property
    def written(self) -> int:
        return self.inserted + self.updated


class JobStream:
    """A listing read in keyset chunks, for pages too large to hold in memory.

    One listing, one snapshot: a listing of more than one chunk is read in one read
    transaction held across the chunks (``HeldSnapshot``), so ``total`` and every
    row come from the same state of the index: a job that finishes, is added or is
    deleted while the listing is read is not repeated, skipped or counted apart from
    its rows. A listing of at most one chunk is one statement (or, with an offset,
    one transaction) as before. Later chunks continue from the last row's sort key.
    ``has_more``/``next_cursor`` are final once exhausted. Chunks are lists of job
    JSON texts (``queries.page_columns``).

    The snapshot holds a pooled connection until the listing is exhausted or
    ``close`` is called (the HTTP route calls it when the response ends or the client
    goes away). ``next_chunk``/``close`` may be called from different threads, one
    at a time or concurrently: a lock orders them, so ``close`` waits for a chunk
    being read.
    """

    def __init__(self, index: JobsIndex, query: ListQuery, chunk: int = STREAM_CHUNK) -> None:
        self._index, self._query, self._chunk = index, query, chunk
        self._remaining = query.limit  # None: no limit
        # Positions are in the id column's terms (``normalize.column_text``: same order).
        self._after = Position(query.cursor.create_time, column_text(query.cursor.id)) if query.cursor else None
        self._offset = 0 if query.cursor else query.offset
        self._done = False
        self._last = None
        self._first: list[str] | None = None  # the first chunk, until next_chunk hands it out
        self._lock = threading.Lock()
        self._snapshot: HeldSnapshot | None = None
        self.has_more = False
        self.next_cursor: str | None = None
        self.total = 0
        self._plan = "matches"
        if query.limit is not None and query.limit <= chunk:  # one chunk: one statement / transaction
            first = None
            if query.search is None:  # no BEGIN/COMMIT round trips (issue 16: a page is one statement)
                with read_statement(index.engine) as conn:
                    first = self._start(conn, alone=True)
            if first is None:  # a search (several statements), or two statements that disagree
                with read_transaction(index.engine) as conn:
                    first = self._start(conn)
            self._first = first
            self._check_total()
            return
        self._snapshot = HeldSnapshot(index.engine)
        try:
            self._first = self._snapshot.run(self._start)
        except BaseException:
            self.close()
            raise
        if self._done:  # all in the first chunk: the connection goes back now
            self._snapshot.close()
        self._check_total()

    def _start(self, conn, alone: bool = False) -> list[str] | None:
        """``total`` and the first chunk (from one snapshot). The rows are the truth:
        the counter (total) never decides whether rows are read. An empty listing
        answers like ComfyUI's early return for an empty filtered set (no cursor, no
        has_more) because no rows were found.

        Without a search the page and its total are one statement (so ``alone``, a
        connection whose statements each see their own snapshot, is enough), except for
        an empty page, which carries no total: it is counted by a second statement, and
        if that count contradicts the empty page (``alone``: a job written in between),
        None asks the caller to read both again in one snapshot."""
        query, offset, want = self._query, self._offset, self._want()
        if query.search is not None:  # the exact total of the matches, the plan, the first rows
            self.total = search_queries.count_matches(conn, query)
            if self.total:
                walked, filtered, everything = (
                    queries.count_total(conn, q)
                    for q in (
                        search_queries.walked_query(query, conn.dialect.name),
                        replace(query, search=None),
                        ListQuery(),
                    )
                )
                self._plan = search_queries.choose_plan(
                    query,
                    self.total,
                    want + 1 + offset,
                    walked,
                    filtered,
                    everything,
                    dialect=conn.dialect.name,
                    expanded=search_queries.expansions(conn, query),
                )
            rows = self._select(conn, want + 1) if self.total else []
        else:  # page and total: one statement
            rows = queries.select_page(conn, query, limit=want + 1, offset=offset, after=self._after, with_total=True)
            if rows:
                self.total = int(rows[0][ROW_TOTAL])
            else:
                self.total = queries.count_total(conn, query)
                if alone and not _total_agrees(self.total, offset, 0, False, query.cursor is not None):
                    return None
        first = self._consume(rows, want)
        self._first_read = (offset, len(first), len(rows) > want, len(rows))
        return first

    def _select(self, conn, limit: int) -> list:
        """Up to ``limit`` rows from the current position (a search: its own SQL)."""
        if self._query.search is not None:
            return search_queries.select_page(
                conn, self._query, plan=self._plan, limit=limit, offset=self._offset, after=self._after
            )
        return queries.select_page(conn, self._query, limit=limit, offset=self._offset, after=self._after)

    def _check_total(self) -> None:
        """After the first chunk: a counter the rows contradict is repaired, and the
        listing answers the rows' count (read outside the listing's snapshot)."""
        if self._query.search is not None or self._query.time_bounded:  # counted from the rows, not counters
            return
        offset, found, more, read = self._first_read
        if not _total_agrees(self.total, offset, found, more, self._query.cursor is not None):
            self.total = self._index._counter_mismatch(self._query, self.total, offset, read)

    def _want(self) -> int:
        return self._chunk if self._remaining is None else min(self._chunk, self._remaining)

    def _fetch(self, conn) -> list[str]:
        if self._done:
            return []
        want = self._want()
        rows = self._select(conn, want + 1)
        return self._consume(rows, want)

    def _consume(self, rows: list, want: int) -> list[str]:
        page, extra = rows[:want], len(rows) > want
        if self._remaining is not None:
            self._remaining -= len(page)
        if page:
            last = page[-1]
            self._last = last
            value = last[ROW_CREATE_TIME] if self._query.sort_by == CURSOR_SORT_FIELD else last[ROW_DURATION]
            self._after, self._offset = Position(value, last[ROW_ID]), 0
        if not extra or self._remaining == 0:
            self._done = True
            self.has_more = extra and self._query.limit is not None
            # ComfyUI cannot mint a cursor that ends on an empty id or one longer than
            # a cursor carries (it answers 400): the page is answered without one, and
            # offset paging goes on past that job.
            last_id = None if self._last is None else answer_text(self._last[ROW_ID])
            if (
                self.has_more
                and self._query.sort_by == CURSOR_SORT_FIELD
                and last_id is not None
                and cursor_can_carry(last_id)
            ):
                self.next_cursor = encode_cursor(self._last[ROW_CREATE_TIME], last_id, self._query.sort_order)
        escaped = queries.ESCAPED_IN_JSON  # rare: a job whose id / workflow id holds NUL or "\x01"
        return [
            text if escaped not in text else queries.answered_job_json(text)
            for text in map(itemgetter(ROW_JOB_JSON), page)
        ]

    def chunks(self) -> Iterator[list[str]]:
        """Job JSON texts, chunk by chunk (blocking: one query per chunk after the first)."""
        while (chunk := self.next_chunk()) is not None:
            yield chunk

    def next_chunk(self) -> list[str] | None:
        """The next chunk, or None when exhausted (for callers that hop threads).
        A later chunk is one statement in the listing's snapshot, continuing from the
        last row's sort key; the snapshot is closed after the last one."""
        with self._lock:
            if self._first is not None:
                first, self._first = self._first, None
                return first
            if self._done:
                return None
            if self._snapshot is None or self._snapshot.closed:
                raise StorageError("database read failed: the listing was closed before its end")
            chunk = self._snapshot.run(self._fetch)
            if self._done:
                self._snapshot.close()
            return chunk

    def close(self) -> None:
        """End the listing's read transaction (idempotent; waits for a chunk being read)."""
        with self._lock:
            self._first = None
            if self._snapshot is not None:
                self._snapshot.close()

    def __enter__(self) -> JobStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(query: ListQuery) -> str:
    parts = [f"status in {','.join(query.statuses)}"]
    if query.workflow_id is not None:
        parts.append(f"workflow_id={query.workflow_id!r}")
    if query.source is not None:
        parts.append(f"source={query.source!r}")
    return " ".join(parts)


def _total_agrees(total: int, offset: int, found: int, more: bool, after_cursor: bool) -> bool:
    """Can ``total`` (from the counters) be right, given what the first chunk found in
    the same snapshot? ``found`` rows after skipping ``offset`` (or after a cursor),
    ``more``: at least one row beyond them. Costs nothing: no extra SQL."""
    if after_cursor:  # rows before the cursor are unknown: a lower bound only
        return total >= found + more
    if found or more:  # rows at the offset exist, so the offset rows before them do too
        return total >= offset + found + 1 if more else total == offset + found
    return total <= offset  # nothing at or past the offset


def _batches(records: Iterable[JobRecord], source: str | None, size: int) -> Iterator[list[JobRecord]]:
    """Records in batches of ``size`` distinct ids; a repeated id keeps its latest
    version of the highest stage (as the SQL guard: never an older stage)."""
    batch: dict[str, JobRecord] = {}
    for record in records:
        if source is not None:
            record.source = source
        seen = batch.get(record.id)
        if seen is None or record.stage >= seen.stage:
            batch[record.id] = record
        if len(batch) >= size:
            yield list(batch.values())
            batch = {}
    if batch:
        yield list(batch.values())


def _bulk_batches(
    items: Iterable[JobRecord | write_queries.Prepared], source: str | None, size: int
) -> Iterator[list[JobRecord] | list[write_queries.Prepared]]:
    """``_batches`` of records and ``Prepared`` chunks (an SQLite bulk load's stream):
    the same batches, ``size`` distinct ids each, a repeated id keeping its latest
    version of the highest stage. A batch of prepared rows with distinct ids stays
    rows (a list of ``Prepared``: ``write_queries.write_prepared``); any other goes as
    records (``Prepared.records``)."""
    parts: list[write_queries.Prepared] = []  # the batch as rows, of these ids ...
    seen: set[str] = set()
    batch: dict[str, JobRecord] | None = None  # ... or as records (not None)

    def as_records() -> dict[str, JobRecord]:
        nonlocal parts, seen
        out = {record.id: record for part in parts for record in part.records()}  # distinct ids
        parts, seen = [], set()
        return out

    def add(record: JobRecord) -> bool:
        """``_batches``' rule, into ``batch``; True when the batch is full."""
        assert batch is not None
        if source is not None:
            record.source = source
        old = batch.get(record.id)
        if old is None or record.stage >= old.stage:
            batch[record.id] = record
        return len(batch) >= size

    for item in items:
        rest: JobRecord | write_queries.Prepared | None = item
        while rest is not None:
            if not isinstance(rest, write_queries.Prepared):
                if batch is None:
                    batch = as_records()
                full, rest = add(rest), None
            elif batch is None:  # rows, up to a full batch or a repeated id
                part, rest = rest, None
                if len(part) > size - len(seen):
                    part, rest = part.split(size - len(seen))
                before = len(seen)
                seen.update(part.ids)
                if len(seen) - before < len(part):  # a repeated id: this batch goes as records
                    batch, rest = as_records(), write_queries.Prepared.joined(part, rest)
                    continue
                parts.append(part)
                if len(seen) >= size:
                    yield parts
                    parts, seen = [], set()
                continue
            else:  # records, until the batch is full; the rest goes on as rows
                chunk, rest, full = rest.records(), rest, False
                for taken, record in enumerate(chunk, 1):
                    if add(record):
                        full = True
                        rest = rest.split(taken)[1] if taken < len(chunk) else None
                        break
                else:
                    rest = None
            if full:
                yield list(batch.values())
                batch = None
    if parts:
        yield parts
    elif batch:
        yield list(batch.values())


def finished_transitions(
    written: list[JobRecord], existing: dict
) -> list[tuple[str | None, str, float | None, str | None]]:
    """``(source, status, seconds or None, error_type)`` of the records of a batch
    written as history rows whose previous row (if any) was not one: the jobs the
    batch finished, each once (a history row rewritten with other content is not a
    second finish). What finished-job observers receive (``metrics.FinishedJobs``)."""
    out = []
    for record in written:
        if record.stage != STAGE_HISTORY:
            continue
        old = existing.get(record.id)
        if old is not None and old.stage == STAGE_HISTORY:
            continue
        seconds = None
        if record.execution_start_time is not None and record.execution_end_time is not None:
            seconds = max(0, record.execution_end_time - record.execution_start_time) / 1000.0
        out.append(
            (
                record.source if record.source is not None else (old.source if old else None),
                record.status,
                seconds,
                record.error_type,
            )
        )
    return out


def _write_records(
    conn: Connection,
    records: list[JobRecord],
    now: int,
    finished: list | None = None,
    *,
    copy: bool = False,
    encoder: rawcodec.Encoder | None = None,
    maybe_seen: Callable[[list[JobRecord]], set[str]] | None = None,
) -> IngestResult:
    """One batch inside the caller's write transaction: count what is new, newer or
    unchanged, and write the new and newer rows (``write_queries.write_batch``).
    ``finished``, if given, is extended with the jobs the batch finishes
    (``finished_transitions``), to report once the transaction commits.
    ``copy`` (PostgreSQL bulk load): the new rows go by ``COPY`` (``write_queries.copy_new``),
    the newer ones by the upsert. ``encoder``: the index's raw encoder; a record
    another encoder wrote is re-encoded with it (``rawcodec.conform``).
    ``maybe_seen`` (a bulk load into an empty index): the ids of ``records`` that may
    be stored already; only these are looked up."""
    result = IngestResult()
    ids = [r.id for r in records] if maybe_seen is None else list(maybe_seen(records))
    existing = write_queries.read_existing(conn, ids) if ids else {}
    written = []  # records whose row is inserted or replaced
    for record in records:
        old = existing.get(record.id)
        if old is None:
            result.inserted += 1
        elif write_queries.newer(record, old):
            result.updated += 1
        else:
            result.unchanged += 1
            continue
        written.append(record)
    if encoder is not None:
        rawcodec.conform(written, encoder, rawcodec.Reader(conn).dictionary)
    # The rows, their job_outputs and search rows and (SQLite) counter deltas.
    if copy:
        write_queries.copy_new(conn, [r for r in written if r.id not in existing], now)
        write_queries.write_batch(conn, [r for r in written if r.id in existing], existing, now)
    else:
        write_queries.write_batch(conn, written, existing, now)
    if finished is not None:
        finished.extend(finished_transitions(written, existing))
    return result


def _check_lease(conn: Connection, source: str | None, holder: str | None) -> None:
    if holder is None:
        return
    row = live_queries.get_lease(conn, source) if source is not None else None
    if row is None or row.holder != holder:
        raise LeaseLost(str(source), row.holder if row is not None else None)


def _row_refused(exc: StorageError) -> bool:
    """A write that failed on one row's value, not on the database: PostgreSQL's
    "program limit exceeded" (SQLSTATE class 54), e.g. an index entry too large."""
    sqlstate = getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None) or ""
    return sqlstate.startswith("54")


def _refusal(exc: BaseException) -> str:
    """The reason a row was refused (``DataError`` or a program-limit error), one line."""
    orig = getattr(exc, "orig", None)
    reason = str(orig).splitlines()[0] if orig is not None else str(exc)
    if "0x00" in reason and "NUL" not in reason:  # the server's words for a NUL in an array
        reason += " (text cannot contain NUL)"
    return f"rejected by the database: {reason}"


def _bulk_records_pg(
    conn: Connection,
    records: list[JobRecord],
    now: int,
    finished: list | None,
    encoder: rawcodec.Encoder | None = None,
    maybe_seen: Callable[[list[JobRecord]], set[str]] | None = None,
    *,
    copy: bool = True,
) -> IngestResult:
    """One batch of a PostgreSQL bulk load, in a savepoint: a batch with a row the
    database refuses (a value too large for an index entry or a tsvector) is written
    again row by row, and only the refused rows are rejected (as ``_write_batch``).
    ``maybe_seen``: as in ``_write_records``."""
    if not records:
        return IngestResult()
    try:
        with conn.begin_nested():
            return _write_records(conn, records, now, finished, copy=copy, encoder=encoder, maybe_seen=maybe_seen)
    except DBAPIError as exc:
        if not _value_refused(exc):
            raise
        if len(records) == 1:
            return IngestResult(rejected=[(records[0].id, _refusal(exc))])
    result = IngestResult()
    for record in records:
        result.add(_bulk_records_pg(conn, [record], now, finished, encoder, copy=copy))  # each looked up
    return result


def _value_refused(exc: DBAPIError) -> bool:
    """A row's value the database refused (``DataError``, or a program limit exceeded:
    SQLSTATE class 54), not a failure of the database or of the load."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return isinstance(exc, DataError) or sqlstate.startswith("54")


def _bulk_rows_pg(
    conn: Connection, parts: list[write_queries.CopyRows], now: int, encoder: rawcodec.Encoder, seen: _SeenIds
) -> IngestResult:
    """One batch of a PostgreSQL bulk load made of workers' ``CopyRows``: streamed as
    they are (``write_queries.copy_prepared``, in a savepoint) when their ids are new
    to the load, which ``seen`` tells for nearly all of them (the others are looked
    up). A batch with an id written already or repeated in it, or with a row the
    database refuses, goes as records instead (``_bulk_records_pg``: upserts, refused
    rows rejected alone)."""
    ids = [job_id for part in parts for job_id in part.ids]
    maybe = seen.maybe_seen_ids(ids)
    if not maybe or (len(set(ids)) == len(ids) and not write_queries.read_existing(conn, sorted(maybe))):
        try:
            with conn.begin_nested():
                write_queries.copy_prepared(conn, parts, now)
            return IngestResult(inserted=len(ids))
        except DBAPIError as exc:
            if not _value_refused(exc):
                raise
    result = IngestResult()
    batch: dict[str, JobRecord] = {}
    for record in (record for part in parts for record in part.records()):
        if record.id in batch:  # a version of a job seen in this batch: written after it, as a later batch's
            result.add(_bulk_records_pg(conn, list(batch.values()), now, None, encoder, seen.maybe_seen))
            batch = {}
        batch[record.id] = record
    result.add(_bulk_records_pg(conn, list(batch.values()), now, None, encoder, seen.maybe_seen))
    return result


def _pg_bulk_batches(
    items: Iterable[JobRecord | write_queries.CopyRows],
    source: str | None,
    size: int,
    dict_id: int | None,
    late: list[JobRecord],
) -> Iterator[list[JobRecord] | list[write_queries.CopyRows]]:
    """A PostgreSQL bulk load's stream as the batches it writes before its indexes:
    ``_batches`` of records, and of ``CopyRows`` at least ``size`` rows; the records
    it writes after them (``write_queries.late_record``, and every later version of
    their ids) go to ``late``, in order. A ``CopyRows`` chunk with such an id, or whose
    ``raw`` is not of the index's dictionary ``dict_id``, goes as its records."""
    late_ids: set[str] = set()

    def early(batch: list[JobRecord]) -> list[JobRecord]:
        out = []
        for record in batch:
            if record.id in late_ids or write_queries.late_record(record):
                late.append(record)
                late_ids.add(record.id)
            else:
                out.append(record)
        return out

    for as_rows, run in groupby(items, key=lambda item: isinstance(item, write_queries.CopyRows)):
        if not as_rows:
            yield from map(early, _batches(cast(Iterator[JobRecord], run), source, size))
            continue
        parts: list[write_queries.CopyRows] = []
        rows = 0
        for part in cast(Iterator[write_queries.CopyRows], run):
            if (part.ids and part.dict_id != dict_id) or not late_ids.isdisjoint(part.ids):
                if parts:
                    yield parts
                    parts, rows = [], 0
                yield from map(early, _batches(part.all_records(), source, size))
                continue
            late.extend(part.late)
            late_ids.update(record.id for record in part.late)
            parts.append(part)
            rows += len(part)
            if rows >= size:
                yield parts
                parts, rows = [], 0
        if parts:
            yield parts


class _SeenIds:
    """The ids a bulk load has written so far, approximately: a bitmap of one bit per
    id hash (16 MiB; at 1M ids about 0.7 % of new ids hit a bit by chance, at 10M
    7 %). An id whose bit is clear was certainly not written (the index was empty
    when the load began); only the others are looked up in the database."""

    BITS = 1 << 27

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS >> 3)

    def maybe_seen(self, records: list[JobRecord]) -> set[str]:
        """The ids of ``records`` that may have been written (and marks them all)."""
        return self.maybe_seen_ids([record.id for record in records])

    def maybe_seen_ids(self, ids: list[str]) -> set[str]:
        """The ``ids`` that may have been written (and marks them all)."""
        bits, mask, maybe = self._bits, self.BITS - 1, set()
        for job_id in ids:
            h = hash(job_id) & mask
            byte, bit = h >> 3, 1 << (h & 7)
            if bits[byte] & bit:
                maybe.add(job_id)
            else:
                bits[byte] |= bit
        return maybe


def _copy_pipelined(
    conn: Connection,
    batches: Iterator[list[JobRecord] | list[write_queries.CopyRows]],
    finished: list | None,
    encoder: rawcodec.Encoder,
) -> IngestResult:
    """The PostgreSQL bulk load's rows: each of ``batches`` written by
    ``_bulk_records_pg`` (records: COPY) or ``_bulk_rows_pg`` (the workers' COPY
    data) on a thread of its own while this thread reads the next batch (from the
    normalising workers: they keep working while the server takes a COPY). The first
    error stops both, raised here; so does an error in reading the batches (after
    the batch being written)."""
    handoff: queue.Queue[list[JobRecord] | list[write_queries.CopyRows] | None] = queue.Queue(maxsize=1)
    result = IngestResult()
    failed: list[BaseException] = []
    seen = _SeenIds()

    def write() -> None:
        as_data = 0  # rows that came as the workers' COPY data
        while (batch := handoff.get()) is not None:
            if failed:
                continue  # drain: the reader stops at its next batch
            try:
                now = int(time.time() * 1000)
                if _all_copy_rows(batch):
                    as_data += sum(map(len, batch))
                    result.add(_bulk_rows_pg(conn, batch, now, encoder, seen))
                else:
                    records = cast(list[JobRecord], batch)
                    result.add(
                        _bulk_records_pg(conn, records, now, finished, encoder=encoder, maybe_seen=seen.maybe_seen)
                    )
            except BaseException as exc:  # raised in the caller's thread
                failed.append(exc)
        log.info("bulk load's COPY thread: %.1f s of CPU, %d rows came as COPY data", time.thread_time(), as_data)

    writer = threading.Thread(target=write, name="jobs-index-copy", daemon=True)
    writer.start()
    try:
        for batch in batches:
            if failed:
                break
            handoff.put(batch)
    finally:
        handoff.put(None)
        writer.join()
    if failed:
        raise failed[0]
    return result


def _all_copy_rows(batch: list) -> TypeGuard[list[write_queries.CopyRows]]:
    return bool(batch) and isinstance(batch[0], write_queries.CopyRows)


def _all_prepared(
    batch: list[JobRecord] | list[write_queries.Prepared],
) -> TypeGuard[list[write_queries.Prepared]]:
    return bool(batch) and isinstance(batch[0], write_queries.Prepared)


def _trained_first(
    conn: Connection, records: Iterable[write_queries.BulkItem]
) -> tuple[Iterable[write_queries.BulkItem], rawcodec.Dictionary | None]:
    """A bulk load into an index without a dictionary: train one on the first records
    (``rawcodec.TRAIN_ITEMS``, ``TRAIN_BYTES``) and store it in ``conn``'s transaction.
    (Before training, the workers send records, not ``Prepared`` rows.)
    Returns the records, those read included, and the dictionary (None: too few
    records, or zstd could not train on them: the load writes zlib)."""
    iterator = iter(records)
    head: list[write_queries.BulkItem] = []
    count = 0
    while count < rawcodec.TRAIN_ITEMS and (item := next(iterator, None)) is not None:
        head.append(item)
        count += 1 if isinstance(item, JobRecord) else len(item)
    texts = rawcodec.sample_texts(rawcodec.decode(r.raw, r.raw_dict_id) for r in write_queries.flatten(head))
    dictionary = rawcodec.train(texts)
    if dictionary is not None:
        rawcodec.store(conn, dictionary, len(texts), sum(map(len, texts)))
        log.info("raw dictionary %d trained on %d items (%d bytes)", dictionary.id, len(texts), sum(map(len, texts)))
    return chain(head, iterator), dictionary


class JobsIndex:
    """A jobs index over one database (SQLite file or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._repair_failed_at: float | None = None  # monotonic time of a counter repair that failed
        # Called after each committed write with the jobs it finished (``metrics``).
        self._finished_observers: list[Callable[[list], None]] = []
        # The raw encoder new rows are written with (``rawcodec``): read from the
        # database at the first write; while it has no dictionary, looked for (and
        # trained, ``ensure_dictionary``) again once this process has written enough
        # rows for the index to reach ``rawcodec.TRAIN_MIN_ITEMS`` jobs (``_maybe_train``).
        self._encoder: rawcodec.Encoder | None = None
        self._rows_to_check = 0

    @classmethod
    def open(cls, url: str | None = None, *, pool_size: int = 5, auto_migrate: bool | None = None) -> JobsIndex:
        """Open (and create or upgrade) the index at ``url`` (see ``resolve_url``).

        An older PostgreSQL schema is upgraded only with ``auto_migrate`` (default:
        ``$JOBS_INDEX_AUTO_MIGRATE``); see ``database.open_engine``."""
        return cls(open_engine(url, pool_size=pool_size, auto_migrate=auto_migrate))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> JobsIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------

    def list_jobs(self, query: ListQuery) -> JobsPage:
        """One page of ``GET /api/jobs`` (the whole listing when ``limit`` is None)."""
        with JobStream(self, query, chunk=min(query.limit or STREAM_CHUNK, STREAM_CHUNK)) as stream:
            texts = [text for chunk in stream.chunks() for text in chunk]
        return JobsPage(texts, stream.total, stream.has_more, stream.next_cursor)

    def list_jobs_with_sources(self, query: ListQuery) -> tuple[JobsPage, dict[str, str | None]]:
        """``list_jobs`` and ``{id: source}`` of its jobs (a job deleted in between is
        left out of the map): the history page's list request, one round trip."""
        page = self.list_jobs(query)
        return page, self.job_sources(page.ids)

    def job_sources(self, job_ids: Iterable[str]) -> dict[str, str | None]:
        """``{id: source}`` of the stored jobs among ``job_ids``."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        with read_statement(self.engine) as conn:  # one statement: one snapshot
            return queries.job_sources(conn, ids)

    def stream_jobs(self, query: ListQuery, chunk: int = STREAM_CHUNK) -> JobStream:
        """A listing read chunk by chunk in one snapshot; the caller must ``close`` it
        (or read it to the end), else it holds a pooled connection."""
        return JobStream(self, query, chunk)

    def search(
        self, query: ListQuery, *, since_ms: int | None = None, page_size: int = 200, mark: tuple[str, str] = ("[", "]")
    ) -> Iterator[SearchHit]:
        """The jobs matching ``query`` (which has ``search``), newest first, up to
        ``query.limit`` (None: all) and created at or after ``since_ms``. Pages of
        ``page_size`` by keyset cursor; each page's details in one read."""
        search = query.search
        if search is None:
            raise ValueError("search() needs a query with search")
        remaining = query.limit
        cursor = None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page_query = replace(query, sort_by="created_at", sort_order="desc", limit=size, offset=0, cursor=cursor)
            page = self.list_jobs(page_query)
            jobs = page.jobs
            if since_ms is not None:
                jobs = [j for j in jobs if j.get("create_time", 0) >= since_ms]
            with read_transaction(self.engine) as conn:
                details = search_queries.job_details(conn, [j["id"] for j in jobs])
                reader = rawcodec.Reader(conn)
                items = {
                    job_id: reader.item(raw, dict_id, job_id) for job_id, (_, _, raw, dict_id, _) in details.items()
                }
            for job in jobs:
                if job["id"] not in details:  # deleted since the page was read
                    continue
                source, raw_kind, _, _, output = details[job["id"]]
                text = snippet(raw_kind, items[job["id"]], search, mark=mark)
                yield SearchHit(job.get("create_time"), job["status"], source, job["id"], output, text)
            if remaining is not None:
                remaining -= len(page.jobs)
            if not page.has_more or len(jobs) < len(page.jobs):
                return
            if page.next_cursor is None:  # has_more, but the last job's id is one no cursor can end on
                raise JobsIndexError("search cannot page past a job whose id is empty or too long for a cursor")
            cursor = decode_cursor(page.next_cursor, "desc")

    def get_job(self, job_id: str) -> dict:
        """The ``GET /api/jobs/{id}`` dict; raises JobNotFound."""
        with read_statement(self.engine) as conn:  # one statement: one snapshot
            row = queries.get_job(conn, job_id)
            if row is None:
                raise JobNotFound(job_id)
            item = rawcodec.Reader(conn).row_item(row) if row.raw_kind == KIND_HISTORY else None
        return detail_dict(row, item)

    def status_counts(self, query: ListQuery) -> dict[str, int]:
        """The exact number of jobs of each status passing ``query``'s other filters
        (source, workflow, search); its own statuses are ignored. One snapshot (without
        a search: one statement on ``job_counts``)."""
        if query.search is None:
            with read_statement(self.engine) as conn:
                return queries.status_counts(conn, query)
        with read_transaction(self.engine) as conn:
            return {
                status: search_queries.count_matches(conn, replace(query, statuses=(status,))) for status in STATUSES
            }

    def page_counts(self, query: ListQuery) -> tuple[dict[str, int], list[dict]]:
        """``status_counts(query)`` and the sources list of ``sources()``: the history
        page's counts request (two reads; the counts are one snapshot)."""
        return self.status_counts(query), self.sources()[0]

    def sources(self, job_ids: Iterable[str] = ()) -> tuple[list[dict], dict[str, str | None]]:
        """The sources (``{"source", "url", "jobs"}``: each source with jobs or
        followed, its ComfyUI URL when ``follow`` knows it), and ``{id: source}`` of
        the stored jobs among ``job_ids``. One snapshot."""
        ids = sorted(set(job_ids))
        with read_transaction(self.engine) as conn:
            jobs = queries.source_counts(conn)
            urls = live_queries.followed_urls(conn)
            of_jobs = queries.job_sources(conn, ids) if ids else {}
        listed = [
            {"source": name, "url": urls.get(name), "jobs": jobs.get(name, 0)} for name in sorted(set(jobs) | set(urls))
        ]
        return listed, of_jobs

    def total(self, query: ListQuery | None = None) -> int:
        with read_transaction(self.engine) as conn:
            return queries.count_total(conn, query or ListQuery())

    def _counter_mismatch(self, query: ListQuery, total: int, offset: int, rows: int) -> int:
        """A page found rows its counters say are not there, or fewer: count the rows
        (they are the truth), repair ``job_counts`` and return the real total. A
        repair that cannot run (a read-only role) is logged; ``jobs-index check
        --repair`` does it later."""
        with read_transaction(self.engine) as conn:
            actual = queries.count_rows(conn, query)
        failed_at = self._repair_failed_at
        if failed_at is not None and time.monotonic() - failed_at < REPAIR_RETRY_S:
            return actual  # a repair failed a moment ago (e.g. a read-only role): pages stay right, quietly
        log.warning(
            "jobs-index: job_counts says %d jobs for %s but the rows say %d (page at offset %d "
            "read %d rows): repairing the counters",
            total,
            _describe(query),
            actual,
            offset,
            rows,
        )
        try:
            wrong = self.repair_counts()
            self.repair_buckets()  # drifted with them (e.g. INSERT OR REPLACE): deep offset pages use them
        except (StorageError, DBAPIError) as exc:
            self._repair_failed_at = time.monotonic()
            log.error(
                "jobs-index: cannot repair job_counts (%s); run `jobs-index check --repair`",
                " ".join(str(exc).split())[:300],
            )
        else:
            self._repair_failed_at = None
            log.warning("jobs-index: job_counts repaired (%d counter rows were wrong)", len(wrong))
        return actual

    def repair_counts(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """Rebuild ``job_counts`` from the rows (one writer's transaction; on PostgreSQL
        writes to ``jobs`` wait meanwhile). Returns ``{key: (was, now)}`` of the wrong rows."""
        with write_transaction(self.engine) as conn:
            queries.lock_jobs_for_recount(conn)
            return queries.repair_counts(conn)

    # -- writes --------------------------------------------------------------

    def repair_buckets(self) -> dict[tuple[int, str, int], tuple[int, int]]:
        """Rebuild ``job_time_buckets`` from the rows (as ``repair_counts``)."""
        with write_transaction(self.engine) as conn:
            queries.lock_jobs_for_recount(conn)
            return queries.repair_buckets(conn)

    def add_finished_observer(self, observer: Callable[[list], None]) -> None:
        """Call ``observer(transitions)`` after every committed write of this index
        that finished jobs (``finished_transitions``); from the writing thread."""
        self._finished_observers.append(observer)

    def remove_finished_observer(self, observer: Callable[[list], None]) -> None:
        if observer in self._finished_observers:
            self._finished_observers.remove(observer)

    def _collector(self) -> list | None:
        return [] if self._finished_observers else None

    def _report_finished(self, finished: list | None) -> None:
        if not finished:
            return
        for observer in list(self._finished_observers):
            try:
                observer(finished)
            except Exception:  # an observer never fails a committed write
                log.exception("jobs-index: a finished-job observer failed")

    def ingest(
        self,
        records: Iterable[write_queries.BulkItem],
        *,
        source: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bulk: bool = False,
        cell: rawcodec.EncoderCell | None = None,
    ) -> IngestResult:
        """Write records in batches, one transaction per batch; idempotent.

        A killed ingest leaves every committed batch in place and the counts exact;
        running it again writes only what is missing or newer.

        ``bulk``: if the index is an empty SQLite file, load everything in one
        transaction and build the secondary indexes once at the end (``bulk_load``).
        ``cell``: where the code normalising ``records`` reads the raw encoder to use;
        set to the index's before the first record is read (records written by
        another encoder are re-encoded, ``rawcodec.conform``).
        """
        if bulk and (loaded := self.bulk_load(records, source=source, batch_size=batch_size, cell=cell)) is not None:
            return loaded
        if cell is not None:
            cell.encoder = self.raw_encoder()
        result = IngestResult()
        for batch in _batches(write_queries.flatten(records), source, batch_size):
            result.add(self._write_batch(batch))
            if cell is not None and self._encoder is not None:
                cell.encoder = self._encoder  # a dictionary trained meanwhile (``_maybe_train``)
        return result

    def bulk_load(
        self,
        records: Iterable[write_queries.BulkItem],
        *,
        source: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cell: rawcodec.EncoderCell | None = None,
    ) -> IngestResult | None:
        """A first import into an empty index, as one transaction: the secondary
        indexes are dropped, the rows written in batches of ``batch_size``, and the
        indexes built again by one sort each. All or nothing: a killed load leaves
        the index empty, and running it again loads it. Other writers wait.
        Returns None (reading no record) when the index is not empty.

        SQLite: ``write_queries.indexes_deferred``; readers see the empty index until
        it commits. PostgreSQL: ``write_queries.pg_indexes_deferred`` (foreign keys
        too); new rows go by ``COPY`` (``write_queries.copy_new``) on a thread of its
        own while the next batch is read (``_copy_pipelined``), each batch in a
        savepoint (a refused row is rejected alone), with no pre-read of ids the load
        has not written (``_SeenIds``); readers of the schema wait until it commits;
        then ``VACUUM (ANALYZE)``, so index-only scans work at once.

        Raw: an index without a raw dictionary gets one first, trained on the first
        records (``_trained_first``), in the load's transaction; every row is written
        with it (``cell``, as in ``ingest``, lets the normalising workers use it).
        """
        pg = self.engine.dialect.name == "postgresql"
        result = IngestResult()
        finished = self._collector()
        try:
            with write_transaction(self.engine) as conn:
                if not write_queries.index_is_empty(conn):
                    return None
                encoder = rawcodec.current_encoder(conn)
                if encoder.dictionary is None:
                    records, trained = _trained_first(conn, records)
                    encoder = rawcodec.Encoder(trained)
                if cell is not None:
                    cell.encoder = encoder
                if pg:
                    if cell is not None and finished is None and write_queries.takes_copy_rows(conn):
                        cell.source, cell.prepare = source, write_queries.prepare_copy  # workers send COPY data
                    late: list[JobRecord] = []  # written once the indexes are back (``late_record``)
                    early = _pg_bulk_batches(
                        cast(Iterable[JobRecord | write_queries.CopyRows], records),
                        source,
                        batch_size,
                        encoder.dict_id,
                        late,
                    )
                    started, cpu = time.perf_counter(), time.process_time()
                    with write_queries.pg_indexes_deferred(conn):
                        result.add(_copy_pipelined(conn, early, finished, encoder))
                        loaded, cpu = time.perf_counter(), time.process_time() - cpu
                    for batch in _batches(late, None, batch_size):
                        now = int(time.time() * 1000)
                        result.add(_bulk_records_pg(conn, batch, now, finished, copy=False, encoder=encoder))
                    built = time.perf_counter()
                else:
                    if cell is not None and finished is None:  # workers send rows (write_prepared)
                        cell.source, cell.prepare = source, write_queries.prepare
                    with write_queries.indexes_deferred(conn):
                        for group in _bulk_batches(
                            cast(Iterable[JobRecord | write_queries.Prepared], records), source, batch_size
                        ):
                            now = int(time.time() * 1000)
                            if not _all_prepared(group):
                                written = cast(list[JobRecord], group)
                            elif (
                                finished is None
                                and all(part.dict_id == encoder.dict_id for part in group)  # raw as the index writes it
                                and write_queries.write_prepared(conn, group, now)  # (False: an id is there already)
                            ):
                                result.inserted += sum(map(len, group))
                                continue
                            else:
                                written = [record for part in group for record in part.records()]
                            result.add(_write_records(conn, written, now, finished, encoder=encoder))
        except IntegrityError as exc:
            raise StorageError(f"rejected by the database: {exc.orig}") from exc
        self._encoder = encoder  # committed: the index's encoder from now on
        self._report_finished(finished)
        if pg:
            committed = time.perf_counter()
            self.vacuum_analyze()
            log.info(
                "bulk load: %d rows written in %.1f s (this process: %.1f s of CPU), indexes and foreign keys "
                "%.1f s, commit %.1f s, VACUUM (ANALYZE) %.1f s",
                result.written,
                loaded - started,
                cpu,
                built - loaded,
                committed - built,
                time.perf_counter() - committed,
            )
        return result

    def vacuum_analyze(self) -> bool:
        """PostgreSQL: ``VACUUM (ANALYZE)`` the job tables (after a bulk load). Only
        their owner may: for another role it is logged and False is returned (run
        ``VACUUM (ANALYZE)`` as the owner, or wait for autovacuum)."""
        if self.engine.dialect.name != "postgresql":
            return False
        try:
            with read_statement(self.engine) as conn:  # autocommit: VACUUM cannot run in a transaction
                write_queries.vacuum_analyze(conn)
        except (StorageError, DBAPIError) as exc:
            log.warning("jobs-index: VACUUM (ANALYZE) after the import failed: %s", " ".join(str(exc).split())[:300])
            return False
        return True

    def raw_encoder(self) -> rawcodec.Encoder:
        """The encoder this index writes ``raw`` with (read from the database once)."""
        encoder = self._encoder
        if encoder is None:
            with read_transaction(self.engine) as conn:
                encoder = self._encoder = rawcodec.current_encoder(conn)
        return encoder

    def use_raw_encoder(self, encoder: rawcodec.Encoder) -> None:
        """Write new rows with ``encoder`` (its dictionary stored in this database)."""
        self._encoder = encoder

    def ensure_dictionary(self, min_jobs: int = rawcodec.TRAIN_MIN_ITEMS) -> rawcodec.Encoder:
        """The index's raw encoder; if the index has no dictionary yet but holds at
        least ``min_jobs`` jobs, one is trained first on its newest jobs (at most
        ``rawcodec.TRAIN_ITEMS``) and stored: new rows are written with it (older
        rows stay zlib until ``jobs-index compact``). Training runs outside any
        transaction; storing takes a writer's transaction, which keeps the
        dictionary another writer stored meanwhile instead."""
        with read_transaction(self.engine) as conn:
            encoder = rawcodec.current_encoder(conn)
            texts: list[bytes] = []
            jobs = queries.count_total(conn, ListQuery()) if encoder.dictionary is None else 0
            if jobs >= min_jobs:
                texts = rawcodec.newest_texts(conn)
        # while there is none: rows to write before it is worth looking again
        self._rows_to_check = max(1, min_jobs - jobs) if jobs < min_jobs else TRAIN_CHECK_ROWS
        if texts and (trained := rawcodec.train(texts)) is not None:
            with write_transaction(self.engine) as conn:
                found = rawcodec.current(conn)
                if found is None:
                    rawcodec.store(conn, trained, len(texts), sum(map(len, texts)))
                    log.info("jobs-index: raw dictionary %d trained on the newest %d jobs", trained.id, len(texts))
                encoder = rawcodec.Encoder(found or trained)
        self._encoder = encoder
        return encoder

    def _maybe_train(self, written: int) -> None:
        """After a committed write: an index without a dictionary looks for one (and
        trains one once it holds ``rawcodec.TRAIN_MIN_ITEMS`` jobs) after its first
        write, then once the rows this process wrote could have brought it there
        (or, after a training that failed, ``TRAIN_CHECK_ROWS`` rows later). One
        count of ``job_counts`` a look. Never fails the write."""
        if self._encoder is not None and self._encoder.dictionary is not None:
            return
        self._rows_to_check -= written
        if self._rows_to_check > 0:
            return
        self._rows_to_check = TRAIN_CHECK_ROWS
        try:
            self.ensure_dictionary()
        except (JobsIndexError, DBAPIError) as exc:
            log.warning("jobs-index: no raw dictionary trained: %s", " ".join(str(exc).split())[:300])

    def _write_batch(self, records: list[JobRecord]) -> IngestResult:
        finished = self._collector()
        try:
            with write_transaction(self.engine) as conn:
                encoder = self._encoder if self._encoder is not None else rawcodec.current_encoder(conn)
                result = _write_records(conn, records, int(time.time() * 1000), finished, encoder=encoder)
        except IntegrityError as exc:
            raise StorageError(f"rejected by the database: {exc.orig}") from exc
        except (DataError, StorageError) as exc:
            # A value this database cannot hold (PostgreSQL: NUL in text; an id too long
            # for a b-tree entry, ~2,700 bytes: a program-limit error)
            refused: DBAPIError
            if isinstance(exc, StorageError):
                cause = exc.__cause__  # the driver's error (write_transaction raises from it)
                if not _row_refused(exc) or not isinstance(cause, DBAPIError):
                    raise
                refused = cause
            else:
                refused = exc
            if len(records) > 1:  # write the batch row by row: only the refused rows are rejected
                result = IngestResult()
                for record in records:
                    result.add(self._write_batch([record]))
                return result
            return IngestResult(rejected=[(records[0].id, _refusal(refused))])
        self._encoder = encoder
        self._report_finished(finished)
        self._maybe_train(result.written)
        return result

    def reconcile_live(self, live_ids: Iterable[str], *, source: str | None = None, holder: str | None = None) -> int:
        """Apply a queue snapshot: pending/running rows of ``source`` that are not in
        it are removed, as ComfyUI forgets a job cancelled while pending. Finished
        (history) rows are never touched. Returns the number removed.
        ``holder``: refuse (``LeaseLost``) unless it holds ``source``'s lease."""
        keep = set(live_ids)
        with write_transaction(self.engine) as conn:
            _check_lease(conn, source, holder)
            stale = queries.live_ids(conn, source) - keep
            return queries.delete_jobs(conn, sorted(stale)) if stale else 0

    def live_ids(self, source: str | None) -> set[str]:
        """Ids of the pending/running rows of ``source``."""
        with read_transaction(self.engine) as conn:
            return queries.live_ids(conn, source)

    def delete_jobs(
        self, ids: Iterable[str], *, source: str | None | EllipsisType = ..., holder: str | None = None
    ) -> int:
        """Delete jobs by id. ``source`` given (None included): only rows of that
        source are deleted, a job of another machine with that id stays.
        ``holder``: refuse (``LeaseLost``) unless it holds ``source``'s lease."""
        with write_transaction(self.engine) as conn:
            if source is ...:
                return queries.delete_jobs(conn, sorted(set(ids)))
            _check_lease(conn, source, holder)
            return live_queries.delete_of_source(conn, sorted(set(ids)), source)

    # -- live ingestion (``follow``, the ComfyUI custom node) ---------------

    def follow_state(self, source: str) -> tuple[str, str | None] | None:
        """``(url, history_watermark)`` of a followed source, or None if never followed."""
        with read_transaction(self.engine) as conn:
            row = live_queries.get_followed(conn, source)
        return None if row is None else (row.url, row.history_watermark)

    def save_follow_state(self, source: str, url: str, watermark: str | None) -> None:
        """Record how far ``source``'s history was read (and that it was synced now)."""
        with write_transaction(self.engine) as conn:
            live_queries.save_followed(conn, source, url, watermark, int(time.time() * 1000))

    def finished_ids(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` already stored as finished (history) jobs."""
        with read_transaction(self.engine) as conn:
            return live_queries.finished_ids(conn, sorted(set(ids)))

    def delete_finished(
        self, *, source: str | None, holder: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> int:
        """Delete every finished job of ``source`` (ComfyUI's "clear history");
        pending/running rows and other sources stay. In short transactions of
        ``batch_size`` rows, oldest first (as ``prune``), so other writers wait at most
        one batch. ``holder``: each batch checks it still holds ``source``'s lease
        (``LeaseLost`` otherwise; batches already done stay done). Returns the number removed."""
        removed = 0
        while True:
            with write_transaction(self.engine) as conn:
                _check_lease(conn, source, holder)
                ids = live_queries.finished_batch(conn, source, batch_size)
                if ids:  # in key order: neighbouring pages of the primary key and side tables
                    removed += queries.delete_jobs(conn, sorted(ids))
            if len(ids) < batch_size:
                return removed

    # -- source leases ---------------------------------------------------------

    def acquire_lease(
        self, source: str, holder: str, ttl_ms: int, stale: Callable[[str], bool] = lambda holder: False
    ) -> tuple[bool, str, int]:
        """Take (or renew) ``source``'s lease for ``ttl_ms``: free, expired, already
        ours, or held by a holder ``stale(holder)`` says is dead. Returns
        ``(acquired, holder now, its expiry in epoch ms)``."""
        now = int(time.time() * 1000)
        with write_transaction(self.engine) as conn:
            row = live_queries.get_lease(conn, source)
            if row is None:
                if live_queries.insert_lease(conn, source, holder, now, now + ttl_ms):
                    return True, holder, now + ttl_ms
                row = live_queries.get_lease(conn, source)
                # write_transaction serialises writers (SQLite's lock, PostgreSQL's advisory
                # lock): the row the insert met is there until this transaction ends.
                assert row is not None, "the lease row the insert conflicted with"
            if row.holder == holder or row.expires_at <= now or stale(row.holder):
                if live_queries.replace_lease(conn, source, row.holder, holder, now, now + ttl_ms):
                    return True, holder, now + ttl_ms
                row = live_queries.get_lease(conn, source)
                assert row is not None, "the lease row read above (writers are serialised)"
            return False, row.holder, row.expires_at

    def renew_lease(self, source: str, holder: str, ttl_ms: int) -> int | None:
        """Extend our lease; its new expiry (epoch ms), or None if it is not ours any more."""
        expires = int(time.time() * 1000) + ttl_ms
        with write_transaction(self.engine) as conn:
            return expires if live_queries.renew_lease(conn, source, holder, expires) else None

    def release_lease(self, source: str, holder: str) -> bool:
        with write_transaction(self.engine) as conn:
            return live_queries.release_lease(conn, source, holder)

    def lease_of(self, source: str) -> tuple[str, int] | None:
        """``(holder, expires_at)`` of ``source``'s lease, or None."""
        with read_transaction(self.engine) as conn:
            row = live_queries.get_lease(conn, source)
        return None if row is None else (row.holder, row.expires_at)

    # -- checks --------------------------------------------------------------

    def counts_consistent(self) -> bool:
        """True when the trigger-kept counts (``job_counts``, ``job_time_buckets``)
        equal a full COUNT over ``jobs``."""
        with read_transaction(self.engine) as conn:
            counts_right = queries.stored_counts(conn) == queries.recount(conn)
            if not inspect(conn).has_table(queries.buckets.name):  # an index before 0013_time_buckets
                return counts_right
            return counts_right and queries.stored_buckets(conn) == queries.recount_buckets(conn)
