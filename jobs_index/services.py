"""Services: the jobs index's operations. Each owns its transaction(s).

``JobsIndex`` is the library entry point used by the HTTP server, the CLI and the
custom node: list and get jobs with ComfyUI's semantics, ingest job rows in batched
transactions, and reconcile live (pending/running) rows with a queue snapshot.
Every method is blocking; async callers run them in a thread.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from . import queries, search_queries, wire, write_queries
from . import live_queries
from .cursor import CURSOR_SORT_FIELD, decode_cursor, encode_cursor
from .database import open_engine, read_statement, read_transaction, write_transaction
from .errors import JobNotFound, StorageError
from .normalize import JobRecord, decode_raw, detail_dict
from .search import snippet
from .params import STATUSES, ListQuery
from .queries import ROW_CREATE_TIME, ROW_DURATION, ROW_ID, ROW_JOB_JSON, ROW_TOTAL, Position

ID_OFFSET = len('{"id": ')  # where the id string starts in a job's JSON text (``queries._job_json_sql``)
_ID_DECODER = json.JSONDecoder()
DEFAULT_BATCH_SIZE = 1000
STREAM_CHUNK = 1000  # rows per query when a listing is larger than one page


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
        return wire.pagination(query.offset, query.limit, self.total, self.has_more, self.next_cursor)

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

    def add(self, other: "IngestResult") -> None:
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

    ``total`` and the first chunk come from one snapshot (for a first page or a
    cursor page, one statement); later chunks continue from the last row's sort key,
    so no row is repeated or skipped even while writers add jobs.
    ``has_more``/``next_cursor`` are final once exhausted. Chunks are lists of job
    JSON texts (``queries.page_columns``).
    """

    def __init__(self, index: "JobsIndex", query: ListQuery, chunk: int = STREAM_CHUNK) -> None:
        self._index, self._query, self._chunk = index, query, chunk
        self._remaining = query.limit  # None: no limit
        self._after = Position(query.cursor.create_time, query.cursor.id) if query.cursor else None
        self._offset = 0 if query.cursor else query.offset
        self._done = False
        self._last = None
        self.has_more = False
        self.next_cursor: str | None = None
        self.total = 0
        self._plan = "matches"
        if query.search is not None:  # total, plan and first chunk: one snapshot
            with read_transaction(index.engine) as conn:
                self.total = search_queries.count_matches(conn, query)
                self._done = self.total == 0
                if not self._done:
                    jobs = [queries.count_total(conn, q) for q in
                            (search_queries.walked_query(query), replace(query, search=None), ListQuery())]
                    self._plan = search_queries.choose_plan(self.total, self._want() + 1 + self._offset, *jobs)
                self._first = self._fetch(conn)
            return
        if self._offset:  # offset mode: the total first, so a skip past the end reads no index
            with read_transaction(index.engine) as conn:
                self.total = queries.count_total(conn, query)
                self._done = self.total == 0
                self._first = self._fetch(conn)
            return
        with read_statement(index.engine) as conn:  # page and total: one statement
            want = self._want()
            rows = queries.select_page(conn, query, limit=want + 1, after=self._after, with_total=True)
            self.total = int(rows[0][ROW_TOTAL]) if rows else queries.count_total(conn, query)
        # ComfyUI answers an empty filtered set early: no cursor, no has_more.
        self._done = self.total == 0
        self._first = [] if self._done else self._consume(rows, want)

    def _want(self) -> int:
        return self._chunk if self._remaining is None else min(self._chunk, self._remaining)

    def _fetch(self, conn) -> list[str]:
        if self._done:
            return []
        want = self._want()
        if self._after is None and self._offset >= self.total:
            rows = []  # past the end: answer without walking the index
        elif self._query.search is not None:
            rows = search_queries.select_page(conn, self._query, plan=self._plan, limit=want + 1,
                                              offset=self._offset, after=self._after)
        else:
            rows = queries.select_page(conn, self._query, limit=want + 1,
                                       offset=self._offset, after=self._after)
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
            if self.has_more and self._query.sort_by == CURSOR_SORT_FIELD and self._last is not None:
                self.next_cursor = encode_cursor(self._last[ROW_CREATE_TIME], self._last[ROW_ID],
                                                 self._query.sort_order)
        return [row[ROW_JOB_JSON] for row in page]

    def chunks(self) -> Iterator[list[str]]:
        """Job JSON texts, chunk by chunk (blocking: one query per chunk after the first)."""
        while (chunk := self.next_chunk()) is not None:
            yield chunk

    def next_chunk(self) -> list[str] | None:
        """The next chunk, or None when exhausted (for callers that hop threads).
        A later chunk is one statement, continuing from the last row's sort key."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._done:
            return None
        with read_statement(self._index.engine) as conn:
            return self._fetch(conn)


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


def _write_records(conn: Connection, records: list[JobRecord], now: int) -> IngestResult:
    """One batch inside the caller's write transaction: count what is new, newer or
    unchanged, and write the new and newer rows (``write_queries.write_batch``)."""
    result = IngestResult()
    existing = write_queries.read_existing(conn, [r.id for r in records])
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
    # The rows, their job_outputs and search rows and (SQLite) counter deltas.
    write_queries.write_batch(conn, written, existing, now)
    return result


def _delete(conn: Connection, ids: list[str]) -> int:
    """Delete jobs and their search rows (the other side rows go by cascade)."""
    search_queries.store(conn).forget(conn, ids)
    return queries.delete_jobs(conn, ids)


class JobsIndex:
    """A jobs index over one database (SQLite file or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str | None = None, *, pool_size: int = 5) -> "JobsIndex":
        """Open (and create or upgrade) the index at ``url`` (see ``resolve_url``)."""
        return cls(open_engine(url, pool_size=pool_size))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "JobsIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------

    def list_jobs(self, query: ListQuery) -> JobsPage:
        """One page of ``GET /api/jobs`` (the whole listing when ``limit`` is None)."""
        stream = JobStream(self, query, chunk=min(query.limit or STREAM_CHUNK, STREAM_CHUNK))
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
        return JobStream(self, query, chunk)

    def search(self, query: ListQuery, *, since_ms: int | None = None, page_size: int = 200,
               mark: tuple[str, str] = ("[", "]")) -> Iterator[SearchHit]:
        """The jobs matching ``query`` (which has ``search``), newest first, up to
        ``query.limit`` (None: all) and created at or after ``since_ms``. Pages of
        ``page_size`` by keyset cursor; each page's details in one read."""
        remaining = query.limit
        cursor = None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page_query = replace(query, sort_by="created_at", sort_order="desc", limit=size, offset=0,
                                 cursor=cursor)
            page = self.list_jobs(page_query)
            jobs = page.jobs
            if since_ms is not None:
                jobs = [j for j in jobs if j.get("create_time", 0) >= since_ms]
            with read_transaction(self.engine) as conn:
                details = search_queries.job_details(conn, [j["id"] for j in jobs])
            for job in jobs:
                if job["id"] not in details:  # deleted since the page was read
                    continue
                source, raw_kind, raw, output = details[job["id"]]
                text = snippet(raw_kind, decode_raw(raw), query.search, mark=mark)
                yield SearchHit(job.get("create_time"), job["status"], source, job["id"], output, text)
            if remaining is not None:
                remaining -= len(page.jobs)
            if not page.has_more or len(jobs) < len(page.jobs):
                return
            cursor = decode_cursor(page.next_cursor, "desc")

    def get_job(self, job_id: str) -> dict:
        """The ``GET /api/jobs/{id}`` dict; raises JobNotFound."""
        with read_transaction(self.engine) as conn:
            row = queries.get_job(conn, job_id)
        if row is None:
            raise JobNotFound(job_id)
        return detail_dict(row)

    def status_counts(self, query: ListQuery) -> dict[str, int]:
        """The exact number of jobs of each status passing ``query``'s other filters
        (source, workflow, search); its own statuses are ignored. One snapshot (without
        a search: one statement on ``job_counts``)."""
        if query.search is None:
            with read_statement(self.engine) as conn:
                return queries.status_counts(conn, query)
        with read_transaction(self.engine) as conn:
            return {status: search_queries.count_matches(conn, replace(query, statuses=(status,)))
                    for status in STATUSES}

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
        listed = [{"source": name, "url": urls.get(name), "jobs": jobs.get(name, 0)}
                  for name in sorted(set(jobs) | set(urls))]
        return listed, of_jobs

    def total(self, query: ListQuery | None = None) -> int:
        with read_transaction(self.engine) as conn:
            return queries.count_total(conn, query or ListQuery())

    # -- writes --------------------------------------------------------------

    def ingest(self, records: Iterable[JobRecord], *, source: str | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, bulk: bool = False) -> IngestResult:
        """Write records in batches, one transaction per batch; idempotent.

        A killed ingest leaves every committed batch in place and the counts exact;
        running it again writes only what is missing or newer.

        ``bulk``: if the index is an empty SQLite file, load everything in one
        transaction and build the secondary indexes once at the end (``bulk_load``).
        """
        if bulk and (loaded := self.bulk_load(records, source=source, batch_size=batch_size)) is not None:
            return loaded
        result = IngestResult()
        for batch in _batches(records, source, batch_size):
            result.add(self._write_batch(batch))
        return result

    def bulk_load(self, records: Iterable[JobRecord], *, source: str | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> IngestResult | None:
        """A first import into an empty SQLite index, as one transaction: the
        secondary indexes are dropped, the rows written in batches of ``batch_size``,
        and the indexes built again by one sort each (``write_queries.indexes_deferred``).
        All or nothing: a killed load leaves the index empty, and running it again
        loads it. Readers see the empty index until it commits; other writers wait.
        Returns None (reading no record) when the index is not empty or not SQLite.
        """
        if self.engine.dialect.name != "sqlite":
            return None
        result = IngestResult()
        try:
            with write_transaction(self.engine) as conn:
                if not write_queries.index_is_empty(conn):
                    return None
                with write_queries.indexes_deferred(conn):
                    for batch in _batches(records, source, batch_size):
                        result.add(_write_records(conn, batch, int(time.time() * 1000)))
        except IntegrityError as exc:
            raise StorageError(f"rejected by the database: {exc.orig}") from exc
        return result

    def _write_batch(self, records: list[JobRecord]) -> IngestResult:
        try:
            with write_transaction(self.engine) as conn:
                result = _write_records(conn, records, int(time.time() * 1000))
        except IntegrityError as exc:
            raise StorageError(f"rejected by the database: {exc.orig}") from exc
        except DataError as exc:  # a value this database cannot hold (PostgreSQL: NUL in text)
            if len(records) > 1:  # write the batch row by row: only the refused rows are rejected
                result = IngestResult()
                for record in records:
                    result.add(self._write_batch([record]))
                return result
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            if "0x00" in reason and "NUL" not in reason:  # the server's words for a NUL in an array
                reason += " (text cannot contain NUL)"
            return IngestResult(rejected=[(records[0].id, f"rejected by the database: {reason}")])
        return result

    def reconcile_live(self, live_ids: Iterable[str], *, source: str | None = None) -> int:
        """Apply a queue snapshot: pending/running rows of ``source`` that are not in
        it are removed, as ComfyUI forgets a job cancelled while pending. Finished
        (history) rows are never touched. Returns the number removed."""
        keep = set(live_ids)
        with write_transaction(self.engine) as conn:
            stale = sorted(queries.live_ids(conn, source) - keep)
            return _delete(conn, stale) if stale else 0

    def delete_jobs(self, ids: Iterable[str]) -> int:
        with write_transaction(self.engine) as conn:
            return _delete(conn, sorted(set(ids)))

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

    def delete_finished(self, *, source: str | None) -> int:
        """Delete every finished job of ``source`` (ComfyUI's "clear history");
        pending/running rows stay. Returns the number removed."""
        with write_transaction(self.engine) as conn:
            return live_queries.delete_finished(conn, source)

    # -- checks --------------------------------------------------------------

    def counts_consistent(self) -> bool:
        """True when the trigger-kept counts equal a full COUNT over ``jobs``."""
        with read_transaction(self.engine) as conn:
            return queries.stored_counts(conn) == queries.recount(conn)
