"""The PostgreSQL writers' lock is per schema (issue 16): two jobs-index deployments in
different schemas of one database write at once, two writers of one schema still take
turns, and a writer holding the older database-wide key (``pg_advisory_xact_lock(7250031)``,
jobs-index before issue 16) still excludes every writer, so versions may share a
database during an upgrade.

A writer "waits" when PostgreSQL says so (``pg_locks``: an advisory lock not granted to
its session), never judged by elapsed time.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, text

from jobs_index import JobsIndex
from jobs_index.database import make_engine
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history

from .conftest import pg_base_url

pytestmark = pytest.mark.timeout(120)


def records(n: int, seed: int) -> list:
    return [from_history(k, v) for k, v in synthetic_history(n, seed=seed)]


def waiting_for_advisory_lock(admin, writer) -> bool:
    if not writer.pids:
        return False
    with admin.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = :pid AND locktype = 'advisory' AND NOT granted)"
                ),
                {"pid": writer.pids[-1]},
            ).scalar()
        )


class Writer(threading.Thread):
    """Ingests ``jobs`` into ``index`` (one batch: one write transaction) and records the
    backend pid of the connection its transaction began on."""

    def __init__(self, index: JobsIndex, jobs: list) -> None:
        super().__init__(daemon=True)
        self.index, self.jobs = index, jobs
        self.pids: list[int] = []
        self.error: BaseException | None = None
        event.listen(index.engine, "begin", self._began)

    def _began(self, conn) -> None:
        if threading.current_thread() is self:
            self.pids.append(conn.connection.driver_connection.info.backend_pid)

    def run(self) -> None:
        try:
            self.index.ingest(self.jobs)
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_until(condition, thread: threading.Thread) -> bool:
    """Poll ``condition`` until it holds or ``thread`` ends (then False)."""
    while thread.is_alive():
        if condition():
            return True
        thread.join(0.05)
    return condition()


@pytest.fixture
def admin():
    base = pg_base_url()
    if base is None:
        pytest.skip("PostgreSQL backend not configured")
    engine = make_engine(base)
    yield engine
    engine.dispose()


SCHEMA_KEY = "7250031, hashtext(coalesce(current_schema(), ''))"


def test_two_schemas_write_at_once_one_schema_takes_turns(pg_url, pg_url_other, admin):
    """The first schema's writers' lock is held (as a writer in its transaction holds
    it; taken directly, so the test never waits on writers of other test runs in the
    same database): the other schema's writer finishes meanwhile, and a writer of the
    first schema waits for it."""
    with JobsIndex.open(pg_url) as first, JobsIndex.open(pg_url_other) as second, first.engine.connect() as held:
        held.execute(text(f"SELECT pg_advisory_lock({SCHEMA_KEY})"))
        try:
            other = Writer(second, records(30, seed=1))
            other.start()
            other.join(60)
            assert not other.is_alive() and other.error is None  # finished while the lock was held
            assert second.total() == 30 and second.counts_consistent()

            waiting = Writer(first, records(20, seed=2))
            waiting.start()
            assert wait_until(lambda: waiting_for_advisory_lock(admin, waiting), waiting)
            assert waiting.is_alive()  # the same schema: it waits for the holder
        finally:
            held.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_KEY})"))
        waiting.join(60)
        assert not waiting.is_alive() and waiting.error is None
        assert first.total() == 20 and first.counts_consistent()


def test_a_writer_holding_the_old_database_wide_key_excludes_every_writer(pg_url, admin):
    with JobsIndex.open(pg_url) as index, admin.connect() as old:
        old.execute(text("SELECT pg_advisory_lock(7250031)"))  # as jobs-index before issue 16 took it
        try:
            writer = Writer(index, records(10, seed=3))
            writer.start()
            assert wait_until(lambda: waiting_for_advisory_lock(admin, writer), writer)
        finally:
            old.execute(text("SELECT pg_advisory_unlock(7250031)"))
        writer.join(60)
        assert not writer.is_alive() and writer.error is None and index.total() == 10
