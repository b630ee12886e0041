"""Migration 0012_search_grams: every search document is rewritten with its common
grams (``search.grams``) and ``job_search_grams`` records the list's version.

Before it (revision 0011) phrases keep their plain form and answer exactly; after
it they ask for grams and still answer exactly (pages of both plans, totals, a job
deleted by other SQL left out); the documents written then by jobs-index's own
writer are forgotten and replaced cleanly (SQLite's FTS5 integrity check);
downgraded, the grams and the table go and phrases are plain again; upgraded again."""

from __future__ import annotations

from alembic import command

from jobs_index import JobsIndex, parse_list_query, search_queries
from jobs_index.database import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    write_transaction,
)
from jobs_index.normalize import from_history
from jobs_index.sample import realistic_history
from jobs_index.search import GRAM_JOINER, GRAMS_VERSION, parse

from .test_search_narrow_migration import hand_delete, jobs_at_0007
from .test_search_timeline_migration import check_pages

BEFORE, REVISION = "0011_search_timeline", "0012_search_grams"
PHRASES = (
    '"best quality"',
    '"of the"',
    '"masterpiece best quality"',
    "juggernautXL_v9",
    'fox -"best quality"',
    '"a the*"',
)


def gram_state(engine, backend: str) -> tuple[bool, int]:
    """(the queries ask for grams, how many gram tokens the index holds)."""
    with engine.connect() as conn:
        asks = GRAM_JOINER in search_queries.store(conn).match_value(conn, parse('"best quality"'))
        if backend == "sqlite":
            conn.exec_driver_sql(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.v USING fts5vocab(main, job_search_fts, 'row')"
            )
            held = conn.exec_driver_sql("SELECT count(*) FROM temp.v WHERE term >= ?", (GRAM_JOINER,)).scalar_one()
            conn.exec_driver_sql("INSERT INTO job_search_fts (job_search_fts, rank) VALUES ('integrity-check', 0)")
        else:
            held = conn.exec_driver_sql(
                "SELECT count(*) FROM job_search AS s, unnest(s.doc) AS u WHERE u.lexeme LIKE %s", (GRAM_JOINER + "%",)
            ).scalar_one()
    return asks, held


def test_upgrade_writes_grams_pages_stay_exact_and_downgrade_removes_them(db_url, backend, monkeypatch):
    import tests.test_search_timeline_migration as timeline

    monkeypatch.setattr(timeline, "QUERIES", PHRASES)
    recs = [from_history(k, v) for k, v in realistic_history(300, seed=12)]
    engine = make_engine(db_url)
    try:
        jobs_at_0007(engine, recs)
        migrate(engine, BEFORE)  # 0008 builds the documents: no grams
        hand_delete(engine, backend, [recs[0].id])
        live = recs[1:]
        assert gram_state(engine, backend) == (False, 0)
        check_pages(JobsIndex(engine), live)

        migrate(engine)  # to head: the writer below also keeps later revisions' tables (0013_time_buckets)
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert conn.exec_driver_sql("SELECT version FROM job_search_grams").scalar_one() == GRAMS_VERSION
            if backend == "sqlite":  # the orphan's words went with the old FTS5 table
                assert conn.exec_driver_sql("SELECT count(*) FROM job_search_orphans").scalar_one() == 0
        asks, held = gram_state(engine, backend)
        assert asks and held > 0
        check_pages(JobsIndex(engine), live)
        # jobs-index's writer replaces and adds documents with grams, and forgets them exactly
        index = JobsIndex(engine)
        again = [from_history(k, v) for k, v in realistic_history(40, seed=13)]
        index.ingest(again)
        replaced = [
            from_history(r.id, item) for r, (_, item) in zip(live[:20], realistic_history(20, seed=14), strict=True)
        ]
        index.ingest(replaced)
        live = replaced + live[20:] + again
        gram_state(engine, backend)  # integrity
        check_pages(index, live)
        assert sum(index.list_jobs(parse_list_query({"q": q})).total for q in PHRASES) > 0

        with write_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        engine.dispose()  # a connection reads the version once it is there (a downgrade is an older jobs-index's)
        assert gram_state(engine, backend) == (False, 0)
        migrate(engine, REVISION)
        asks, held = gram_state(engine, backend)
        assert asks and held > 0
    finally:
        engine.dispose()
