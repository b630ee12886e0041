"""Migration 0014_search_facets: SQLite's ``job_search`` keeps only what a search reads
and names its node types, models and LoRAs in ``job_search_facets`` (each distinct
combination once); ``job_facets`` reads them the same on both engines.

Upgraded from 0013 with jobs (one deleted by other SQL, so an orphan docid exists):
every job keeps its docid and lists, the docid high-water mark stays, counts and pages
equal a brute-force reference, a write after the upgrade reuses the stored
combinations, and the downgrade brings the wide table and the narrow index back with
the same rows. PostgreSQL: only the view."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from jobs_index import JobsIndex, parse_list_query
from jobs_index.database import alembic_config, current_revision, make_engine, migrate, write_transaction
from jobs_index.normalize import from_history
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import realistic_history, synthetic_history
from jobs_index.search import document
from jobs_index.search_queries import facets_hash

from .test_search_narrow_migration import hand_delete, jobs_at_0007
from .test_search_timeline_migration import reference_ids

BEFORE, REVISION = "0013_time_buckets", "0014_search_facets"
QUERIES = ("and", "masterpiece portrait", '"best quality"', "jugg*", "ksampler -loraloader")
FACETS_SQL = "SELECT job_id, node_types, models, loras FROM job_facets ORDER BY job_id"


def facets(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(FACETS_SQL))]


def wide_rows(engine) -> list[tuple]:
    """job_search as it was before the revision (SQLite): docid, job_id, the listing copies, the lists."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT docid, job_id, create_time, execution_duration, status, workflow_id, source, "
                    "node_types, models, loras FROM job_search ORDER BY docid"
                )
            )
        ]


def check_search(index: JobsIndex, live: list) -> None:
    for q in QUERIES:
        for status in (None, "failed"):
            expected = reference_ids(live, q, status)
            page = index.list_jobs(parse_list_query({"q": q, "limit": "500", **({"status": status} if status else {})}))
            assert page.total == len(expected), (q, status)
            assert [j["id"] for j in page.jobs] == expected, (q, status)


def test_upgrade_splits_the_lists_keeps_docids_and_downgrade_joins_them_again(db_url, backend):
    # realistic jobs (lists nearly all distinct) and synthetic ones (one combination)
    recs = [from_history(k, v) for k, v in realistic_history(150, seed=21)]
    recs += [from_history(k, v) for k, v in synthetic_history(150)]
    engine = make_engine(db_url)
    try:
        jobs_at_0007(engine, recs)
        migrate(engine, BEFORE)
        hand_delete(engine, backend, [recs[0].id])  # an orphan docid on SQLite
        live = recs[1:]
        expected = sorted(
            (r.id, *(search_json(lists) for lists in lists_of(r))) for r in live
        )  # fmt: skip
        if backend == "sqlite":
            before = wide_rows(engine)
            with engine.connect() as conn:
                seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'job_search'").scalar()
        migrate(engine, REVISION)
        with engine.connect() as conn:
            assert current_revision(conn) == REVISION
        assert facets(engine) == expected
        check_search(JobsIndex(engine), live)
        if backend == "postgresql":
            with write_transaction(engine) as conn:
                command.downgrade(alembic_config(conn), BEFORE)
            assert "job_facets" not in inspect(engine).get_view_names()
            return

        with engine.connect() as conn:
            columns = [c["name"] for c in inspect(conn).get_columns("job_search")]
            assert columns == [
                "docid", "job_id", "create_time", "execution_duration", "status", "workflow_id", "source", "facets_id",
            ]  # fmt: skip
            assert {i["name"] for i in inspect(conn).get_indexes("job_search")} == {
                "ix_job_search_job_id",
                "ix_job_search_timeline",
            }
            assert conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'job_search'").scalar() == seq
            stored = conn.exec_driver_sql("SELECT hash, node_types, models, loras FROM job_search_facets").all()
            # each combination once, found by its hash
            assert len(stored) == len({r[1:] for r in stored}) == len({tuple(e[1:]) for e in expected})
            assert all(h == facets_hash(tuple(lists)) for h, *lists in stored)
            docids = dict(conn.exec_driver_sql("SELECT job_id, docid FROM job_search").all())
        assert docids == {row[1]: row[0] for row in before}

        # a write after the upgrade: new docids past the old ones, combinations reused
        index = JobsIndex(engine)
        more = [from_history(k, v) for k, v in synthetic_history(160)][150:]
        index.ingest(more)
        live += more
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM job_search_facets").scalar() == len(stored)
            marks = ", ".join("?" * len(more))
            first = conn.exec_driver_sql(
                f"SELECT min(docid) FROM job_search WHERE job_id IN ({marks})", tuple(r.id for r in more)
            ).scalar()
            assert first > max(seq, max(docids.values()))
        check_search(index, live)
        index.delete_jobs([more[0].id])  # jobs-index's own delete: no orphan, no row left
        live.remove(more[0])
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO job_search_fts (job_search_fts, rank) VALUES ('integrity-check', 0)")
        check_search(index, live)
        after = facets(engine)

        with write_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        assert "job_search_facets" not in inspect(engine).get_table_names()
        assert "ix_job_search_narrow" in {i["name"] for i in inspect(engine).get_indexes("job_search")}
        rows = wide_rows(engine)
        assert sorted((r[1], *r[7:]) for r in rows) == after
        assert [r for r in rows if r[1] in docids] == [r for r in before if r[1] in {x.id for x in live}]
        migrate(engine, REVISION)  # and up again
        assert facets(engine) == after
        check_search(JobsIndex(engine), live)
    finally:
        engine.dispose()


def lists_of(record) -> tuple:
    doc = document(record.raw_kind, decode_raw(record.raw))
    return doc.node_types, doc.models, doc.loras


def search_json(values) -> str:
    import json

    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
