"""PostgreSQL pages in one round trip (issue 16, part 4), and pooled connections the
server ended replaced at checkout without a ping on every request.

Round trips are counted from libpq's own trace of the connection (``PQtrace``): each
``ReadyForQuery`` the server sends ends one. With a warm pool a listing page (first
page, cursor, filter, deep offset), an empty page and a job's detail each cost one;
before issue 16 a page cost two (SQLAlchemy's pre-ping) and an offset page or a
detail four or five (BEGIN, the count, the page, COMMIT). The answers themselves are
checked by the contract tests on both engines; these check what goes over the wire."""

from __future__ import annotations

import tempfile
import time

import psycopg
import pytest
from sqlalchemy import create_engine, event, text

from jobs_index import JobsIndex, parse_list_query
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history

from .conftest import PG_SKIP, PgSchema, pg_base_url

JOBS = 120


@pytest.fixture(scope="module")
def pg_index():
    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP)
    schema = PgSchema(base)
    try:
        with JobsIndex.open(schema.url) as index:
            index.ingest([from_history(job_id, item) for job_id, item in synthetic_history(JOBS)])
            index.url = schema.url  # type: ignore[attr-defined]
            yield index
    finally:
        schema.drop()


class Trace:
    """libpq's trace of every connection the engine opens from now on."""

    def __init__(self, engine) -> None:
        engine.dispose()
        self.file = tempfile.NamedTemporaryFile("w+", suffix=".trace")
        event.listen(engine, "connect", self._connect)
        self.engine = engine

    def _connect(self, dbapi_conn, _record) -> None:
        dbapi_conn.pgconn.trace(self.file.fileno())
        dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)

    def round_trips(self, call) -> tuple[int, list[str]]:
        """(round trips, the statements sent) of ``call()``, its connection warm (its
        statements prepared: the second run prepares them, one more round trip each)."""
        call()
        call()
        self.file.seek(0)
        self.file.truncate()
        call()
        self.file.flush()
        self.file.seek(0)
        lines = self.file.read().splitlines()
        fields = [line.split("\t") for line in lines]
        # "Query BEGIN ...", "Parse _pg3_0 SELECT ..." (a statement prepared), "Bind _pg3_0"
        # (a prepared one run), "Parse  SELECT ..." (an unnamed one).
        sent = [
            f"{f[2]} {' '.join(f[3].replace(chr(34), ' ').split()[:6])}"
            for f in fields
            if f[0] == "F" and f[2] in ("Query", "Parse", "Bind")
        ]
        return sum(1 for line in lines if "\tReadyForQuery" in line), sent

    def close(self) -> None:
        event.remove(self.engine, "connect", self._connect)
        self.engine.dispose()
        self.file.close()


@pytest.fixture
def trace(pg_index):
    traced = Trace(pg_index.engine)
    yield traced
    traced.close()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "50"},
        {"limit": "10", "status": "completed"},
        {"limit": "10", "status": "pending,in_progress,completed", "sort_by": "execution_duration"},
        {"limit": "10", "offset": "60"},
        {"limit": "10", "offset": "60", "status": "completed,failed"},
        {"limit": "10", "offset": "5000"},  # past the end: an empty page, counted apart
        {"limit": "10", "workflow_id": "no-such-workflow"},  # an empty listing
    ],
)
def test_a_page_is_one_round_trip(pg_index, trace, params):
    query = parse_list_query(params)
    trips, sent = trace.round_trips(lambda: pg_index.list_jobs(query))
    empty = not pg_index.list_jobs(query).job_texts
    assert trips == (2 if empty else 1), sent  # an empty page carries no total: one more statement
    assert not any(s.startswith("Query") for s in sent), sent  # no BEGIN, COMMIT or ping


def test_a_job_detail_is_one_round_trip(pg_index, trace):
    job_id = pg_index.list_jobs(parse_list_query({"limit": "1"})).ids[0]
    trips, sent = trace.round_trips(lambda: pg_index.get_job(job_id))
    assert trips == 1, sent


def test_a_listing_of_several_chunks_keeps_its_snapshot(pg_index, trace):
    """A listing read in chunks still reads them in one REPEATABLE READ transaction."""
    query = parse_list_query({"limit": "100", "offset": "3"})

    def streamed():
        with pg_index.stream_jobs(query, chunk=30) as stream:
            return [text for chunk in stream.chunks() for text in chunk]

    trips, sent = trace.round_trips(streamed)
    assert sent[0] == "Query BEGIN ISOLATION LEVEL REPEATABLE READ", sent
    assert trips == 2 + 4, sent  # BEGIN, four chunks, COMMIT (a rollback would drop the prepared statements)
    assert streamed() == pg_index.list_jobs(query).job_texts


def test_a_connection_the_server_ended_is_replaced_at_checkout(pg_index):
    """``pg_terminate_backend`` (a restart, a failover or an idle timeout does the
    same) on a pooled, idle connection: the next request gets a new connection and
    answers, without a ping being sent on every checkout."""
    query = parse_list_query({"limit": "5"})
    expected = pg_index.list_jobs(query).job_texts
    with pg_index.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(pg_index.engine.url)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            for _ in range(100):  # until the server process is gone
                gone = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
                if not gone.scalar_one():
                    break
                time.sleep(0.05)
    finally:
        admin.dispose()
    assert pg_index.list_jobs(query).job_texts == expected
    with pg_index.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid


def prepared(conn) -> list[tuple[str, int, int]]:
    """This session's prepared statements: (statement, generic plans, custom plans)."""
    rows = conn.exec_driver_sql("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    return [(statement, int(generic), int(custom)) for statement, generic, custom in rows]


def test_reads_prepare_their_statements_and_plan_them_as_their_values_need(pg_index):
    """A listing run again on a connection is prepared on the server (parsed once).
    A page whose plan cannot depend on its values (filters and a keyset, no offset,
    no time range) runs on its generic plan, planned once per connection; an offset
    page is planned for its values at every run. Whatever mode the last page left
    the session in, a read transaction is custom-planned; writers prepare nothing."""
    from jobs_index.database import read_transaction, write_transaction

    pg_index.engine.dispose()  # one connection, used by everything below
    stable = parse_list_query({"limit": "10", "status": "completed"})
    offset = parse_list_query({"limit": "10", "offset": "7", "status": "completed"})
    for query in (stable, offset, stable):
        for _ in range(6):
            pg_index.list_jobs(query)
    with pg_index.engine.connect() as conn:
        plans = {
            statement: (generic, custom) for statement, generic, custom in prepared(conn) if "FROM jobs" in statement
        }
        (offset_sql,) = [statement for statement in plans if "OFFSET" in statement]
        (stable_sql,) = [statement for statement in plans if "OFFSET" not in statement]
        assert plans[stable_sql] == (11, 0), plans  # prepared at its second run: 11 runs on one generic plan
        assert plans[offset_sql] == (0, 5), plans  # each run planned for its values
        assert "LIMIT 11" in stable_sql  # the page's size is a constant of the generic plan
        # Left by the last page (outside the read helpers nothing switches it back).
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_generic_plan"
        assert conn.connection.driver_connection.prepare_threshold is None  # outside the read helpers
    with read_transaction(pg_index.engine) as conn:  # e.g. a search: planned for its values
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
    with write_transaction(pg_index.engine) as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
        assert conn.connection.driver_connection.prepare_threshold is None
        before = len(prepared(conn))
        for _ in range(3):
            conn.exec_driver_sql("SELECT count(*) FROM job_counts")
        assert len(prepared(conn)) == before


def test_prepared_statements_can_be_turned_off(pg_index):
    """``?prepared_statements=off`` (a pooler that cannot keep them): nothing is
    prepared, the answers are the same."""
    from jobs_index.errors import ConfigError

    url = pg_index.url
    query = parse_list_query({"limit": "10", "offset": "7"})
    with JobsIndex.open(url + "&prepared_statements=off") as off:
        for _ in range(4):
            assert off.list_jobs(query).job_texts == pg_index.list_jobs(query).job_texts
        with off.engine.connect() as conn:
            assert prepared(conn) == []
    with pytest.raises(ConfigError, match="prepared_statements"):
        JobsIndex.open(url + "&prepared_statements=maybe")


def test_generic_plans_can_be_turned_off(pg_index):
    """``?generic_plans=off`` (a transaction-mode pooler, where a session's settings do
    not stay with one client): statements are still prepared, but every run of every
    page is custom-planned and the session's plan mode is never switched."""
    from jobs_index.errors import ConfigError

    query = parse_list_query({"limit": "10", "status": "completed"})
    with JobsIndex.open(pg_index.url + "&generic_plans=off", pool_size=1) as off:
        for _ in range(4):
            assert off.list_jobs(query).job_texts == pg_index.list_jobs(query).job_texts
        with off.engine.connect() as conn:
            listed = [(generic, custom) for statement, generic, custom in prepared(conn) if "FROM jobs" in statement]
            assert listed == [(0, 3)], listed
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
    with pytest.raises(ConfigError, match="generic_plans"):
        JobsIndex.open(pg_index.url + "&generic_plans=yes")
