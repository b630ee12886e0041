"""Ad-hoc, read-only SQL over the index (``jobs-index sql``).

Read-only is enforced by the database connection, never by reading the SQL text:

* SQLite: a dedicated connection to the file opened with ``mode=ro`` (the engine
  refuses every write), ``PRAGMA query_only=ON`` (also refuses TEMP tables), and an
  authorizer that refuses ATTACH/DETACH (also used by ``VACUUM INTO``) and any
  PRAGMA other than a short list of read-only ones, or one given a value. The
  driver executes one statement only (``sqlite3`` raises on a second).
* PostgreSQL: a dedicated connection in a ``READ ONLY`` transaction whose snapshot
  is taken before the query runs (so ``SET TRANSACTION READ WRITE`` is refused), the
  query sent with the extended protocol (the server refuses several statements),
  and always rolled back. Read-only is not a privilege boundary: a superuser can
  still call functions with outside effects (``pg_terminate_backend``, ``dblink``);
  give untrusted users a role with SELECT only.

Rows are streamed (never all in memory); values are Python values from the driver.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, JobsIndexError
from .rawcodec import sqlite_raw_json


class SqlError(JobsIndexError):
    """The ad-hoc query was refused or failed."""

    status = 400


# PRAGMAs that only read. Any other PRAGMA, or one of these given a value, is refused.
# (``data_version`` is read by SQLite's FTS5 module itself: ``job_search_fts MATCH``.)
READ_PRAGMAS = frozenset(
    {
        "application_id",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "foreign_key_check",
        "foreign_key_list",
        "freelist_count",
        "function_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "journal_mode",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "quick_check",
        "schema_version",
        "table_info",
        "table_list",
        "table_xinfo",
        "user_version",
    }
)
# These take an argument that names what to read (a table, an index), not a new value.
PRAGMAS_WITH_ARGUMENT = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)


@dataclass
class QueryResult:
    """Column names and a one-pass iterator of row tuples."""

    columns: list[str]
    rows: Iterator[tuple]


def _sqlite_authorizer(refusals: list[str]):
    def authorize(action: int, arg1: Any, arg2: Any, _db: Any, _trigger: Any) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            refusals.append("ATTACH/DETACH (and VACUUM INTO) are not allowed in read-only SQL")
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA:
            name = str(arg1).lower()
            if name not in READ_PRAGMAS or (arg2 is not None and name not in PRAGMAS_WITH_ARGUMENT):
                refusals.append(f"PRAGMA {name} is not allowed in read-only SQL (only reading pragmas are)")
                return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


def _sqlite_rows(cursor: sqlite3.Cursor, refusals: list[str]) -> Iterator[tuple]:
    try:
        while batch := cursor.fetchmany(500):
            yield from batch
    except sqlite3.Error as exc:
        raise SqlError(_sqlite_message(exc, refusals)) from exc


def _sqlite_message(exc: Exception, refusals: list[str]) -> str:
    text = str(exc)
    if refusals and "user-defined function raised exception" in text:
        return f"SQL error: raw_json: {refusals[-1]}"
    if refusals:
        return f"refused: {refusals[-1]}"
    if "readonly database" in text or "read-only" in text:
        return f"refused: the query tries to write, and this connection is read-only ({text})"
    if "one statement at a time" in text:
        return "refused: one statement at a time (remove the second statement)"
    return f"SQL error: {text}"


@contextmanager
def sqlite_query(path: Path, sql: str) -> Iterator[QueryResult]:
    if not path.is_file():
        raise ConfigError(f"no index at {path}")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
    refusals: list[str] = []
    try:
        sqlite_raw_json(conn, refusals)  # raw_json(raw, raw_dict_id): docs/schema.md
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_sqlite_authorizer(refusals))
        try:
            cursor = conn.execute(sql)
        except (sqlite3.Error, sqlite3.Warning) as exc:  # Warning: several statements (Python < 3.12)
            raise SqlError(_sqlite_message(exc, refusals)) from exc
        columns = [d[0] for d in cursor.description or ()]
        yield QueryResult(columns, _sqlite_rows(cursor, refusals))
    finally:
        conn.close()


def _pg_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "read-only transaction" in text or "read-write mode" in text:
        return f"refused: the query tries to write, and this connection is read-only ({text})"
    if "multiple commands" in text:
        return "refused: one statement at a time (remove the second statement)"
    if "didn't produce a result" in text:
        return "refused: only statements that return rows are run (SELECT, WITH, VALUES, SHOW, EXPLAIN)"
    return f"SQL error: {text}"


@contextmanager
def postgresql_query(url: str, sql: str) -> Iterator[QueryResult]:
    import psycopg

    from .database import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        raw = engine.raw_connection()
    except Exception as exc:  # any driver error: one line for the user
        engine.dispose()
        raise SqlError(f"cannot connect: {getattr(exc, 'orig', exc)}") from exc
    pg = raw.driver_connection
    assert pg is not None, "a connection just opened has its driver connection"  # None once invalidated
    try:
        pg.rollback()
        pg.autocommit = False
        pg.read_only = True  # BEGIN READ ONLY
        cursor = pg.cursor()
        cursor.execute("SELECT 1")  # take the snapshot: read-write can no longer be switched on
        stream = cursor.stream(sql)  # extended protocol: one statement only
        try:
            first = next(stream, None)
        except psycopg.Error as exc:
            raise SqlError(_pg_message(exc)) from exc
        columns = [d.name for d in cursor.description or ()]

        def rows() -> Iterator[tuple]:
            if first is None:
                return
            yield first
            try:
                yield from stream
            except psycopg.Error as exc:
                raise SqlError(_pg_message(exc)) from exc

        yield QueryResult(columns, rows())
    finally:
        # Close without reuse: whatever the statement left behind (an open COPY, a
        # session setting) is discarded with the connection, and nothing is committed.
        raw.invalidate()
        engine.dispose()


@contextmanager
def readonly_query(url: str, sql: str) -> Iterator[QueryResult]:
    """Run one read-only statement against the index at ``url`` (SQLite or PostgreSQL)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if not sql.strip():
        raise SqlError("empty query")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("sql needs an index file, not an in-memory database")
        with sqlite_query(Path(parsed.database), sql) as result:
            yield result
    elif backend == "postgresql":
        with postgresql_query(url, sql) as result:
            yield result
    else:
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")
