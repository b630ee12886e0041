"""``jobs-index prune`` on each backend: by age, count and status, in batches, with
exact totals, side rows removed with their jobs, and live jobs spared by default."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from sqlalchemy import select, text

from jobs_index import JobsIndex
from jobs_index.ingest import detect, import_dump
from jobs_index.queries import jobs
from jobs_index.toolbox import RetentionWorker, prune, prune_filter
from jobs_index.units import now_ms

from .fixtures_util import capture_history
from .toolbox_util import DAY_MS, recent_records, run_cli, side_rows, snapshot

FINISHED = ("completed", "failed", "cancelled")


@pytest.fixture
def aged(index):
    """300 finished jobs whose create_time spans the last 300 days, plus live ones."""
    now = now_ms()
    records = recent_records(300, start_ms=now - 400 * DAY_MS, seed=9)
    history = [r for r in records if r.status in FINISHED]
    for i, record in enumerate(history):  # job i is 299.5 - i days old
        record.create_time = now - (len(history) - i) * DAY_MS + DAY_MS // 2
    for record in records:
        if record.status not in FINISHED:
            record.create_time = now - 500 * DAY_MS  # live jobs look ancient: still never pruned
    index.ingest(records)
    return records


def remaining(index) -> list:
    with index.engine.connect() as conn:
        return conn.execute(select(jobs.c.id, jobs.c.status, jobs.c.create_time)).all()


def check_side_rows_match_jobs(index) -> None:
    ids = {r.id for r in remaining(index)}
    outputs, nodes = side_rows(index)
    assert {o["job_id"] for o in outputs} <= ids and {n["job_id"] for n in nodes} <= ids
    assert {n["job_id"] for n in nodes} == ids  # every job has its graph


def test_by_age_in_batches(index, aged):
    now = now_ms()
    selection = prune_filter(index, older_than_ms=90 * DAY_MS, now=now)
    dry = prune(index, selection, dry_run=True)
    old = [r for r in aged if r.status in FINISHED and r.create_time < now - 90 * DAY_MS]
    assert dry.dry_run and dry.total == len(old) == 300 - 90
    done = prune(index, selection, batch_size=37)
    assert done.removed == dry.removed and done.batches == -(-len(old) // 37)
    left = remaining(index)
    assert len(left) == len(aged) - len(old)
    assert all(r.create_time >= now - 90 * DAY_MS or r.status not in FINISHED for r in left)
    assert sum(r.status in ("pending", "in_progress") for r in left) == 3
    assert index.counts_consistent() and index.total() == len(left)
    check_side_rows_match_jobs(index)
    assert prune(index, selection).total == 0  # nothing more to do


def test_by_count_keeps_the_newest(index, aged):
    selection = prune_filter(index, keep=50)
    result = prune(index, selection, batch_size=100)
    finished = sorted((r for r in aged if r.status in FINISHED), key=lambda r: (r.create_time, r.id))
    assert result.total == len(finished) - 50
    kept = {r.id for r in remaining(index) if r.status in FINISHED}
    assert kept == {r.id for r in finished[-50:]}
    assert index.counts_consistent()
    check_side_rows_match_jobs(index)


def test_keep_zero_and_more_than_there_are(index, aged):
    assert prune(index, prune_filter(index, keep=10_000), dry_run=True).total == 0
    assert prune(index, prune_filter(index, keep=0), dry_run=True).total == 300


def test_age_or_count_whichever_removes_more(index, aged):
    now = now_ms()
    both = prune_filter(index, older_than_ms=250 * DAY_MS, keep=100, now=now)
    assert prune(index, both, dry_run=True).total == 200  # the count rule wins
    both = prune_filter(index, older_than_ms=30 * DAY_MS, keep=100, now=now)
    assert prune(index, both, dry_run=True).total == 270  # the age rule wins


def test_by_status_only_and_live_only_when_named(index, aged):
    failed = sum(r.status == "failed" for r in aged)
    result = prune(index, prune_filter(index, statuses=("failed",)))
    assert result.removed == {"failed": failed}
    assert {r.status for r in remaining(index)} == {"completed", "cancelled", "pending", "in_progress"}
    everything_old = prune_filter(index, older_than_ms=1, now=now_ms())
    prune(index, everything_old)
    assert {r.status for r in remaining(index)} == {"pending", "in_progress"}
    result = prune(index, prune_filter(index, statuses=("pending",), older_than_ms=DAY_MS))
    assert result.removed == {"pending": 2}
    assert index.counts_consistent()


def test_jobs_without_create_time_are_dated_by_their_end(index):
    """Older ComfyUI records no create_time (stored as 0): not "1970" for retention."""
    history = copy.deepcopy(capture_history())
    for item in history.values():
        item["prompt"][3].pop("create_time", None)
    import_dump(index, detect("h", history))
    recent_end = now_ms() - DAY_MS
    with index.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET execution_end_time = :t"), {"t": recent_end})
    assert prune(index, prune_filter(index, older_than_ms=90 * DAY_MS), dry_run=True).total == 0
    assert prune(index, prune_filter(index, older_than_ms=DAY_MS // 2)).total == len(history)


def test_cli_dry_run_then_prune(index, aged, db_url):
    before = snapshot(index)
    dry = run_cli("prune", "--older-than", "90d", "--dry-run", db=db_url)
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.startswith("would remove 210 job(s) (completed ")
    assert snapshot(index) == before
    done = run_cli("prune", "--older-than", "90d", "--batch-size", "50", db=db_url)
    assert done.exit_code == 0 and done.stdout.startswith("removed 210 job(s)")
    assert index.counts_consistent() and index.total() == len(aged) - 210
    status = run_cli("prune", "--status", "failed,cancelled", db=db_url)
    assert status.exit_code == 0 and "removed" in status.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to prune"),
        (["--older-than", "90x"], "--older-than: invalid duration"),
        (["--status", "failed,weird"], "--status: invalid status weird"),
        (["--status", ","], "--status: no status given"),
    ],
)
def test_bad_input_is_one_line(index, db_url, args, message):
    result = run_cli("prune", *args, db=db_url)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_retention_worker_prunes_in_the_background(index, aged, db_url):
    reports = []
    worker = RetentionWorker(db_url, 90 * DAY_MS, interval_s=0.2, batch_size=40, report=reports.append)
    worker.start()
    try:
        deadline = time.time() + 30
        while index.total() != len(aged) - 210 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert not worker.is_alive() and worker.rounds >= 1
    assert index.total() == len(aged) - 210
    assert reports[0].startswith("retention: removed 210 job(s)")
    assert index.counts_consistent()
    check_side_rows_match_jobs(index)


def test_serve_with_retention(sqlite_url, tmp_path):
    with JobsIndex.open(sqlite_url) as index:
        now = now_ms()
        records = recent_records(40, start_ms=now - 400 * DAY_MS, seed=4)
        for i, record in enumerate(records):
            record.create_time = now - (200 if i < 25 else 10) * DAY_MS
        index.ingest(records)  # 25 old jobs, 15 + 3 live recent ones
    port = 19000 + os.getpid() % 1000
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs_index.cli",
            "--db",
            sqlite_url,
            "serve",
            "--port",
            str(port),
            "--retention",
            "90d",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        total = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs?limit=1", timeout=5) as reply:
                    total = json.loads(reply.read())["pagination"]["total"]
                if total == 18:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert total == 18
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert "retention: removed 25 job(s)" in err.decode()
    assert "Traceback" not in err.decode()
