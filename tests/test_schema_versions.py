"""An older jobs-index opening a newer database, and who may upgrade a shared one
(issue 18, item 5), on both engines.

* A database at a revision this code does not know (written by a newer jobs-index)
  is refused with ``DatabaseTooNew`` — one line, before the write lock is taken or
  a backup is made, with nothing written — however often it is retried (the
  custom node retries its database), and by the CLI as ``Error: ...`` + exit 1.
* PostgreSQL: an empty database is created on open; an older schema is upgraded
  only by ``jobs-index migrate``, ``--auto-migrate`` or ``$JOBS_INDEX_AUTO_MIGRATE``
  (``UpgradeRequired`` otherwise). A SQLite file keeps upgrading on open.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs_index import JobsIndex
from jobs_index.database import AUTO_MIGRATE_ENV, VERSION_TABLE, current_revision, head_revision, make_engine, migrate
from jobs_index.errors import DatabaseTooNew, SchemaVersionError, UpgradeRequired

from .toolbox_util import recent_records

FUTURE = "0099_from_a_newer_jobs_index"
OLDER = "0004_writer_counts"
JOBS_INDEX = Path(sys.executable).with_name("jobs-index")


def set_version(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def version(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def state(url: str) -> tuple:
    """What a write would change: the version, the rows, the counters (and, for
    SQLite, the main file's bytes: every connection is closed, so the WAL is
    checkpointed into it)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = (
                current_revision(conn),
                conn.execute(text("SELECT count(*), sum(length(raw_digest)) FROM jobs")).one(),
                sorted(conn.execute(text("SELECT * FROM job_counts")).all()),
            )
    finally:
        engine.dispose()
    database = make_url(url).database
    if url.startswith("sqlite"):
        found += (hashlib.sha256(Path(database).read_bytes()).hexdigest(),)
    return found


def newer_database(url: str) -> None:
    with JobsIndex.open(url) as index:
        index.ingest(recent_records(30, start_ms=1_764_000_000_000))
    set_version(url, FUTURE)


def backups(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("*.bak-*"))


def test_newer_database_is_refused_with_nothing_written(db_url, tmp_path):
    newer_database(db_url)
    before = state(db_url)
    for _ in range(3):  # a retrying caller (the custom node) copies nothing either
        with pytest.raises(DatabaseTooNew) as raised:
            JobsIndex.open(db_url)
        message = raised.value.message
        assert "\n" not in message and FUTURE in message and head_revision() in message
        assert "newer jobs-index" in message
        assert isinstance(raised.value, SchemaVersionError) and raised.value.status == 503
    assert backups(tmp_path) == []
    assert state(db_url) == before
    engine = make_engine(db_url)
    try:  # the same for an explicit migrate
        with pytest.raises(DatabaseTooNew):
            migrate(engine)
    finally:
        engine.dispose()
    assert backups(tmp_path) == [] and state(db_url) == before


def test_newer_database_is_refused_before_the_write_lock(db_url, backend):
    """Another writer holds the lock: the refusal does not wait for it (the check
    comes first), where it used to queue behind it, then back up and fail."""
    newer_database(db_url)
    if backend == "sqlite":
        holder = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        release = holder.close
    else:
        engine = make_engine(db_url)
        conn = engine.connect()
        conn.execute(text("SELECT pg_advisory_lock(7250031)"))
        conn.commit()

        def release():
            conn.close()
            engine.dispose()

    try:
        started = time.monotonic()
        with pytest.raises(DatabaseTooNew):
            JobsIndex.open(db_url)
        assert time.monotonic() - started < 10  # the busy timeout / lock wait is 30 s
    finally:
        release()


def test_cli_reports_a_newer_database_in_one_line(db_url, tmp_path):
    newer_database(db_url)
    before = state(db_url)
    for args in (["migrate"], ["stats"], ["--auto-migrate", "stats"]):
        done = subprocess.run([str(JOBS_INDEX), "--db", db_url, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: database "), done.stderr
        assert FUTURE in lines[0] and "Traceback" not in done.stderr
    assert backups(tmp_path) == [] and state(db_url) == before


def test_postgresql_older_schema_is_upgraded_only_when_asked(pg_url, monkeypatch):
    monkeypatch.delenv(AUTO_MIGRATE_ENV, raising=False)
    engine = make_engine(pg_url)
    try:
        migrate(engine, OLDER)
    finally:
        engine.dispose()
    with pytest.raises(UpgradeRequired, match="jobs-index migrate") as raised:
        JobsIndex.open(pg_url)
    assert "\n" not in raised.value.message and OLDER in raised.value.message
    assert version(pg_url) == OLDER

    done = subprocess.run([str(JOBS_INDEX), "--db", pg_url, "stats"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("Error: database ") and "migrate" in done.stderr
    assert version(pg_url) == OLDER

    monkeypatch.setenv(AUTO_MIGRATE_ENV, "1")
    JobsIndex.open(pg_url).close()
    assert version(pg_url) == head_revision()


@pytest.mark.parametrize("how", [["migrate"], ["--auto-migrate", "stats"]])
def test_postgresql_migrate_command_and_flag_upgrade(pg_url, how, monkeypatch):
    monkeypatch.delenv(AUTO_MIGRATE_ENV, raising=False)
    engine = make_engine(pg_url)
    try:
        migrate(engine, OLDER)
    finally:
        engine.dispose()
    done = subprocess.run([str(JOBS_INDEX), "--db", pg_url, *how], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert version(pg_url) == head_revision()
    with JobsIndex.open(pg_url, auto_migrate=False) as index:  # at head: opens as usual
        assert index.counts_consistent()


def test_postgresql_empty_database_is_created_on_open(pg_url, monkeypatch):
    monkeypatch.delenv(AUTO_MIGRATE_ENV, raising=False)
    with JobsIndex.open(pg_url, auto_migrate=False) as index:
        assert index.total() == 0
    assert version(pg_url) == head_revision()


def test_sqlite_older_file_still_upgrades_on_open_after_a_backup(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.delenv(AUTO_MIGRATE_ENV, raising=False)
    engine = make_engine(sqlite_url)
    try:
        migrate(engine, OLDER)
    finally:
        engine.dispose()
    JobsIndex.open(sqlite_url, auto_migrate=False).close()
    assert version(sqlite_url) == head_revision()
    assert [p.name for p in backups(tmp_path)] == [f"jobs.sqlite3.bak-{OLDER}"]


def test_custom_node_on_a_newer_database_copies_nothing_and_comfyui_answers(sqlite_url, tmp_path):
    """The node's writer retries a failing database (here every 0.2 s): on a newer
    database every retry is a cheap refusal — no backup, no write — and ComfyUI
    keeps answering /api/jobs from its own memory."""
    from .live_util import eventually
    from .test_custom_node import WAIT, _true, comfyui, run

    newer_database(sqlite_url)
    before = state(sqlite_url)

    async def scenario():
        async with comfyui(sqlite_url, wait_ready=False) as comfy:
            node = comfy.node
            await comfy.submit()
            await comfy.finished(1)
            assert await eventually(lambda: _true(node.writer.stats["failures"] >= 5), WAIT)
            assert "DatabaseTooNew" in node.writer.failing and FUTURE in node.writer.failing
            assert not node.writer.ready
            assert await comfy.parity(comfy.builtin()) == []

    run(scenario())
    assert backups(tmp_path) == []
    assert state(sqlite_url) == before
