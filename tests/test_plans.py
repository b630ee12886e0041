"""Plans that cannot go bad, on a 200k-job index with very few pending jobs.

The SQL is not written here: each test runs a listing through ``JobsIndex.list_jobs``
and captures what ``queries.select_page`` really executed (a ``before_cursor_execute``
listener), then asks the engine for that statement's plan with the same parameters.

* SQLite: after a full ``ANALYZE``, ``EXPLAIN QUERY PLAN`` of every listing shape
  names the expected index for every access to ``jobs`` (each arm is pinned with
  ``INDEXED BY``), never scans ``jobs`` without an index, and merges UNION ALL arms
  by the compound's ORDER BY without sorting them (``MERGE (UNION ALL)``); only the
  page's winners may be sorted again after their lookup by id. A workflow's, a
  source's and the duration listing of every status are one arm per status
  (revision 0015 dropped their status-less indexes).
* PostgreSQL: the pending listing run 12 times is a prepared statement from its
  second run on, served by one generic plan (a page without an offset or a time
  range is plan-stable: ``database.PLANS``), and that plan, as auto_explain shows
  it (the plan actually executed), and ``EXPLAIN (FORMAT JSON)`` of the captured
  statement in either plan mode, seek ``ix_jobs_status_create_time_id``. An offset
  page is custom-planned at every run. Every listing, in every plan mode it can run
  in, reads about a page of rows per arm with index scans only; every arm of a
  listing of every status seeks its status's range on the index that starts with
  the filter (and, for a workflow or a source, whatever the statistics).
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from jobs_index import JobsIndex, parse_list_query, queries, schema
from jobs_index.cursor import encode_cursor

from .bulkdata import add_live, analyze, bulk_load, create_time, job_id
from .conftest import PG_SKIP, PgSchema, pg_base_url

N_JOBS = 200_000
PENDING_AT = [150, 50_000, 120_000, 180_000, 199_000]  # spread over the timeline
RUNNING_AT = [7_000, 160_000]
MID = 100_000  # a cursor in the middle of the timeline


def build(index: JobsIndex) -> dict[str, float]:
    timings = {}
    start = time.perf_counter()
    bulk_load(index, N_JOBS)
    timings["bulk_load"] = time.perf_counter() - start
    add_live(index, PENDING_AT, "pending")
    add_live(index, RUNNING_AT, "in_progress")
    start = time.perf_counter()
    analyze(index)
    timings["analyze"] = time.perf_counter() - start
    return timings


def check_data(index: JobsIndex) -> None:
    assert index.total(parse_list_query({"status": "pending"})) == len(PENDING_AT)
    assert index.total(parse_list_query({"status": "in_progress"})) == len(RUNNING_AT)
    assert index.total() == N_JOBS + len(PENDING_AT) + len(RUNNING_AT)


@contextmanager
def captured_selects(index: JobsIndex):
    """Statements on ``jobs`` executed inside the block: [(sql, parameters)]."""
    seen: list[tuple[str, object]] = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        if re.search(r"\bFROM jobs\b", statement) and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(index.engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(index.engine, "before_cursor_execute", listener)


def listing_sql(index: JobsIndex, params: dict) -> tuple[str, object]:
    """The one ``select_page`` statement a listing executes, and its parameters."""
    with captured_selects(index) as seen:
        index.list_jobs(parse_list_query(params))
    assert len(seen) == 1, seen
    return seen[0]


def cursor_at(i: int, order: str = "desc") -> str:
    return encode_cursor(create_time(i), job_id(i), order)


# -- SQLite ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_big(tmp_path_factory):
    with JobsIndex.open(f"sqlite:///{tmp_path_factory.mktemp('plans') / 'big.sqlite3'}") as index:
        timings = build(index)
        print(f"\nSQLite {N_JOBS} rows: {timings}")
        check_data(index)
        assert index.counts_consistent()
        yield index


ST, WF, SRC = schema.IX_STATUS_CREATE_TIME, schema.IX_WORKFLOW_STATUS, schema.IX_SOURCE_STATUS
DUR = schema.IX_STATUS_DURATION
EVERY = len(schema.STATUS_VALUES)  # a workflow's, a source's or the duration listing of every status: one arm each
# name: (query, index every arm must use, number of arms, ordered walk allowed)
SHAPES = {
    "no filter": ({}, schema.IX_CREATE_TIME, 1, True),
    "no filter asc": ({"sort_order": "asc"}, schema.IX_CREATE_TIME, 1, True),
    "no filter offset": ({"offset": "40"}, schema.IX_CREATE_TIME, 1, True),
    "no filter cursor": ({"after": cursor_at(MID)}, schema.IX_CREATE_TIME, 1, False),
    "no filter cursor asc": ({"sort_order": "asc", "after": cursor_at(MID, "asc")}, schema.IX_CREATE_TIME, 1, False),
    "all statuses listed": (
        {"status": "pending,in_progress,completed,failed,cancelled"},
        schema.IX_CREATE_TIME,
        1,
        True,
    ),
    "pending": ({"status": "pending"}, ST, 1, False),
    "pending asc": ({"status": "pending", "sort_order": "asc"}, ST, 1, False),
    "pending cursor": ({"status": "pending", "after": cursor_at(MID)}, ST, 1, False),
    "pending,in_progress": ({"status": "pending,in_progress"}, ST, 2, False),
    "pending,in_progress asc cursor": (
        {"status": "pending,in_progress", "sort_order": "asc", "after": cursor_at(MID, "asc")},
        ST,
        2,
        False,
    ),
    "completed,failed offset": ({"status": "completed,failed", "offset": "30"}, ST, 2, False),
    "workflow": ({"workflow_id": "wf-07"}, WF, EVERY, False),
    "workflow cursor": ({"workflow_id": "wf-07", "after": cursor_at(MID)}, WF, EVERY, False),
    "workflow offset asc": ({"workflow_id": "wf-07", "offset": "40", "sort_order": "asc"}, WF, EVERY, False),
    "workflow+pending": ({"workflow_id": "wf-07", "status": "pending"}, WF, 1, False),
    "workflow+failed asc": ({"workflow_id": "wf-07", "status": "failed", "sort_order": "asc"}, WF, 1, False),
    "source": ({"source": "host-1"}, SRC, EVERY, False),
    "source+pending,in_progress": ({"source": "host-1", "status": "pending,in_progress"}, SRC, 2, False),
    "source cursor asc": ({"source": "host-2", "sort_order": "asc", "after": cursor_at(MID, "asc")}, SRC, EVERY, False),
    "duration": ({"sort_by": "execution_duration"}, DUR, EVERY, False),
    "duration asc": ({"sort_by": "execution_duration", "sort_order": "asc"}, DUR, EVERY, False),
    "duration offset": ({"sort_by": "execution_duration", "offset": "40"}, DUR, EVERY, False),
    "duration pending": ({"sort_by": "execution_duration", "status": "pending"}, DUR, 1, False),
    "duration failed,cancelled": ({"sort_by": "execution_duration", "status": "failed,cancelled"}, DUR, 2, False),
}


def sqlite_plan(index: JobsIndex, sql: str, parameters) -> list[str]:
    with index.engine.connect() as conn:
        return [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_sqlite_listing_plans(sqlite_big, shape):
    params, expected_index, arms, ordered_walk = SHAPES[shape]
    sql, parameters = listing_sql(sqlite_big, {**params, "limit": "20"})
    plan = sqlite_plan(sqlite_big, sql, parameters)
    detail = f"{shape}\n{sql}\n" + "\n".join(plan)

    assert sql.count(f"INDEXED BY {expected_index}") == arms, detail  # every arm pinned
    on_jobs = [line for line in plan if re.search(r"\bjobs\b", line)]
    winners = arms > 1 or "offset" in params
    if winners:  # merged or offset seeks read keys only; the page's winners are then read by primary key
        lookup = f"SEARCH jobs USING INDEX {queries.SQLITE_PRIMARY_KEY_INDEX} (id=?)"
        assert sql.count(f"INDEXED BY {queries.SQLITE_PRIMARY_KEY_INDEX}") == 1, detail
        assert on_jobs.count(lookup) == 1, detail
        on_jobs.remove(lookup)
        assert all("COVERING INDEX" in line for line in on_jobs), detail
    assert sql.count("INDEXED BY") == arms + winners, detail
    assert len(on_jobs) == arms, detail
    for line in on_jobs:
        if line.startswith("SEARCH"):  # a seek: the filter and/or cursor bound the range
            assert re.fullmatch(rf"SEARCH jobs USING (COVERING )?INDEX {expected_index} \(.+\)", line), detail
        else:  # an ordered walk of the sort index, stopped by LIMIT (unfiltered shapes only)
            assert ordered_walk, detail
            assert re.fullmatch(rf"SCAN jobs USING (COVERING )?INDEX {expected_index}", line), detail
    if not winners:
        assert not any("TEMP B-TREE" in line for line in plan), detail
    else:  # at most the page's winners are sorted again after the lookup
        assert [line for line in plan if "TEMP B-TREE" in line] in ([], ["USE TEMP B-TREE FOR ORDER BY"]), detail
    if arms > 1:
        # One compound SELECT merges the arms by its ORDER BY (each arm walks its index
        # in that order, as far as the merge reads it: no arm sorted, one LIMIT).
        assert plan.count("MERGE (UNION ALL)") == arms - 1, detail
        assert sql.count("LIMIT") == 1, detail
    assert not any(re.fullmatch(r"SCAN jobs", line) for line in plan), detail


def vm_instructions(index: JobsIndex, run) -> int:
    """SQLite virtual-machine instructions executed by ``run(conn)`` (to within 100)."""
    ticks = [0]
    with index.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.set_progress_handler(lambda: ticks.__setitem__(0, ticks[0] + 1), 100)
        try:
            assert run(conn)
        finally:
            raw.set_progress_handler(None, 0)
    return ticks[0] * 100


PAGE_WORK_BOUND = 20_000  # VM instructions; a page costs ~5k, a walk of the 200k-row table ~600k


def test_sqlite_listings_read_a_page_not_the_table(sqlite_big):
    """A deterministic work bound instead of a timing: the instructions SQLite runs
    for one 20-job page of every shape stay far below what a table walk costs."""

    walk = vm_instructions(
        sqlite_big,
        lambda conn: conn.exec_driver_sql(
            "SELECT id FROM jobs NOT INDEXED WHERE status = 'pending' ORDER BY create_time DESC LIMIT 20"
        ).all(),
    )
    assert walk > 10 * PAGE_WORK_BOUND  # the measure does see a table walk
    for shape, (params, *_) in SHAPES.items():
        query = parse_list_query({**params, "limit": "20"})
        after = queries.Position(query.cursor.create_time, query.cursor.id) if query.cursor else None
        work = vm_instructions(
            sqlite_big,
            lambda conn, after=after, query=query: queries.select_page(
                conn, query, limit=21, offset=0 if after else query.offset, after=after
            ),
        )
        assert work < PAGE_WORK_BOUND, (shape, work)
        print(f"{shape}: {work} instructions")


def test_sqlite_pending_listing_reads_the_pending_jobs(sqlite_big):
    page = sqlite_big.list_jobs(parse_list_query({"status": "pending", "limit": "20"}))
    assert [j["id"] for j in page.jobs] == [f"live-{i:07d}" for i in sorted(PENDING_AT, reverse=True)]
    assert page.total == len(PENDING_AT) and not page.has_more


# -- PostgreSQL --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_big():
    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP)
    pg_schema = PgSchema(base)
    try:
        with JobsIndex.open(pg_schema.url) as index:
            timings = build(index)
            print(f"\nPostgreSQL {N_JOBS} rows: {timings}")
            check_data(index)
            assert index.counts_consistent()
            yield index
    finally:
        pg_schema.drop()


def plan_nodes(node: dict) -> list[dict]:
    nodes = [node]
    for child in node.get("Plans", ()):
        nodes.extend(plan_nodes(child))
    return nodes


def scans_of_jobs(plan: dict) -> list[tuple[str, str | None]]:
    """Scans of ``jobs`` and its indexes (a page's ``total`` also reads ``job_counts``:
    see ``scans_of_counts``)."""
    return [
        (n["Node Type"], n.get("Index Name"))
        for n in plan_nodes(plan)
        if (n.get("Relation Name") == "jobs" or "Index Name" in n) and not _reads_counts(n)
    ]


def _reads_counts(node: dict) -> bool:
    return node.get("Relation Name") == "job_counts" or node.get("Index Name") == "pk_job_counts"


def scans_of_counts(plan: dict) -> list[tuple[str, str | None]]:
    return [(n["Node Type"], n.get("Index Name")) for n in plan_nodes(plan) if _reads_counts(n)]


@contextmanager
def auto_explained(index: JobsIndex):
    """Every statement of the block logs its executed plan (JSON) back to us as a NOTICE."""
    plans: list[dict] = []

    def on_connect(dbapi_conn, _record):
        def on_notice(diag):
            text = diag.message_primary or ""
            if "plan:" in text:
                plans.append(json.loads(text.split("plan:", 1)[1]))

        dbapi_conn.add_notice_handler(on_notice)
        with dbapi_conn.cursor() as cur:
            cur.execute("LOAD 'auto_explain'")
            cur.execute("SET auto_explain.log_min_duration = 0")
            cur.execute("SET auto_explain.log_format = 'json'")
            cur.execute("SET auto_explain.log_level = 'notice'")
        dbapi_conn.commit()

    event.listen(index.engine, "connect", on_connect)
    index.engine.dispose()  # new connections get the listener
    try:
        yield plans
    finally:
        event.remove(index.engine, "connect", on_connect)
        index.engine.dispose()


RUNS = 12


def test_pg_rare_status_listing_runs_one_plan_on_its_index(pg_big):
    query = parse_list_query({"status": "pending", "limit": "20"})
    with auto_explained(pg_big) as executed_plans, captured_selects(pg_big) as statements:
        for _ in range(RUNS):
            page = pg_big.list_jobs(query)
            assert page.total == len(PENDING_AT) and len(page.jobs) == len(PENDING_AT)

        # 1. The sessions that ran it: the listing is prepared on the server (parsed once
        # per connection, issue 16) and, plan-stable, runs on its generic plan, never
        # re-planned. (Read first: a rollback, as when a connection of engine.connect()
        # below is returned, makes psycopg drop them.)
        pool_size = pg_big.engine.pool.checkedin()
        conns = [pg_big.engine.connect() for _ in range(max(pool_size, 1))]
        try:
            generic = 0
            for conn in conns:
                rows = conn.exec_driver_sql(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE strpos(statement, 'job_json') > 0"
                ).all()
                assert all(custom == 0 for _, custom in rows), rows
                generic += sum(n for n, _ in rows)
                assert conn.connection.driver_connection.prepare_threshold is None  # outside the read helpers
            assert generic >= RUNS - 1  # prepared at its second run, its generic plan at each one after
        finally:
            for conn in conns:
                conn.close()

        # 2. The plans PostgreSQL actually executed (auto_explain), run after run.
        listing_plans = [
            p["Plan"]
            for p in executed_plans
            if re.search(r"\bFROM jobs\b", p["Query Text"]) and "pg_" not in p["Query Text"]
        ]
        assert len(listing_plans) == RUNS
        for plan in listing_plans:
            scans = scans_of_jobs(plan)
            assert scans and all(name == schema.IX_STATUS_CREATE_TIME for _, name in scans), scans
            assert all(kind in ("Index Scan", "Index Only Scan") for kind, _ in scans), scans

        # 3. EXPLAIN (FORMAT JSON) of the captured statement, same parameters, in both plan
        # modes (custom: where prepared statements are off).
        assert len(statements) == RUNS and len({sql for sql, _ in statements}) == 1
        sql, parameters = statements[-1]
        for mode in PLAN_MODES:
            with pg_big.engine.connect() as conn:
                conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
                explained = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, parameters).scalar_one()
            plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
            scans = scans_of_jobs(plan)
            assert scans == [("Index Scan", schema.IX_STATUS_CREATE_TIME)], (mode, scans)
            assert schema.IX_CREATE_TIME not in json.dumps(plan)
            # The page's total is read by the same statement: a lookup of job_counts' key.
            counted = scans_of_counts(plan)
            assert "pk_job_counts" in {name for _, name in counted}, (mode, counted)
            assert all(kind != "Seq Scan" for kind, _ in counted), (mode, counted)


def test_pg_offset_listing_is_planned_for_its_values(pg_big):
    """An offset page (how far to skip decides the plan) is custom-planned at every run."""
    query = parse_list_query({"status": "pending,completed", "limit": "20", "offset": "30"})
    pg_big.engine.dispose()
    for _ in range(RUNS):
        pg_big.list_jobs(query)
    with pg_big.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE strpos(statement, 'OFFSET') > 0"
        ).all()
    assert rows and all(generic == 0 for generic, _ in rows), rows
    assert sum(custom for _, custom in rows) >= RUNS - 1, rows


PG_SHAPES = {
    "pending": {"status": "pending"},
    "pending,in_progress": {"status": "pending,in_progress"},
    "pending cursor": {"status": "pending", "after": cursor_at(MID)},
    "completed,failed": {"status": "completed,failed"},
    "cancelled asc cursor": {"status": "cancelled", "sort_order": "asc", "after": cursor_at(MID, "asc")},
    "workflow": {"workflow_id": "wf-07"},
    "workflow+pending": {"workflow_id": "wf-07", "status": "pending"},
    "source": {"source": "host-1"},
    "source+pending": {"source": "host-1", "status": "pending"},
    "duration failed,cancelled": {"sort_by": "execution_duration", "status": "failed,cancelled"},
    "no filter": {},
    "no filter cursor": {"after": cursor_at(MID)},
    "duration": {"sort_by": "execution_duration"},
    "duration asc offset": {"sort_by": "execution_duration", "sort_order": "asc", "offset": "40"},
    "workflow cursor": {"workflow_id": "wf-07", "after": cursor_at(MID)},
    "source asc offset": {"source": "host-2", "sort_order": "asc", "offset": "40"},
    # skipped by job_time_buckets: the rest of one fine bucket is read, no more
    "deep offset": {"offset": "150000"},
    "deep offset completed,failed asc": {"status": "completed,failed", "sort_order": "asc", "offset": "120000"},
}


PLAN_MODES = ("force_custom_plan", "force_generic_plan")


def explain_analyze(index: JobsIndex, sql: str, parameters, mode: str = "force_custom_plan") -> dict:
    with index.engine.connect() as conn:
        conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")  # ends with the connection's transaction
        explained = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, parameters).scalar_one()
    return (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]


def _arm_scans(plan: dict) -> list[dict]:
    """The scans of ``jobs`` that seek a listing's rows (not the winners' lookups by id)."""
    return [n for n in plan_nodes(plan) if n.get("Relation Name") == "jobs" and n.get("Index Name") != "pk_jobs"]


def rows_touched(plan: dict) -> int:
    """Index entries / rows the arms' scans of ``jobs`` produced or threw away (over
    all their runs: a LATERAL arm runs once per status)."""
    return sum(
        (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
        * n.get("Actual Loops", 1)
        for n in _arm_scans(plan)
    )


def arm_runs(plan: dict) -> int:
    """How many seeks the arms made (a LATERAL arm: one per status)."""
    return sum(n.get("Actual Loops", 1) for n in _arm_scans(plan))


def winner_lookups(plan: dict) -> int:
    return sum(
        n.get("Actual Rows", 0) * n.get("Actual Loops", 1)
        for n in plan_nodes(plan)
        if n.get("Relation Name") == "jobs" and n.get("Index Name") == "pk_jobs"
    )


def fine_bucket_jobs(index: JobsIndex) -> int:
    """The most jobs one fine time bucket holds (what a bucketed offset page may skip)."""
    with index.engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                f"SELECT max(n) FROM job_time_buckets WHERE bits = {schema.FINE_BUCKET_BITS} AND status = ''"
            ).scalar_one()
        )


def _modes(shapes: dict) -> list:
    """(shape, plan mode): every plan mode a shape's page can run in (a page without
    an offset or a time range, or with an offset skipped by time buckets, runs on a
    generic plan with prepared statements on, and custom-planned with them off)."""

    def modes(params: dict) -> tuple[str, ...]:
        offset = int(params.get("offset", 0))
        return PLAN_MODES if offset == 0 or offset >= queries.BUCKETS_FROM_OFFSET else PLAN_MODES[:1]

    return [
        pytest.param(shape, mode, id=f"{shape}-{mode.split('_')[1]}")
        for shape, params in shapes.items()
        for mode in modes(params)
    ]


@pytest.mark.parametrize("shape,mode", _modes(PG_SHAPES))
def test_pg_listing_reads_a_page_not_the_table(pg_big, shape, mode):
    """Whatever plan PostgreSQL picks, a 20-job page reads about a page of rows per
    arm: index scans only, no Seq Scan, no walk that filters its way through."""
    params = PG_SHAPES[shape]
    sql, parameters = listing_sql(pg_big, {**params, "limit": "20"})
    plan = explain_analyze(pg_big, sql, parameters, mode)
    scans = scans_of_jobs(plan)
    assert scans and all(kind in ("Index Scan", "Index Only Scan") for kind, _ in scans), scans
    offset = int(params.get("offset", 0))
    window = 21 + (offset if offset < queries.BUCKETS_FROM_OFFSET else fine_bucket_jobs(pg_big))
    assert rows_touched(plan) <= window * arm_runs(plan) + len(PENDING_AT) + len(RUNNING_AT), json.dumps(plan)[:3000]
    assert winner_lookups(plan) <= 21
    if "status" not in params and ({"workflow_id", "source"} & set(params) or "sort_by" in params):
        # every status: one seek per status on the index that starts with the filter and the status
        expected = WF if "workflow_id" in params else SRC if "source" in params else DUR
        arms = [(n["Index Name"], n.get("Actual Loops", 1)) for n in _arm_scans(plan)]
        assert sum(loops for name, loops in arms if name == expected) == EVERY, arms


def test_pg_only_write_transactions_leave_forced_custom_plans(pg_url):
    """Listings always get custom plans; a write transaction switches to ``auto`` for
    itself only (cached plans for the counter trigger and foreign-key checks)."""
    from jobs_index.database import read_transaction, write_transaction

    with JobsIndex.open(pg_url) as index:
        with read_transaction(index.engine) as conn:
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with write_transaction(index.engine) as conn:
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid  # same session
        with read_transaction(index.engine) as conn:  # SET LOCAL ended with the transaction
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"


# -- PostgreSQL has no index hints: the arms must not depend on statistics ------------


def _seek_report(plan: dict) -> list[tuple[str, str | None, int]]:
    return [
        (n["Node Type"], n.get("Index Name"), n.get("Rows Removed by Filter", 0))
        for n in plan_nodes(plan)
        if n.get("Relation Name") == "jobs" or "Index Name" in n
    ]


@pytest.fixture(scope="module")
def pg_retired_workflow():
    """A workflow (and a source) that the planner's statistics believe is 15 % of the
    jobs spread over time, which was then extended to the oldest 70 % of the jobs and
    nothing newer, without a new ANALYZE (as after a big import that autovacuum has
    not analysed yet)."""
    from jobs_index.database import write_transaction

    from .bulkdata import _rebuild_counts

    def relabel(index, where: str) -> None:
        with write_transaction(index.engine) as conn:
            conn.exec_driver_sql("ALTER TABLE jobs DISABLE TRIGGER USER")
            conn.exec_driver_sql(f"UPDATE jobs SET workflow_id = 'wf-retired', source = 'host-retired' WHERE {where}")
            conn.exec_driver_sql("ALTER TABLE jobs ENABLE TRIGGER USER")
            _rebuild_counts(conn)

    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP)
    pg_schema = PgSchema(base)
    n = 60_000
    with JobsIndex.open(pg_schema.url) as index:
        bulk_load(index, n)
        relabel(index, "mod(priority, 7) = 0")  # ~15 %, everywhere on the timeline
        with index.engine.begin() as conn:  # statistics from every row: the same plans each run
            conn.exec_driver_sql("SET LOCAL default_statistics_target = 10000")
            conn.exec_driver_sql("ANALYZE jobs")
        relabel(index, f"priority < {int(n * 0.7)}")
        with index.engine.begin() as conn:  # the moved rows are no longer labelled
            conn.exec_driver_sql("ALTER TABLE jobs DISABLE TRIGGER USER")
            conn.exec_driver_sql(
                f"UPDATE jobs SET workflow_id = 'wf-01', source = 'host-1' "
                f"WHERE priority >= {int(n * 0.7)} AND workflow_id = 'wf-retired'"
            )
            conn.exec_driver_sql("ALTER TABLE jobs ENABLE TRIGGER USER")
            _rebuild_counts(conn)
        assert index.counts_consistent()
        try:
            yield index
        finally:
            index.close()
            pg_schema.drop()


@pytest.mark.parametrize(
    "params,index_name",
    [
        ({"workflow_id": "wf-retired"}, schema.IX_WORKFLOW_STATUS),
        ({"workflow_id": "wf-retired", "status": "completed"}, schema.IX_WORKFLOW_STATUS),
        ({"source": "host-retired"}, schema.IX_SOURCE_STATUS),
        ({"source": "host-retired", "status": "completed,failed", "sort_order": "asc"}, schema.IX_SOURCE_STATUS),
        ({"status": "completed,failed"}, schema.IX_STATUS_CREATE_TIME),
        ({"status": "failed", "sort_by": "execution_duration"}, schema.IX_STATUS_DURATION),
    ],
    ids=lambda v: "&".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None,
)
@pytest.mark.parametrize("mode", PLAN_MODES)
def test_pg_arms_seek_their_index_whatever_the_statistics(pg_retired_workflow, params, index_name, mode):
    """The arms with rows seek the index that starts with their filter, and the page
    reads about a page of rows per arm: no arm walks another index (e.g.
    ix_jobs_status_create_time_id) filtering its way through the newer jobs, a plan
    that the stale statistics above can make look cheap (see docs/postgresql.md)."""
    index = pg_retired_workflow
    sql, parameters = listing_sql(index, {**params, "limit": "20"})
    plan = explain_analyze(index, sql, parameters, mode)
    seeks = _seek_report(plan)
    # Arms of statuses with rows seek their index; none filters its way through another.
    assert any(name == index_name for _, name, _ in seeks), seeks
    assert all(kind in ("Index Scan", "Index Only Scan") for kind, _, _ in seeks), seeks
    assert rows_touched(plan) <= 21 * arm_runs(plan) + 20, seeks
