"""Several ComfyUIs, one index (issue 19): each custom node writes its own source
(``<host>:<port>``), one process per source at a time (a lease in the database),
deletions stay in their source and in short transactions, changes survive an outage
in the outbox, and a resync never undoes a prune. In-process stand-in ComfyUIs
(``test_custom_node.comfyui``) over real loopback HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, event, text

from jobs_index import JobsIndex
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
from jobs_index.toolbox import prune, prune_filter

from .live_util import eventually
from .test_custom_node import WAIT, Gate, _true, comfyui, run

pytestmark = pytest.mark.timeout(120)
HOST = socket.gethostname()


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def synthetic(count: int, seed: int):
    return [from_history(job_id, item) for job_id, item in synthetic_history(count, seed=seed)]


# -- item 1: sources that cannot erase each other --------------------------------


def test_two_comfyuis_with_default_settings_keep_each_others_jobs(db_url):
    """One install started twice (two ports), one index, the node's defaults: B's
    start-up does not remove A's running and pending jobs, B's "clear history" and a
    delete in B's panel do not remove A's finished jobs."""
    gate_a = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate_a) as a:
            done_a = [await a.submit() for _ in range(3)]
            gate_a.release(3)
            await a.finished(3)
            running_a, pending_a = await a.submit(), await a.submit()
            assert await eventually(lambda: _true(gate_a.started[-1:] == [running_a]), WAIT)
            async with comfyui(db_url) as b:
                assert a.node.writer.source == f"{HOST}:{a.server.port}"
                assert b.node.writer.source == f"{HOST}:{b.server.port}" != a.node.writer.source
                # B's start-up resync reconciled its own live rows, not A's
                assert await a.status_of(running_a) == "in_progress"
                assert await a.status_of(pending_a) == "pending"
                done_b = [await b.submit() for _ in range(2)]
                await b.finished(2)
                assert (await b.post("/history", {"delete": [done_a[0]]}))[0] == 200  # A's job, in B's panel
                assert (await b.post("/history", {"clear": True}))[0] == 200
                assert [await b.status_of(job) for job in done_b] == [None, None]  # B's own: cleared
                assert [await b.status_of(job) for job in done_a] == ["completed"] * 3
                assert [await a.status_of(job) for job in done_a] == ["completed"] * 3
                assert await a.status_of(running_a) == "in_progress"
            gate_a.release(2)
            await a.finished(5)
            assert await a.parity() == []

    run(scenario())


def test_one_writer_per_source_the_second_waits_with_a_clear_log_line(db_url, caplog):
    """Two ComfyUIs configured with the same source: the second writes nothing (its
    /api/jobs is ComfyUI's own) and says why; once the first stops it takes over."""
    caplog.set_level(logging.INFO, logger="jobs_index.comfyui")
    gate_a = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate_a, source="gpu") as a:
            running_a = await a.submit()
            assert await eventually(lambda: _true(gate_a.started == [running_a]), WAIT)
            b_cm = comfyui(db_url, source="gpu", wait_ready=False, lease_ttl=60.0)
            b = await b_cm.__aenter__()
            try:
                assert await eventually(lambda: _true(b.node.writer.waiting_for is not None), WAIT)
                assert "is being recorded by another process" in caplog.text
                assert not b.node.writer.ready
                job_b = await b.submit()
                await b.finished(1)
                assert await a.status_of(running_a) == "in_progress"  # B did not reconcile it away
                assert await in_thread(a.node.writer.index.get_job, running_a)
                holder, _ = await in_thread(a.node.writer.index.lease_of, "gpu")
                assert holder == a.node.writer.holder
                a.node.close()  # A stops: it releases the lease
                assert await eventually(lambda: _true(b.node.writer.ready), WAIT)
                assert await b.status_of(job_b) == "completed"  # from the outbox
                assert await b.status_of(running_a) is None  # A's live row: A is gone
                assert "took the lease of source 'gpu'" in caplog.text
            finally:
                await b_cm.__aexit__(None, None, None)
            gate_a.release()

    run(scenario())


def test_an_expired_or_dead_holders_lease_is_taken_over(db_url, tmp_path):
    """A lease of a holder on another host is respected until it expires; one of a
    process of this host that has exited is taken over at once."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with JobsIndex.open(db_url) as index:
        ttl_ms = 8000  # long enough that a loaded machine still sees the writer wait
        assert index.acquire_lease("far", "otherhost/42/abcd", ttl_ms)[0]
        assert index.acquire_lease("near", f"{HOST}/{dead.pid}/abcd", 3_600_000)[0]

    async def scenario():
        started = time.monotonic()
        async with comfyui(db_url, source="far", wait_ready=False) as far:
            assert await eventually(lambda: _true(far.node.writer.waiting_for == "otherhost/42/abcd"), WAIT)
            assert await eventually(lambda: _true(far.node.writer.ready), WAIT)
            assert time.monotonic() - started >= 1.0  # it waited for the expiry
        async with comfyui(db_url, source="near", wait_ready=False) as near:
            assert await eventually(lambda: _true(near.node.writer.ready), 5)  # not an hour
            assert near.node.writer.waiting_for is None

    run(scenario())


def test_a_writer_that_lost_its_lease_changes_nothing(db_url, caplog):
    """Another process took the source over (say, this one stalled past its lease):
    this one's "clear history" is refused inside the delete's own transaction, it
    says so and stops writing."""
    caplog.set_level(logging.INFO, logger="jobs_index.comfyui")

    async def scenario():
        async with comfyui(db_url, source="gpu") as comfy:
            job = await comfy.submit()
            await comfy.finished(1)
            assert await comfy.status_of(job) == "completed"
            engine = create_engine(db_url)
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE source_leases SET holder = 'otherhost/1/x', expires_at = :t WHERE source = 'gpu'"),
                    {"t": int(time.time() * 1000) + 3_600_000},
                )
            engine.dispose()
            assert (await comfy.post("/history", {"clear": True}))[0] == 200
            assert await eventually(lambda: _true(not comfy.node.writer.ready), WAIT)
            assert "lost the lease of source 'gpu'" in caplog.text
            with JobsIndex.open(db_url) as index:
                assert (await in_thread(index.get_job, job))["status"] == "completed"
                assert (await in_thread(index.lease_of, "gpu"))[0] == "otherhost/1/x"

    run(scenario())


def test_old_default_source_rows_keep_their_history_and_lose_stale_live_rows(db_url):
    """Rows recorded under the old default source ``comfyui``: history stays as it
    is (visible, not cleared by a new node's clear), pending/running rows (stale:
    nobody writes that source any more) are removed once."""
    history = synthetic(5, seed=3)
    from jobs_index.normalize import from_queue

    stale = from_queue([7, "legacy-running", {}, {"create_time": 1}, []], "in_progress")
    with JobsIndex.open(db_url) as index:
        index.ingest(history + [stale], source="comfyui")

    async def scenario():
        async with comfyui(db_url) as comfy:
            assert await comfy.status_of("legacy-running") is None
            job = await comfy.submit()
            await comfy.finished(1)
            assert (await comfy.post("/history", {"clear": True}))[0] == 200
            assert await comfy.status_of(job) is None
            _, body = await comfy.get("/api/jobs?source=comfyui")
            assert sorted(j["id"] for j in body["jobs"]) == sorted(r.id for r in history)

    run(scenario())


# -- item 2: deletes stay in their lane and stay cheap -----------------------------


def test_clear_history_deletes_in_short_batches_of_its_own_source(db_url):
    """ "Clear history" over many finished jobs: no DELETE removes more than a batch
    (each batch its own transaction, as ``prune``); other sources' jobs and this
    source's live jobs stay."""
    gate = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate, delete_batch=10) as comfy:
            index = comfy.node.writer.index
            mine = synthetic(45, seed=5)
            others = synthetic(12, seed=6)
            await in_thread(lambda: index.ingest(mine, source=comfy.node.writer.source))
            await in_thread(lambda: index.ingest(others, source="elsewhere"))
            deletes: list[int] = []

            def count(conn, cursor, statement, *args):
                if statement.lstrip().upper().startswith("DELETE FROM JOBS "):
                    deletes.append(cursor.rowcount)

            event.listen(index.engine, "after_cursor_execute", count)
            try:
                done = await comfy.submit()
                gate.release()
                await comfy.finished(1)
                waiting = await comfy.submit()
                assert (await comfy.post("/history", {"delete": [others[0].id]}))[0] == 200
                assert (await comfy.post("/history", {"clear": True}))[0] == 200
                assert await comfy.status_of(done) is None
                assert await comfy.status_of(waiting) in ("pending", "in_progress")
            finally:
                event.remove(index.engine, "after_cursor_execute", count)
            _, body = await comfy.get(f"/api/jobs?source={comfy.node.writer.source}")
            assert [job["id"] for job in body["jobs"]] == [waiting]
            _, body = await comfy.get("/api/jobs?source=elsewhere")
            assert body["pagination"]["total"] == len(others)  # the panel delete did not reach them
            assert sum(deletes) == len(mine) + 1 and max(deletes) <= 10 and len(deletes) >= 5
            assert await in_thread(index.counts_consistent)
            gate.release()

    run(scenario())


# -- item 3: writes survive an outage (in process; a killed process: test_node_crash) ---


def test_more_jobs_than_the_queue_and_the_history_hold_survive_an_outage(tmp_path):
    """The database cannot be opened while more jobs finish than the writer's queue
    holds and ComfyUI keeps (its history evicts them): the outbox keeps every one."""
    blocker = tmp_path / "db" / "jobs.sqlite3"
    blocker.mkdir(parents=True)

    async def scenario():
        async with comfyui(
            f"sqlite:///{blocker}",
            wait_ready=False,
            queue_max=4,
            max_history_size=2,
            outbox=str(tmp_path / "user" / "jobs-index" / "outbox.sqlite3"),
        ) as comfy:
            # (ComfyUI's port, hence the source and the outbox, are known at once in ComfyUI)
            assert await eventually(lambda: _true(comfy.node.writer.outbox is not None), WAIT)
            ids = []
            for _ in range(12):
                ids.append(await comfy.submit())
                await comfy.finished(min(len(ids), 3))
            assert await eventually(lambda: _true(comfy.node.writer.failing is not None), WAIT)
            assert len(comfy.queue.history) == 3  # ComfyUI forgot the others
            blocker.rmdir()
            assert await eventually(lambda: _true(comfy.node.writer.ready), WAIT)
            # The writer may report ready while the last outbox batches are still being
            # applied (seen on a loaded machine): wait for the outbox to drain, then every
            # job must be there. A lost change would leave the outbox empty and a job missing.
            assert await eventually(lambda: _true(comfy.node.writer.outbox.count() == 0), WAIT)
            assert [await comfy.status_of(job) for job in ids] == ["completed"] * 12
            # (a loaded machine may drop pending/running updates past queue_max=4, never a
            # finished job: test_writer_handoff.py pins that down without timing)

    run(scenario())


def test_without_an_outbox_file_a_full_memory_outbox_drops_and_a_resync_repairs(tmp_path):
    """``JOBS_INDEX_OUTBOX=off``: changes wait in memory, bounded; past the bound they
    are dropped and the index is repaired from ComfyUI's memory when the database is back."""
    blocker = tmp_path / "db" / "jobs.sqlite3"
    blocker.mkdir(parents=True)

    async def scenario():
        async with comfyui(f"sqlite:///{blocker}", wait_ready=False, outbox=None) as comfy:
            assert await eventually(lambda: _true(comfy.node.writer.outbox is not None), WAIT)
            assert not comfy.node.writer.outbox.durable
            comfy.node.writer.outbox.limit = 5
            ids = [await comfy.submit() for _ in range(6)]
            await comfy.finished(6)
            assert await eventually(lambda: _true(comfy.node.writer.stats["dropped"] > 0), WAIT)
            assert comfy.node.writer.outbox.count() <= 5
            blocker.rmdir()
            assert await eventually(lambda: _true(comfy.node.writer.ready), WAIT)
            assert [await comfy.status_of(job) for job in ids] == ["completed"] * 6
            assert await comfy.parity() == []

    run(scenario())


# -- item 5: prune and the node agree --------------------------------------------


def test_a_resync_does_not_undo_a_prune_or_an_sql_delete(db_url):
    async def scenario():
        async with comfyui(db_url) as comfy:
            ids = [await comfy.submit() for _ in range(5)]
            await comfy.finished(5)
            assert [await comfy.status_of(job) for job in ids] == ["completed"] * 5
            with JobsIndex.open(db_url) as other:  # the operator, elsewhere
                removed = await in_thread(lambda: prune(other, prune_filter(other, keep=3)))
                assert removed.total == 2
            engine = create_engine(db_url)
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": ids[4]})
            engine.dispose()
            assert all(job in comfy.queue.history for job in ids)  # ComfyUI still holds them all
            # Which two prune took depends on the id tiebreak when create_times tie.
            kept = [await comfy.status_of(job) for job in ids]
            assert kept.count(None) >= 2 and kept[4] is None
            resyncs = comfy.node.writer.stats["resyncs"]
            comfy.node.writer.request_resync()
            assert await eventually(lambda: _true(comfy.node.writer.stats["resyncs"] > resyncs), WAIT)
            assert [await comfy.status_of(job) for job in ids] == kept
            new = await comfy.submit()
            await comfy.finished(6)
            assert await comfy.status_of(new) == "completed"

    run(scenario())
