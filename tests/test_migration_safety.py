"""Migrations keep every job, side row, trigger, view, index and counter (issue 18, item 1).

A POPULATED database (captured ComfyUI jobs plus synthetic ones, with side rows,
a followed source and trigger-kept counters) is built at every earlier revision
and upgraded to head, on both engines, through both ways migrations run
(``jobs_index.database.migrate`` and the repo's ``alembic.ini``). The targets are
the real head and a test-only revision on top of it that rebuilds ``jobs`` the
standard Alembic way (``batch_alter_table``: add a column, change a column's
type), in a copy of the script directory. Afterwards the database must equal a
fresh database migrated the same way (every table, index, trigger and view
definition) and hold exactly the rows it had, with exact counters that stay exact.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select, text

from jobs_index import JobsIndex, search_queries
from jobs_index.database import ForeignKeyViolation, StorageError, current_revision, head_revision, make_engine, migrate
from jobs_index.schema import FollowedSource, Job, JobOutput
from jobs_index.search_queries import _document, store

from .test_toolbox_migration import record_nodes, seed_records
from .toolbox_util import side_rows

ROOT = Path(__file__).resolve().parent.parent
REBUILD = "9001_test_rebuild_jobs"
ORPHAN = "9002_test_orphan_side_row"

REBUILD_SCRIPT = '''"""Test-only: rebuild jobs the standard Alembic way (add a column, change a type)."""
import sqlalchemy as sa
from alembic import op

from jobs_index.migrations.rebuild import rebuilding_jobs

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    with rebuilding_jobs(op):
        with op.batch_alter_table("jobs") as batch:
            batch.add_column(sa.Column("queue_number", sa.BigInteger(), nullable=True))
            batch.alter_column("priority", type_=sa.Float(), existing_type=sa.BigInteger(),
                               existing_nullable=False)


def downgrade():
    with rebuilding_jobs(op):
        with op.batch_alter_table("jobs") as batch:
            batch.alter_column("priority", type_=sa.BigInteger(), existing_type=sa.Float(),
                               existing_nullable=False)
            batch.drop_column("queue_number")
'''

ORPHAN_SCRIPT = '''"""Test-only: a broken migration that leaves a side row without its job."""
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("INSERT INTO job_outputs (job_id, ordinal, node_id, media_type, filename) "
               "VALUES ('no-such-job', 0, '1', 'images', 'orphan.png')")


def downgrade():
    pass
'''


def revisions() -> list[str]:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


REVISIONS = revisions()


def scripts_with(tmp_path: Path, revision: str, template: str) -> Path:
    """A copy of the repo's alembic.ini and migrations/ with one test-only revision on top."""
    root = tmp_path / "scripts"
    shutil.copytree(ROOT / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", root / "alembic.ini")
    (root / "migrations" / "versions" / f"{revision}.py").write_text(
        template.format(revision=revision, down=head_revision())
    )
    return root


def ini_config(root: Path, url: str) -> Config:
    """``alembic -x db=URL`` run from ``root`` (env.py's own connection)."""
    return Config(str(root / "alembic.ini"), cmd_opts=argparse.Namespace(x=[f"db={url}"]))


def upgrade(url: str, revision: str, root: Path, way: str) -> None:
    if way == "alembic.ini":
        command.upgrade(ini_config(root, url), revision)
        return
    engine = make_engine(url)
    try:
        migrate(engine, revision, script_location=root / "migrations")
    finally:
        engine.dispose()


def add_search_rows(conn, records: list, position: int) -> None:
    """The search rows of ``records`` as the index at REVISIONS[position] holds them:
    before 0014_search_facets SQLite's job_search had the lists as its own columns."""
    if conn.dialect.name != "sqlite" or position >= REVISIONS.index("0014_search_facets"):
        store(conn).add(conn, records)
        return
    first = (conn.exec_driver_sql("SELECT max(docid) FROM job_search").scalar() or 0) + 1
    rows, docs = [], []
    for docid, record in enumerate(records, first):
        doc = _document(record)
        rows.append((docid, *search_queries._row_values(record, doc, None)))
        if doc.words:
            docs.append((docid, doc.fts_text()))
    names = ", ".join(search_queries.ROW_COLUMNS)
    conn.exec_driver_sql(
        f"INSERT INTO job_search (docid, {names}) VALUES (?{', ?' * len(search_queries.ROW_COLUMNS)})", rows
    )
    conn.exec_driver_sql("INSERT INTO job_search_fts (rowid, doc) VALUES (?, ?)", docs)


def populate(url: str, revision: str) -> list:
    """Jobs (half with a source), side rows and a followed source, as far as
    ``revision`` has tables for them, written with plain SQL (counted by triggers);
    then one job deleted. Returns the records still stored."""
    records = seed_records()
    for i, record in enumerate(records):
        record.source = "machine-a" if i % 2 else None
    position = REVISIONS.index(revision)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            # Only the columns ``revision`` has (priority_json came with 0006).
            present = {column["name"] for column in inspect(conn).get_columns("jobs")}
            conn.execute(
                insert(Job.__table__),
                [{k: v for k, v in {**r.as_row(), "indexed_at": 1}.items() if k in present} for r in records],
            )
            if position >= REVISIONS.index("0002_sql_views_and_outputs"):
                outputs = [{**o, "job_id": r.id} for r in records for o in r.output_files]
                conn.execute(insert(JobOutput.__table__), outputs)
            if REVISIONS.index("0002_sql_views_and_outputs") <= position < REVISIONS.index("0008_search"):
                nodes = [{"a": r.id, "b": n["node_id"], "c": n["class_type"]} for r in records for n in record_nodes(r)]
                conn.execute(text("INSERT INTO job_nodes (job_id, node_id, class_type) VALUES (:a, :b, :c)"), nodes)
            if position >= REVISIONS.index("0008_search"):  # job_search replaced job_nodes
                add_search_rows(conn, records, position)
            if position >= REVISIONS.index("0003_followed_sources"):
                conn.execute(
                    insert(FollowedSource.__table__),
                    [{"source": "machine-a", "url": "http://a:8188", "history_watermark": "x", "synced_at": 5}],
                )
            gone = records.pop(3)
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": gone.id})
    finally:
        engine.dispose()
    return records


def schema_objects(url: str) -> dict:
    """Every table, index, trigger and view definition (and check constraint) of the schema."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                ).all()
                # A table's clauses as a set: a batch rebuild may order CHECK constraints either way.
                return {
                    (t, n): (
                        tbl,
                        sorted(line.strip().rstrip(",") for line in sql.splitlines()) if t == "table" else sql,
                    )
                    for t, n, tbl, sql in rows
                }
            found = {}
            for name, sql in conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
            ):
                found[("index", name)] = sql
            for name, sql in conn.execute(
                text(
                    "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal"
                )
            ):
                found[("trigger", name)] = sql
            for name, sql in conn.execute(
                text(
                    "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
                    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'v'"
                )
            ):
                found[("view", name)] = sql
            for name, sql in conn.execute(
                text(
                    "SELECT con.conname, pg_get_constraintdef(con.oid) FROM pg_constraint con "
                    "WHERE con.connamespace = current_schema()::regnamespace"
                )
            ):
                found[("constraint", name)] = sql
            for table, column, type_, collation, nullable in conn.execute(
                text(
                    "SELECT table_name, column_name, data_type, collation_name, is_nullable "
                    "FROM information_schema.columns WHERE table_schema = current_schema()"
                )
            ):
                found[("column", f"{table}.{column}")] = (type_, collation, nullable)
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            return {
                key: value.replace(f"{schema}.", "") if isinstance(value, str) else value
                for key, value in found.items()
            }
    finally:
        engine.dispose()


def job_rows(index: JobsIndex) -> list[tuple]:
    with index.engine.connect() as conn:
        jobs = Job.__table__
        return sorted(tuple(row) for row in conn.execute(select(*jobs.columns).order_by(jobs.c.id)))


def expected_rows(records: list) -> list[tuple]:
    return sorted(tuple({**r.as_row(), "indexed_at": 1}[c.name] for c in Job.__table__.columns) for r in records)


def expected_side_rows(records: list) -> tuple[list, list]:
    ordered = sorted(records, key=lambda r: r.id)
    return (
        [{**o, "job_id": r.id} for r in ordered for o in r.output_files],
        [
            {"job_id": r.id, "node_types": list(doc.node_types), "models": list(doc.models), "loras": list(doc.loras)}
            for r in ordered
            for doc in [_document(r)]
        ],
    )


def assert_intact(url: str, reference_url: str, records: list) -> None:
    assert schema_objects(url) == schema_objects(reference_url)
    with JobsIndex(make_engine(url)) as index:
        assert job_rows(index) == expected_rows(records)
        outputs, search = side_rows(index)
        want_outputs, want_search = expected_side_rows(records)
        assert [{k: o[k] for k in want_outputs[0]} for o in outputs] == want_outputs
        assert sorted(search, key=lambda n: n["job_id"]) == want_search
        assert len(outputs) > 100 and len(search) == len(records)
        assert index.counts_consistent()
        assert index.total() == len(records)
        with index.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs_v")).scalar_one() == len(records)
            assert conn.execute(text("SELECT count(*) FROM followed_sources")).scalar_one() <= 1
        # The triggers still work: a plain-SQL delete cascades and is counted,
        # jobs-index's own writer keeps counting.
        victim = next(r for r in records if r.output_files)
        with index.engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": victim.id})
            assert (
                conn.execute(
                    text("SELECT count(*) FROM job_outputs WHERE job_id = :id"), {"id": victim.id}
                ).scalar_one()
                == 0
            )
        assert index.counts_consistent() and index.total() == len(records) - 1
        index.ingest([victim])
        assert index.counts_consistent() and index.total() == len(records)


def reference(tmp_path: Path, backend: str, target: str, root: Path):
    """A fresh database migrated to ``target`` from nothing (the expected schema)."""
    from .conftest import make_db_url

    urls = make_db_url(backend, tmp_path / "reference")
    (tmp_path / "reference").mkdir()
    url = next(urls)
    upgrade(url, target, root, "migrate")
    return url, urls


@pytest.mark.parametrize("way", ["migrate", "alembic.ini"])
@pytest.mark.parametrize("target", ["head", REBUILD])
@pytest.mark.parametrize("start", REVISIONS)
def test_populated_upgrade_from_every_revision_keeps_everything(backend, db_url, tmp_path, start, target, way):
    if target == "head" and start == REVISIONS[-1]:
        pytest.skip("already at head: nothing to upgrade")
    root = scripts_with(tmp_path, REBUILD, REBUILD_SCRIPT)
    ref_url, ref_cleanup = reference(tmp_path, backend, target if target != "head" else head_revision(), root)
    try:
        upgrade(db_url, start, root, "migrate")
        records = populate(db_url, start)
        upgrade(db_url, target if target != "head" else head_revision(), root, way)
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                assert current_revision(conn) == (target if target != "head" else head_revision())
        finally:
            engine.dispose()
        assert_intact(db_url, ref_url, records)
    finally:
        ref_cleanup.close()


def test_rebuild_downgrades_and_upgrades_again_keeping_everything(backend, db_url, tmp_path):
    root = scripts_with(tmp_path, REBUILD, REBUILD_SCRIPT)
    ref_url, ref_cleanup = reference(tmp_path, backend, REBUILD, root)
    try:
        upgrade(db_url, head_revision(), root, "migrate")
        records = populate(db_url, head_revision())
        upgrade(db_url, REBUILD, root, "migrate")
        command.downgrade(ini_config(root, db_url), head_revision())  # a rebuild too
        upgrade(db_url, REBUILD, root, "alembic.ini")
        assert_intact(db_url, ref_url, records)
    finally:
        ref_cleanup.close()


@pytest.mark.parametrize("way", ["migrate", "alembic.ini"])
def test_migration_that_orphans_a_row_is_rolled_back(backend, db_url, tmp_path, way):
    """SQLite runs migrations with foreign keys off: ``foreign_key_check`` before the
    commit catches what they would have (PostgreSQL refuses the row itself)."""
    root = scripts_with(tmp_path, ORPHAN, ORPHAN_SCRIPT)
    upgrade(db_url, head_revision(), root, "migrate")
    populate(db_url, head_revision())
    expected = ForeignKeyViolation if backend == "sqlite" else Exception
    with pytest.raises(StorageError if way == "migrate" else expected, match="foreign|parent|violates"):
        upgrade(db_url, ORPHAN, root, way)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert conn.execute(text("SELECT count(*) FROM job_outputs WHERE job_id = 'no-such-job'")).scalar() == 0
            if backend == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for the pool
    finally:
        engine.dispose()


def test_rebuild_refuses_to_run_with_sqlite_foreign_keys_on(sqlite_url, tmp_path):
    """A rebuild run on an ordinary connection (foreign keys on) would cascade-delete the
    side rows: ``rebuilding_jobs`` refuses before it touches anything."""
    from jobs_index.database import alembic_config, write_transaction
    from jobs_index.migrations.rebuild import RebuildError

    root = scripts_with(tmp_path, REBUILD, REBUILD_SCRIPT)
    upgrade(sqlite_url, head_revision(), root, "migrate")
    records = populate(sqlite_url, head_revision())
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(RebuildError, match="foreign_keys=ON"):
            with write_transaction(engine) as conn:
                command.upgrade(alembic_config(conn, root / "migrations"), REBUILD)
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert conn.execute(text("SELECT count(*) FROM job_search")).scalar() == len(records)
    finally:
        engine.dispose()


BREAKING_SCRIPT = '''"""Test-only: drop a column a user's view reads."""
import sqlalchemy as sa
from alembic import op

from jobs_index.migrations.rebuild import rebuilding_jobs

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    with rebuilding_jobs(op):
        with op.batch_alter_table("jobs") as batch:
            batch.drop_column("error_node_type")


def downgrade():
    pass
'''


def test_rebuild_that_breaks_a_view_is_rolled_back(backend, db_url, tmp_path):
    """A view over jobs (here a user's) is recreated as it was; one the rebuild breaks
    fails the migration, everything rolled back (SQLite would accept the broken view)."""
    root = scripts_with(tmp_path, "9003_test_drop_column", BREAKING_SCRIPT)
    upgrade(db_url, head_revision(), root, "migrate")
    records = populate(db_url, head_revision())
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE VIEW my_errors AS SELECT id, error_node_type FROM jobs"))
        with pytest.raises(Exception, match="error_node_type"):
            migrate(engine, "9003_test_drop_column", script_location=root / "migrations")
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert conn.execute(text("SELECT count(*) FROM my_errors")).scalar() == len(records)
            assert conn.execute(text("SELECT count(*) FROM job_search")).scalar() == len(records)
    finally:
        engine.dispose()
