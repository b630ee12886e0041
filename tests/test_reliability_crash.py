"""Crash safety (issue #6, item 1): SIGKILL real ``jobs-index`` processes.

Import: a real ``jobs-index --db sqlite:///... import history.json`` of 50,000 sample
jobs (``jobs_index.sample.synthetic_history``, written once per session) is killed
with SIGKILL 20 times at random moments, re-running the import on the same database
after each kill, then run to completion. After every kill the file opens, ``PRAGMA
integrity_check`` is ok, no id appears twice, the trigger-kept counts equal a
recount, and every job seen committed before the kill (and after the previous
one) is still there; the last run ends with exactly the dump's 50,000 jobs.

Where the kills land. Each re-run re-reads the dump from the start (committed jobs
come back "unchanged"), so on a 2-core machine a kill at a uniformly random moment
of a whole import every time would cost ~10 imports. Instead the moments are drawn
per run from the phases an import goes through, so every phase is hit at random
points and the whole test stays around 2-3 minutes:

* ``start``: uniformly within the run's start-up (interpreter, migrate-on-open,
  the first kill lands on an empty file while the schema is being created), the
  parse and the re-read of already committed jobs (empty write transactions);
* ``write``: after the run's first new commit, uniformly within the next ~1.5
  batches: mid-transaction, during COMMIT, during WAL checkpoints (batch sizes
  50-200 so many commits happen);
* ``deep`` (the last kill): at a random number of jobs between the current count
  and 30,000, with the default batch size (1,000), i.e. deep into a long import
  with a large WAL, then a uniformly random fraction of a batch later.

Migration: a database at ``0001_create_jobs`` holding jobs is upgraded by a real
``jobs-index migrate`` killed at random moments across the upgrade's measured
duration (backup included); after each kill it is at the old revision with all
its data or at the new one with all its data, never in between, and any
``*.bak-<rev>`` next to it is a complete copy. The initial creation of a new
database is killed the same way.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from jobs_index import JobsIndex
from jobs_index.database import head_revision, make_engine, migrate
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history

from .reliability_support import JOBS_INDEX, check_sqlite_file, session_dir, write_history_dump

N_JOBS = 50_000
KILLS = 20
DEEP_MAX = 30_000  # the last kill lands at a random count of jobs up to this
OLD_REVISION = "0001_create_jobs"


@pytest.fixture(scope="session")
def big_dump(tmp_path_factory) -> Path:
    return write_history_dump(session_dir(tmp_path_factory) / f"history-{N_JOBS}.json", N_JOBS)


class Watcher:
    """Reads a SQLite index while another process writes it (WAL readers never block)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self.conn is None and self.path.exists():
            self.conn = sqlite3.connect(self.path, timeout=30)
        return self.conn

    def total(self) -> int:
        try:
            conn = self._connect()
            if conn is None:
                return 0
            (n,) = conn.execute(
                "SELECT coalesce(sum(n), 0) FROM job_counts WHERE source = '' AND workflow_id = ''"
            ).fetchone()
            return n
        except sqlite3.OperationalError:  # no schema yet
            self.close()
            return 0

    def ids(self) -> set[str]:
        try:
            conn = self._connect()
            return set() if conn is None else {row[0] for row in conn.execute("SELECT id FROM jobs")}
        except sqlite3.OperationalError:
            self.close()
            return set()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_until(predicate, timeout: float, proc: subprocess.Popen, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def import_command(url: str, dump: Path, batch_size: int) -> list[str]:
    # --no-bulk: every batch commits, even into the empty file (test_bulk_load kills bulk loads)
    return [*JOBS_INDEX, "--db", url, "import", "--no-bulk", "--batch-size", str(batch_size), str(dump)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_during_import_at_random_moments(tmp_path, big_dump):
    seed = int(os.environ.get("JOBS_INDEX_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    path = tmp_path / "jobs.sqlite3"
    url = f"sqlite:///{path}"
    watcher = Watcher(path)
    committed: set[str] = set()
    startup, batch_period = 3.0, 0.5  # first guesses, then measured
    log = []
    modes = ["start"] + [rng.choice(["start", "write", "write"]) for _ in range(KILLS - 2)] + ["deep"]
    started_all = time.monotonic()
    for k, mode in enumerate(modes):
        batch = 1000 if mode == "deep" else rng.choice([50, 100, 200])
        before = watcher.total()
        stderr = open(tmp_path / f"run-{k}.stderr", "wb")
        # Its own session: the import's normalising worker processes can be cleaned up with it.
        proc = subprocess.Popen(
            import_command(url, big_dump, batch), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        t0 = time.monotonic()
        if mode == "start":
            time.sleep(rng.uniform(0, startup))
        elif mode == "write":
            if wait_until(lambda before=before: watcher.total() > before, 300, proc):
                first_commit = time.monotonic()
                startup = max(0.5, first_commit - t0)  # time to the first new commit, for "start"
                wait_until(lambda batch=batch, before=before: watcher.total() > before + batch, 5, proc)
                batch_period = max(0.05, time.monotonic() - first_commit)
                time.sleep(rng.uniform(0, 1.5 * batch_period))
        else:
            target = rng.randint(before + 1000, DEEP_MAX) if before + 1000 < DEEP_MAX else before + 1000
            wait_until(lambda target=target: watcher.total() >= target, 600, proc, poll=0.05)
            time.sleep(rng.uniform(0, 1.5))
        seen = watcher.ids()  # committed by now: must survive the kill
        moment = time.monotonic() - t0
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the process that writes
        code = proc.wait(60)
        kill_group(proc.pid)  # then its orphaned workers (they never touch the database)
        stderr.close()
        watcher.close()
        ids = check_sqlite_file(path)  # integrity_check, no duplicates, counts == rows
        assert committed <= ids, f"kill {k}: {len(committed - ids)} committed jobs lost"
        assert seen <= ids, f"kill {k}: {len(seen - ids)} jobs seen before the kill lost"
        with JobsIndex.open(url) as index:  # opens (and finishes creating the schema if it was cut)
            assert index.counts_consistent(), f"kill {k}"
            assert index.total() == len(ids)
        log.append((k, mode, batch, round(moment, 2), code, len(ids) - len(committed)))
        print(f"kill {k} ({mode}, batch {batch}) at {moment:.2f}s: {len(ids)} jobs", flush=True)
        committed = ids
    kills = time.monotonic() - started_all

    started = time.monotonic()
    done = subprocess.run(
        [*JOBS_INDEX, "--db", url, "import", str(big_dump)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    ids = check_sqlite_file(path)
    assert len(ids) == N_JOBS and committed <= ids
    assert f"{N_JOBS - len(committed)} inserted, 0 updated, {len(committed)} unchanged, 0 rejected" in done.stdout
    with JobsIndex.open(url) as index:
        assert index.counts_consistent() and index.total() == N_JOBS
        with index.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*), count(DISTINCT id) FROM jobs").one() == (N_JOBS, N_JOBS)
    print(f"\ncrash seed {seed}: {KILLS} kills in {kills:.0f}s, final run {time.monotonic() - started:.0f}s")
    for k, mode, batch, moment, code, new in log:
        print(f"  kill {k:2d} {mode:5s} batch {batch:4d} at {moment:6.2f}s (exit {code}) +{new} jobs kept")
    assert {mode for _, mode, *_ in log} == {"start", "write", "deep"}
    assert sum(1 for entry in log if entry[4] == -signal.SIGKILL) >= KILLS - 2  # really killed mid-run


# -- migrations -------------------------------------------------------------------------


def make_old_database(path: Path, jobs: int) -> int:
    """A database at OLD_REVISION holding ``jobs`` sample jobs (inserted as that
    revision's columns; its triggers keep the counts)."""
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine, OLD_REVISION)
    finally:
        engine.dispose()
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        rows = []
        for job_id, item in synthetic_history(jobs, seed=7):
            row = from_history(job_id, item).as_row()
            row["indexed_at"] = 0
            rows.append(tuple(row[c] for c in columns))
        with conn:
            conn.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
        (version,) = conn.execute("SELECT version_num FROM jobs_index_alembic_version").fetchone()
        assert version == OLD_REVISION
    finally:
        conn.close()
    return jobs


def revision_and_jobs(path: Path) -> tuple[str | None, int, set[str]]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        version = None
        if "jobs_index_alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM jobs_index_alembic_version").fetchone()
            version = row[0] if row else None
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0] if "jobs" in tables else -1
        return version, jobs, tables
    finally:
        conn.close()


def run_and_kill(command: list[str], delay: float) -> tuple[int, float]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait(60)
    return code, time.monotonic() - t0


def timed_run(command: list[str]) -> float:
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - t0


def test_sigkill_during_migration_leaves_old_or_new_revision(tmp_path):
    head = head_revision()
    if head == OLD_REVISION:
        pytest.skip("only the first revision exists: see test_sigkill_during_initial_creation")
    rng = random.Random(time.time_ns())
    master = tmp_path / "old.sqlite3"
    jobs = make_old_database(master, 800)
    work = tmp_path / "jobs.sqlite3"
    command = [*JOBS_INDEX, "--db", f"sqlite:///{work}", "migrate"]
    shutil.copy(master, work)
    duration = timed_run(command)  # the whole upgrade, backup included, measured once
    assert revision_and_jobs(work)[:2] == (head, jobs)
    outcomes = []
    for _ in range(8):
        for leftover in tmp_path.glob("jobs.sqlite3*"):
            leftover.unlink()
        shutil.copy(master, work)
        code, moment = run_and_kill(command, rng.uniform(0, duration * 1.1))
        version, count, tables = revision_and_jobs(work)
        assert (version, count) in ((OLD_REVISION, jobs), (head, jobs)), (version, count, moment)
        if version == OLD_REVISION:
            assert "job_outputs" not in tables  # nothing of the new revision is visible
        for backup in tmp_path.glob("jobs.sqlite3.bak-*"):
            assert backup.name == f"jobs.sqlite3.bak-{OLD_REVISION}"
            assert revision_and_jobs(backup)[:2] == (OLD_REVISION, jobs), "a partial backup was left"
        timed_run(command)  # and a re-run completes it
        with JobsIndex.open(f"sqlite:///{work}") as index:
            assert index.total() == jobs and index.counts_consistent()
        assert revision_and_jobs(work)[0] == head
        outcomes.append((round(moment, 2), code, version))
    print(
        f"\nmigration {OLD_REVISION} -> {head} of {jobs} jobs takes {duration:.1f}s; kills (moment, exit, "
        f"revision after): {outcomes}"
    )


def test_sigkill_during_initial_creation(tmp_path):
    rng = random.Random(time.time_ns())
    work = tmp_path / "jobs.sqlite3"
    command = [*JOBS_INDEX, "--db", f"sqlite:///{work}", "migrate"]
    duration = timed_run(command)
    outcomes = []
    for _ in range(6):
        for leftover in tmp_path.glob("jobs.sqlite3*"):
            leftover.unlink()
        code, moment = run_and_kill(command, rng.uniform(0, duration * 1.1))
        if work.exists():
            version, count, tables = revision_and_jobs(work)
            # All or nothing: no schema at all, or the whole head schema.
            assert (version, count) == (head_revision(), 0) or ("jobs" not in tables and version is None), (
                version,
                tables,
            )
        else:
            version = None
        with JobsIndex.open(f"sqlite:///{work}") as index:  # a later open creates it
            assert index.total() == 0
        outcomes.append((round(moment, 2), code, version))
    print(f"\ncreation takes {duration:.1f}s; kills (moment, exit, revision after): {outcomes}")
