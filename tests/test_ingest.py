"""Ingest semantics on each backend: idempotence, newer versions win, a queue dump
is the truth about live jobs, malformed items are rejected one by one, and the
trigger-kept totals always equal a COUNT over the table."""

from __future__ import annotations

import copy
import json

from sqlalchemy import select

from jobs_index import ListQuery
from jobs_index.ingest import detect, import_dump, records
from jobs_index.queries import jobs
from jobs_index.rawcodec import decode_item as decode_raw

from .fixtures_util import capture_history, capture_queue, snapshot_history


def queue_dump(running=(), pending=()) -> dict:
    return {"queue_running": list(running), "queue_pending": list(pending)}


def row(index, job_id):
    with index.engine.connect() as conn:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).first()


def test_importing_twice_changes_nothing(index):
    first = import_dump(index, detect("h", capture_history()))
    again = import_dump(index, detect("h", capture_history()))
    assert (first.inserted, first.updated, first.unchanged) == (7, 0, 0)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 7)
    assert index.total() == 7
    assert index.counts_consistent()


def test_pending_job_that_finished_becomes_its_history_row(index):
    running, pending = capture_queue()
    history = capture_history()
    import_dump(index, detect("q", queue_dump(running, pending)))
    job_id = pending[0][1]
    assert index.get_job(job_id)["status"] == "pending"
    finished = {job_id: history[job_id]} if job_id in history else {}
    assert finished, "the capture's pending job finished later in the run"
    result = import_dump(index, detect("h", finished))
    assert result.updated == 1
    assert index.get_job(job_id)["status"] in ("completed", "failed", "cancelled")
    assert row(index, job_id).stage == 2
    # A stale queue snapshot can no longer turn it back into a pending job.
    stale = import_dump(index, detect("q", queue_dump(running, pending)))
    assert row(index, job_id).stage == 2 and stale.unchanged >= 1
    assert index.counts_consistent()


def test_queue_dump_is_the_truth_about_live_jobs(index):
    running, pending = capture_queue()
    import_dump(index, detect("h", snapshot_history()))
    import_dump(index, detect("q", queue_dump(running, pending)))
    cancelled = pending[-1][1]  # cancelled while pending: ComfyUI forgets it
    result = import_dump(index, detect("q", queue_dump(running, pending[:-1])))
    assert result.removed == 1
    assert row(index, cancelled) is None
    # History rows are never removed by a queue snapshot, even an empty one.
    result = import_dump(index, detect("q", queue_dump()))
    assert result.removed == len(running) + len(pending) - 1
    assert index.total() == len(snapshot_history())
    assert index.counts_consistent()


def test_queue_snapshot_only_reconciles_its_own_source(index):
    running, pending = capture_queue()
    import_dump(index, detect("q", queue_dump(running, pending)), source="gpu-1")
    import_dump(index, detect("q", queue_dump()), source="gpu-2")
    assert index.total(ListQuery(statuses=("pending", "in_progress"))) == 3
    import_dump(index, detect("q", queue_dump()), source="gpu-1")
    assert index.total(ListQuery(statuses=("pending", "in_progress"))) == 0


def test_malformed_items_are_rejected_and_the_rest_kept(index):
    history = capture_history()
    good = len(history)
    history["no-prompt"] = {"outputs": {}}
    history["short-prompt"] = {"prompt": [1, "short-prompt"]}
    history["not-an-object"] = ["x"]
    history["bad-number"] = {
        **copy.deepcopy(next(iter(capture_history().values()))),
        "prompt": ["one", "bad-number", {}, {}, []],
    }
    # Ids ComfyUI lists (it takes any string): kept, though no cursor can end on them.
    history["x" * 200] = next(iter(capture_history().values()))
    history[""] = next(iter(capture_history().values()))
    result = import_dump(index, detect("h", history))
    assert result.inserted == good + 2
    reasons = dict(result.rejected)
    assert set(reasons) == {"no-prompt", "short-prompt", "not-an-object", "bad-number"}
    assert all(reasons.values())
    assert index.total() == good + 2
    assert index.get_job("x" * 200)["id"] == "x" * 200 and index.get_job("")["id"] == ""


def test_defensive_normalisation_keeps_odd_jobs(index):
    """Where ComfyUI itself would raise, the job is still indexed (CONTRACT.md)."""
    item = copy.deepcopy(next(iter(capture_history().values())))
    item["prompt"][3]["extra_pnginfo"] = None
    item["status"] = None
    item["outputs"] = {"9": {"images": [{"filename": None, "type": "output"}], "text": [["hello"]]}}
    result = import_dump(index, detect("h", {"odd": item}))
    assert result.inserted == 1
    job = index.get_job("odd")
    assert job["status"] == "completed"
    assert "workflow_id" not in job
    assert job["outputs_count"] == 2
    assert job["preview_output"]["nodeId"] == "9"


def test_raw_item_is_kept_losslessly_without_the_sensitive_element(index):
    running, pending = capture_queue()
    secret = {"api_key_comfy_org": "sk-planted"}
    item = running[0] + [secret]
    import_dump(index, detect("q", queue_dump([item])))
    stored = row(index, item[1])
    assert decode_raw(stored.raw) == running[0]
    assert b"sk-planted" not in json.dumps(decode_raw(stored.raw)).encode()
    history = capture_history()
    import_dump(index, detect("h", history))
    for job_id, original in history.items():
        assert decode_raw(row(index, job_id).raw) == original


def test_counts_stay_exact_through_every_kind_of_write(index):
    running, pending = capture_queue()
    import_dump(index, detect("q", queue_dump(running, pending)), source="a")
    import_dump(index, detect("h", capture_history()), source="a")  # updates that change status
    import_dump(index, detect("h", capture_history()))  # re-import, no source: keeps "a"
    assert {row(index, i).source for i in capture_history()} == {"a"}
    assert index.counts_consistent()
    index.delete_jobs(list(capture_history())[:3])
    assert index.counts_consistent()
    with index.engine.begin() as conn:  # ad-hoc SQL by a user keeps counts exact too
        conn.exec_driver_sql("UPDATE jobs SET workflow_id = 'renamed' WHERE status = 'completed'")
        conn.exec_driver_sql("DELETE FROM jobs WHERE status = 'failed'")
    assert index.counts_consistent()
    assert index.total(ListQuery(workflow_id="renamed")) == index.total(ListQuery(statuses=("completed",)))


def test_ingest_in_small_batches(index):
    history = capture_history()
    result = index.ingest(records(detect("h", history), []), batch_size=2)
    assert result.inserted == len(history)
    assert index.counts_consistent()


def test_parallel_normalisation_gives_the_same_rows(tmp_path):
    """Worker processes normalise a large dump; the rows are those of a sequential import."""
    from jobs_index import JobsIndex
    from jobs_index.ingest import PARALLEL_MIN_ITEMS
    from jobs_index.sample import synthetic_history

    history = dict(synthetic_history(PARALLEL_MIN_ITEMS + 300, seed=7))
    history["broken"] = {"prompt": "not a tuple"}
    digests = []
    for workers in (0, 1):
        with JobsIndex.open(f"sqlite:///{tmp_path}/w{workers}.sqlite3") as index:
            result = import_dump(index, detect("h", history), workers=workers)
            assert (result.inserted, [job_id for job_id, _ in result.rejected]) == (len(history) - 1, ["broken"])
            with index.engine.connect() as conn:
                digests.append(conn.exec_driver_sql("SELECT id, raw_digest, status FROM jobs ORDER BY id").all())
    assert digests[0] == digests[1]
