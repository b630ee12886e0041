"""Migration 0015_fewer_jobs_indexes: ``jobs`` loses ``(workflow_id, create_time,
id)``, ``(source, create_time, id)`` and ``(execution_duration, id)``; a listing of
every status by workflow, by source or by duration merges one seek per status on
the per-status twins instead (``queries._winners_page``).

Upgraded from 0014 with jobs (two sources, a few workflows, every status, equal
create_times and durations), every such listing answers byte for byte as it did at
0014 and as a brute-force reference: cursor walks, offset pages, both orders, time
ranges, totals. Downgraded, the indexes are back and the answers the same; upgraded
again, the same."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

from alembic import command
from sqlalchemy import inspect

from jobs_index import JobsIndex, parse_list_query
from jobs_index.database import alembic_config, current_revision, make_engine, migrate, write_transaction
from jobs_index.normalize import from_history, from_queue
from jobs_index.sample import synthetic_history

BEFORE, REVISION = "0014_search_facets", "0015_fewer_jobs_indexes"
DROPPED = {"ix_jobs_workflow_id_create_time_id", "ix_jobs_source_create_time_id", "ix_jobs_execution_duration_id"}
KEPT = {
    "ix_jobs_create_time_id",
    "ix_jobs_status_create_time_id",
    "ix_jobs_workflow_id_status_create_time_id",
    "ix_jobs_source_status_create_time_id",
    "ix_jobs_status_execution_duration_id",
}
PAGE = 7


def seeded() -> list:
    """Finished jobs of four workflows, and live ones (pending, running) that share
    create_times with them; sources ``a`` and ``b`` alternately."""
    records = [from_history(key, item) for key, item in synthetic_history(240, seed=23, workflows=4)]
    workflows = sorted({r.workflow_id for r in records if r.workflow_id})
    for n, status in enumerate(["pending"] * 5 + ["in_progress"] * 3):
        tied = records[n * 29]
        extra = {"create_time": tied.create_time, "extra_pnginfo": {"workflow": {"id": workflows[n % 2]}}}
        records.append(from_queue([1000 + n, f"live-{n}", {}, extra, []], status))
    return [replace(r, source="ab"[i % 2]) for i, r in enumerate(records)]


def listings(records: list) -> list[dict]:
    workflow = Counter(r.workflow_id for r in records if r.workflow_id).most_common(1)[0][0]
    times = sorted(r.create_time for r in records)
    since, until = str(times[40]), str(times[200])
    return [
        {"workflow_id": workflow},
        {"workflow_id": workflow, "sort_order": "asc"},
        {"source": "a"},
        {"source": "b", "sort_order": "asc"},
        {"sort_by": "execution_duration"},
        {"sort_by": "execution_duration", "sort_order": "asc"},
        {"sort_by": "execution_duration", "workflow_id": workflow},
        {"sort_by": "execution_duration", "source": "a", "sort_order": "asc"},
        {"workflow_id": workflow, "source": "b"},
        {"workflow_id": workflow, "since": since, "until": until},
        {"source": "a", "since": since, "sort_order": "asc"},
        {"sort_by": "execution_duration", "until": until},
        {"workflow_id": workflow, "status": "completed,pending"},
    ]


def reference(records: list, params: dict) -> list[str]:
    """The ids of a listing, brute force."""
    chosen = [
        r
        for r in records
        if ("status" not in params or r.status in params["status"].split(","))
        and ("workflow_id" not in params or r.workflow_id == params["workflow_id"])
        and ("source" not in params or r.source == params["source"])
        and ("since" not in params or r.create_time >= int(params["since"]))
        and ("until" not in params or r.create_time < int(params["until"]))
    ]
    by_duration = params.get("sort_by") == "execution_duration"
    chosen.sort(key=lambda r: (r.execution_duration if by_duration else r.create_time, r.id))
    return [r.id for r in (chosen if params.get("sort_order") == "asc" else chosen[::-1])]


def answers(index: JobsIndex, records: list) -> str:
    """Every page of every listing (by cursor where the sort has cursors, and by
    offset), as JSON text; each listing checked against the reference."""
    bodies = []
    for params in listings(records):
        expected = reference(records, params)
        assert len(expected) > PAGE, params  # several pages
        for mode in ("cursor", "offset") if params.get("sort_by") != "execution_duration" else ("offset",):
            seen, extra = [], {}
            while True:
                query = parse_list_query({**params, "limit": str(PAGE), **extra})
                body = index.list_jobs(query).body(query)
                bodies.append(body)
                assert body["pagination"]["total"] == len(expected), params
                seen += [job["id"] for job in body["jobs"]]
                if not body["pagination"]["has_more"]:
                    break
                cursor = body["pagination"].get("next_cursor")
                extra = {"after": cursor} if mode == "cursor" and cursor else {"offset": str(len(seen))}
            assert seen == expected, (params, mode)
    return json.dumps(bodies, sort_keys=True)


def jobs_indexes(engine) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes("jobs")}


def test_upgrade_drops_three_indexes_listings_stay_exact_and_downgrade_restores_them(db_url):
    records = seeded()
    engine = make_engine(db_url)
    try:
        migrate(engine, BEFORE)
        index = JobsIndex(engine)
        for source in ("a", "b"):
            part = [r for r in records if r.source == source]
            assert index.ingest(part, source=source).rejected == []
        assert index.counts_consistent()
        assert jobs_indexes(engine) >= DROPPED | KEPT
        at_0013 = answers(index, records)

        migrate(engine, REVISION)
        with engine.connect() as conn:
            assert current_revision(conn) == REVISION
        assert jobs_indexes(engine) & DROPPED == set() and jobs_indexes(engine) >= KEPT
        assert answers(index, records) == at_0013
        assert index.counts_consistent()

        with write_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), BEFORE)
        assert jobs_indexes(engine) >= DROPPED | KEPT
        assert answers(index, records) == at_0013

        migrate(engine, REVISION)
        assert jobs_indexes(engine) & DROPPED == set()
        index.delete_jobs([records[0].id])  # the writer and the counters after the round trip
        assert index.counts_consistent()
        answers(index, records[1:])
    finally:
        engine.dispose()


def test_clear_history_takes_a_sources_finished_jobs_oldest_first(index):
    """``delete_finished`` (ComfyUI's "clear history") reads its batches by one seek
    per status on ``(source, status, create_time, id)``, merged on SQLite: the oldest
    finished jobs of the source first, its live jobs and other sources' jobs kept;
    the jobs with no source likewise."""
    from jobs_index import live_queries
    from jobs_index.database import read_transaction

    records = seeded()
    mine = [r for r in records if r.source == "a"]
    unsourced = [replace(r, source=None) for r in records if r.source == "b"]
    index.ingest(mine, source="a")
    index.ingest(unsourced)
    for source, jobs_of_source in (("a", mine), (None, unsourced)):
        finished = sorted((r for r in jobs_of_source if r.stage == 2), key=lambda r: (r.create_time, r.id))
        with read_transaction(index.engine) as conn:
            assert live_queries.finished_batch(conn, source, 10) == [r.id for r in finished[:10]]
        assert index.delete_finished(source=source, batch_size=7) == len(finished)
    everything = index.list_jobs(parse_list_query({})).jobs
    assert sorted(job["id"] for job in everything) == sorted(r.id for r in mine + unsourced if r.stage != 2)
    assert index.counts_consistent()
