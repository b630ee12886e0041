"""Revision 0006 (queue numbers as ComfyUI holds them) on existing indexes, each backend.

An index written before it holds every integral float flattened to an int (``4.0``
stored and served as ``4``). Upgrading re-derives each row's number from ``raw``:
afterwards the index answers exactly what a fresh import of the same items answers,
no row is lost, totals stay exact; a downgrade and a second upgrade come back to the
same answers; a ``jobs-index migrate`` killed at random moments leaves the index at
0005 with all its rows or at 0006, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from alembic import command
from sqlalchemy import text

from jobs_index import JobsIndex, parse_list_query
from jobs_index.database import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    migration_transaction,
    write_transaction,
)
from jobs_index.normalize import from_history, from_queue
from jobs_index.render import json_value
from jobs_index.sample import synthetic_history

from .fixtures_util import load_capture

REV_5, REV_6 = "0005_filter_timeline_indexes", "0006_priority_as_stored"
HEAD = head_revision()  # an upgrade from REV_5 goes on to head in the same transaction
JOBS_INDEX = [sys.executable, "-m", "jobs_index"]
OLD_COLUMNS = (
    "id",
    "status",
    "stage",
    "priority",
    "create_time",
    "create_time_missing",
    "execution_start_time",
    "execution_end_time",
    "execution_duration",
    "outputs_count",
    "preview_output",
    "execution_error",
    "error_type",
    "error_message",
    "error_node_id",
    "error_node_type",
    "workflow_id",
    "source",
    "raw_kind",
    "raw",
    "raw_digest",
    "indexed_at",
)


def queue_numbers_items() -> tuple[dict, list, list]:
    """The captured history and queue of client-chosen numbers (2.5, 4.0, 7.0, -1, 0, 2)."""
    history = load_capture("queue_numbers/history.json")["body"]
    queue = load_capture("queue_numbers/queue_while_running.json")["body"]
    return history, queue["queue_running"], queue["queue_pending"]


def seed_records(synthetic: int = 60) -> list:
    """Records whose numbers a pre-0006 index could hold: ints and integral floats
    (2.5 was rejected then, so it is not among them); one history item whose keys do
    not start with its prompt (the migration then reads the whole item)."""
    history, running, pending = queue_numbers_items()
    records = [from_history(k, v) for k, v in history.items() if v["prompt"][0] != 2.5]
    records += [
        from_queue([7.0, "queued-7.0", {}, {"create_time": 5}, []], "pending"),
        from_queue([-3.0, "running--3.0", {}, {"create_time": 6}, []], "in_progress"),
    ]
    item = history["cf23157a-15bf-4efd-ab45-646b7f451482"]
    reordered = {
        "outputs": item["outputs"],
        "status": item["status"],
        "prompt": [9.0, "reordered-9.0", *item["prompt"][2:]],
    }
    records.append(from_history("reordered-9.0", reordered))
    for i, (job_id, item) in enumerate(synthetic_history(synthetic, seed=3)):
        if i % 3 == 0:
            item["prompt"][0] = float(item["prompt"][0])
        records.append(from_history(job_id, item))
    return records


def old_row(record) -> dict:
    """The row a pre-0006 index wrote: the number as an int (``_as_int``), no priority_json."""
    row = record.as_row()
    row["priority"] = int(row["priority"])
    row["indexed_at"] = 1
    return {c: row[c] for c in OLD_COLUMNS}


def build_old_index(url: str, records: list) -> None:
    engine = make_engine(url)
    try:
        migrate(engine, REV_5)
        rows = [old_row(r) for r in records]
        placeholders = ", ".join(f":{c}" for c in OLD_COLUMNS)
        with write_transaction(engine) as conn:
            conn.execute(text(f"INSERT INTO jobs ({', '.join(OLD_COLUMNS)}) VALUES ({placeholders})"), rows)
    finally:
        engine.dispose()


def answers(index: JobsIndex, ids: list[str]) -> tuple[str, list[str]]:
    """Every listing's JSON text (type-exact) and every detail, re-encoded canonically."""
    query = parse_list_query({"sort_order": "asc"})
    page = json.dumps(json.loads(index.list_jobs(query).body_text(query)))
    return page, [json.dumps(index.get_job(i)) for i in ids]


def view_priorities(engine) -> dict[str, object]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, priority FROM jobs_v")).all())


def test_upgrade_rederives_numbers_from_raw(db_url, tmp_path, backend):
    records = seed_records()
    ids = sorted(r.id for r in records)
    build_old_index(db_url, records)
    with JobsIndex.open(db_url, auto_migrate=True) as index:  # opening upgrades to head
        with index.engine.connect() as conn:
            assert current_revision(conn) == HEAD
        migrated = answers(index, ids)
        assert index.counts_consistent() and index.total() == len(records)
        priorities = view_priorities(index.engine)
    # A fresh index of the same items answers the same, byte for byte.
    fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    with JobsIndex.open(fresh_url) as fresh:
        fresh.ingest(records)
        assert migrated == answers(fresh, ids)
    listed = {job["id"]: job["priority"] for job in json.loads(migrated[0])["jobs"]}
    assert json.dumps(listed["cf23157a-15bf-4efd-ab45-646b7f451482"]) == "4.0"
    assert json.dumps(listed["0a7af8c8-f173-4461-b701-4b5518b01bee"]) == "7.0"
    assert json.dumps(listed["reordered-9.0"]) == "9.0"
    assert json.dumps(listed["running--3.0"]) == "-3.0"
    assert json.dumps(listed["3ef28d83-22df-43ba-8258-fb5cc123d1f0"]) == "-1"
    # jobs_v (so `jobs-index sql`) says the number as ComfyUI holds it too: 4.0 a float.
    for job_id, value in listed.items():
        assert json.dumps(json_value(priorities[job_id])) == json.dumps(value), job_id

    # Down to 0005 (numbers as ints again) and up: the same answers.
    engine = make_engine(db_url)
    try:
        with migration_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), REV_5)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == len(records)
        migrate(engine)
        assert answers(JobsIndex(engine), ids) == migrated
    finally:
        engine.dispose()


def test_sigkill_during_0006_leaves_old_or_new(db_url, tmp_path, backend):
    """``jobs-index migrate`` killed at random moments: 0005 with every row and its
    old numbers, or 0006 with the exact ones; a re-run completes it."""
    rng = random.Random(time.time_ns())
    records = seed_records(synthetic=1500)
    floats = sum(1 for r in records if r.priority_json is not None)
    cmd = [*JOBS_INDEX, "--db", db_url, "migrate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    durations, outcomes = [], []
    for attempt in range(5):
        reset(db_url)
        build_old_index(db_url, records)
        if attempt == 0:
            t0 = time.monotonic()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            assert done.returncode == 0, done.stderr
            durations.append(time.monotonic() - t0)
        else:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            moment = rng.uniform(0.3, durations[0] * 1.1)
            try:
                proc.wait(moment)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait(60)
            version, count, exact = state(db_url)
            assert count == len(records), (version, count)
            assert (version, exact) in ((REV_5, 0), (HEAD, floats)), (version, exact, moment)
            outcomes.append((round(moment, 2), code, version))
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            assert done.returncode == 0, done.stderr
        version, count, exact = state(db_url)
        assert (version, count, exact) == (HEAD, len(records), floats)
        with JobsIndex.open(db_url) as index:
            assert index.counts_consistent()
    print(
        f"\n[{backend}] 0006 over {len(records)} jobs takes {durations[0]:.1f}s with start-up; "
        f"kills (moment, exit, revision after): {outcomes}"
    )


def state(url: str) -> tuple[str | None, int, int]:
    """(revision, jobs, rows with priority_json) — 0 of the latter before 0006."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            version = current_revision(conn)
            count = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
            exact = 0
            if version != REV_5:
                exact = conn.execute(text("SELECT count(*) FROM jobs WHERE priority_json IS NOT NULL")).scalar_one()
        return version, count, exact
    finally:
        engine.dispose()


def reset(url: str) -> None:
    """An empty database: drop what a previous round created."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for kind in ("view", "trigger", "table"):
                    for (name,) in conn.exec_driver_sql(
                        f"SELECT name FROM sqlite_master WHERE type = '{kind}' AND name NOT LIKE 'sqlite_%'"
                    ).all():
                        conn.exec_driver_sql(f'DROP {kind.upper()} IF EXISTS "{name}"')
            else:
                conn.exec_driver_sql("DROP VIEW IF EXISTS jobs_v")
                for (name,) in conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                ).all():
                    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE')
                for (name,) in conn.exec_driver_sql(
                    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = current_schema()"
                ).all():
                    conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{name}" CASCADE')
    finally:
        engine.dispose()


def test_downgrade_with_numbers_0005_cannot_hold_then_upgrade_restores_them(db_url):
    """After 0006 an index holds numbers 0005's integer column cannot (2.5, NaN,
    infinities, beyond 64 bits): the downgrade keeps every row (such numbers become
    the nearest integer, or 0), and upgrading again restores each exactly from raw."""
    numbers = [2.5, -0.5, float("nan"), float("inf"), float("-inf"), 10**30, -(2**63) - 1, 1e300, 4.0, 3]
    records = [from_queue([n, f"n{i}", {}, {"create_time": i}, []], "pending") for i, n in enumerate(numbers)]
    ids = [r.id for r in records]
    engine = make_engine(db_url)
    try:
        migrate(engine)
        index = JobsIndex(engine)
        index.ingest(records)
        before = answers(index, ids)
        with migration_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), REV_5)
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT id, priority FROM jobs ORDER BY create_time")).all()
        assert [row[0] for row in kept] == ids
        assert all(float(p) == int(p) for _, p in kept)  # integers again
        migrate(engine)
        assert answers(index, ids) == before
        assert [json.dumps(index.get_job(i)["priority"]) for i in ids] == [json.dumps(n) for n in numbers]
    finally:
        engine.dispose()
