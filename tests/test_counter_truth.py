"""A wrong counter never hides a job (issue 18, item 2), on both engines.

``job_counts`` gives ``total`` at constant cost, but the rows are the truth: a
listing always reads its rows, and a page that finds rows the counters say are
not there (or fewer than they say) answers the real total and repairs the
counters. Served over real HTTP.
"""

from __future__ import annotations

import logging
import random

import pytest
from sqlalchemy import text

from jobs_index.normalize import PENDING, from_queue
from jobs_index.sample import queue_item

from .live_server import live_server
from .toolbox_util import recent_records

PENDING_JOBS = 5


@pytest.fixture
def filled(index):
    """40 history jobs, one running, and 5 pending jobs of one workflow."""
    rng = random.Random(3)
    records = recent_records(40, start_ms=1_764_000_000_000)
    records = [r for r in records if r.status != PENDING]
    records += [
        from_queue(queue_item(rng, f"pending-{i}", 1000 + i, 1_765_000_000_000 + i, "wf-p"), PENDING)
        for i in range(PENDING_JOBS)
    ]
    index.ingest(records, source="gpu1")
    assert index.counts_consistent()
    return index, records


def set_pending_counter(index, n: int) -> None:
    with index.engine.begin() as conn:
        conn.execute(text("UPDATE job_counts SET n = :n WHERE status = 'pending'"), {"n": n})


@pytest.mark.parametrize(
    "query, expected",
    [
        ("?status=pending", PENDING_JOBS),
        ("?status=pending&workflow_id=wf-p", PENDING_JOBS),
        ("?status=pending&source=gpu1", PENDING_JOBS),
        ("?status=pending,in_progress", PENDING_JOBS + 1),
        ("?status=pending&offset=2", PENDING_JOBS - 2),
        ("?status=pending&limit=2", 2),
        ("?status=pending&sort_by=execution_duration&sort_order=asc", PENDING_JOBS),
    ],
)
def test_zeroed_pending_counter_still_lists_every_pending_job(filled, query, expected, caplog):
    index, records = filled
    set_pending_counter(index, 0)
    assert not index.counts_consistent()
    with caplog.at_level(logging.WARNING, logger="jobs_index.services"), live_server(index) as client:
        reply = client.get(f"/api/jobs{query}")
    assert reply.status == 200
    jobs = reply.body["jobs"]
    assert len(jobs) == expected and {job["status"] for job in jobs} <= {"pending", "in_progress"}
    live = PENDING_JOBS + (1 if "in_progress" in query else 0)
    assert reply.body["pagination"]["total"] == live  # the rows' count, not the counter's 0
    assert reply.body["pagination"]["has_more"] is (expected < live - (2 if "offset" in query else 0))
    assert index.counts_consistent()  # and the counters were repaired
    assert "job_counts says" in caplog.text and "repaired" in caplog.text


def test_zeroed_counter_does_not_hide_jobs_from_the_whole_listing(filled):
    index, records = filled
    with index.engine.begin() as conn:
        conn.execute(text("UPDATE job_counts SET n = 0"))
    with live_server(index) as client:
        reply = client.get("/api/jobs")
        assert len(reply.body["jobs"]) == len(records) == reply.body["pagination"]["total"]
        reply = client.get("/api/jobs?offset=44")  # at/past the counter's 0 total
        assert len(reply.body["jobs"]) == len(records) - 44 == 2
    assert index.counts_consistent()


def test_counter_above_the_rows_is_repaired(filled):
    """The other way: the counters say more jobs than exist (a page finds fewer)."""
    index, _ = filled
    set_pending_counter(index, 50)
    with live_server(index) as client:
        reply = client.get("/api/jobs?status=pending")
        assert len(reply.body["jobs"]) == PENDING_JOBS == reply.body["pagination"]["total"]
        # Past the end of the rows, inside the counter's phantom 50: nothing, total repaired.
        set_pending_counter(index, 50)
        reply = client.get("/api/jobs?status=pending&offset=20")
        assert reply.body["jobs"] == [] and reply.body["pagination"]["total"] == PENDING_JOBS
    assert index.counts_consistent()


def test_cursor_page_with_a_zeroed_counter(filled):
    index, _ = filled
    with live_server(index) as client:
        first = client.get("/api/jobs?status=pending&limit=2")
        cursor = first.body["pagination"]["next_cursor"]
        set_pending_counter(index, 0)
        rest = client.get(f"/api/jobs?status=pending&limit=10&after={cursor}")
    assert len(rest.body["jobs"]) == PENDING_JOBS - 2
    assert rest.body["pagination"]["total"] == PENDING_JOBS
    assert index.counts_consistent()


def test_correct_counters_are_never_recounted(filled, caplog):
    """No false alarm on ordinary pages (the check is arithmetic on what a page read)."""
    index, records = filled
    with caplog.at_level(logging.WARNING, logger="jobs_index.services"), live_server(index) as client:
        for query in (
            "",
            "?limit=3",
            "?offset=40",
            "?offset=400",
            "?status=pending&offset=5",
            "?status=completed&limit=1",
            "?workflow_id=none",
            "?sort_by=execution_duration&limit=7",
        ):
            reply = client.get(f"/api/jobs{query}")
            assert reply.status == 200
    assert "job_counts" not in caplog.text


def test_read_only_role_still_lists_every_job_and_logs_once(pg_url, caplog):
    """An API server with SELECT only cannot repair the counters: its pages still
    count the rows; the failed repair is logged once, not on every page."""
    import uuid

    from sqlalchemy import create_engine

    from jobs_index import JobsIndex

    with JobsIndex.open(pg_url) as owner:
        rng = random.Random(5)
        owner.ingest(
            [from_queue(queue_item(rng, f"p{i}", i, 1_765_000_000_000 + i, "wf"), PENDING) for i in range(PENDING_JOBS)]
        )
        set_pending_counter(owner, 0)
        with owner.engine.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
    role = f"ro_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url.split("?")[0])
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
            conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        reader_url = pg_url.replace("://postgres@", f"://{role}@", 1)
        with (
            caplog.at_level(logging.WARNING, logger="jobs_index.services"),
            JobsIndex.open(reader_url) as reader,
            live_server(reader) as client,
        ):
            for _ in range(3):
                reply = client.get("/api/jobs?status=pending")
                assert len(reply.body["jobs"]) == PENDING_JOBS == reply.body["pagination"]["total"]
            assert not reader.counts_consistent()  # nothing could be written
        assert caplog.text.count("cannot repair job_counts") == 1
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()
