"""``jobs-index sql``: one read-only statement, enforced by the connection, on each
backend; a refused statement exits non-zero with one line and changes nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from jobs_index import JobsIndex

from .toolbox_util import build_recent, run_cli, snapshot


@pytest.fixture
def sample(index):
    build_recent(index, 80)
    return index


def test_prints_a_table(sample, db_url):
    result = run_cli("sql", "SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status", db=db_url)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["status", "|", "n"]
    assert set(lines[1]) <= {"-", "+"}
    statuses = [line.split("|")[0].strip() for line in lines[2:-1]]
    assert statuses == sorted(statuses) and "completed" in statuses
    assert lines[-1] == f"({len(statuses)} rows)"


def test_json_and_csv(sample, db_url):
    query = (
        "SELECT id, status, created_at, duration_s, error_message FROM jobs_v "
        "WHERE status = 'failed' ORDER BY create_time, id"
    )
    as_json = run_cli("sql", "--json", query, db=db_url)
    assert as_json.exit_code == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert rows and set(rows[0]) == {"id", "status", "created_at", "duration_s", "error_message"}
    assert all(r["status"] == "failed" and isinstance(r["duration_s"], float) for r in rows)
    assert rows[0]["error_message"] == "division by zero\n"
    as_csv = run_cli("sql", "--csv", query, db=db_url)
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["id"] for r in parsed] == [r["id"] for r in rows]
    assert parsed[0]["error_message"] == "division by zero\n"


def test_empty_result_and_query_from_stdin(sample, db_url):
    result = run_cli("sql", "--json", "SELECT id FROM jobs WHERE id = 'nope'", db=db_url)
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = run_cli("sql", "--csv", "-", db=db_url, input="SELECT count(*) AS n FROM job_search\n")
    assert result.exit_code == 0 and result.stdout.splitlines()[0] == "n"
    assert int(result.stdout.splitlines()[1]) > 0


REFUSED_EVERYWHERE = [
    ("delete", "DELETE FROM jobs", "read-only"),
    ("update", "UPDATE jobs SET status = 'failed'", "read-only"),
    (
        "insert",
        "INSERT INTO job_counts (source, workflow_id, status, n) VALUES ('x', 'y', 'completed', 5)",
        "read-only",
    ),
    ("drop", "DROP TABLE job_outputs", "read-only"),
    ("create", "CREATE TABLE evil (x integer)", "read-only"),
    ("temp table", "CREATE TEMP TABLE evil AS SELECT * FROM jobs", "read-only"),
    ("two statements", "SELECT 1; DELETE FROM jobs", "one statement at a time"),
    ("two selects", "SELECT 1; SELECT 2", "one statement at a time"),
    ("bad sql", "SELEC * FROM jobs", "SQL error"),
    ("no such table", "SELECT * FROM nope", "SQL error"),
]
REFUSED_SQLITE = [
    ("attach", "ATTACH DATABASE '{tmp}/other.sqlite3' AS other", "ATTACH"),
    ("vacuum into", "VACUUM INTO '{tmp}/copy.sqlite3'", "ATTACH"),
    ("pragma change", "PRAGMA query_only = OFF", "PRAGMA"),
    ("pragma user_version", "PRAGMA user_version = 7", "PRAGMA"),
    ("pragma journal", "PRAGMA journal_mode = DELETE", "PRAGMA"),
    ("pragma foreign keys", "PRAGMA foreign_keys = OFF", "PRAGMA"),
    ("vacuum", "VACUUM", "refused"),
]
REFUSED_POSTGRESQL = [
    ("set read write", "SET TRANSACTION READ WRITE", "read-only"),
    ("explain analyze write", "EXPLAIN ANALYZE DELETE FROM jobs", "read-only"),
    ("write in cte", "WITH gone AS (DELETE FROM jobs RETURNING id) SELECT count(*) FROM gone", "read-only"),
    ("setting", "SET default_transaction_read_only = off", "refused"),
    ("copy", "COPY jobs TO STDOUT", "SQL error"),
]


def check_refused(index, url, tmp_path, query: str, message: str) -> None:
    before = snapshot(index)
    files_before = sorted(os.listdir(tmp_path))
    result = run_cli("sql", query.format(tmp=tmp_path), db=url)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert snapshot(index) == before
    assert sorted(os.listdir(tmp_path)) == files_before  # no attached or vacuumed-into file
    assert index.counts_consistent()


@pytest.mark.parametrize("name, query, message", REFUSED_EVERYWHERE, ids=[c[0] for c in REFUSED_EVERYWHERE])
def test_refused_statements_change_nothing(sample, db_url, tmp_path, name, query, message):
    check_refused(sample, db_url, tmp_path, query, message)


@pytest.mark.parametrize("name, query, message", REFUSED_SQLITE, ids=[c[0] for c in REFUSED_SQLITE])
def test_refused_on_sqlite(sqlite_url, tmp_path, name, query, message):
    with JobsIndex.open(sqlite_url) as index:
        build_recent(index, 30)
        check_refused(index, sqlite_url, tmp_path, query, message)


@pytest.mark.parametrize("name, query, message", REFUSED_POSTGRESQL, ids=[c[0] for c in REFUSED_POSTGRESQL])
def test_refused_on_postgresql(pg_url, tmp_path, name, query, message):
    with JobsIndex.open(pg_url) as index:
        build_recent(index, 30)
        check_refused(index, pg_url, tmp_path, query, message)


def test_reading_pragmas_and_catalogs_are_allowed(sample, db_url, backend):
    query = (
        "PRAGMA table_info(jobs_v)"
        if backend == "sqlite"
        else "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'jobs_v'"
    )
    result = run_cli("sql", "--json", query, db=db_url)
    assert result.exit_code == 0, result.stderr
    assert "created_at" in {row["name"] for row in json.loads(result.stdout)}


def test_bad_input_is_one_line(tmp_path, sqlite_url):
    missing = run_cli("sql", "SELECT 1", db=f"sqlite:///{tmp_path}/none.sqlite3")
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: no index at")
    assert not (tmp_path / "none.sqlite3").exists()  # not created by a read
    JobsIndex.open(sqlite_url).close()  # an empty index
    for args in (["sql", "  "], ["sql", "--json", "--csv", "SELECT 1"]):
        result = run_cli(*args, db=sqlite_url)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_as_a_real_process(sample, db_url):
    done = subprocess.run(
        [sys.executable, "-m", "jobs_index.cli", "--db", db_url, "sql", "--csv", "SELECT count(*) AS n FROM jobs_v"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ["n", "83"]
    done = subprocess.run(
        [sys.executable, "-m", "jobs_index.cli", "--db", db_url, "sql", "DELETE FROM jobs"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.decode().startswith("Error: refused")
    assert b"Traceback" not in done.stderr


def test_queue_numbers_read_as_comfyui_holds_them(index, db_url):
    """jobs_v.priority and priority_json say a client's float number as a float (4.0,
    2.5), NaN and infinities by name, the same on both engines, in every output form."""
    from jobs_index.normalize import from_queue

    numbers = {"int": 2, "front": -1, "four": 4.0, "half": 2.5, "nan": float("nan"), "inf": float("inf")}
    index.ingest(
        [
            from_queue([n, job_id, {}, {"create_time": i}, []], "pending")
            for i, (job_id, n) in enumerate(numbers.items())
        ]
    )
    as_json = run_cli(
        "sql",
        "--json",
        "SELECT v.id, v.priority, j.priority_json FROM jobs_v v JOIN jobs j ON j.id = v.id ORDER BY j.create_time",
        db=db_url,
    )
    assert as_json.exit_code == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [json.dumps(r["priority"]) for r in rows] == ["2", "-1", "4.0", "2.5", '"NaN"', '"Infinity"']
    assert [r["priority_json"] for r in rows] == [None, None, "4.0", "2.5", "NaN", "Infinity"]
    as_csv = run_cli("sql", "--csv", "SELECT v.id, v.priority FROM jobs_v v ORDER BY v.create_time", db=db_url)
    assert [r["priority"] for r in csv.DictReader(io.StringIO(as_csv.stdout))] == [
        "2",
        "-1",
        "4.0",
        "2.5",
        "NaN",
        "Infinity",
    ]
