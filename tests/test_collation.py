"""One contract, two engines: ids tie-break by code point on SQLite and PostgreSQL.

Jobs share a create_time so the id decides their order. Both engines must list
them in Python's string order (code points: 'B' < 'Z' < 'a' < 'é' < '中' < '😀')
and mint byte-identical cursors for the same data, page after page, through every
listing shape that pages (unfiltered, per-status UNION ALL, workflow, source).
"""

from __future__ import annotations

import json

import pytest

from jobs_index import JobsIndex, parse_list_query
from jobs_index.cursor import decode_cursor
from jobs_index.normalize import from_history, from_queue

IDS = ["a", "B", "é", "中", "Z", "😀", "ab", "a b", "A", "0", "ä", "Ω", "\u00e9\u0301", "z", "ß", "ﬀ"]
TIES = 1_700_000_000_000  # most jobs share this create_time


def _extra(i: int, job_id: str) -> dict:
    extra = {"create_time": TIES if i < 6 or i % 4 else TIES + 1000 * (i % 3)}
    if i % 2:
        extra["extra_pnginfo"] = {"workflow": {"id": "wf-x"}}
    return extra


def records():
    out = []
    for i, job_id in enumerate(IDS):
        prompt = [i, job_id, {}, _extra(i, job_id), []]
        if i % 5 == 0:
            out.append(from_queue(prompt, "pending"))
        else:
            status = {"status_str": "error" if i % 3 == 0 else "success", "messages": []}
            out.append(from_history(job_id, {"prompt": prompt, "outputs": {}, "status": status}))
    return out


QUERIES = [
    {},
    {"sort_order": "asc"},
    {"status": "pending,completed"},
    {"status": "completed,failed", "sort_order": "asc"},
    {"workflow_id": "wf-x"},
    {"source": "host-a"},
    {"sort_by": "execution_duration"},
]


def walk(index: JobsIndex, params: dict, page_size: int = 3) -> list[dict]:
    """Every page of a cursor walk (offset mode when the sort cannot mint cursors)."""
    bodies, after, offset = [], None, 0
    while True:
        query = {**params, "limit": str(page_size)}
        if after is not None:
            query["after"] = after
        elif offset:
            query["offset"] = str(offset)
        page = index.list_jobs(parse_list_query(query))
        body = page.body(parse_list_query(query))
        bodies.append(body)
        if not body["pagination"]["has_more"]:
            return bodies
        after = body["pagination"].get("next_cursor")
        offset += page_size
        assert len(bodies) < 50


def expected_ids(params: dict) -> list[str]:
    recs = records()
    if "status" in params:
        recs = [r for r in recs if r.status in params["status"].split(",")]
    if "workflow_id" in params:
        recs = [r for r in recs if r.workflow_id == params["workflow_id"]]
    key = (lambda r: (r.execution_duration, r.id)) if params.get("sort_by") else (lambda r: (r.create_time, r.id))
    return [r.id for r in sorted(recs, key=key, reverse=params.get("sort_order") != "asc")]


@pytest.fixture
def both(sqlite_url, pg_url):
    with JobsIndex.open(sqlite_url) as lite, JobsIndex.open(pg_url) as pg:
        for index in (lite, pg):
            index.ingest(records(), source="host-a")
        yield lite, pg


@pytest.mark.parametrize("params", QUERIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "all")
def test_engines_order_and_page_identically(both, params):
    lite, pg = both
    lite_pages, pg_pages = walk(lite, params), walk(pg, params)
    # Byte-identical bodies, cursors included.
    assert json.dumps(lite_pages, ensure_ascii=False) == json.dumps(pg_pages, ensure_ascii=False)
    listed = [job["id"] for body in pg_pages for job in body["jobs"]]
    assert listed == expected_ids(params)  # Python's code-point order
    for body in pg_pages:
        cursor = body["pagination"].get("next_cursor")
        if cursor is not None:  # a cursor names the page's last job
            decoded = decode_cursor(cursor, params.get("sort_order", "desc"))
            assert decoded.id == body["jobs"][-1]["id"]


def test_code_point_order_of_the_named_ids(both):
    """The ids from the contract: 'B' < 'Z' < 'a' < 'é' < '中' on both engines."""
    for index in both:
        body = index.list_jobs(parse_list_query({"sort_order": "asc", "status": "completed,failed,pending"}))
        ids = [job["id"] for job in body.jobs if job.get("create_time") == TIES]
        named = [i for i in ids if i in ("a", "B", "é", "中", "Z")]
        assert named == ["B", "Z", "a", "é", "中"]


def test_cursor_after_non_ascii_id_continues_identically(both):
    """A cursor minted on one engine continues the walk on the other."""
    lite, pg = both
    first = lite.list_jobs(parse_list_query({"limit": "5"}))
    cursor = first.next_cursor
    assert cursor is not None
    q = parse_list_query({"limit": "5", "after": cursor})
    assert lite.list_jobs(q).body(q) == pg.list_jobs(q).body(q)
