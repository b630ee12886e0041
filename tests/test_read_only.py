"""``serve`` on a read-only PostgreSQL role (issue 16): a role with only ``USAGE`` on the
schema and ``SELECT`` on its tables, as a reader of a replica would have (a hot standby
refuses every write the same way). A real ``jobs-index serve`` process:

* opens a schema at head without writing (no migration, no lock, no DDL);
* answers every read route as a server with the owner's role does (same bodies);
* when the counters disagree with the rows, answers the rows' count and logs that it
  cannot repair them (``jobs-index check --repair`` by a writer does), instead of failing;
* a write by that role (``import``) fails with the server's reason, and changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs_index import JobsIndex
from jobs_index.database import make_engine
from jobs_index.normalize import from_history
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


def test_serve_on_a_read_only_role_answers_as_the_owner(read_only_url):
    owner_url, ro_url = read_only_url
    answers = {}
    for name, url in (("owner", owner_url), ("read-only", ro_url)):
        proc, base = serve(url)
        try:
            first = get(base, "/api/jobs?limit=1")[1]["jobs"][0]["id"]
            answers[name] = [get(base, route) for route in [*ROUTES, f"/api/jobs/{first}"]]
        finally:
            stderr = stop(proc)
        assert "permission denied" not in stderr, stderr
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
    dump = tmp_path / "history.json"
    dump.write_text(json.dumps(dict(synthetic_history(5, seed=9))))
    done = subprocess.run([*JOBS_INDEX, "--db", ro_url, "import", str(dump)], capture_output=True, text=True)
    assert done.returncode != 0 and "permission denied" in done.stderr
    with JobsIndex.open(owner_url) as index:
        assert index.total() == 60 and index.counts_consistent()
