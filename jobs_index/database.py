"""Engines, connection settings and migrations.

* URL: ``--db`` → ``JOBS_INDEX_DB`` → ``<user data dir>/jobs-index/jobs.sqlite3``.
* SQLite: WAL, ``synchronous=NORMAL``, a busy timeout, and ``BEGIN IMMEDIATE`` for
  writers (``write_transaction``), so two writers queue instead of failing mid-way.
* PostgreSQL (psycopg 3): server-side prepared statements are off and every plan is
  a custom plan, so a rare-status query can never be served by a generic plan that
  walks the whole ``(create_time, id)`` index; reads run at REPEATABLE READ so a
  page and its ``total`` come from one snapshot.
* ``migrate``: upgrades to head on open; a file database that needs an upgrade is
  backed up first (``<file>.bak-<revision>``) with SQLite's online backup API.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from .config import APP_NAME, ENV_VAR, default_sqlite_path, resolve_url  # noqa: F401 (re-exported)
from .errors import ConfigError, StorageError

log = logging.getLogger(__name__)

VERSION_TABLE = "jobs_index_alembic_version"
PG_CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
PG_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")  # all served by psycopg 3


def driver_message(exc: BaseException) -> str:
    """A driver error as one line (libpq messages span several)."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


class _HintingSQLiteCompiler(SQLiteCompiler):
    """SQLAlchemy drops table hints on SQLite; render them, so ``with_hint(jobs,
    "INDEXED BY ix_...", "sqlite")`` pins a query plan (used by ``queries``)."""

    def get_from_hint_text(self, table, text):
        return text


def _setup_sqlite(engine: Engine) -> None:
    engine.dialect.statement_compiler = _HintingSQLiteCompiler

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode is not None:  # None: statements run on their own (``read_statement``)
            conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine with jobs-index's connection settings (no migration; see ``open_engine``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a non-numeric port
        shown = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)  # never echo a password
        raise ConfigError(f"not a database URL: {shown!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend in ("sqlite", "postgresql") and parsed.drivername not in SQLITE_DRIVERS + PG_DRIVERS:
        raise ConfigError(f"unsupported database driver {parsed.drivername!r}: "
                          "use sqlite:/// or postgresql+psycopg://")
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the directory of {path}: {exc.strerror}") from exc
        engine = create_engine(
            url, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        _setup_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Keep any libpq options given in the URL (e.g. a search_path) and add ours.
        options = " ".join(filter(None, (parsed.query.get("options"), "-c plan_cache_mode=force_custom_plan")))
        parsed = parsed.difference_update_query(["options"])
        connect_args = {"prepare_threshold": None, "options": options, "application_name": APP_NAME}
        if "connect_timeout" not in parsed.query:  # fail fast on an unreachable host
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
        return create_engine(
            parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2,
            pool_pre_ping=True, connect_args=connect_args,
        )
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction: ``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL writers
    take one transaction-level advisory lock, a single consistent lock order that
    rules out deadlocks on the shared counter rows.

    PostgreSQL writers also go back to ``plan_cache_mode = auto`` for the
    transaction: forced custom plans are for listings; here they would only re-plan
    the counter trigger's statements and the foreign-key checks on every row
    (measured: ~40 % more server CPU per import). Our own statements are unnamed
    (no prepared statements), so they are custom-planned either way."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7250031), "
                                  "set_config('plan_cache_mode', 'auto', true)"))
            yield conn
    except OperationalError as exc:
        raise StorageError(f"database write failed: {driver_message(exc)}") from exc
    finally:
        conn.close()


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one snapshot (WAL read / REPEATABLE READ)."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn
    except OperationalError as exc:
        raise StorageError(f"database read failed: {driver_message(exc)}") from exc
    finally:
        conn.close()


@contextmanager
def read_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that are one statement each, with no BEGIN/COMMIT
    round trips: a single statement always reads one snapshot (SQLite autocommit
    mode; PostgreSQL autocommit, whose statements each take their own snapshot)."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        else:
            conn = conn.execution_options(sqlite_begin=None)
        yield conn
    except OperationalError as exc:
        raise StorageError(f"database read failed: {driver_message(exc)}") from exc
    finally:
        conn.close()


# -- migrations ----------------------------------------------------------------

def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    script_location = resources.files("jobs_index") / "migrations"
    if not script_location.is_dir():  # a source checkout without the package mapping
        script_location = Path(__file__).resolve().parent.parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def backup_sqlite(path: Path, suffix: str) -> Path:
    """Copy a live SQLite file consistently (online backup API). The copy is written
    under a temporary name and renamed when complete, so a process killed while
    copying never leaves a partial file under the backup's name."""
    target = path.with_name(f"{path.name}.bak-{suffix}")
    partial = target.with_name(f".{target.name}.partial")  # reused by the next backup if left
    source = sqlite3.connect(path)
    try:
        dest = sqlite3.connect(partial)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    os.replace(partial, target)
    return target


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade to ``revision`` atomically; back up a SQLite file first.

    Runs under the writers' lock, so two processes opening the same new database
    do not both create it. Returns the backup path, if one was made.
    """
    from alembic import command

    target = head_revision() if revision == "head" else revision
    try:
        with engine.connect() as conn:
            if current_revision(conn) == target:
                return None
    except DBAPIError as exc:  # unreachable server, bad credentials, unknown database...
        raise StorageError(f"cannot open database {_safe_url(engine)}: {driver_message(exc)}") from exc
    backup = None
    path = _sqlite_path(str(engine.url))
    try:
        with write_transaction(engine) as conn:
            current = current_revision(conn)
            if current == target:
                return None
            if current is not None and path is not None:
                backup = backup_sqlite(path, current)
                log.warning("upgrading %s from %s; backup at %s", path, current, backup)
            command.upgrade(alembic_config(conn), revision)
    except DBAPIError as exc:  # e.g. no right to create the tables
        raise StorageError(f"cannot upgrade database {_safe_url(engine)}: {driver_message(exc)}") from exc
    return str(backup) if backup else None


def open_engine(url: str | None, *, pool_size: int = 5, upgrade: bool = True) -> Engine:
    """Resolve the URL, create the engine and bring the schema to head."""
    engine = make_engine(resolve_url(url), pool_size=pool_size)
    if upgrade:
        try:
            migrate(engine)
        except StorageError:
            engine.dispose()
            raise
    return engine


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
