"""``serve`` on a read-only PostgreSQL role (issue 16): a role with only ``USAGE`` on the
schema and ``SELECT`` on its tables, as a reader of a replica would have (a hot standby
refuses every write the same way). A real ``jobs-index serve`` process:

* opens a schema at head without writing (no migration, no lock, no DDL);
* answers every read route as a server with the owner's role does (same bodies);
* when the counters disagree with the rows, answers the rows' count and logs that it
  cannot repair them (``jobs-index check --repair`` by a writer does), instead of failing;
* a write by that role (``import``) fails with one clear line (``ReadOnlyDatabase``:
  the server's reason, and where writers belong), and changes nothing.

The same against a real hot standby (streaming replication from the cluster of
``JOBS_INDEX_TEST_PG``) when ``JOBS_INDEX_TEST_PG_STANDBY`` names one (``.ci/run``
starts it with ``.ci/pg-standby``): answers equal to the primary's once it has replayed,
new jobs on the primary appear in the standby's pages and totals, writes are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs_index import JobsIndex, search_queries
from jobs_index.database import make_engine, read_transaction
from jobs_index.normalize import from_history
from jobs_index.params import parse_list_query
from jobs_index.sample import synthetic_history

from .reliability_support import JOBS_INDEX
from .test_fleet import free_port, get, wait_ready

pytestmark = pytest.mark.timeout(180)

ROUTES = [
    "/api/jobs?limit=5",
    "/api/jobs?status=failed&limit=3",
    "/api/jobs?limit=4&offset=20",
    "/api/jobs?q=fox&limit=3",
    "/api/jobs-index/counts",
    "/api/jobs-index/sources",
]


@pytest.fixture
def read_only_url(pg_url):
    """``(owner URL, read-only URL)`` of a schema filled with 60 jobs."""
    with JobsIndex.open(pg_url) as index:
        index.ingest([from_history(k, v) for k, v in synthetic_history(60, seed=5)])
    owner = make_engine(pg_url)
    role = f"ro_{uuid.uuid4().hex[:12]}"
    with owner.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
    url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    try:
        yield pg_url, url
    finally:
        with owner.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        owner.dispose()


def serve(url: str):
    port = free_port()
    proc = subprocess.Popen(
        [*JOBS_INDEX, "--db", url, "serve", "--port", str(port), "--pool-size", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, base


def stop(proc) -> str:
    proc.terminate()
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return stderr


def served_answers(urls: dict[str, str]) -> dict[str, list]:
    """Each ``serve`` (one at a time) asked every read route and the newest job's
    detail: ``{name: [(status, body), ...]}``. No server may log a refused write."""
    answers = {}
    for name, url in urls.items():
        proc, base = serve(url)
        try:
            first = get(base, "/api/jobs?limit=1")[1]["jobs"][0]["id"]
            answers[name] = [get(base, route) for route in [*ROUTES, f"/api/jobs/{first}"]]
        finally:
            stderr = stop(proc)
        assert "permission denied" not in stderr and "read-only transaction" not in stderr, stderr
    return answers


def test_serve_on_a_read_only_role_answers_as_the_owner(read_only_url):
    owner_url, ro_url = read_only_url
    answers = served_answers({"owner": owner_url, "read-only": ro_url})
    assert all(status == 200 for status, _ in answers["read-only"])
    assert answers["read-only"] == answers["owner"]


def test_wrong_counters_are_answered_from_the_rows_and_not_repaired(read_only_url):
    owner_url, ro_url = read_only_url
    owner = make_engine(owner_url)
    with owner.begin() as conn:
        conn.execute(text("UPDATE job_counts SET n = n + 1000"))  # every counter now wrong
    proc, base = serve(ro_url)
    try:
        status, body = get(base, "/api/jobs?limit=5&offset=58")  # the last page: the rows say 60
    finally:
        stderr = stop(proc)
    assert status == 200 and len(body["jobs"]) == 2 and body["pagination"]["total"] == 60
    assert "cannot repair job_counts" in stderr
    with owner.connect() as conn:  # still wrong: the read-only role changed nothing
        assert conn.execute(text("SELECT min(n) FROM job_counts WHERE n > 0")).scalar() > 1000
    owner.dispose()


def test_writes_by_a_read_only_role_fail_and_change_nothing(read_only_url, tmp_path):
    owner_url, ro_url = read_only_url
    import_is_refused(ro_url, tmp_path, "permission denied", owner_url, 60)


def import_is_refused(url: str, tmp_path, reason: str, writer_url: str, jobs: int) -> None:
    """``jobs-index import`` of 5 new jobs into the read-only ``url`` exits 1, saying
    so in one line; the index (seen by its writer) still holds its ``jobs``."""
    dump = tmp_path / "history.json"
    dump.write_text(json.dumps(dict(synthetic_history(5, seed=9))))
    done = subprocess.run([*JOBS_INDEX, "--db", url, "import", str(dump)], capture_output=True, text=True)
    assert done.returncode == 1
    assert_refused_in_one_line(done.stderr, reason)
    with JobsIndex.open(writer_url) as index:
        assert index.total() == jobs and index.counts_consistent()


def assert_refused_in_one_line(stderr: str, reason: str) -> None:
    """A writer pointed at a read-only database says so in one line, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("Error: the database refuses writes (") and reason in lines[0], lines[0]
    assert "against the primary" in lines[0]


# -- a real hot standby ---------------------------------------------------------------

STANDBY_ENV = "JOBS_INDEX_TEST_PG_STANDBY"


def replayed(primary, standby, timeout: float = 60) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    with primary.connect() as conn:
        lsn = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar()
    deadline = time.monotonic() + timeout
    with standby.connect() as conn:
        while not conn.execute(text("SELECT pg_last_wal_replay_lsn() >= CAST(:l AS pg_lsn)"), {"l": lsn}).scalar():
            assert time.monotonic() < deadline, f"the standby did not replay up to {lsn} in {timeout}s"
            conn.rollback()
            time.sleep(0.05)


@pytest.fixture
def standby_urls(pg_url):
    """``(primary URL, standby URL)`` of one schema with 60 jobs, the standby caught up."""
    standby = os.environ.get(STANDBY_ENV)
    if not standby:
        pytest.skip(
            f"{STANDBY_ENV} is unset: no hot standby of {os.environ.get('JOBS_INDEX_TEST_PG', 'the test cluster')} "
            "to serve from (.ci/run starts one on port 5433 with .ci/pg-standby)"
        )
    other = make_url(standby)
    url = make_url(pg_url).set(host=other.host, port=other.port).render_as_string(hide_password=False)
    with JobsIndex.open(pg_url) as index:
        index.ingest([from_history(k, v) for k, v in synthetic_history(60, seed=5)])
    primary, replica = make_engine(pg_url), make_engine(url)
    try:
        with replica.connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar(), f"{standby} is not a standby"
        replayed(primary, replica)
        yield pg_url, url, primary, replica
    finally:
        primary.dispose()
        replica.dispose()


def test_serve_on_a_hot_standby_answers_as_the_primary_and_follows_it(standby_urls, tmp_path):
    primary_url, standby_url, primary, replica = standby_urls
    answers = served_answers({"primary": primary_url, "standby": standby_url})
    assert all(status == 200 for status, _ in answers["standby"])
    assert answers["standby"] == answers["primary"]

    proc, base = serve(standby_url)  # stays up while the primary takes new jobs
    try:
        before = get(base, "/api/jobs?limit=1&q=fox")[1]["pagination"]["total"]
        added = [from_history(k, v) for k, v in synthetic_history(40, seed=77)]
        with JobsIndex.open(primary_url) as index:
            index.ingest(added)
            with read_transaction(index.engine) as conn:
                want_fox = search_queries.count_matches(conn, parse_list_query({"q": "fox"}))
        replayed(primary, replica)
        status, body = get(base, "/api/jobs?limit=1")
        assert status == 200 and body["pagination"]["total"] == 100
        assert get(base, f"/api/jobs/{added[0].id}")[0] == 200
        fox = get(base, "/api/jobs?limit=1&q=fox")[1]["pagination"]["total"]
        assert fox == want_fox and want_fox > before  # the standby's kept total moved on with the replay
    finally:
        stop(proc)

    import_is_refused(standby_url, tmp_path, "read-only transaction", primary_url, 100)
