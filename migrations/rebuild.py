"""Helpers for a migration that rebuilds ``jobs`` (``batch_alter_table("jobs")``, a copy).

Import it as ``from jobs_index.migrations.rebuild import rebuilding_jobs`` (revisions
never import each other; they may import this stable module). Usage::

    def upgrade() -> None:
        with rebuilding_jobs(op):
            with op.batch_alter_table("jobs") as batch:
                batch.add_column(sa.Column("queue_number", sa.BigInteger(), nullable=True))

What goes wrong without it (issue 18, item 1): on SQLite a batch rebuild is
``CREATE _alembic_tmp_jobs``, copy, ``DROP TABLE jobs``, rename. ``DROP TABLE``
drops every trigger on ``jobs`` (the counter triggers, the side-row cascade), and a
view over ``jobs`` makes the rename fail; on PostgreSQL a view or a trigger's
``WHEN`` pins a column's type. (``DROP TABLE`` also cascades into ``job_outputs`` /
``job_nodes`` while foreign keys are on: ``jobs_index.database`` runs every
migration with them off and runs ``PRAGMA foreign_key_check`` before committing.)

``rebuilding_jobs`` reads the definitions of every view and every trigger on
``jobs`` **from the database itself** (so it recreates exactly what this database
had, whatever revision wrote it: the SQL is frozen by the database, not by this
module), drops them, runs the block, recreates them, and then checks that ``jobs``
still has every index and trigger it had. A migration that changes a view or a
trigger passes its new SQL in ``replace`` (name -> statement, or ``None`` to drop
it for good); one that drops an index on purpose names it in ``dropped_indexes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

JOBS = "jobs"


class RebuildError(RuntimeError):
    """A rebuild of ``jobs`` lost something it had (an index, a trigger, a view)."""


@dataclass(frozen=True)
class Dependent:
    kind: str  # "view" or "trigger"
    name: str
    create: str  # the statement that creates it again
    drop: str


def _sqlite_dependents(bind) -> list[Dependent]:
    # Every view (a view over any table may read jobs; recreating the rest is harmless),
    # every trigger on jobs, in creation order (rowid of sqlite_master).
    rows = bind.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master "
        "WHERE (type = 'view') OR (type = 'trigger' AND tbl_name = 'jobs') ORDER BY rowid"
    ).all()
    return [Dependent(kind, name, sql, f'DROP {kind.upper()} "{name}"') for kind, name, sql in rows]


def _postgresql_dependents(bind) -> list[Dependent]:
    views = bind.execute(
        sa.text(
            "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'v' ORDER BY c.oid"
        )
    ).all()
    triggers = bind.execute(
        sa.text(
            "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "WHERE t.tgrelid = to_regclass('jobs') AND NOT t.tgisinternal ORDER BY t.oid"
        )
    ).all()
    return [
        Dependent("view", name, f'CREATE VIEW "{name}" AS {body}', f'DROP VIEW "{name}"') for name, body in views
    ] + [Dependent("trigger", name, sql, f'DROP TRIGGER "{name}" ON jobs') for name, sql in triggers]


def dependents(bind) -> list[Dependent]:
    """The views and the triggers on ``jobs`` this database has now."""
    if bind.dialect.name == "postgresql":
        return _postgresql_dependents(bind)
    return _sqlite_dependents(bind)


def jobs_indexes(bind) -> set[str]:
    return {ix["name"] for ix in sa.inspect(bind).get_indexes(JOBS)}


def drop_dependents(bind) -> list[Dependent]:
    """Drop every view and every trigger on ``jobs``; returns what to recreate."""
    found = dependents(bind)
    for dep in reversed(found):  # views that read other views go first
        bind.exec_driver_sql(dep.drop)
    return found


def create_dependents(bind, found: list[Dependent], replace: dict[str, str | None] | None = None) -> None:
    """Recreate what ``drop_dependents`` dropped (``replace``: name -> new SQL or None)."""
    replace = replace or {}
    for dep in found:
        sql = replace.get(dep.name, dep.create)
        if sql is not None:
            bind.exec_driver_sql(sql)
    known = {dep.name for dep in found}
    for name, sql in replace.items():  # new views / triggers the migration adds
        if name not in known and sql is not None:
            bind.exec_driver_sql(sql)


@contextmanager
def rebuilding_jobs(
    op, *, replace: dict[str, str | None] | None = None, dropped_indexes: tuple[str, ...] = ()
) -> Iterator[None]:
    """Around a rebuild of ``jobs``: drop views and triggers, recreate them after,
    and fail the migration if ``jobs`` lost an index or a trigger it had."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        foreign_keys = bind.exec_driver_sql("PRAGMA foreign_keys").scalar()
        if foreign_keys:  # jobs_index.database turns them off before BEGIN; never rebuild with them on
            raise RebuildError(
                "rebuilding jobs with PRAGMA foreign_keys=ON would empty job_outputs and "
                "job_nodes: run migrations through jobs-index (jobs_index.database.migrate "
                "or the repo's alembic.ini), which turns them off before the transaction"
            )
    indexes = jobs_indexes(bind)
    found = drop_dependents(bind)
    yield
    create_dependents(bind, found, replace)
    for dep in dependents(bind):  # SQLite accepts a view over a missing column until it is read
        if dep.kind == "view":
            bind.exec_driver_sql(f'SELECT * FROM "{dep.name}" LIMIT 0')
    missing = (indexes - set(dropped_indexes)) - jobs_indexes(bind)
    expected = {dep.name for dep in found if dep.kind == "trigger" and (replace or {}).get(dep.name, "") is not None}
    missing_triggers = expected - {dep.name for dep in dependents(bind) if dep.kind == "trigger"}
    if missing or missing_triggers:
        raise RebuildError(f"rebuilding jobs lost indexes {sorted(missing)} / triggers {sorted(missing_triggers)}")
