"""Migration 0002 (jobs_v, job_outputs, job_nodes) on each backend: upgrade from
0001 with data backfills the side tables from ``raw`` exactly as ingest filled them
(``job_nodes`` until 0008 replaced it); downgrade removes them and leaves the jobs
intact; ``alembic check`` stays clean at head."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, inspect, text

from jobs_index import JobsIndex
from jobs_index.database import (
    alembic_config,
    current_revision,
    make_engine,
    migrate,
    migration_transaction,
    write_transaction,
)
from jobs_index.normalize import from_history, from_queue, output_files
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import synthetic_history
from jobs_index.schema import Job

from .fixtures_util import capture_history, capture_queue, cursor_branch_history
from .toolbox_util import recent_records

MIGRATION = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0002_sql_views_and_outputs.py"
REV_1, REV_2 = "0001_create_jobs", "0002_sql_views_and_outputs"


def load_migration():
    spec = importlib.util.spec_from_file_location("migration_0002", MIGRATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_types(graph) -> list[dict]:
    """``job_nodes`` rows of a prompt graph as ingest derived them before 0008."""
    return [
        {"node_id": str(k), "class_type": v["class_type"]}
        for k, v in (graph if isinstance(graph, dict) else {}).items()
        if isinstance(v, dict)
        and isinstance(v.get("class_type"), str)
        and "\x00" not in v["class_type"]
        and "\x00" not in str(k)
    ]


def record_nodes(record) -> list[dict]:
    item = decode_raw(record.raw)
    prompt = item["prompt"] if record.raw_kind == "history" else item
    return node_types(prompt[2])


def side_rows(engine) -> tuple[list, list]:
    """(job_outputs rows, job_nodes rows) as dicts, ordered (at revision 0002)."""
    with engine.connect() as conn:
        outputs = conn.execute(text("SELECT * FROM job_outputs ORDER BY job_id, ordinal")).mappings().all()
        nodes = conn.execute(text("SELECT * FROM job_nodes ORDER BY job_id, node_id")).mappings().all()
    return [dict(r) for r in outputs], [dict(r) for r in nodes]


def seed_records() -> list:
    records = [from_history(k, v) for k, v in capture_history().items()]
    running, pending = capture_queue()
    records += [from_queue(running[0], "in_progress"), from_queue(pending[-1], "pending")]
    records += recent_records(150, start_ms=1_764_000_000_000, seed=11)
    return list({r.id: r for r in records}.values())


def downgrade(engine, revision: str) -> None:
    with migration_transaction(engine) as conn:
        command.downgrade(alembic_config(conn), revision)


def tables_and_views(engine) -> tuple[set, set]:
    inspector = inspect(engine)
    return set(inspector.get_table_names()), set(inspector.get_view_names())


def test_upgrade_backfills_from_raw_then_downgrade_and_again(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine, REV_1)
        records = seed_records()
        with write_transaction(engine) as conn:
            # a row of this older revision: no priority_json (revision 0006)
            conn.execute(
                insert(Job.__table__),
                [
                    {
                        k: v
                        for k, v in {**r.as_row(), "indexed_at": 1}.items()
                        if k not in ("priority_json", "raw_dict_id")
                    }
                    for r in records
                ],
            )
        assert "job_outputs" not in tables_and_views(engine)[0]

        migrate(engine, REV_2)  # 0001 -> 0002 with data
        with engine.connect() as conn:
            assert current_revision(conn) == REV_2
        index = JobsIndex(engine)
        expected_outputs = [{**o, "job_id": r.id} for r in sorted(records, key=lambda r: r.id) for o in r.output_files]
        expected_nodes = sorted((r.id, n["node_id"], n["class_type"]) for r in records for n in record_nodes(r))
        outputs, nodes = side_rows(engine)
        assert sorted(outputs, key=lambda o: (o["job_id"], o["ordinal"])) == sorted(
            expected_outputs, key=lambda o: (o["job_id"], o["ordinal"])
        )
        assert sorted((n["job_id"], n["node_id"], n["class_type"]) for n in nodes) == expected_nodes
        assert len(outputs) > 100 and len(nodes) > 1000
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs_v")).scalar_one() == len(records)
        assert index.counts_consistent()

        downgrade(engine, REV_1)
        tables, views = tables_and_views(engine)
        assert {"job_outputs", "job_nodes"}.isdisjoint(tables) and "jobs_v" not in views
        with engine.connect() as conn:
            assert current_revision(conn) == REV_1
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == len(records)
            if engine.dialect.name == "sqlite":
                triggers = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='trigger'")}
                assert "trg_jobs_delete_side_rows" not in triggers
        assert index.counts_consistent()

        migrate(engine, REV_2)  # and up again: the same rows
        assert side_rows(engine) == (outputs, nodes)
    finally:
        engine.dispose()


def test_downgrade_from_head_to_base_and_back(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        downgrade(engine, "base")
        assert tables_and_views(engine) == ({"jobs_index_alembic_version"}, set())
        migrate(engine)
        with JobsIndex(engine) as index:
            index.ingest(seed_records()[:20])
            assert index.counts_consistent()
    finally:
        engine.dispose()


def test_alembic_check_is_clean_at_head(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            command.check(alembic_config(conn))  # raises if the models and the database differ
    finally:
        engine.dispose()


@pytest.mark.parametrize("source", ["capture", "cursor_branch", "sample", "odd"])
def test_frozen_backfill_functions_match_normalize(source):
    """The migration keeps its own copy of the derivations (a migration must not change
    when the app does); at this revision the two agree."""
    migration = load_migration()
    if source == "capture":
        items = list(capture_history().items())
    elif source == "cursor_branch":
        items = list(cursor_branch_history().items())
    elif source == "sample":
        items = list(synthetic_history(50))
    else:
        items = [
            (
                "odd",
                {
                    "prompt": [1, "odd", {"1": {"class_type": "A"}, "2": None, "3": {"class_type": "B\x00"}}, {}, []],
                    "outputs": {
                        "1": {"3d": ["x.obj", 5], "images": [{"filename": "a", "type": 3}]},
                        "2": [],
                        "3": {"animated": [True], "video": [{"filename": "v.mp4"}]},
                    },
                },
            )
        ]
    for job_id, item in items:
        record = from_history(job_id, item)
        assert migration.side_rows("history", record.raw) == (record.output_files, record_nodes(record))
        assert record.output_files == output_files(item.get("outputs"))
    running, pending = capture_queue()
    for item, status in ((running[0], "in_progress"), (pending[0], "pending")):
        record = from_queue(item, status)
        assert migration.side_rows("queue", record.raw) == ([], record_nodes(record))
