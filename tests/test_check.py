"""``jobs-index check [--repair]`` (issue 18, item 2) on both engines: drift made by
plain SQL that bypasses jobs-index is found, reported without a change, and
repaired from the rows; a database jobs-index wrote itself is clean (captured
ComfyUI data included), in any batch size.

SQLite's classic hole: ``INSERT OR REPLACE`` from the ``sqlite3`` shell deletes the
old row without firing the delete trigger (recursive triggers are off), so the
counters count the job twice.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs_index.check import check
from jobs_index.search_queries import _document

from .test_toolbox_migration import seed_records
from .toolbox_util import run_cli, side_rows, snapshot


@pytest.fixture
def filled(index, db_url):
    records = seed_records()
    index.ingest(records[::2], source="gpu1")
    index.ingest(records[1::2])
    assert index.counts_consistent()
    index.url = db_url  # for the CLI (the engine's URL lacks PostgreSQL's search_path option)
    return index, sorted(records, key=lambda r: r.id)


def expected_side_rows(records):
    """(job_outputs rows, job_search rows as ``toolbox_util.side_rows`` reads them)."""
    search = [
        {"job_id": r.id, "node_types": list(doc.node_types), "models": list(doc.models), "loras": list(doc.loras)}
        for r in records
        for doc in [_document(r)]
    ]
    return ([{**o, "job_id": r.id} for r in records for o in r.output_files], sorted(search, key=lambda n: n["job_id"]))


def shell(index, *statements: str) -> None:
    """Plain SQL as an operator would type it: the sqlite3 module (foreign keys off,
    like the sqlite3 shell) or a PostgreSQL session."""
    if index.engine.dialect.name == "sqlite":
        conn = sqlite3.connect(make_url(str(index.engine.url)).database)
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
    else:
        with index.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)


def make_drift(index, records) -> dict:
    """Counters, a derived column, side rows and (SQLite) an orphan, all wrong."""
    history = [r for r in records if r.output_files and r.status == "completed"]
    replaced, relabelled, stripped = history[0], history[1], history[2]
    if index.engine.dialect.name == "sqlite":
        shell(
            index,
            f"INSERT OR REPLACE INTO jobs SELECT * FROM jobs WHERE id = '{replaced.id}'",
            f"INSERT OR REPLACE INTO jobs SELECT id, 'failed', stage, priority, create_time, create_time_missing, "
            f"execution_start_time, execution_end_time, execution_duration, outputs_count, preview_output, "
            f"execution_error, error_type, error_message, error_node_id, error_node_type, workflow_id, source, "
            f"raw_kind, raw, raw_digest, indexed_at, priority_json, raw_dict_id FROM jobs WHERE id = '{relabelled.id}'",
            f"DELETE FROM job_search WHERE job_id = '{stripped.id}'",
            "INSERT INTO job_outputs (job_id, ordinal, node_id, media_type, filename) "
            "VALUES ('zzzz-gone', 0, '9', 'images', 'orphan.png')",
        )
    else:  # no INSERT OR REPLACE; a counter bumped, a column and side rows changed by hand
        shell(
            index,
            "UPDATE job_counts SET n = n + 1 WHERE source = '' AND workflow_id = '' AND status = 'completed'",
            f"UPDATE jobs SET status = 'failed' WHERE id = '{relabelled.id}'",
            f"DELETE FROM job_search WHERE job_id = '{stripped.id}'",
        )
    return {"relabelled": relabelled, "stripped": stripped}


def test_a_database_jobs_index_wrote_is_clean(filled):
    index, _ = filled
    for batch_size in (1, 7, 1000):
        report = check(index, batch_size=batch_size)
        assert report.clean, report
        assert report.jobs == len(filled[1])


def test_check_finds_the_drift_and_changes_nothing(filled):
    index, records = filled
    make_drift(index, records)
    before = snapshot(index)
    result = run_cli("check", "--batch-size", "7", db=index.url)
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "jobs whose columns differ from raw: 1" in out
    assert "jobs whose job_outputs/job_search differ from raw: 1" in out
    assert "job_counts rows that differ from a recount: 0" not in out
    if index.engine.dialect.name == "sqlite":
        assert "side rows without their job: 1 (e.g. zzzz-gone)" in out
    assert "check --repair" in result.stderr
    assert snapshot(index) == before
    assert not index.counts_consistent()


def test_check_repair_fixes_the_drift(filled):
    index, records = filled
    drift = make_drift(index, records)
    url = index.url
    result = run_cli("check", "--repair", "--batch-size", "7", db=url)
    assert result.exit_code == 0, result.output
    assert "repaired" in result.stdout
    assert index.counts_consistent()
    assert index.total() == len(records)
    with index.engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM jobs WHERE id = :id"), {"id": drift["relabelled"].id}
        ).scalar_one()
    assert status == drift["relabelled"].status == "completed"
    outputs, search = side_rows(index)
    want_outputs, want_search = expected_side_rows(records)
    assert [{k: o[k] for k in want_outputs[0]} for o in outputs] == want_outputs
    assert sorted(search, key=lambda n: n["job_id"]) == want_search
    again = run_cli("check", db=url)
    assert again.exit_code == 0, again.output
    assert check(index).clean


def test_unreadable_raw_is_reported_never_changed(filled):
    index, records = filled
    victim = records[5]
    shell(
        index,
        f"UPDATE jobs SET raw = {'X' if index.engine.dialect.name == 'sqlite' else ''}'00ff' WHERE id = '{victim.id}'"
        if index.engine.dialect.name == "sqlite"
        else f"UPDATE jobs SET raw = '\\x00ff'::bytea WHERE id = '{victim.id}'",
    )
    before = snapshot(index)
    result = run_cli("check", "--repair", db=index.url)
    assert result.exit_code == 1
    assert f"jobs whose raw cannot be read (left as they are): 1 (e.g. {victim.id}" in result.stdout
    assert snapshot(index) == before


def test_queue_numbers_as_comfyui_holds_them_are_clean_and_repaired(index):
    """Client-chosen numbers (4.0, 2.5, NaN, infinities, beyond 64 bits) written by the
    importer are clean; a priority flattened by hand (4.0 stored as 4, as before
    revision 0006) is found and repaired from raw."""
    import json

    from jobs_index.normalize import from_queue

    numbers = [4.0, 2.5, -0.5, float("nan"), float("inf"), 10**30, 1e16, 7]
    index.ingest([from_queue([n, f"n{i}", {}, {"create_time": i}, []], "pending") for i, n in enumerate(numbers)])
    assert check(index).clean
    shell(index, "UPDATE jobs SET priority = 4, priority_json = NULL WHERE id = 'n0'")
    report = check(index)
    assert not report.clean and report.derived.count == 1
    assert check(index, repair=True).derived.count == 1
    assert check(index).clean
    assert [json.dumps(index.get_job(f"n{i}")["priority"]) for i in range(len(numbers))] == [
        json.dumps(n) for n in numbers
    ]
