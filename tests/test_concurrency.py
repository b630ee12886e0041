"""Many writers on one index: real processes (spawn), real SQLite file, real PostgreSQL.

Four ingesters write the same jobs at different stages (pending, running,
history) in different orders, in small batches so their transactions interleave,
two of them under different sources (so counter rows move between keys) and one
also reconciling an empty queue snapshot (deletes). Afterwards every job holds its
newest stage, the trigger-kept counts equal a full recount, and no writer saw an
error (a deadlock or "database is locked" would surface as one).
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback

from jobs_index import JobsIndex, parse_list_query
from jobs_index.database import write_transaction
from jobs_index.normalize import from_history, from_queue

N_JOBS = 400
BATCH = 7
WRITERS = 4
SPAWN = multiprocessing.get_context("spawn")


def _prompt(i: int) -> list:
    extra = {"create_time": 1_700_000_000_000 + i * 1000, "extra_pnginfo": {"workflow": {"id": f"wf-{i % 3}"}}}
    return [i, f"cj-{i:04d}", {"1": {"class_type": "KSampler", "inputs": {}}}, extra, []]


def history_status(i: int) -> str:
    return "failed" if i % 5 == 0 else "completed"


def version(i: int, stage: int):
    if stage == 0:
        return from_queue(_prompt(i), "pending")
    if stage == 1:
        return from_queue(_prompt(i), "in_progress")
    status = {
        "status_str": "error" if history_status(i) == "failed" else "success",
        "completed": True,
        "messages": [
            ["execution_start", {"timestamp": 1_700_000_000_000 + i * 1000 + 5}],
            ["execution_success", {"timestamp": 1_700_000_000_000 + i * 1000 + 50 + i}],
        ],
    }
    return from_history(f"cj-{i:04d}", {"prompt": _prompt(i), "outputs": {}, "status": status})


def writer_plan(writer: int) -> list[tuple[int, int]]:
    """(job, stage) pairs in this writer's order."""
    jobs = list(range(N_JOBS))
    if writer == 0:  # stage by stage, forwards
        return [(i, s) for s in (0, 1, 2) for i in jobs]
    if writer == 1:  # backwards through the jobs: running, history, then a stale queue
        return [(i, s) for s in (1, 2, 0) for i in reversed(jobs)]
    if writer == 2:  # everything shuffled
        pairs = [(i, s) for i in jobs for s in (0, 1, 2)]
        random.Random(42).shuffle(pairs)
        return pairs
    return [(i, s) for i in reversed(jobs) for s in (0, 1, 2)]  # job by job, from the end


def writer_main(url: str, writer: int, start, results) -> None:
    """One ingester process: write its plan in small batches; report errors, never raise."""
    errors: list[str] = []
    stats = {"writer": writer, "batches": 0, "written": 0, "removed": 0}
    try:
        with JobsIndex.open(url) as index:
            plan = writer_plan(writer)
            source = "host-a" if writer % 2 == 0 else "host-b"
            start.wait(timeout=120)
            stats["start"] = time.time()
            began = time.perf_counter()
            for offset in range(0, len(plan), BATCH):
                records = [version(i, s) for i, s in plan[offset : offset + BATCH]]
                try:
                    result = index.ingest(records, source=source, batch_size=BATCH)
                    stats["written"] += result.written
                    stats["batches"] += 1
                    if writer == 2 and offset % (BATCH * 10) == 0:
                        # A queue snapshot in which nothing is queued any more.
                        stats["removed"] += index.reconcile_live([], source=source)
                except Exception:  # reported to the test
                    errors.append(traceback.format_exc())
            stats["seconds"] = time.perf_counter() - began
            stats["end"] = time.time()
    except Exception:
        errors.append(traceback.format_exc())
    results.put((stats, errors))


def run_writers(url: str, n: int = WRITERS) -> list[dict]:
    start = SPAWN.Barrier(n)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=writer_main, args=(url, w, start, results)) for w in range(n)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    errors = [e for _, errs in outcomes for e in errs]
    assert errors == [], "\n".join(errors)
    stats = [stats for stats, _ in outcomes]
    # The writers really raced: all of them were writing at one moment.
    assert max(s["start"] for s in stats) < min(s["end"] for s in stats), stats
    return stats


def test_concurrent_writers_keep_newest_stage_and_exact_counts(db_url):
    JobsIndex.open(db_url).close()  # create the schema once, before the race
    began = time.perf_counter()
    stats = run_writers(db_url)
    elapsed = time.perf_counter() - began
    summary = [(s["writer"], s["written"], s["removed"], round(s["seconds"], 2)) for s in stats]
    print(
        f"\n{WRITERS} writers, {N_JOBS} jobs x 3 stages each, batches of {BATCH}: {elapsed:.1f} s "
        f"with process start-up; (writer, written, removed, seconds writing): {summary}"
    )

    with JobsIndex.open(db_url) as index:
        assert index.counts_consistent()
        page = index.list_jobs(parse_list_query({}))
        assert page.total == N_JOBS == len(page.jobs)
        for job in page.jobs:
            i = int(job["id"][3:])
            assert job["status"] == history_status(i), job
            assert job["execution_end_time"] - job["execution_start_time"] == 45 + i
            detail = index.get_job(job["id"])
            assert detail["execution_status"]["completed"] is True  # the history version
        assert index.total(parse_list_query({"status": "pending,in_progress"})) == 0
        by_source = sum(index.total(parse_list_query({"source": s})) for s in ("host-a", "host-b"))
        assert by_source == N_JOBS
        for wf in ("wf-0", "wf-1", "wf-2"):
            expected = sum(1 for i in range(N_JOBS) if f"wf-{i % 3}" == wf)
            assert index.total(parse_list_query({"workflow_id": wf})) == expected


# -- a writer waits for another writer's transaction instead of failing ---------------


def hold_write_lock(url: str, held, released, seconds: float) -> None:
    with JobsIndex.open(url) as index:
        with write_transaction(index.engine) as conn:
            # Make it a real write in progress (SQLite: BEGIN IMMEDIATE already holds the lock).
            conn.exec_driver_sql("UPDATE job_counts SET n = n WHERE 1 = 0")
            held.set()
            time.sleep(seconds)
            released.set()  # the commit follows at once


def test_writer_waits_for_another_writer_then_succeeds(db_url):
    with JobsIndex.open(db_url) as index:
        index.ingest([version(1, 0)])
        held, released = SPAWN.Event(), SPAWN.Event()
        holder = SPAWN.Process(target=hold_write_lock, args=(db_url, held, released, 3.0))
        holder.start()
        try:
            assert held.wait(timeout=60)
            # Readers are not blocked by the writer (WAL / MVCC): answered while it holds.
            assert index.total() == 1
            assert not released.is_set()
            result = index.ingest([version(1, 2), version(2, 0)])  # waits, then succeeds
            assert released.is_set()  # it really waited for the holder
        finally:
            holder.join(timeout=60)
        assert holder.exitcode == 0
        assert result.inserted == 1 and result.updated == 1
        assert index.counts_consistent()
        assert index.get_job("cj-0001")["status"] == history_status(1)


def test_sqlite_busy_timeout_is_set(sqlite_url):
    with JobsIndex.open(sqlite_url) as index, index.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_one_batch_keeps_the_newest_stage(index):
    """Versions of one job inside one ingest call obey the same rule as across calls:
    a stale queue snapshot after the history item does not win."""
    result = index.ingest(
        [version(1, 2), version(1, 0), version(2, 1), version(2, 0), version(3, 0), version(3, 2), version(3, 1)]
    )
    assert result.inserted == 3
    assert [index.get_job(f"cj-{i:04d}")["status"] for i in (1, 2, 3)] == [
        history_status(1),
        "in_progress",
        history_status(3),
    ]
    assert index.counts_consistent()
