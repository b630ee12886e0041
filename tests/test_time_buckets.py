"""Deep offset pages by time buckets (``job_time_buckets``, revision 0012), on both
engines: a page that skips its offset bucket by bucket equals the plain ``OFFSET``
page row for row (and the HTTP answer the contract's reference), across bucket
edges, with status filters, in both orders, past the end, and after every kind of
write; the buckets stay exact on every write path (``counts_consistent`` recounts
them), ``check`` finds and repairs drift, and the migration fills them."""

from __future__ import annotations

import random

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, inspect, text

from jobs_index import JobsIndex, parse_list_query, queries
from jobs_index.check import check
from jobs_index.database import (
    alembic_config,
    make_engine,
    migrate,
    read_transaction,
    write_transaction,
)
from jobs_index.normalize import IN_PROGRESS, PENDING, from_history, from_queue
from jobs_index.sample import history_item, queue_item
from jobs_index.schema import COARSE_BUCKET_BITS, FINE_BUCKET_BITS, Job

from .strategies import states
from .test_parity_properties import assert_listing_matches_reference

W, C = 1 << FINE_BUCKET_BITS, 1 << COARSE_BUCKET_BITS
EDGES = [-C - 1, -C, -W - 1, -W, -1, 0, 1, W - 1, W, W + 1, 3 * W, C - 1, C, C + W, 2 * C - W, 1_765_000_000_000]
STATUS_SETS = [None, "completed", "failed,pending", "completed,failed,cancelled,in_progress", "in_progress"]
SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture
def bucketed(monkeypatch):
    """Every offset page (offset > 0) goes by the buckets."""
    monkeypatch.setattr(queries, "BUCKETS_FROM_OFFSET", 1)


def records_at(times: list[int], seed: int = 1) -> list:
    """History jobs at ``times`` (statuses as the sample rolls them), a pending and a
    running job at the last two."""
    rng = random.Random(seed)
    out = [from_history(f"job-{i:04d}", history_item(rng, f"job-{i:04d}", i, t, "wf")) for i, t in enumerate(times)]
    for i, status in ((len(times) - 1, PENDING), (len(times) - 2, IN_PROGRESS)):
        if i >= 0:
            out[i] = from_queue(queue_item(rng, f"job-{i:04d}", i, times[i], "wf"), status)
    return out


def assert_pages_equal(index: JobsIndex, n: int) -> None:
    """Bucket pages = plain OFFSET pages, every offset up to past the end."""
    with read_transaction(index.engine) as conn:
        for statuses in STATUS_SETS:
            for order in ("desc", "asc"):
                params = {"sort_order": order, **({"status": statuses} if statuses else {})}
                query = parse_list_query(params)
                for limit in (1, 3):
                    for offset in range(1, n + 3):
                        kwargs = {"limit": limit + 1, "offset": offset, "with_total": True}
                        bucketed = queries.select_page(conn, query, **kwargs)
                        saved, queries.BUCKETS_FROM_OFFSET = queries.BUCKETS_FROM_OFFSET, 10**15
                        try:
                            plain = queries.select_page(conn, query, **kwargs)
                        finally:
                            queries.BUCKETS_FROM_OFFSET = saved
                        assert bucketed == plain, (params, limit, offset)


@SETTINGS
@given(times=st.lists(st.sampled_from(EDGES) | st.integers(-2 * C, 3 * C), min_size=1, max_size=14))
def test_bucket_pages_equal_offset_pages_across_edges(index, bucketed, times):
    with index.engine.connect() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM jobs")]
    index.delete_jobs(ids)
    index.ingest(records_at(times))
    assert index.counts_consistent()
    assert_pages_equal(index, len(times))


@SETTINGS
@given(state=states(), data=st.data())
def test_bucket_pages_answer_like_the_reference(index, bucketed, state, data):
    assert_listing_matches_reference(index, state, data)


def test_every_write_path_keeps_the_buckets_exact(index, bucketed, backend):
    times = [k * W // 3 for k in range(30)] + [C * k - 1 for k in range(10)]
    records = records_at(times)
    index.ingest(records[:30], bulk=True)  # a bulk load into the empty index
    index.ingest(records[30:])  # batches
    assert index.counts_consistent()
    # a pending job runs, then finishes (status changes through the writer's upsert)
    rng = random.Random(5)
    index.ingest([from_queue(queue_item(rng, "job-0039", 39, times[39], "wf"), IN_PROGRESS)])
    index.ingest([from_history("job-0039", history_item(rng, "job-0039", 39, times[39] + 5 * W, "wf"))])
    assert index.counts_consistent()
    assert_pages_equal(index, 40)
    index.delete_jobs(["job-0001", "job-0020"])  # the API's delete
    index.reconcile_live([], source=None)  # the running job forgotten by ComfyUI
    with write_transaction(index.engine) as conn:  # plain SQL: the triggers
        conn.execute(text("DELETE FROM jobs WHERE id = 'job-0005'"))
        conn.execute(text(f"UPDATE jobs SET create_time = create_time + {2 * W} WHERE id = 'job-0006'"))
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = 'job-0007'"))
        conn.execute(text("UPDATE jobs SET create_time = -7, status = 'failed' WHERE id = 'job-0008'"))
    assert index.counts_consistent()
    assert_pages_equal(index, 40)
    from jobs_index.toolbox import prune, prune_filter

    prune(index, prune_filter(index, older_than_ms=0, now=times[12]))
    assert index.counts_consistent()
    assert_pages_equal(index, 40)


def test_check_finds_and_repairs_drifted_buckets(index):
    index.ingest(records_at([k * W // 2 for k in range(12)]))
    with write_transaction(index.engine) as conn:
        conn.execute(text("UPDATE job_time_buckets SET n = n + 3 WHERE bits = 22 AND status = '' AND bucket = 1"))
        conn.execute(text("DELETE FROM job_time_buckets WHERE bits = 28 AND status = 'completed'"))
    assert not index.counts_consistent()
    report = check(index)
    assert len(report.buckets) == 2 and not report.clean
    assert check(index, repair=True).buckets == report.buckets
    assert index.counts_consistent() and check(index).clean


@pytest.mark.parametrize("tamper", ["DELETE FROM job_time_buckets", "UPDATE job_time_buckets SET n = n + 1"])
def test_buckets_that_disagree_with_job_counts_fall_back_to_offset(index, bucketed, tamper, caplog):
    """A load that rebuilt only ``job_counts`` (triggers set aside), or rows edited by
    hand: the coarse buckets' sum differs from ``total``, and the page skips by OFFSET."""
    index.ingest(records_at([k * C // 5 for k in range(20)]))
    with write_transaction(index.engine) as conn:
        conn.execute(text(tamper))
    with caplog.at_level("WARNING", logger="jobs_index.queries"):
        assert_pages_equal(index, 20)
    assert "job_time_buckets count" in caplog.text


def test_migration_fills_the_buckets_and_downgrades(db_url, backend):
    records = records_at([k * C // 4 - 3 * W for k in range(25)])
    engine = make_engine(db_url)
    try:
        migrate(engine, "0012_search_grams")
        with write_transaction(engine) as conn:
            rows = [{**r.as_row(), "indexed_at": 1} for r in records]
            conn.execute(insert(Job.__table__), rows)
        migrate(engine, "head")
        index = JobsIndex(engine)
        assert index.counts_consistent()
        with read_transaction(engine) as conn:
            assert queries.stored_buckets(conn) == queries.recount_buckets(conn) != {}
        index.delete_jobs(["job-0003"])  # the triggers are in place
        assert index.counts_consistent()
        assert_pages_equal(index, 25)
        with write_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), "0012_search_grams")
        assert "job_time_buckets" not in inspect(engine).get_table_names()
        with write_transaction(engine) as conn:  # no trigger left behind
            conn.execute(text("DELETE FROM jobs WHERE id = 'job-0004'"))
        migrate(engine, "head")
        assert index.counts_consistent()
    finally:
        engine.dispose()
