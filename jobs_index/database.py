"""Engines, connection settings and migrations.

* URL: ``--db`` → ``JOBS_INDEX_DB`` → ``<user data dir>/jobs-index/jobs.sqlite3``.
* SQLite: WAL, ``synchronous=NORMAL``, a busy timeout, and ``BEGIN IMMEDIATE`` for
  writers (``write_transaction``), so two writers queue instead of failing mid-way.
* PostgreSQL (psycopg 3): a statement is custom-planned (planned for its values),
  so a rare-status query can never be served by a plan made for an average status,
  except a listing page whose plan cannot depend on its values (``PLANS``), which
  runs on a generic plan planned once per connection; a read statement run again on
  a connection is a server-side prepared statement (parsed once per connection;
  writers prepare nothing; ``?prepared_statements=off`` in the URL: none at all, and
  no generic plans; ``?generic_plans=off``: custom plans only, for a transaction-mode
  pooler); a page is one statement without BEGIN/COMMIT, and reads of several
  statements run at REPEATABLE READ so a page and its ``total`` come from one snapshot.
* ``migrate``: upgrades to head on open; a file database that needs an upgrade is
  backed up first (``<file>.bak-<revision>``) with SQLite's online backup API.
  A database at a revision this code does not know (written by a newer
  jobs-index) is refused first, before any lock or backup: ``DatabaseTooNew``.
  PostgreSQL, shared by a fleet, is created on open when empty but an older
  schema is upgraded only by ``jobs-index migrate`` or ``--auto-migrate`` /
  ``$JOBS_INDEX_AUTO_MIGRATE=1`` (else ``UpgradeRequired``): docs/postgresql.md.
  Migrations run in one transaction (``BEGIN IMMEDIATE`` on SQLite) with SQLite's
  foreign keys OFF (set before the transaction: the pragma is a no-op inside
  one), so a migration that rebuilds ``jobs`` cannot cascade into its side tables;
  ``PRAGMA foreign_key_check`` runs before the commit and fails the migration
  (rolled back) if any row lost its parent. ``migrations/rebuild.py``,
  docs/architecture.md "Migrations".
"""

from __future__ import annotations

import logging
import os
import re
import select
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, InvalidatePoolError, OperationalError

from .config import APP_NAME, AUTO_MIGRATE_ENV, ENV_VAR, default_sqlite_path, resolve_url  # noqa: F401 (re-exported)
from .errors import ConfigError, DatabaseTooNew, ForeignKeyViolation, ReadOnlyDatabase, StorageError, UpgradeRequired

log = logging.getLogger(__name__)

VERSION_TABLE = "jobs_index_alembic_version"
# PostgreSQL writers' lock (``write_transaction``): exclusive per schema (the schema
# holding the index, ``current_schema()``: two deployments in one database write at
# once), and shared on the key jobs-index up to 0.x took database-wide, so a writer of
# an older version still excludes every writer of this one (docs/postgresql.md).
WRITER_LOCK_KEY = 7250031
WRITER_LOCK_SQL = (
    f"pg_advisory_xact_lock_shared({WRITER_LOCK_KEY}), "
    f"pg_advisory_xact_lock({WRITER_LOCK_KEY}, hashtext(coalesce(current_schema(), '')))"
)
PG_CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
# PostgreSQL reads: psycopg prepares a statement on the server the second time a
# connection runs it (``prepare_threshold``), so the listing statements are parsed and
# analysed once per connection instead of on every page (issue 16: ~150 µs of server
# CPU of a ~450 µs page). ``plan_cache_mode=force_custom_plan`` still plans every
# execution for its values. Only read helpers switch it on, for their statements.
READ_PREPARE_THRESHOLD = 1
# Generic plans for the statements whose best plan does not depend on their values.
# A listing page whose every arm has one ordered index path (``queries``) runs with
# ``execution_options={PLANS: "generic"}``: by a read helper in autocommit
# (``read_statement``) with prepared reads on, it runs on a generic plan, planned
# once per connection instead of on every page (issue 16: planning was ~0.1 ms of a
# simple page and ~0.8 ms of a merged one). The session's ``plan_cache_mode`` is
# switched only when the kind of statement changes (``_PLAN_MODE``: one ``SET``
# round trip), so a run of pages costs nothing more. ``PLANS: "any"`` marks a lookup
# by key that is as good either way (a total, a page's sources): it runs in whatever
# mode the session is, so it never costs a switch. Every other statement is custom-
# planned as before: one in autocommit switches the session back first; a read
# transaction that finds the session generic sets ``force_custom_plan`` for itself
# (``_custom_plans``); writers and migrations set their own mode for themselves.
# Elsewhere (SQLite, ``prepared_statements=off``) the option changes nothing.
PLANS = "jobs_index_plans"
_PLAN_MODE = "jobs_index_plan_mode"  # in each pooled connection's info: "custom" or "generic"
_PLAN_CACHE_MODE = {"custom": "force_custom_plan", "generic": "force_generic_plan"}
PREPARED_PARAM = "prepared_statements"  # URL query: "off" for a pooler that cannot keep them
# URL query: "off" keeps every statement custom-planned and the session's mode never
# switched: for a transaction-mode pooler, which may run the next statement on a
# server connection whose session another client switched (docs/postgresql.md)
GENERIC_PARAM = "generic_plans"
_READ_PREPARE = "jobs_index_read_prepare_threshold"  # in each pooled connection's info
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
PG_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")  # all served by psycopg 3


def driver_message(exc: BaseException) -> str:
    """A driver error as one line (libpq messages span several)."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


# SQLSTATEs of a write refused because the connection may not write: 25006
# read_only_sql_transaction (a hot standby, default_transaction_read_only) and 42501
# insufficient_privilege (a read-only role).
READ_ONLY_SQLSTATES = ("25006", "42501")


def write_failure(exc: DBAPIError) -> StorageError | None:
    """The domain error for a writer's driver error, or None to let it pass: a write
    refused because the database is read-only for us is ``ReadOnlyDatabase``, any
    other operational failure (locked, disk full, connection lost) ``StorageError``."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in READ_ONLY_SQLSTATES or "readonly database" in str(exc.orig):
        return ReadOnlyDatabase(driver_message(exc))
    if isinstance(exc, OperationalError):
        return StorageError(f"database write failed: {driver_message(exc)}")
    return None


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


def _quiet(sock: int) -> bool:
    """Nothing to read on an idle connection's socket (no wait)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    readable, _, _ = select.select([sock], [], [], 0)  # pragma: no cover - Windows
    return not readable


def _setup_postgresql(engine: Engine, read_prepare_threshold: int | None, generic_plans: bool) -> None:
    """Prepared reads (``READ_PREPARE_THRESHOLD``, or None: nothing prepared), generic
    plans for the plan-stable pages (``PLANS``; ``generic_plans`` False: none), and a
    pooled connection checked at checkout without a round trip.

    SQLAlchemy's ``pool_pre_ping`` sends a statement at every checkout: one more round
    trip for every request (issue 16: on a loaded machine, each round trip is a wake-up
    of the server process). An idle connection's socket has nothing to read unless the
    server said something: a restart, ``pg_terminate_backend``, an idle-session timeout
    or a failover ends the session with an error message and closes the socket, which
    makes it readable. Only then is the connection pinged, as ``pool_pre_ping`` would;
    a failed ping discards the pool's connections (as a failed pre-ping does) and the
    checkout gets a new one. What neither check sees, a peer gone without a word (a
    cable pulled), fails the request's own statement as it would fail the ping."""

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_conn, record):  # pragma: no cover - exercised by every PostgreSQL test
        record.info[_READ_PREPARE] = read_prepare_threshold
        record.info[_PLAN_MODE] = "custom"  # the connection's options (``make_engine``)

    def plan_mode(cursor, _statement, _parameters, context):  # pragma: no cover - every PostgreSQL test
        """Before a statement with parameters (one without is planned alike in either
        mode): the session's plan mode as the statement needs it. A dialect event: an
        engine event would slow every statement's dispatch (~50 µs a page, measured).
        Returns None, so the statement then runs as usual."""
        driver = cursor.connection
        if not driver.autocommit:  # a transaction: see _custom_plans
            return None
        plans = context.execution_options.get(PLANS, "custom")
        if plans == "any":
            return None
        want = "generic" if plans == "generic" and driver.prepare_threshold is not None else "custom"
        info = context.root_connection.connection.info
        if info.get(_PLAN_MODE, "custom") != want:
            driver.execute(f"SET plan_cache_mode = {_PLAN_CACHE_MODE[want]}", prepare=False)
            info[_PLAN_MODE] = want
        return None

    if generic_plans and read_prepare_threshold is not None:  # unprepared, a generic plan is never kept
        event.listen(engine, "do_execute", plan_mode)

    @event.listens_for(engine, "checkout")
    def alive(dbapi_conn, _record, _proxy):  # pragma: no cover - exercised by every PostgreSQL test
        if dbapi_conn.closed or dbapi_conn.broken:
            raise DisconnectionError("the connection is closed")
        if _quiet(dbapi_conn.pgconn.socket):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except dbapi_conn.Error as exc:
            raise InvalidatePoolError(f"the server ended the connection: {driver_message(exc)}") from exc


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine with jobs-index's connection settings (no migration; see ``open_engine``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a non-numeric port
        shown = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)  # never echo a password
        raise ConfigError(f"not a database URL: {shown!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend in ("sqlite", "postgresql") and parsed.drivername not in SQLITE_DRIVERS + PG_DRIVERS:
        raise ConfigError(f"unsupported database driver {parsed.drivername!r}: use sqlite:/// or postgresql+psycopg://")
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the directory of {path}: {exc.strerror}") from exc
        engine = create_engine(
            url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        _setup_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Keep any libpq options given in the URL (e.g. a search_path) and add ours.
        given = parsed.query.get("options", ())  # a tuple when the URL repeats it
        ours = "-c plan_cache_mode=force_custom_plan"
        options = " ".join(filter(None, (given, ours) if isinstance(given, str) else (*given, ours)))
        prepared, generic = (parsed.query.get(name, "on") for name in (PREPARED_PARAM, GENERIC_PARAM))
        for name, value in ((PREPARED_PARAM, prepared), (GENERIC_PARAM, generic)):
            if value not in ("on", "off"):
                raise ConfigError(f"{name}={value!r} in the database URL: use on or off")
        parsed = parsed.difference_update_query(["options", PREPARED_PARAM, GENERIC_PARAM])
        # Nothing is prepared unless a read helper asks for it (``_prepare_reads``).
        connect_args: dict[str, object] = {"prepare_threshold": None, "options": options, "application_name": APP_NAME}
        if "connect_timeout" not in parsed.query:  # fail fast on an unreachable host
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
        engine = create_engine(
            parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2, connect_args=connect_args
        )
        _setup_postgresql(engine, READ_PREPARE_THRESHOLD if prepared == "on" else None, generic == "on")
        return engine
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction: ``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL writers
    take one transaction-level advisory lock per schema (``WRITER_LOCK_SQL``), a
    single consistent lock order that rules out deadlocks on the shared counter rows.

    PostgreSQL writers also go back to ``plan_cache_mode = auto`` for the
    transaction: forced custom plans are for listings; here they would only re-plan
    the counter trigger's statements and the foreign-key checks on every row
    (measured: ~40 % more server CPU per import). Writers prepare nothing (only read
    helpers do: ``_prepare_reads``), so their own statements are custom-planned either way."""
    conn = engine.connect()
    try:
        with _writing(conn, f"SELECT {WRITER_LOCK_SQL}, set_config('plan_cache_mode', 'auto', true)") as writing:
            yield writing
    except DBAPIError as exc:
        if (failure := write_failure(exc)) is None:
            raise
        raise failure from exc
    finally:
        conn.close()


@contextmanager
def _writing(conn: Connection, postgresql_start: str) -> Iterator[Connection]:
    """One writer's transaction on ``conn``: ``BEGIN IMMEDIATE`` on SQLite; on
    PostgreSQL ``postgresql_start`` (the writers' lock) first thing inside it."""
    if conn.dialect.name == "sqlite":
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text(postgresql_start))
        yield conn


def _custom_plans(conn: Connection) -> None:
    """PostgreSQL, first thing in a read transaction: custom plans for its
    statements if a plan-stable page left the session generic (``PLANS``)."""
    if conn.dialect.name == "postgresql" and conn.connection.info.get(_PLAN_MODE) == "generic":
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def _prepare_reads(conn: Connection) -> Callable[[], None]:
    """PostgreSQL: let psycopg prepare the statements this connection runs again
    (``READ_PREPARE_THRESHOLD``) until the returned function is called, which turns it
    off again, so a writer later given the same pooled connection prepares nothing."""
    threshold = conn.info.get(_READ_PREPARE) if conn.dialect.name == "postgresql" else None
    if threshold is None:
        return lambda: None
    driver = conn.connection.driver_connection
    assert driver is not None, "a connection just checked out has its driver connection"
    driver.prepare_threshold = threshold

    def done() -> None:
        driver.prepare_threshold = None

    return done


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one snapshot (WAL read / REPEATABLE READ)."""
    conn = engine.connect()
    unprepare = _prepare_reads(conn)
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            _custom_plans(conn)
            yield conn
    except OperationalError as exc:
        raise StorageError(f"database read failed: {driver_message(exc)}") from exc
    finally:
        unprepare()
        conn.close()


@contextmanager
def read_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that are one statement each, with no BEGIN/COMMIT
    round trips: a single statement always reads one snapshot (SQLite autocommit
    mode; PostgreSQL autocommit, whose statements each take their own snapshot)."""
    conn = engine.connect()
    unprepare = _prepare_reads(conn)
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        else:
            conn = conn.execution_options(sqlite_begin=None)
        yield conn
    except OperationalError as exc:
        raise StorageError(f"database read failed: {driver_message(exc)}") from exc
    finally:
        unprepare()
        conn.close()


class HeldSnapshot:
    """A read transaction held open across calls, for a listing read in chunks: every
    statement run through ``run`` sees the snapshot of the first (SQLite: a WAL read
    transaction; PostgreSQL: REPEATABLE READ).

    Not for concurrent use: the caller runs one statement at a time (it may hop
    threads between them: the SQLite connections allow it, psycopg's are thread-safe).
    ``close`` ends the transaction and returns the connection to the pool; it is
    idempotent. While it is open, SQLite cannot checkpoint the WAL past it and
    PostgreSQL's vacuum cannot remove rows it may see: hold it only while a reader
    reads."""

    def __init__(self, engine: Engine) -> None:
        conn = engine.connect()
        self._unprepare = _prepare_reads(conn)
        try:
            if engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            self._transaction = conn.begin()
            _custom_plans(conn)
        except OperationalError as exc:
            self._unprepare()
            conn.close()
            raise StorageError(f"database read failed: {driver_message(exc)}") from exc
        except BaseException:
            self._unprepare()
            conn.close()
            raise
        self._conn: Connection | None = conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def run(self, fn, *args, **kwargs):
        """``fn(connection, *args, **kwargs)`` in the snapshot. A driver error closes
        the snapshot (its connection may be gone) and arrives as a StorageError."""
        if self._conn is None:
            raise StorageError("database read failed: the listing's snapshot is closed")
        try:
            return fn(self._conn, *args, **kwargs)
        except DBAPIError as exc:
            self.close(broken=True)
            raise StorageError(f"database read failed: {driver_message(exc)}") from exc

    def close(self, broken: bool = False) -> None:
        """End the transaction and return the connection; a ``broken`` one (its last
        statement failed: the server may have gone) is discarded instead."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if broken:
                conn.invalidate()
            else:
                # Nothing was written: ending it is all. A commit, not a rollback: psycopg
                # forgets (and deallocates) its prepared statements at every rollback.
                self._transaction.commit()
        except Exception as exc:  # the connection is already unusable: the pool discards it
            log.debug("closing a read snapshot: %s", driver_message(exc))
            conn.invalidate()
        finally:
            self._unprepare()
            conn.close()


# -- migrations ----------------------------------------------------------------


def alembic_config(connection: Connection | None = None, script_location: str | Path | None = None):
    """Alembic's config for our scripts (``script_location``: another copy of them,
    e.g. a test's with a test-only revision added)."""
    from alembic.config import Config

    if script_location is None:
        packaged = resources.files("jobs_index") / "migrations"
        script_location = str(packaged)
        if not packaged.is_dir():  # a source checkout without the package mapping
            script_location = Path(__file__).resolve().parent.parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(script_location: str | Path | None = None) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(script_location=script_location)).get_current_head()
    assert head is not None, "the migration scripts define revisions"  # None only for an empty versions directory
    return head


def known_revisions(script_location: str | Path | None = None) -> set[str]:
    """Every revision id this code's migration scripts define."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(script_location=script_location))
    return {rev.revision for rev in script.walk_revisions("base", "heads")}


def check_revision(
    current: str | None, target: str, known: set[str], where: str, *, upgrade_existing: bool = True
) -> None:
    """Refuse a schema this code may not use or change: one written by a newer
    jobs-index (``DatabaseTooNew``), or, unless ``upgrade_existing``, an older one
    (``UpgradeRequired``). Called before any lock is taken or backup made."""
    if current is not None and current not in known:
        from . import __version__

        raise DatabaseTooNew(
            f"database {where} is at schema revision {current}, which jobs-index {__version__} does not know "
            f"(its newest is {target}): it was upgraded by a newer jobs-index; upgrade jobs-index here "
            "(nothing was changed)"
        )
    if current is not None and current != target and not upgrade_existing:
        raise UpgradeRequired(
            f"database {where} is at schema revision {current}; this jobs-index needs {target}: every "
            f"jobs-index sharing it must be upgraded, then run `jobs-index migrate` once (or open with "
            f"--auto-migrate / {AUTO_MIGRATE_ENV}=1)"
        )


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


@contextmanager
def sqlite_foreign_keys_off(conn: Connection) -> Iterator[Connection]:
    """SQLite: ``PRAGMA foreign_keys=OFF`` on ``conn`` for the block, ON again after.

    Must be entered before ``conn`` begins a transaction (inside one the pragma is a
    silent no-op, which is checked here). The pragma goes to the driver connection
    directly: through SQLAlchemy it would first autobegin. A connection whose
    foreign keys cannot be turned back on is invalidated, never pooled."""
    if conn.dialect.name != "sqlite":
        yield conn
        return
    driver = conn.connection.driver_connection
    assert driver is not None, "a connection in use has its driver connection"  # None once invalidated
    if driver.in_transaction:
        raise StorageError("foreign keys cannot be turned off inside a transaction")
    driver.execute("PRAGMA foreign_keys=OFF")
    if driver.execute("PRAGMA foreign_keys").fetchone()[0] != 0:
        raise StorageError("SQLite refused PRAGMA foreign_keys=OFF")
    try:
        yield conn
    finally:
        try:
            if conn.in_transaction():
                conn.rollback()
            driver.execute("PRAGMA foreign_keys=ON")
        except Exception:  # never return a connection with them off to the pool
            conn.invalidate()
            raise


def check_foreign_keys(conn: Connection) -> None:
    """Before a migration commits: every row still has its parent (SQLite, where the
    migration ran with foreign keys off; PostgreSQL enforces them all along)."""
    if conn.dialect.name != "sqlite":
        return
    rows = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if rows:
        tables = sorted({row[0] for row in rows})
        raise ForeignKeyViolation(
            f"migration rolled back: {len(rows)} row(s) in {', '.join(tables)} "
            "lost their parent row (PRAGMA foreign_key_check)"
        )


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """``write_transaction`` for migrations: on SQLite foreign keys are OFF (turned
    off before ``BEGIN IMMEDIATE``, back on after); ``env.py`` runs
    ``check_foreign_keys`` before the commit."""
    conn = engine.connect()
    try:
        start = f"SELECT {WRITER_LOCK_SQL}, set_config('plan_cache_mode', 'force_custom_plan', true)"
        with sqlite_foreign_keys_off(conn), _writing(conn, start) as writing:
            yield writing
    except DBAPIError as exc:
        if (failure := write_failure(exc)) is None:
            raise
        raise failure from exc
    finally:
        conn.close()


def migrate(
    engine: Engine, revision: str = "head", *, script_location: str | Path | None = None, upgrade_existing: bool = True
) -> str | None:
    """Upgrade to ``revision`` atomically; back up a SQLite file first.

    Runs under the writers' lock, so two processes opening the same new database
    do not both create it. Returns the backup path, if one was made. A database
    at a revision these scripts do not know is refused before the lock or the
    backup (``DatabaseTooNew``); ``upgrade_existing=False`` only creates an empty
    database and refuses to upgrade an older one (``UpgradeRequired``).
    """
    from alembic import command

    target = head_revision(script_location) if revision == "head" else revision
    known = known_revisions(script_location)
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
    except DBAPIError as exc:  # unreachable server, bad credentials, unknown database...
        raise StorageError(f"cannot open database {_safe_url(engine)}: {driver_message(exc)}") from exc
    if current == target:
        return None
    check_revision(current, target, known, _safe_url(engine), upgrade_existing=upgrade_existing)
    backup = None
    path = _sqlite_path(str(engine.url))
    try:
        with migration_transaction(engine) as conn:
            current = current_revision(conn)
            if current == target:
                return None
            # Again under the lock: another process may have upgraded it meanwhile.
            check_revision(current, target, known, _safe_url(engine), upgrade_existing=upgrade_existing)
            if current is not None and path is not None:
                backup = backup_sqlite(path, current)
                log.warning("upgrading %s from %s; backup at %s", path, current, backup)
            command.upgrade(alembic_config(conn, script_location), revision)
    except DBAPIError as exc:  # e.g. no right to create the tables
        raise StorageError(f"cannot upgrade database {_safe_url(engine)}: {driver_message(exc)}") from exc
    return str(backup) if backup else None


def auto_migrate_default() -> bool:
    return os.environ.get(AUTO_MIGRATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def open_engine(
    url: str | None, *, pool_size: int = 5, upgrade: bool = True, auto_migrate: bool | None = None
) -> Engine:
    """Resolve the URL, create the engine and bring the schema to head.

    SQLite (one machine's file) is upgraded on open, after a backup. PostgreSQL
    (shared by a fleet) is created on open when empty, but an older schema is
    upgraded only with ``auto_migrate`` (default: ``$JOBS_INDEX_AUTO_MIGRATE``);
    otherwise ``UpgradeRequired``. Either way a newer schema is ``DatabaseTooNew``."""
    engine = make_engine(resolve_url(url), pool_size=pool_size)
    if upgrade:
        if auto_migrate is None:
            auto_migrate = auto_migrate_default()
        try:
            migrate(engine, upgrade_existing=engine.dialect.name != "postgresql" or auto_migrate)
        except StorageError:
            engine.dispose()
            raise
    return engine


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
