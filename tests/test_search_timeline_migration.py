"""Migration 0011_search_timeline: SQLite indexes job_search in the listing's order
(``ix_job_search_timeline``: create_time, job_id, status, and the docid), so a
timeline-first search page walks one index instead of looking each job's docid up.
Upgraded from 0010 with jobs (some deleted by other SQL), every timeline page equals
the matches-first page and a brute-force reference; downgraded (the index goes) and
upgraded again. PostgreSQL: the revision changes nothing but its number."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from jobs_index import JobsIndex, parse_list_query, search_queries
from jobs_index.database import (
    alembic_config,
    current_revision,
    make_engine,
    migrate,
    read_transaction,
    write_transaction,
)
from jobs_index.normalize import from_history
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import realistic_history
from jobs_index.search import document, matches, parse

from .test_search_narrow_migration import hand_delete, jobs_at_0007

BEFORE, REVISION = "0010_raw_dictionaries", "0011_search_timeline"
QUERIES = ("and", "masterpiece portrait", '"best quality"', "jugg*", "ksampler -loraloader")


def has_index(engine) -> bool:
    return "ix_job_search_timeline" in {i["name"] for i in inspect(engine).get_indexes("job_search")}


def reference_ids(live: list, q: str, status: str | None) -> list[str]:
    """The ids of ``live`` records matching ``q`` (and ``status``), newest first, by brute force."""
    return [
        r.id
        for r in sorted(live, key=lambda r: (r.create_time, r.id), reverse=True)
        if matches(parse(q), document(r.raw_kind, decode_raw(r.raw)).words) and (status is None or r.status == status)
    ]


def check_pages(index: JobsIndex, live: list) -> None:
    for q in QUERIES:
        for status in (None, "failed"):
            expected = reference_ids(live, q, status)
            query = parse_list_query({"q": q, **({"status": status} if status else {})})
            with read_transaction(index.engine) as conn:
                for limit, offset in ((5, 0), (50, 3), (1, max(0, len(expected) - 1))):
                    page = search_queries.select_page(conn, query, plan="timeline", limit=limit, offset=offset)
                    assert [r[0] for r in page] == expected[offset : offset + limit], (q, status, limit, offset)
            assert index.list_jobs(query).total == len(expected)


def test_upgrade_builds_the_timeline_index_pages_stay_exact_and_downgrade_drops_it(db_url, backend):
    recs = [from_history(k, v) for k, v in realistic_history(300, seed=10)]
    engine = make_engine(db_url)
    try:
        jobs_at_0007(engine, recs)
        migrate(engine, BEFORE)
        hand_delete(engine, backend, [recs[0].id])
        migrate(engine, REVISION)
        with engine.connect() as conn:
            assert current_revision(conn) == REVISION
        live = recs[1:]
        if backend == "postgresql":
            check_pages(JobsIndex(engine), live)
            return
        assert has_index(engine)
        check_pages(JobsIndex(engine), live)
        with write_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        assert not has_index(engine)
        migrate(engine, REVISION)
        assert has_index(engine)
        check_pages(JobsIndex(engine), live)
    finally:
        engine.dispose()
