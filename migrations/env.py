"""Alembic environment for jobs-index.

Used two ways: by ``jobs_index.database.migrate`` (which passes an open connection in
``config.attributes["connection"]``), and by the ``alembic`` command from the repo
root (URL from ``-x db=URL``, ``JOBS_INDEX_DB`` or the default SQLite file).
jobs-index keeps its own version table, so it can share a database with other tools.

Both ways, migrations run with SQLite's foreign keys OFF (turned off before the
transaction begins) and ``PRAGMA foreign_key_check`` runs before the commit, so a
revision that rebuilds ``jobs`` (``migrations/rebuild.py``) cannot cascade into
``job_outputs`` / ``job_nodes``; a leftover orphan rolls the whole upgrade back.
"""

from __future__ import annotations

from alembic import context

from jobs_index.database import VERSION_TABLE, check_foreign_keys, make_engine, resolve_url, sqlite_foreign_keys_off
from jobs_index.schema import DERIVED_TABLES, Base

config = context.config
target_metadata = Base.metadata


def _compare_type(migration_context, inspected_column, metadata_column, inspected_type, metadata_type):
    """Alembic's type comparison ignores collations; ours does not, so ``alembic check``
    reports a ``jobs.id`` that lost ``COLLATE "C"`` (the code-point id tiebreak)."""
    expected = getattr(metadata_type.dialect_impl(migration_context.dialect), "collation", None)
    if expected != getattr(inspected_type, "collation", None):
        return True
    return None  # otherwise alembic's own comparison


def _include_name(name, type_, parent_names) -> bool:
    """The search tables (and SQLite's FTS5 shadow tables) are kept by raw SQL
    (``jobs_index/search_queries.py``), not by the models: not compared."""
    return not (type_ == "table" and name and name.startswith(DERIVED_TABLES))


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=_compare_type,
        include_name=_include_name,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # jobs_index.database.migrate: foreign keys already off, in BEGIN IMMEDIATE
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
            check_foreign_keys(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or resolve_url(None)
    engine = make_engine(url, pool_size=1)  # also maps postgresql:// to psycopg 3
    try:
        with engine.connect() as connection, sqlite_foreign_keys_off(connection):
            if connection.dialect.name == "sqlite":
                connection.execution_options(sqlite_begin="IMMEDIATE")  # as jobs_index.database.migrate
            # One transaction for the whole upgrade, begun before alembic sees the
            # connection (alembic would otherwise commit each SQLite revision alone).
            with connection.begin():
                _configure(connection)
                with context.begin_transaction():
                    context.run_migrations()
                    check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("jobs-index migrations run online only (they create triggers).")
run_migrations_online()
