"""Migration 0008_search on each backend: an index at 0005 (with ``job_nodes``) is
upgraded in batches to exactly the search rows ingest writes, ``job_nodes`` goes;
a failure half-way leaves it as it was; the downgrade rebuilds ``job_nodes``."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import insert, inspect, text

from jobs_index import JobsIndex, parse_list_query
from jobs_index import search as search_module
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
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import realistic_history
from jobs_index.schema import Job
from jobs_index.search import document, matches, parse

from .fixtures_util import capture_history, capture_queue

BEFORE, REVISION = "0007_source_leases", "0008_search"  # 0008 follows main's head


def records() -> list:
    out = [from_history(k, v) for k, v in capture_history().items()]
    running, pending = capture_queue()
    out += [from_queue(running[0], "in_progress"), from_queue(pending[-1], "pending")]
    out += [from_history(k, v) for k, v in realistic_history(2300, seed=9)]  # more than one batch
    return list({r.id: r for r in out}.values())


def graph_nodes(record) -> list[tuple]:
    item = decode_raw(record.raw)
    graph = (item["prompt"] if record.raw_kind == "history" else item)[2]
    return sorted(
        (record.id, str(k), v["class_type"])
        for k, v in graph.items()
        if isinstance(v, dict) and isinstance(v.get("class_type"), str)
    )


def seed_at_0005(engine, recs) -> list[tuple]:
    migrate(engine, BEFORE)
    nodes = sorted(n for r in recs for n in graph_nodes(r))
    with write_transaction(engine) as conn:
        conn.execute(
            insert(Job.__table__),
            [{k: v for k, v in {**r.as_row(), "indexed_at": 1}.items() if k != "raw_dict_id"} for r in recs],
        )
        conn.execute(
            text("INSERT INTO job_nodes (job_id, node_id, class_type) VALUES (:a, :b, :c)"),
            [{"a": a, "b": b, "c": c} for a, b, c in nodes],
        )
    return nodes


def search_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT s.job_id, s.create_time, s.execution_duration, s.status, s.workflow_id, s.source, "
                    "f.node_types, f.models, f.loras "
                    "FROM job_search AS s JOIN job_facets AS f ON f.job_id = s.job_id"
                )
            )
        )


def test_upgrade_builds_what_ingest_writes_and_downgrade_brings_job_nodes_back(db_url, tmp_path, backend):
    recs = records()
    engine = make_engine(db_url)
    try:
        nodes = seed_at_0005(engine, recs)
        migrate(engine)
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()  # 0008, and what follows it
            command.check(alembic_config(conn))
        assert "job_nodes" not in inspect(engine).get_table_names()
        index = JobsIndex(engine)
        for q in ("fox", '"best quality"', "jugg*", "ksampler -loraloader", "detail_tweaker", "ZeroDivisionError"):
            query = parse(q)
            expected = [
                r.id
                for r in sorted(recs, key=lambda r: (r.create_time, r.id), reverse=True)
                if matches(query, document(r.raw_kind, decode_raw(r.raw)).words)
            ]
            assert [j["id"] for j in index.list_jobs(parse_list_query({"q": q})).jobs] == expected, q
        # the same rows as ingest writes into a new index
        fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        with JobsIndex.open(fresh_url) as fresh:
            fresh.ingest(recs)
            assert search_rows(fresh.engine) == search_rows(engine)
        # replacing and deleting after the upgrade keep SQLite's FTS index sound
        index.delete_jobs([recs[0].id, recs[-1].id])
        if backend == "sqlite":
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO job_search_fts (job_search_fts, rank) VALUES ('integrity-check', 0)")

        with migration_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        tables = set(inspect(engine).get_table_names())
        assert "job_nodes" in tables and not any(t.startswith("job_search") for t in tables)
        gone = {recs[0].id, recs[-1].id}
        with engine.connect() as conn:
            rebuilt = sorted(tuple(r) for r in conn.execute(text("SELECT job_id, node_id, class_type FROM job_nodes")))
        assert rebuilt == [n for n in nodes if n[0] not in gone]
        migrate(engine)  # and up again
        assert len(search_rows(engine)) == len(recs) - 2
    finally:
        engine.dispose()


def test_a_failed_upgrade_leaves_the_index_as_it_was(db_url, monkeypatch):
    recs = records()
    engine = make_engine(db_url)
    try:
        nodes = seed_at_0005(engine, recs)
        calls = {"n": 0}
        real = search_module.document

        def failing(raw_kind, item):
            calls["n"] += 1
            if calls["n"] > 2100:  # in the second batch: the first one is written already
                raise RuntimeError("killed")
            return real(raw_kind, item)

        monkeypatch.setattr(search_module, "document", failing)
        with pytest.raises(RuntimeError, match="killed"):
            migrate(engine)
        monkeypatch.setattr(search_module, "document", real)
        with engine.connect() as conn:
            assert current_revision(conn) == BEFORE
            assert conn.execute(text("SELECT count(*) FROM job_nodes")).scalar_one() == len(nodes)
        assert not any(t.startswith("job_search") for t in inspect(engine).get_table_names())
        migrate(engine)  # the next open completes it
        assert len(search_rows(engine)) == len(recs)
    finally:
        engine.dispose()
