"""Migration 0004 and the set-wise counters, on each backend.

* upgrade from 0003 with data: counts stay exact; jobs-index's writer then keeps
  them exact for inserts, stage changes, source changes and re-imports, while
  ad-hoc SQL (no writer row) still fires the triggers; ``jobs_index_writer`` is
  never left holding a row; downgrade restores 0001's triggers (still exact), and
  upgrade again.
* a failed batch (rolled back after the writer's row was inserted) leaves no row
  behind and the counts exact.
"""

from __future__ import annotations

import dataclasses

import pytest
from alembic import command
from sqlalchemy import insert, text

from jobs_index import JobsIndex
from jobs_index.database import (
    alembic_config,
    current_revision,
    make_engine,
    migrate,
    migration_transaction,
    write_transaction,
)
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
from jobs_index.schema import Job

REV_3, REV_4 = "0003_followed_sources", "0004_writer_counts"


def records(n: int, seed: int) -> list:
    return [from_history(k, v) for k, v in synthetic_history(n, seed=seed)]


def downgrade(engine, revision: str) -> None:
    with migration_transaction(engine) as conn:
        command.downgrade(alembic_config(conn), revision)


def adhoc(engine, sql: str) -> None:
    """A statement as a user runs it: its own transaction, no writer row."""
    with engine.begin() as conn:
        conn.execute(text(sql))


def writer_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM jobs_index_writer")).scalar_one()


def test_upgrade_seed_write_adhoc_downgrade(db_url):
    engine = make_engine(db_url)
    index = JobsIndex(engine)
    try:
        migrate(engine, REV_3)
        seeded = records(40, seed=3)
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
                    for r in seeded
                ],
            )
        migrate(engine, REV_4)
        with engine.connect() as conn:
            assert current_revision(conn) == REV_4
        assert index.counts_consistent() and index.total() == 40

        # The writer (today's, which needs today's columns: 0005 and 0006 leave the
        # counting as 0004 made it): new rows, a re-import (unchanged), a source
        # change, new stages.
        migrate(engine)
        fresh = records(60, seed=4)
        assert index.ingest(fresh, source="a", batch_size=25).inserted == 60
        assert index.ingest(fresh, source="a").unchanged == 60
        assert index.ingest(seeded[:10], source="b").updated == 0  # same content: source kept
        moved = [
            dataclasses.replace(r, raw_digest="x" + r.raw_digest[1:], workflow_id="wf-new", status="failed")
            for r in seeded[:15]
        ]
        result = index.ingest(moved, source="b")
        assert (result.updated, result.inserted) == (15, 0)
        older = [dataclasses.replace(r, stage=0, status="pending", raw_digest="y") for r in fresh[:5]]
        assert index.ingest(older).unchanged == 5  # an older stage never overwrites
        no_source = [dataclasses.replace(r, source=None, raw_digest="w", status="cancelled") for r in fresh[5:10]]
        assert index.ingest(no_source).updated == 5  # the stored source "a" is kept
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM jobs WHERE source = 'a' AND raw_digest = 'w'")).scalar_one()
                == 5
            )
        assert index.counts_consistent() and index.total() == 100
        assert writer_rows(engine) == 0

        # Ad-hoc SQL still fires the triggers.
        adhoc(engine, "UPDATE jobs SET status = 'cancelled' WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 7)")
        adhoc(
            engine,
            "UPDATE jobs SET source = 'c', workflow_id = NULL WHERE id IN "
            "(SELECT id FROM jobs ORDER BY id DESC LIMIT 9)",
        )
        adhoc(engine, "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 3)")
        assert index.counts_consistent() and index.total() == 97

        downgrade(engine, REV_3)
        with engine.connect() as conn:
            assert current_revision(conn) == REV_3
        assert index.counts_consistent()
        adhoc(engine, "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 2)")
        assert index.counts_consistent() and index.total() == 95

        migrate(engine)
        assert index.ingest(records(5, seed=5)).inserted == 5
        assert index.counts_consistent() and index.total() == 100
    finally:
        engine.dispose()


def test_failed_batch_leaves_no_writer_row(index, monkeypatch):
    from jobs_index import write_queries

    index.ingest(records(20, seed=6))

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(write_queries, "_delete_side_rows", fail)  # after the rows and deltas
    changed = [dataclasses.replace(r, raw_digest="z", status="failed") for r in records(20, seed=6)]
    with pytest.raises(RuntimeError):
        index.ingest(changed)
    monkeypatch.undo()
    assert writer_rows(index.engine) == 0
    assert index.counts_consistent() and index.total() == 20
    assert index.ingest(changed).updated == 20
    assert index.counts_consistent()
