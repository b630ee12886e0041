"""Migration 0009_search_narrow: SQLite indexes the columns a search reads per match
(``ix_job_search_narrow``) and records the documents whose job_search row
went by other SQL (``job_search_orphans``), so an unfiltered search count is FTS5's
count less the matching orphans. Upgraded from 0008 with orphans already there,
kept by hand deletes and jobs-index's own deletes afterwards, downgraded and
upgraded again; the counts always equal a brute-force count over the raw graphs."""

from __future__ import annotations

import copy
import sqlite3

from alembic import command
from sqlalchemy import insert, inspect, text

from jobs_index import JobsIndex, parse_list_query, search_queries
from jobs_index.database import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    migration_transaction,
    write_transaction,
)
from jobs_index.normalize import from_history
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import realistic_history
from jobs_index.schema import Job
from jobs_index.search import document, matches, parse

BEFORE, REVISION = "0008_search", "0009_search_narrow"
QUERIES = ("and", "okapi", "masterpiece portrait", '"best quality"', "jugg*", "ksampler -loraloader", "detail_tweaker")


def hand_delete(engine, backend: str, ids: list[str]) -> None:
    """DELETE FROM jobs as other SQL would (SQLite: the sqlite3 module, foreign keys off)."""
    if backend == "sqlite":
        shell = sqlite3.connect(engine.url.database)
        with shell:
            shell.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        shell.close()
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM jobs WHERE id = ANY(%s)", (ids,))


def orphans(engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT docid FROM job_search_orphans ORDER BY docid"))]


def check_counts(index: JobsIndex, live: list) -> None:
    for q in QUERIES:
        query = parse(q)
        expected = sorted(
            (r for r in live if matches(query, document(r.raw_kind, decode_raw(r.raw)).words)),
            key=lambda r: (r.create_time, r.id),
            reverse=True,
        )
        page = index.list_jobs(parse_list_query({"q": q}))
        assert page.total == len(expected), q
        assert [j["id"] for j in page.jobs] == [r.id for r in expected], q
        failed = [r for r in expected if r.status == "failed"]
        assert index.list_jobs(parse_list_query({"q": q, "status": "failed"})).total == len(failed), q


def jobs_at_0007(engine, recs) -> None:
    """``recs`` written as rows of an index at revision 0007 (before search: the later
    revisions build what derives from them)."""
    migrate(engine, "0007_source_leases")
    with write_transaction(engine) as conn:
        conn.execute(
            insert(Job.__table__),
            [{k: v for k, v in {**r.as_row(), "indexed_at": 1}.items() if k != "raw_dict_id"} for r in recs],
        )


def test_upgrade_finds_orphans_counts_stay_exact_and_downgrade_removes_the_table(db_url, backend, monkeypatch):
    recs = [from_history(k, v) for k, v in realistic_history(400, seed=14)]
    engine = make_engine(db_url)
    try:
        jobs_at_0007(engine, recs)
        migrate(engine, BEFORE)  # builds the search rows
        hand_delete(engine, backend, [recs[0].id, recs[1].id])  # words left in FTS5 at 0008
        migrate(engine, REVISION)
        if backend == "sqlite":
            assert len(orphans(engine)) == 2  # found by the upgrade
        migrate(engine)  # to head: the later revisions (0012_search_grams makes the FTS5 table anew:
        with engine.connect() as conn:  # the orphans' words go with the old one)
            assert current_revision(conn) == head_revision()
        live = recs[2:]
        index = JobsIndex(engine)
        if backend == "postgresql":
            assert "job_search_orphans" not in inspect(engine).get_table_names()
            check_counts(index, live)
            return
        assert orphans(engine) == []
        # (0014_search_facets made job_search itself narrow: the index went)
        assert "ix_job_search_narrow" not in {i["name"] for i in inspect(engine).get_indexes("job_search")}
        check_counts(index, live)
        # other SQL deletes: recorded; jobs-index's own deletes and replacements: none left
        hand_delete(engine, backend, [recs[2].id])
        live = recs[3:]
        index.delete_jobs([recs[3].id, recs[4].id])
        live = recs[5:]
        changed = copy.deepcopy(decode_raw(recs[5].raw))
        changed["prompt"][2]["9999"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "and okapi"}}
        live[0] = from_history(recs[5].id, changed)
        index.ingest([live[0]])  # its search rows replaced
        assert len(orphans(engine)) == 1
        check_counts(index, live)
        # many orphans: the count joins job_search instead (the same answer)
        monkeypatch.setattr(search_queries, "ORPHAN_PROBES", 2)
        check_counts(index, live)
        monkeypatch.undo()
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO job_search_fts (job_search_fts, rank) VALUES ('integrity-check', 0)")

        with migration_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        with engine.connect() as conn:
            gone = conn.exec_driver_sql("SELECT docid FROM job_search WHERE job_id = ?", (live[1].id,)).scalar_one()
        hand_delete(engine, backend, [live[1].id])  # an orphan at 0008 again
        live = [live[0], *live[2:]]
        assert "job_search_orphans" not in inspect(engine).get_table_names()
        assert "ix_job_search_narrow" not in {i["name"] for i in inspect(engine).get_indexes("job_search")}
        with engine.connect() as conn:
            triggers = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert "trg_job_search_orphan" not in triggers
        migrate(engine, REVISION)  # and up again: the orphan found
        assert orphans(engine) == [gone]
        migrate(engine)
        assert orphans(engine) == []
        check_counts(JobsIndex(engine), live)
    finally:
        engine.dispose()
