"""The node's hand-off from ComfyUI's threads to the outbox (``Writer.submit``) never
drops a finished job because the pump lags.

ComfyUI forgets finished jobs past its history cap, so a finished change dropped from
the hand-off could not be redone by a resync: it would be lost. Only pending/running
updates (which ComfyUI holds until the job finishes) are dropped past ``max_queue``;
everything is bounded by ``hard_limit``. Real parts: a real index (each backend), a
real outbox file, the writer's own threads.
"""

from __future__ import annotations

import threading

from jobs_index import JobsIndex
from jobs_index.comfyui.writer import FINISHED, QUEUED, State, Writer
from jobs_index.normalize import IN_PROGRESS, PENDING, from_history
from jobs_index.sample import synthetic_history

CAP = 3  # ComfyUI's history holds this many


def comfyui_run(writer: Writer, history: dict, jobs: dict) -> None:
    """What ComfyUI submits as each job is queued, runs and finishes (its history capped)."""
    with writer.mutex:
        for job_id, entry in jobs.items():
            writer.submit(QUEUED, (entry["prompt"], PENDING))
            writer.submit(QUEUED, (entry["prompt"], IN_PROGRESS))
            history[job_id] = entry
            while len(history) > CAP:
                history.pop(next(iter(history)))
            writer.submit(FINISHED, (job_id, entry))


def test_a_lagging_pump_drops_no_finished_job(db_url, tmp_path):
    jobs = dict(synthetic_history(40, seed=11))
    history: dict = {}
    writer = Writer(
        open_index=lambda: JobsIndex.open(db_url),
        mutex=threading.RLock(),
        source="box:8188",
        read_state=lambda: State(dict(history), [], []),
        max_queue=2,
        outbox=tmp_path / "outbox.sqlite3",
        resync_interval=3600,
    )
    # The pump has not run yet (as if stuck on a slow disk) while every job runs.
    comfyui_run(writer, history, jobs)
    assert writer.stats["dropped"] == 2 * len(jobs) - 2  # the pending/running updates past max_queue
    assert len(history) == CAP  # ComfyUI forgot all the others
    writer.start()
    try:
        assert writer.flush(60)  # dropped updates hold it back until a resync repaired them
    finally:
        writer.close()
    with JobsIndex.open(db_url) as index:
        assert {job_id: (index.get_job(job_id) or {}).get("status") for job_id in jobs} == {
            job_id: from_history(job_id, entry).status for job_id, entry in jobs.items()
        }


def test_the_hand_off_is_bounded(tmp_path):
    jobs = dict(synthetic_history(10, seed=12))
    writer = Writer(
        open_index=lambda: JobsIndex.open(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        mutex=threading.RLock(),
        source="box:8188",
        read_state=lambda: State({}, [], []),
        max_queue=2,
        hard_limit=5,
    )
    comfyui_run(writer, {}, jobs)
    assert writer.last_seq == 3 * len(jobs)
    assert writer.stats["dropped"] == writer.last_seq - 5  # past hard_limit even finished jobs
    assert writer._drop_min is not None  # ... and done_seq is held back until a resync
