"""SQL of full-text search: the search rows of a batch, their removal, and search
listings. Like ``queries``: connection first, never commits.

The search structures are derived from ``jobs.raw`` (``search.document``; migration
``0008_search`` builds them for an existing index). One ``SearchStore`` per engine
holds every engine difference; callers ask ``store(conn)`` and never test the
dialect themselves:

* SQLite: ``job_search(docid, job_id, <the listing columns>, facets_id)``, each
  distinct (node_types, models, loras) once in ``job_search_facets(id, hash, ...)``
  (revision 0014_search_facets: a match reads a narrow row), and the FTS5 table
  ``job_search_fts(doc)``,
  contentless (the words are not stored twice), keyed by ``docid`` (AUTOINCREMENT,
  never reused). A contentless FTS5 table forgets a
  document only when told its words, so ``forget`` re-derives them from ``raw``
  before the rows go: every jobs-index path that replaces or deletes a job calls it
  in the same transaction. A job deleted by other SQL loses its ``job_search`` row
  (trigger); its words stay in the FTS index, matching a ``docid`` nothing refers
  to, so no listing sees them; its docid goes into ``job_search_orphans`` (trigger,
  revision 0009_search_narrow), so a count without filters is FTS5's count less
  the matching orphans.
* PostgreSQL: ``job_search(job_id, doc tsvector, node_types, models, loras)`` with a
  GIN index on ``doc``; rows go with their job (``ON DELETE CASCADE``).

A search listing has two plans, chosen per request from the exact total
(``choose_plan``): *matches first* (every matching job, filtered, sorted: cost grows
with the matches) or *timeline first* (walk the listing's own index and test each
job: cost grows with how far the page is, divided by the share of jobs that match).
On SQLite the timeline's probes write a prefix of one word as the OR of the indexed
words it stands for (``SqliteStore.expansions``: read from a temp ``fts5vocab`` table
in the request's snapshot), which FTS5 would otherwise merge again for every probe.

A phrase of common words is asked for by its grams (``search.grams``) only when the
index says its documents carry this code's grams: ``job_search_grams`` holds
``search.GRAMS_VERSION`` (revision ``0012_search_grams``; ``SearchStore.grams``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from . import rawcodec, schema
from .normalize import answer_text, column_text
from .params import ListQuery
from .queries import Position, page_columns_sql, page_start, unmatchable
from .search import (
    GRAMS_VERSION,
    Document,
    SearchQuery,
    Term,
    document,
    expandable,
    fts5_match,
    gram_alone,
    tsquery,
)

SQLITE_IN_CHUNK = 900

V = TypeVar("V")

# Exact totals kept per data version (``count_matches``): how many (0: none).
TOTALS_CACHE_ENV = "JOBS_INDEX_SEARCH_TOTALS_CACHE"
TOTALS_CACHE_DEFAULT = 256


# ``0``: phrases never ask for grams (``SearchStore.grams``), e.g. to measure them.
GRAMS_ENV = "JOBS_INDEX_SEARCH_GRAMS"


def totals_cache_size() -> int:
    value = os.environ.get(TOTALS_CACHE_ENV, "").strip()
    return int(value) if value.isdigit() else TOTALS_CACHE_DEFAULT


class KeptValues(Generic[V]):
    """Up to ``size`` values, least recently used first out; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class TotalsCache(KeptValues[int]):
    """Up to ``size`` exact totals (``count_matches``)."""


@dataclass(frozen=True)
class PlanCosts:
    """Relative costs of the two plans of one engine (``choose_plan``): reading and
    sorting one match (1), testing one job of the timeline per word of the query
    (``probe``), times ``prefix`` when a word is a prefix."""

    probe: float
    prefix: float
    walk: float = 1.0  # reading one job of the timeline walk, before its test


# SQLite (benchmarks/results/search-floor-*.md): one match costs 1-4 us (its
# narrow job_search row, then the sort); the batched timeline (``_timeline_batched``)
# tests a walked job for about half as much per word: its share of one FTS5 query
# over the batch's docid range. A prefix is expanded once per range
# query, and costs more the more words it stands for.
# The walk reads one index entry per job (``ix_job_search_timeline``, revision
# 0011_search_timeline), ~0.3 of a match (benchmarks/results/search-floor-*.md);
# with a workflow or source filter it walks jobs' index and looks each docid up
# (SQLITE_JOINED_WALK: a random seek, 3-20 us at 1M jobs). Sorted by duration, the
# timeline is not batched: one FTS5 query per job (SQLITE_PROBED: 60-800 us each,
# ~30x more with a prefix, which FTS5 expands again for every job).
# An expanded prefix (``SqliteStore.expansions``) costs as many words as it has.
SQLITE_COSTS = PlanCosts(probe=0.5, prefix=3.0, walk=0.3)
SQLITE_JOINED_WALK = PlanCosts(probe=0.5, prefix=3.0, walk=4.0)
SQLITE_PROBED = PlanCosts(probe=40.0, prefix=30.0)
# PostgreSQL (search-notes.md): one match costs 3-7 us (a GIN bitmap heap visit of a
# ~1.5 KB job_search row, then the sort); one probe 25-60 us (a primary-key lookup of
# job_search and ``@@`` on its detoasted tsvector; a prefix costs no more there).
POSTGRES_COSTS = PlanCosts(probe=8.0, prefix=1.0)


@lru_cache(maxsize=4096)
def _json_list(values: tuple[str, ...]) -> str:
    """A ``job_search`` list column's JSON. Cached: jobs of one install repeat the
    same node types, models and LoRAs (a bulk load spent ~9 us per job here)."""
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def _document(record) -> Document:
    """A record's search document (derived from its raw item if it carries none)."""
    return (
        record.search
        if record.search is not None
        else document(record.raw_kind, rawcodec.decode_item(record.raw, record.raw_dict_id))
    )


def _row_values(record, doc: Document, sources: dict | None) -> tuple:
    """(job_id, *LISTED, node_types, models, loras) of a ``job_search`` row: the id and
    workflow id in their columns' form (``normalize.column_text``), as ``jobs`` stores them."""
    source = record.source if record.source is not None or not sources else sources.get(record.id)
    return (
        column_text(record.id),
        record.create_time,
        record.execution_duration,
        record.status,
        column_text(record.workflow_id),
        source,
        _json_list(doc.node_types),
        _json_list(doc.models),
        _json_list(doc.loras),
    )


# The job's listing columns, copied into job_search (migration 0008: a trigger
# carries UPDATEs made by other SQL over), and the document's name lists (JSON text).
LISTED = ("create_time", "execution_duration", "status", "workflow_id", "source")
FACETS = ("node_types", "models", "loras")
ROW_COLUMNS = ("job_id", *LISTED, *FACETS)
_NARROW = len(ROW_COLUMNS) - len(FACETS)  # a search row's job_search part, before its facets


def facets_hash(lists: tuple[str, ...]) -> int:
    """SQLite: ``job_search_facets.hash`` of a job's (node_types, models, loras) JSON
    texts: 64 bits of BLAKE2b as a signed integer (revision 0014_search_facets
    computes it with this function)."""
    digest = hashlib.blake2b("\x00".join(lists).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_FACETS_FIND = (
    "SELECT id FROM job_search_facets WHERE hash = ? AND node_types = ? AND models = ? AND loras = ? "
    "ORDER BY id LIMIT 1"
)
_FACETS_ADD = "INSERT INTO job_search_facets (hash, node_types, models, loras) VALUES (?, ?, ?, ?)"


def facet_ids(conn: Connection, combinations: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    """SQLite, in a write transaction: the ``job_search_facets`` id of each
    (node_types, models, loras), rows added for the new ones. Looked up by hash each
    time (no cache: a rolled-back transaction takes its new rows back)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    out = {}
    for lists in combinations:
        digest = facets_hash(lists)
        found = driver.execute(_FACETS_FIND, (digest, *lists)).fetchone()
        out[lists] = found[0] if found is not None else driver.execute(_FACETS_ADD, (digest, *lists)).lastrowid
    return out


class SearchStore:
    """The search rows of one engine."""

    dialect = ""

    def forget(self, conn: Connection, ids: Sequence[str]) -> None:
        """Remove the search rows of ``ids`` (before their jobs rows change or go)."""
        raise NotImplementedError

    def add(self, conn: Connection, records: Sequence, sources: dict | None = None) -> None:
        """Insert the search rows of ``records`` (``JobRecord``s), whose jobs have
        none (new, or ``forget`` called). ``sources``: the source a job's row keeps
        when its record has none (the upsert's COALESCE), by id."""
        raise NotImplementedError

    def add_rows(self, conn: Connection, rows: Sequence[tuple], fts: Sequence[str]) -> None:
        """SQLite: ``add`` of rows made already: ``job_search`` rows in ROW_COLUMNS order
        and each one's FTS5 document ('' for none); docids in their order, as ``add``'s."""
        raise NotImplementedError

    # Every search row with its facets, ``s`` being job_search (ROW_COLUMNS as
    # ``s.job_id``, ``s.<listed>``, ``<facets_alias>.<facet>``).
    rows_from = "job_search AS s"
    facets_alias = "s"

    COPY_COLUMNS: tuple[str, ...] = ()

    COPY_TYPES: tuple[str, ...] = ()

    def copy_rows(self, records: Sequence, encoding: str = "utf-8") -> list[tuple]:
        """PostgreSQL: the search rows of ``records`` for a bulk load's ``COPY``."""
        raise NotImplementedError

    def match_value(self, conn: Connection, query: SearchQuery, probes: bool = False) -> str:
        """The engine's form of ``query`` for ``:m``, read in ``conn``'s snapshot
        (``probes``: for the timeline's probes)."""
        raise NotImplementedError

    def grams(self, conn: Connection) -> bool:
        """Do the index's documents carry this code's grams (``job_search_grams`` holds
        ``GRAMS_VERSION``)? Read once per connection when they do; an index not yet
        migrated (or with another list) is asked again each time, and its phrases
        keep their plain form, as they do with ``JOBS_INDEX_SEARCH_GRAMS=0``."""
        if os.environ.get(GRAMS_ENV, "").strip() == "0":
            return False
        info = conn.connection.info
        if info.get("search_grams") == GRAMS_VERSION:
            return True
        if conn.exec_driver_sql(self._grams_table).scalar() is None:
            return False
        version = conn.exec_driver_sql("SELECT max(version) FROM job_search_grams").scalar()
        if version == GRAMS_VERSION:
            info["search_grams"] = version
        return version == GRAMS_VERSION

    _grams_table = ""

    def expansions(self, conn: Connection, query: SearchQuery) -> dict[Term, tuple[str, ...]]:
        """The prefix terms ``match_value`` writes as the OR of the indexed words they
        stand for, with those words (``choose_plan`` prices them); none by default."""
        return {}

    # The matching documents: ``FROM <matches_from> WHERE <match_condition>`` (parameter
    # ``:m``), ``s`` being ``job_search``: the inverted index first, then each match's
    # job_search row.
    matches_from = match_condition = ""

    costs = SQLITE_COSTS

    def costs_of(self, query: ListQuery) -> PlanCosts:
        """The plans' costs for ``query``."""
        return self.costs

    def probe_sql(self) -> str:
        """A condition on a ``jobs`` row: does it match ``:m``?"""
        raise NotImplementedError

    def run_matching(self, conn: Connection, sql: str, values: dict) -> list:
        """The rows of ``sql``, a statement that reads the inverted index (``matches_from``)."""
        return _run(conn, sql, values).fetchall()

    def count_unfiltered(self, conn: Connection, values: dict) -> int | None:
        """The matches of ``:m`` without filters if the engine has a faster way to count
        them than ``_count_sql`` (else None)."""
        return None

    def totals(self, conn: Connection) -> TotalsCache | None:
        """Where ``count_matches`` keeps totals for ``conn`` (None: it keeps none)."""
        raise NotImplementedError

    def data_version(self, conn: Connection) -> object | None:
        """A value that is equal for two snapshots of ``conn``'s cache only if they hold
        the same data (None: unknown, nothing is kept)."""
        raise NotImplementedError


class SqliteStore(SearchStore):
    dialect = "sqlite"

    def forget(self, conn: Connection, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), SQLITE_IN_CHUNK):
            chunk = tuple(ids[start : start + SQLITE_IN_CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows = conn.exec_driver_sql(
                "SELECT s.docid, j.raw_kind, j.raw, j.raw_dict_id, j.id FROM job_search AS s "
                "JOIN jobs AS j ON j.id = s.job_id "
                f"WHERE s.job_id IN ({marks})",
                chunk,
            ).fetchall()
            deletes = []
            reader = rawcodec.Reader(conn)
            for docid, raw_kind, raw, dict_id, job_id in rows:
                words = document(raw_kind, reader.item(raw, dict_id, job_id)).fts_text()
                if words:
                    deletes.append((docid, words))
            if deletes:
                conn.exec_driver_sql(
                    "INSERT INTO job_search_fts (job_search_fts, rowid, doc) VALUES ('delete', ?, ?)", deletes
                )
            conn.exec_driver_sql(f"DELETE FROM job_search WHERE job_id IN ({marks})", chunk)
            if rows:  # their words are gone: not orphans (the delete trigger recorded them)
                conn.exec_driver_sql(
                    f"DELETE FROM job_search_orphans WHERE docid IN ({', '.join('?' * len(rows))})",
                    tuple(row[0] for row in rows),
                )

    rows_from = "job_search AS s LEFT JOIN job_search_facets AS f ON f.id = s.facets_id"
    facets_alias = "f"

    def add(self, conn: Connection, records: Sequence, sources: dict | None = None) -> None:
        if not records:
            return
        first = conn.exec_driver_sql(_SQLITE_NEXT_DOCID).scalar_one()
        rows, docs = [], []
        for record in records:
            doc = _document(record)
            rows.append(_row_values(record, doc, sources))
            docs.append(doc.fts_text() if doc.words else "")
        self._insert(conn, first, rows, docs, docids=True)

    def add_rows(self, conn: Connection, rows: Sequence[tuple], fts: Sequence[str]) -> None:
        if not rows:
            return
        first = conn.exec_driver_sql(_SQLITE_NEXT_DOCID).scalar_one()
        # docid left out: AUTOINCREMENT gives the same numbers, first, first + 1, ...
        self._insert(conn, first, rows, fts, docids=False)
        last = conn.exec_driver_sql("SELECT max(docid) FROM job_search").scalar_one()
        if last != first + len(rows) - 1:
            raise RuntimeError(f"job_search docids {first}..{last} for {len(rows)} rows")

    @staticmethod
    def _insert(conn: Connection, first: int, rows: Sequence[tuple], fts: Sequence[str], docids: bool) -> None:
        """``rows`` (ROW_COLUMNS) as job_search rows docid ``first``, ``first + 1``, ...
        (written out, or left to AUTOINCREMENT), each naming its facets' row, and
        their FTS5 documents."""
        ids = facet_ids(conn, dict.fromkeys(row[_NARROW:] for row in rows))  # in order of first use
        narrow = (*ROW_COLUMNS[:_NARROW], "facets_id")
        if docids:
            conn.exec_driver_sql(
                f"INSERT INTO job_search (docid, {', '.join(narrow)}) VALUES (?{', ?' * len(narrow)})",
                [(docid, *row[:_NARROW], ids[row[_NARROW:]]) for docid, row in enumerate(rows, first)],
            )
        else:
            conn.exec_driver_sql(
                f"INSERT INTO job_search ({', '.join(narrow)}) VALUES (?{', ?' * (len(narrow) - 1)})",
                [(*row[:_NARROW], ids[row[_NARROW:]]) for row in rows],
            )
        docs = [(docid, text) for docid, text in enumerate(fts, first) if text]
        if docs:
            conn.exec_driver_sql("INSERT INTO job_search_fts (rowid, doc) VALUES (?, ?)", docs)

    def match_value(self, conn: Connection, query: SearchQuery, probes: bool = False) -> str:
        return fts5_match(query, self.expansions(conn, query) if probes else None, self.grams(conn))

    _grams_table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_search_grams'"

    def expansions(self, conn: Connection, query: SearchQuery) -> dict[Term, tuple[str, ...]]:
        # The vocabulary of job_search_fts, one row per indexed word with its document
        # count (fts5vocab 'row': a temp table of the connection, no migration, nothing
        # stored), read by an index range (its xBestIndex takes term >= / <). fts5vocab
        # counts each listed word's documents by reading its doclist, so a read costs
        # about one FTS5 query of the prefix: it is kept per connection under the data
        # version (as totals are), and read again after any write. Read in the
        # caller's snapshot: the words of the committed documents its MATCH sees. A
        # word of deleted (or orphaned) documents may still be listed: it matches
        # nothing visible, as under the prefix form.
        terms = sorted({t for t in query.terms if expandable(t)}, key=lambda t: t.words)
        if not terms:
            return {}
        info = conn.connection.info
        kept = info.get("search_vocab")
        if kept is None:
            kept = info["search_vocab"] = KeptValues(256)
        version = self.data_version(conn)
        found = {}
        for term in terms:
            prefix = term.words[0]
            key = (version, prefix, PREFIX_EXPANSION_MAX, PREFIX_DOCS_PER_WORD, PREFIX_EXPANSION_MIN_LENGTH)
            words = kept.get(key)
            if words is None:
                words = self._expansion(conn, prefix)
                kept.put(key, words)
            if words:
                found[term] = words
        return found

    @staticmethod
    def _expansion(conn: Connection, prefix: str) -> tuple[str, ...]:
        """The indexed words starting with ``prefix`` if their OR is cheaper for FTS5
        than the prefix (``PREFIX_EXPANSION_MAX``, ``PREFIX_DOCS_PER_WORD``), else ()."""
        if len(prefix) < PREFIX_EXPANSION_MIN_LENGTH:
            return ()
        try:
            conn.exec_driver_sql(_SQLITE_VOCAB)
            rows = conn.exec_driver_sql(
                _SQLITE_VOCAB_RANGE, (prefix, prefix + _LAST_CHAR, PREFIX_EXPANSION_MAX + 1)
            ).fetchall()
        except OperationalError:  # no temp table allowed here (PRAGMA query_only): the prefix form
            return ()
        listed = [(w, docs) for w, docs in rows if w.startswith(prefix)]
        if not 0 < len(listed) <= PREFIX_EXPANSION_MAX:
            return ()
        if sum(docs for _, docs in listed) < PREFIX_DOCS_PER_WORD * len(listed):
            return ()
        return tuple(w for w, _ in listed)

    def costs_of(self, query: ListQuery) -> PlanCosts:
        """The timeline's costs for ``query`` (``select_page``'s three walks)."""
        if query.sort_by != "created_at":
            return SQLITE_PROBED
        if query.workflow_id is not None or query.source is not None:
            return SQLITE_JOINED_WALK
        return SQLITE_COSTS

    # CROSS JOIN: SQLite keeps this join order (it could otherwise run the full-text
    # query once per job of some other index).
    # job_search holds every column a count or a matches-first page reads, and no
    # more (revision 0014_search_facets): a narrow row per match, read by its rowid
    # (NOT INDEXED: no index of it is walked instead).
    matches_from = "job_search_fts CROSS JOIN job_search AS s NOT INDEXED ON s.docid = job_search_fts.rowid"
    match_condition = "job_search_fts MATCH :m"

    def probe_sql(self) -> str:
        return (
            "EXISTS (SELECT 1 FROM job_search AS s JOIN job_search_fts ON job_search_fts.rowid = s.docid "
            "WHERE s.job_id = jobs.id AND job_search_fts MATCH :m)"
        )

    def count_unfiltered(self, conn: Connection, values: dict) -> int | None:
        # Without filters, FTS5 counts alone (~0.07 us per match against ~2 us for
        # a job_search row each), less the orphans that match (revision
        # 0009_search_narrow): each costs one FTS5 probe, so with many of them
        # (other SQL deleted many jobs) the join counts instead.
        orphans = conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM job_search_orphans LIMIT {ORPHAN_PROBES + 1})"
        )
        if orphans.scalar_one() > ORPHAN_PROBES:
            return None
        return int(_run(conn, _SQLITE_UNFILTERED_COUNT, values).scalar_one())

    def totals(self, conn: Connection) -> TotalsCache | None:
        # SQLite's data version is the connection's own: one cache per connection
        # (the pool's connections live as long as the engine).
        info = conn.connection.info
        cache = info.get("search_totals")
        if cache is None:
            size = totals_cache_size()
            if not size:
                return None
            cache = info["search_totals"] = TotalsCache(size)
        return cache

    def data_version(self, conn: Connection) -> object | None:
        # ``PRAGMA data_version`` changes when another connection has committed since
        # this connection's previous read (it is read in the current read transaction:
        # the version of its snapshot); ``total_changes()`` counts this connection's
        # own writes, which data_version does not see.
        return tuple(conn.exec_driver_sql(_SQLITE_VERSION).one())


# The docid of the next job_search row (an aggregate: always one row).
_SQLITE_NEXT_DOCID = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'job_search'), 0), "
    "coalesce((SELECT max(docid) FROM job_search), 0)) + 1"
)
_SQLITE_VERSION = "SELECT data_version, total_changes() FROM pragma_data_version"

# Prefix expansion (SQLite): a prefix term of one word (``jugg*``) is written as the
# OR of the indexed words starting with it when there are at most this many; with
# more, it keeps FTS5's prefix form (which merges their doclists on every query).
# A FTS5 prefix query first merges the doclists of every word starting with the
# prefix, whatever rowid range it is asked for (~1 ms per 15k postings:
# ``jugg*`` ~1 ms at 200k jobs, ~11 ms at 1M, for each range query of the batched
# timeline); the OR of the words seeks each word's doclist to the range (~35 us a
# word per range query) but costs more per match when it has many words (FTS5 finds
# the next match among all of them: 0.5 s to count 150k matches of 1,000 words).
# So a prefix is expanded for the timeline's probes (``_values``) only when it
# stands for at most PREFIX_EXPANSION_MAX words that hold PREFIX_DOCS_PER_WORD
# documents a word or more; counts and matches-first pages keep the prefix form.
PREFIX_EXPANSION_MAX = 64
PREFIX_DOCS_PER_WORD = 500
PREFIX_EXPANSION_MIN_LENGTH = 2  # one letter: always more words than the cap, some very common
_SQLITE_VOCAB = "CREATE VIRTUAL TABLE IF NOT EXISTS temp.job_search_vocab USING fts5vocab(main, job_search_fts, 'row')"
_SQLITE_VOCAB_RANGE = "SELECT term, doc FROM temp.job_search_vocab WHERE term >= ? AND term < ? LIMIT ?"
# Above every letter or digit: ``prefix + _LAST_CHAR`` bounds the words starting with
# ``prefix`` (SQLite compares text as UTF-8 bytes, in code point order, as FTS5 sorts).
_LAST_CHAR = "\U0010ffff"


# The matching documents less the matching orphans (documents whose job_search row
# went by other SQL): ORPHAN_PROBES at most, one FTS5 probe (rowid = and MATCH) each.
ORPHAN_PROBES = 64
_SQLITE_UNFILTERED_COUNT = (
    "SELECT (SELECT count(*) FROM job_search_fts WHERE job_search_fts MATCH :m) - "
    "(SELECT count(*) FROM job_search_orphans AS o CROSS JOIN job_search_fts "
    "ON job_search_fts.rowid = o.docid WHERE job_search_fts MATCH :m)"
)


class PostgresStore(SearchStore):
    dialect = "postgresql"
    costs = POSTGRES_COSTS

    def forget(self, conn: Connection, ids: Sequence[str]) -> None:
        if ids:
            conn.exec_driver_sql("DELETE FROM job_search WHERE job_id = ANY(%s)", (list(ids),))

    def add(self, conn: Connection, records: Sequence, sources: dict | None = None) -> None:
        if not records:
            return
        columns: list[list] = [[] for _ in range(len(ROW_COLUMNS) + 1)]
        for record in records:
            doc = _document(record)
            for column, value in zip(columns, (*_row_values(record, doc, sources), doc.tsvector_text()), strict=True):
                column.append(value)
        types = ["text", "bigint", "bigint", "text", "text", "text", "text", "text", "text", "text"]
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        names = ", ".join(f"c{i}" for i in range(len(types)))
        picked = ", ".join(f"c{i}" for i in range(len(types) - 1))
        conn.exec_driver_sql(
            f"INSERT INTO job_search ({', '.join(ROW_COLUMNS)}, doc) "
            f"SELECT {picked}, c{len(types) - 1}::tsvector FROM unnest({arrays}) AS u({names})",
            tuple(columns),
        )

    COPY_COLUMNS = (*ROW_COLUMNS, "doc")
    # PostgreSQL types of COPY_COLUMNS, for a binary COPY (``write_queries.copy_rows``)
    COPY_TYPES = ("text", "bigint", "bigint", "text", "text", "text", "text", "text", "text", "tsvector")

    def copy_rows(self, records: Sequence, encoding: str = "utf-8") -> list[tuple]:
        """``add``'s rows for a bulk load's binary ``COPY`` (``write_queries.copy_new``),
        in ``COPY_COLUMNS`` order; ``doc`` in the tsvector's binary form, its lexemes in
        the connection's ``encoding`` (``Document.tsvector_binary``: the server reads it
        for half the CPU of the literal, ``benchmarks/results/pg-import-*-i16pgi.md``)."""
        rows = []
        for record in records:
            doc = _document(record)
            rows.append((*_row_values(record, doc, None), doc.tsvector_binary(encoding)))
        return rows

    def match_value(self, conn: Connection, query: SearchQuery, probes: bool = False) -> str:
        # A prefix keeps ``:*``: PostgreSQL has no cheap vocabulary (``ts_stat`` reads
        # every tsvector), and its probe costs no more with a prefix (POSTGRES_COSTS).
        return tsquery(query, self.grams(conn))

    _grams_table = "SELECT to_regclass('job_search_grams')"

    matches_from = "job_search AS s"
    match_condition = "s.doc @@ CAST(:m AS tsquery)"

    def probe_sql(self) -> str:
        # A scalar subquery, so the planner tests each walked job (it cannot turn the
        # test into a join that reads every match first).
        return "(SELECT s.doc @@ CAST(:m AS tsquery) FROM job_search AS s WHERE s.job_id = jobs.id)"

    def run_matching(self, conn: Connection, sql: str, values: dict) -> list:
        # The planner prices ``doc @@ query`` on a sequential scan at one operator
        # call per row, not the detoasting and decompressing of every ~1.5 KB
        # tsvector it costs: for a common term it reads the whole table (0.5-1.3 s
        # at 100k jobs) where the GIN bitmap takes 3-8x less. Sequential scans are
        # off for the rest of this read transaction (SET LOCAL: one round trip per
        # transaction, not two per statement; the listing's other statements there
        # read job_counts and B-tree ranges, which no sequential scan serves better).
        transaction = conn.get_transaction()
        if transaction is None or transaction not in _SEQSCAN_OFF:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # (begins one if none has)
            _SEQSCAN_OFF.add(conn.get_transaction())
        return _run(conn, sql, values).fetchall()

    def totals(self, conn: Connection) -> TotalsCache | None:
        # A snapshot is the same on every connection of the cluster: one cache per
        # engine (a database and search_path), shared by its connections.
        cache = _PG_TOTALS.get(conn.engine)
        if cache is None:
            size = totals_cache_size()
            if not size:
                return None
            cache = _PG_TOTALS.setdefault(conn.engine, TotalsCache(size))
        return cache

    def data_version(self, conn: Connection) -> object | None:
        # Two equal snapshots (xmin:xmax:in-progress xids) see the same committed rows;
        # a read at REPEATABLE READ reads this one for all its statements. Not in a
        # transaction that wrote (its own writes are not in the snapshot's text), nor
        # outside REPEATABLE READ (each statement would take its own snapshot).
        snapshot, wrote, isolation = conn.exec_driver_sql(
            "SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned() IS NOT NULL, "
            "current_setting('transaction_isolation')"
        ).one()
        if isolation not in ("repeatable read", "serializable"):
            return None
        return None if wrote else snapshot


_PG_TOTALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# The transactions in which run_matching turned sequential scans off (weak: a
# transaction that ends leaves the set, and no connection is kept alive by it).
_SEQSCAN_OFF: weakref.WeakSet = weakref.WeakSet()


_STORES = {"sqlite": SqliteStore(), "postgresql": PostgresStore()}


def store(conn: Connection) -> SearchStore:
    return _STORES[conn.dialect.name]


# -- listings ------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    dialect: str
    plan: str  # "matches" or "timeline"
    sort_by: str
    descending: bool
    statuses: int  # 0: every status (no condition)
    workflow: bool
    source: bool
    after: bool
    limit: bool
    offset: bool
    since: bool = False  # the time range (``since``/``until``) on create_time
    until: bool = False


def _merged(shape: _Shape) -> bool:
    """A timeline that walks one seek per status, merged (as ``queries`` lists them):
    a workflow's or a source's jobs, or jobs by duration, of more than one status
    (their indexes start with the filter and the status: ``_timeline_index``)."""
    return shape.statuses != 1 and (shape.workflow or shape.source or shape.sort_by != "created_at")


def _arm_count(shape: _Shape) -> int:
    """The merged walk's arms: one per listed status (every status: ``STATUS_VALUES``)."""
    return shape.statuses or len(schema.STATUS_VALUES)


def _timeline_index(shape: _Shape) -> str:
    """The index a timeline walk reads (``walked_query`` counts its jobs): with one
    status (or one arm of a merged walk, ``_merged``), the status's own range, so that
    no job of another status is read."""
    if shape.sort_by != "created_at":  # by duration: the workflow and source are filtered
        return schema.IX_STATUS_DURATION
    if shape.workflow:
        return schema.IX_WORKFLOW_STATUS
    if shape.source:
        return schema.IX_SOURCE_STATUS
    return schema.IX_STATUS_CREATE_TIME if shape.statuses == 1 else schema.IX_CREATE_TIME


def _filters(shape: _Shape, table: str, arm: int | None = None) -> list[str]:
    """The listing's filters on ``table`` (``jobs``, or ``s``: job_search's copies);
    ``arm``: one arm of a merged walk, whose status is ``:s{arm}``."""
    where = []
    if arm is not None:
        where.append(f"{table}.status = :s{arm}")
    elif shape.statuses:
        where.append(f"{table}.status IN ({', '.join(f':s{i}' for i in range(shape.statuses))})")
    if shape.workflow:
        where.append(f"{table}.workflow_id = :workflow")
    if shape.source:
        where.append(f"{table}.source = :source")
    if shape.since:
        where.append(f"{table}.create_time >= :since")
    if shape.until:
        where.append(f"{table}.create_time < :until")
    return where


def _order_tail(shape: _Shape, table: str, id_column: str) -> tuple[str, list[str]]:
    """(ORDER BY ... LIMIT ... OFFSET ..., [keyset condition]) on ``table``'s columns."""
    sort = _sort_sql(shape, table)
    direction = "DESC" if shape.descending else "ASC"
    where = []
    if shape.after:
        where.append(f"({sort}, {id_column}) {'<' if shape.descending else '>'} (:after_value, :after_id)")
    return f" ORDER BY {sort} {direction}, {id_column} {direction}{_limits(shape)}", where


def _limits(shape: _Shape) -> str:
    """`` LIMIT :limit OFFSET :offset``, as the shape has them."""
    tail = " LIMIT :limit" if shape.limit else ""
    if shape.offset:
        tail += " OFFSET :offset" if shape.limit or shape.dialect == "postgresql" else " LIMIT -1 OFFSET :offset"
    return tail


def _sort_sql(shape: _Shape, table: str) -> str:
    return f"{table}.create_time" if shape.sort_by == "created_at" else f"{table}.execution_duration"


def _merged_walk(shape: _Shape, select: str, where: list[str], window: str | None, tail: str) -> str:
    """The arms of a merged walk (``_merged``), one per status, each ``SELECT
    {select} FROM jobs`` on its status's range with ``where``, merged in the
    listing's order; ``tail``: the merge's LIMIT / OFFSET. Each arm is read only as
    far as the merge takes rows from it: SQLite merges a compound SELECT by its ORDER
    BY (each arm a co-routine walking its index in that order); PostgreSQL needs each
    arm ordered and LIMIT-ed (``window``) to plan a Merge Append of index scans."""
    direction = "DESC" if shape.descending else "ASC"
    order = f" ORDER BY w_key {direction}, w_id {direction}"
    sort = _sort_sql(shape, "jobs")
    arms = []
    for arm in range(_arm_count(shape)):
        conditions = " AND ".join([*_filters(shape, "jobs", arm), *where])
        if shape.dialect == "sqlite":
            arms.append(f"SELECT {select} FROM jobs INDEXED BY {_timeline_index(shape)} WHERE {conditions}")
        else:
            limit = f" LIMIT {window}" if window else ""
            arms.append(
                f"(SELECT {select} FROM jobs WHERE {conditions} "
                f"ORDER BY {sort} {direction}, jobs.id {direction}{limit})"
            )
    return " UNION ALL ".join(arms) + order + tail


@lru_cache(maxsize=512)
def _page_sql(shape: _Shape) -> str:
    search = _STORES[shape.dialect]
    columns = page_columns_sql(shape.dialect)
    direction = "DESC" if shape.descending else "ASC"
    join = "CROSS JOIN" if shape.dialect == "sqlite" else "JOIN"
    if shape.plan == "timeline" and _merged(shape):
        _, keyset = _order_tail(shape, "jobs", "jobs.id")
        window = ":window" if shape.limit else None  # the rows an arm may add to the page and its offset
        keys = f"jobs.id AS w_id, {_sort_sql(shape, 'jobs')} AS w_key"
        winners = _merged_walk(shape, keys, [*keyset, search.probe_sql()], window, _limits(shape))
        return (
            f"SELECT {columns} FROM ({winners}) AS w {join} jobs ON jobs.id = w.w_id "
            f"ORDER BY w.w_key {direction}, w.w_id {direction}"
        )
    if shape.plan == "timeline":
        tail, keyset = _order_tail(shape, "jobs", "jobs.id")
        where = [*_filters(shape, "jobs"), *keyset, search.probe_sql()]
        hint = f" INDEXED BY {_timeline_index(shape)}" if shape.dialect == "sqlite" else ""
        return f"SELECT {columns} FROM jobs{hint} WHERE {' AND '.join(where)}{tail}"
    # Matches first: filtered and sorted on job_search's copies of the listing
    # columns (small rows, no jobs row read per match); only the page's winners are
    # then read from jobs and rendered.
    tail, keyset = _order_tail(shape, "s", "s.job_id")
    where = [search.match_condition, *_filters(shape, "s"), *keyset]
    keys = f"s.job_id AS w_id, {_sort_sql(shape, 's')} AS w_key"
    winners = f"SELECT {keys} FROM {search.matches_from} WHERE {' AND '.join(where)}{tail}"
    return (
        f"SELECT {columns} FROM ({winners}) AS w {join} jobs ON jobs.id = w.w_id "
        f"ORDER BY w.w_key {direction}, w.w_id {direction}"
    )


@lru_cache(maxsize=64)
def _count_sql(
    dialect: str, statuses: int, workflow: bool, source: bool, since: bool = False, until: bool = False
) -> str:
    search = _STORES[dialect]
    shape = _Shape(
        dialect, "matches", "created_at", True, statuses, workflow, source, False, False, False, since, until
    )
    where = [search.match_condition, *_filters(shape, "s")]
    return f"SELECT count(*) FROM {search.matches_from} WHERE {' AND '.join(where)}"


def _values(conn: Connection, query: ListQuery, probes: bool = False) -> dict:
    """The statement's parameters; ``probes``: ``:m`` for the timeline's probes (its
    prefixes expanded where that is cheaper, ``SearchStore.expansions``)."""
    search = query.search
    assert search is not None, "a search listing"
    values: dict[str, object] = {
        "m": store(conn).match_value(conn, search, probes),
        "workflow": column_text(query.workflow_id),
        "source": query.source,
    }
    if query.time_bounded:
        values.update(since=query.since, until=query.until)
    if not query.all_statuses:
        values.update({f"s{i}": s for i, s in enumerate(query.statuses)})
    return values


def _run(conn: Connection, sql: str, values: dict):
    """Run SQL text written with ``:name`` parameters (psycopg takes ``%(name)s``)."""
    if conn.dialect.name == "postgresql":
        sql = _pg_text(sql)
    return conn.exec_driver_sql(sql, values)


@lru_cache(maxsize=1024)
def _pg_text(sql: str) -> str:
    return re.sub(r"(?<![:\w]):([a-z_][a-z_0-9]*)", r"%(\1)s", sql)


def count_matches(conn: Connection, query: ListQuery) -> int:
    """The exact number of jobs matching ``query.search`` and its filters.

    Counting costs every match (0.1-1 us each: tens of ms for a common word at 1M
    jobs), and a cursor walk, a refreshed page or the next page asks the same count
    again. A count is kept (``TotalsCache``) under the data version of the snapshot
    it was read from (``SearchStore.data_version``): any write, by jobs-index or by
    other SQL, changes the version, so a kept count is only ever answered for the
    very data it counted."""
    if not query.statuses or unmatchable(conn, column_text(query.workflow_id), query.source):
        return 0
    values = _values(conn, query)
    search = store(conn)
    cache = search.totals(conn)
    version = search.data_version(conn) if cache is not None else None
    key = (version, tuple(sorted(values.items())))
    if version is not None and cache is not None:
        found = cache.get(key)
        if found is not None:
            return found
    total = _count(conn, query, values)
    if version is not None and cache is not None:
        cache.put(key, total)
    return total


def _count(conn: Connection, query: ListQuery, values: dict) -> int:
    unfiltered = query.workflow_id is None and query.source is None and query.since is None and query.until is None
    if query.all_statuses and unfiltered:
        found = store(conn).count_unfiltered(conn, values)
        if found is not None:
            return found
    sql = _count_sql(
        conn.dialect.name,
        0 if query.all_statuses else len(query.statuses),
        query.workflow_id is not None,
        query.source is not None,
        query.since is not None,
        query.until is not None,
    )
    return int(store(conn).run_matching(conn, sql, values)[0][0])


def expansions(conn: Connection, query: ListQuery) -> dict[Term, tuple[str, ...]]:
    """The prefix terms of ``query`` the timeline's probes expand, with their words
    (for ``choose_plan``)."""
    assert query.search is not None, "a search listing"
    return store(conn).expansions(conn, query.search)


def choose_plan(
    query: ListQuery,
    total: int,
    want: int,
    walked: int,
    filtered: int,
    everything: int,
    dialect: str = "sqlite",
    expanded: Mapping[Term, Sequence[str]] | None = None,
) -> str:
    """``matches`` or ``timeline`` for a page of ``want`` rows (limit + offset).

    ``total``: the matches passing the filters; ``walked``: the jobs in the index
    range a timeline walk reads; ``filtered`` / ``everything``: the jobs passing the
    filters / all jobs (``job_counts``). Matches first reads every match of the
    words before the filters apply (estimated as ``total`` scaled by how much the
    filters keep); timeline first reads about ``want * walked / total`` jobs and
    tests those passing the filters (a share ``filtered / walked`` of them), each
    test costing more the more words (and, on SQLite, prefixes) the query has.
    ``expanded`` (``expansions``): a prefix the probes write as the OR of its words
    costs as many words as it has, up to what the prefix would cost."""
    if total == 0 or walked == 0:
        return "matches"
    scanned = total * everything / filtered if 0 < filtered < everything else total
    assert query.search is not None, "the plan of a search listing (JobStream asks only for one)"
    costs = _STORES[dialect].costs_of(query)
    read = min(walked, want * walked / total)
    probes = read * min(1.0, filtered / walked) if filtered else read
    terms = query.search.terms
    expanded = expanded or {}
    # A phrase of two common words is one gram (``search.gram_alone``): priced as a word.
    words = sum(
        min(len(expanded[t]), costs.prefix) if t in expanded else 1 if gram_alone(t) else len(t.words) for t in terms
    )
    prefixed = any(t.prefix and t not in expanded for t in terms)
    probe = costs.probe * words * (costs.prefix if prefixed else 1)
    return "timeline" if read * costs.walk + probes * probe < scanned else "matches"


def walked_query(query: ListQuery, dialect: str = "sqlite") -> ListQuery:
    """The listing whose jobs a timeline-first plan walks: the index's own filter
    (``_timeline_index``: a workflow's or source's jobs by creation time and jobs by
    duration, of the listed statuses, one seek per status; SQLite without a workflow
    or source filter: every search row, ``_walk_sql``)."""
    if query.sort_by == "created_at" and query.workflow_id is None and query.source is None:
        one = len(query.statuses) == 1 and not query.all_statuses and dialect != "sqlite"
        return ListQuery(statuses=query.statuses if one else ListQuery().statuses)
    by_time = query.sort_by == "created_at"
    return ListQuery(
        statuses=query.statuses,
        workflow_id=query.workflow_id if by_time else None,
        source=query.source if by_time and query.workflow_id is None else None,
    )


def select_page(
    conn: Connection, query: ListQuery, *, plan: str, limit: int | None, offset: int = 0, after: Position | None = None
) -> list[tuple]:
    """Up to ``limit`` rows (``queries.page_columns``) of a search listing, skipping
    ``offset`` rows or starting ``after`` (as ``queries.select_page``)."""
    start = page_start(conn, query, limit, offset, after)
    if start is False:
        return []
    after = start
    shape = _Shape(
        conn.dialect.name,
        plan,
        query.sort_by,
        query.descending,
        0 if query.all_statuses else len(query.statuses),
        query.workflow_id is not None,
        query.source is not None,
        after is not None,
        limit is not None,
        bool(offset),
        query.since is not None,
        query.until is not None,
    )
    values = _values(conn, query, probes=plan == "timeline")
    values.update(limit=limit, offset=offset)
    if plan == "timeline" and _merged(shape):
        if not shape.statuses:  # one arm per status
            values.update({f"s{i}": status for i, status in enumerate(schema.STATUS_VALUES)})
        if limit is not None:
            values.update(window=limit + offset)
    if after is not None:
        values.update(after_value=after.value, after_id=after.id)
    if plan == "matches":
        return store(conn).run_matching(conn, _page_sql(shape), values)
    if shape.dialect == "sqlite" and shape.sort_by == "created_at" and limit is not None:
        return _timeline_batched(conn, shape, values, limit, offset)
    return _run(conn, _page_sql(shape), values).fetchall()


# The batched timeline (SQLite): jobs walked this many at a time at first, then twice
# as many each batch up to TIMELINE_BATCH_MAX; a batch's docids are tested by one FTS5
# query per run of docids no more than TIMELINE_GAP apart.
TIMELINE_BATCH_MIN, TIMELINE_BATCH_MAX, TIMELINE_GAP = 64, 4096, 512


@lru_cache(maxsize=256)
def _walk_sql(shape: _Shape) -> str:
    """A batch of the timeline: the next jobs with search rows, in the listing's
    order, with their docids. Without a workflow or source filter, from
    ``ix_job_search_timeline`` (revision 0011_search_timeline: sort key, id, status
    and docid in one index, on job_search's copies of the listing columns, as the
    matches-first plan reads them); with one, the listing's own ``jobs`` index (one
    seek per status, merged, unless one status is listed: ``_merged_walk``) and each
    job's docid looked up (a jobs row without a search row cannot match)."""
    if not shape.workflow and not shape.source:
        tail, keyset = _order_tail(replace(shape, limit=True, offset=False), "s", "s.job_id")
        where = [*_filters(shape, "s"), *keyset]
        return (
            f"SELECT s.job_id, s.create_time, s.docid FROM job_search AS s INDEXED BY {SQLITE_TIMELINE_INDEX}"
            f"{' WHERE ' + ' AND '.join(where) if where else ''}{tail}"
        )
    batch = replace(shape, limit=True, offset=False)
    tail, keyset = _order_tail(batch, "jobs", "jobs.id")
    if _merged(shape):
        keys = (
            "jobs.id AS w_id, jobs.create_time AS w_key, (SELECT s.docid FROM job_search AS s WHERE s.job_id = jobs.id)"
        )
        return _merged_walk(batch, keys, keyset, None, " LIMIT :limit")
    where = [*_filters(shape, "jobs"), *keyset]
    return (
        f"SELECT jobs.id, jobs.create_time, s.docid FROM jobs INDEXED BY {_timeline_index(shape)} "
        f"LEFT JOIN job_search AS s ON s.job_id = jobs.id{' WHERE ' + ' AND '.join(where) if where else ''}{tail}"
    )


SQLITE_TIMELINE_INDEX = "ix_job_search_timeline"


_FTS5_RANGE = "SELECT rowid FROM job_search_fts WHERE job_search_fts MATCH ? AND rowid BETWEEN ? AND ?"


def _timeline_batched(conn: Connection, shape: _Shape, values: dict, limit: int, offset: int) -> list:
    """The timeline-first page on SQLite: the listing's index walked in batches, each
    batch's jobs tested by a few FTS5 queries over its docid ranges (jobs imported
    together have neighbouring docids) instead of one FTS5 query per job (~80 us
    each for one word, ~250 us for two: the query is parsed and its doclists opened
    every time). The same jobs, in the same order, as ``_page_sql``'s timeline."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    need, found = offset + limit, list[str]()
    batch = max(TIMELINE_BATCH_MIN, 4 * need)
    step = dict(values)
    walk = _walk_sql(shape)  # the first batch starts where the page does
    while len(found) < need:
        step["limit"] = min(batch, TIMELINE_BATCH_MAX)
        # The driver's own cursor (sqlite3 binds ``:name`` from the dict): a deep or
        # sparse page walks thousands of jobs, and SQLAlchemy's result rows cost
        # 1-6 us each: 16k jobs of ix_job_search_timeline at 1M jobs, 36-104 ms
        # through SQLAlchemy against 18-26 ms on the driver, at load ~5).
        rows = raw.execute(walk, step).fetchall()
        if not rows:
            break
        docids = sorted(row[2] for row in rows if row[2] is not None)
        matching: set[int] = set()
        start = 0
        for i in range(1, len(docids) + 1):
            if i == len(docids) or docids[i] - docids[i - 1] > TIMELINE_GAP:
                matching.update(
                    r[0] for r in raw.execute(_FTS5_RANGE, (values["m"], docids[start], docids[i - 1])).fetchall()
                )
                start = i
        found += [row[0] for row in rows if row[2] in matching]
        if len(rows) < step["limit"]:
            break
        step.update(after_value=rows[-1][1], after_id=rows[-1][0])  # the next batch: after the last job walked
        walk = _walk_sql(replace(shape, after=True))
        batch *= 2
    ids = found[offset:need]
    if not ids:
        return []
    direction = "DESC" if shape.descending else "ASC"
    return list(
        conn.exec_driver_sql(
            f"SELECT {page_columns_sql('sqlite')} FROM jobs WHERE jobs.id IN ({', '.join('?' * len(ids))}) "
            f"ORDER BY jobs.create_time {direction}, jobs.id {direction}",
            tuple(ids),
        ).fetchall()
    )


def job_details(conn: Connection, ids: Sequence[str]) -> dict[str, tuple]:
    """``{id: (source, raw_kind, raw, raw_dict_id, first output file name or None)}`` of ``ids``
    (for showing search hits): ComfyUI's ids in and out (``normalize.column_text``)."""
    found: dict[str, tuple] = {}
    pg = conn.dialect.name == "postgresql"
    for start in range(0, len(ids), SQLITE_IN_CHUNK):
        chunk = [column_text(job_id) for job_id in ids[start : start + SQLITE_IN_CHUNK]]
        condition = "= ANY(%s)" if pg else f"IN ({', '.join('?' * len(chunk))})"
        sql = (
            "SELECT j.id, j.source, j.raw_kind, j.raw, j.raw_dict_id, (SELECT o.filename FROM job_outputs AS o "
            "WHERE o.job_id = j.id ORDER BY o.ordinal LIMIT 1) FROM jobs AS j WHERE j.id " + condition
        )
        for row in conn.exec_driver_sql(sql, (chunk,) if pg else tuple(chunk)):
            found[answer_text(row[0])] = tuple(row[1:])
    return found
