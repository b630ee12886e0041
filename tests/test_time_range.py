"""The time range of ``GET /api/jobs`` (``since=`` / ``until=``, jobs-index extension),
over a real server on loopback, on each backend.

The oracle is the listing without the range (ComfyUI's answer, which
tests/test_parity_golden.py and tests/test_reference.py hold to ComfyUI's) cut to
the range in Python, and the records themselves: every page, cursor walk, offset
walk and total of a bounded listing must equal it, with every ComfyUI parameter.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest

from jobs_index import JobsIndex
from jobs_index.cursor import decode_cursor
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
from tests.live_server import live_server

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")


@pytest.fixture
def served_index(db_url):
    """(client, records) over 400 generated jobs, sources ``a`` and ``b`` alternately."""
    records = [from_history(key, item) for key, item in synthetic_history(400, seed=15, workflows=4)]
    with JobsIndex.open(db_url) as index:
        for name, part in (("a", records[0::2]), ("b", records[1::2])):
            assert index.ingest(part, source=name).rejected == []
        with live_server(index) as client:
            yield client, records


def _bounds(records) -> list[dict]:
    times = sorted(r.create_time for r in records)
    tie = next(t for t, u in itertools.pairwise(times) if t == u)  # a bound equal to two jobs' time
    return [
        {"since": str(times[100])},
        {"until": str(tie)},
        {"since": str(tie), "until": str(times[330])},
        {"since": str(times[10] + 1), "until": str(times[380] - 1)},
        {"since": str(times[200]), "until": str(times[200])},  # empty: since == until
        {"since": str(times[-1] + 1)},  # after every job
        {"until": str(times[0])},  # before every job
    ]


def _inside(job: dict, bounds: dict) -> bool:
    t = job["create_time"]
    return ("since" not in bounds or t >= int(bounds["since"])) and ("until" not in bounds or t < int(bounds["until"]))


def _get(client, params: dict) -> dict:
    reply = client.get("/api/jobs?" + urlencode(params))
    assert reply.status == 200, (params, reply.body)
    return reply.body


def _combos(records) -> list[dict]:
    workflow = records[0].workflow_id
    return [
        {},
        {"status": "failed"},
        {"status": "completed,cancelled"},
        {"source": "a"},
        {"workflow_id": workflow},
        {"source": "b", "status": "completed", "workflow_id": workflow},
        {"sort_order": "asc"},
        {"sort_order": "asc", "status": "failed,cancelled", "source": "b"},
        {"sort_by": "execution_duration"},
        {"sort_by": "execution_duration", "sort_order": "asc", "status": "completed"},
    ]


def test_bounded_listings_equal_the_listing_cut_to_the_range(served_index):
    client, records = served_index
    for combo in _combos(records):
        everything = _get(client, combo)["jobs"]
        for bounds in _bounds(records):
            expected = [job for job in everything if _inside(job, bounds)]
            whole = _get(client, {**combo, **bounds})
            assert whole["jobs"] == expected, (combo, bounds)
            assert whole["pagination"] == {"offset": 0, "limit": None, "total": len(expected), "has_more": False}

            # page by page: cursors (created_at) or offsets, totals exact on every page
            walked, after, offset = [], None, 0
            while True:
                params = {**combo, **bounds, "limit": 25}
                if after:
                    params["after"] = after
                elif offset:
                    params["offset"] = offset
                page = _get(client, params)
                assert page["pagination"]["total"] == len(expected), (combo, bounds, params)
                walked += page["jobs"]
                if not page["pagination"]["has_more"]:
                    break
                if combo.get("sort_by") == "execution_duration":
                    offset += 25
                else:
                    after = page["pagination"]["next_cursor"]
                    cursor = decode_cursor(after, combo.get("sort_order", "desc"))  # ComfyUI's own format
                    assert (cursor.create_time, cursor.id) == (page["jobs"][-1]["create_time"], page["jobs"][-1]["id"])
            assert walked == expected, (combo, bounds)

    # the records agree: each range holds exactly the jobs created in it
    for bounds in _bounds(records):
        ids = {job["id"] for job in _get(client, bounds)["jobs"]}
        assert ids == {r.id for r in records if _inside({"create_time": r.create_time}, bounds)}


def test_counts_honour_the_range(served_index):
    client, records = served_index
    workflow = records[0].workflow_id
    source_of = {r.id: "ab"[i % 2] for i, r in enumerate(records)}
    for combo in ({}, {"source": "a"}, {"workflow_id": workflow}, {"source": "b", "workflow_id": workflow}):
        for bounds in _bounds(records):
            chosen = [
                r
                for r in records
                if _inside({"create_time": r.create_time}, bounds)
                and ("source" not in combo or source_of[r.id] == combo["source"])
                and ("workflow_id" not in combo or r.workflow_id == workflow)
            ]
            want = {s: sum(r.status == s for r in chosen) for s in STATUSES}
            reply = client.get("/api/jobs-index/counts?" + urlencode({**combo, **bounds, "status": "failed"}))
            assert reply.status == 200
            assert reply.body["counts"] == want, (combo, bounds)
            assert reply.body["total"] == len(chosen)


def test_iso_dates_and_epoch_ms_are_the_same_bound(served_index):
    client, records = served_index
    times = sorted(r.create_time for r in records)
    moment = times[150]
    iso = datetime.fromtimestamp(moment / 1000, timezone.utc)
    forms = [
        iso.isoformat(timespec="milliseconds"),  # +00:00
        iso.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment % 1000:03d}Z",
        iso.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds"),  # no offset: UTC
        (iso.astimezone(datetime.now().astimezone().tzinfo)).isoformat(timespec="milliseconds"),
    ]
    want = _get(client, {"since": str(moment), "limit": 10})
    for form in forms:
        assert _get(client, {"since": form, "limit": 10}) == want, form
    day = iso.date()
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    assert _get(client, {"until": day.isoformat()}) == _get(client, {"until": str(midnight)})
    # empty values are no bound: the answer is ComfyUI's, byte for byte
    plain = client.get("/api/jobs?limit=30&status=failed")
    assert client.get("/api/jobs?limit=30&status=failed&since=&until=").body == plain.body


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("since=yesterday", "since must be epoch milliseconds or an ISO 8601 date or date-time"),
        ("until=2026-13-01", "until must be epoch milliseconds or an ISO 8601 date or date-time"),
        ("since=1.5e12", "since must be epoch milliseconds or an ISO 8601 date or date-time"),
        ("since=9223372036854775808", "since is out of range"),
        ("until=-9223372036854775809", "until is out of range"),
        ("until=" + "9" * 5000, "until is out of range"),
        # ComfyUI's own parameters are checked first, with ComfyUI's bodies
        ("since=nope&limit=0", "limit must be a positive integer"),
        ("since=nope&status=bogus", "Invalid status value(s): bogus. Valid values: " + ", ".join(STATUSES)),
    ],
)
def test_bad_bounds_are_a_json_400(served_index, query, error):
    client, _ = served_index
    for path in ("/api/jobs?", "/api/jobs-index/counts?"):
        reply = client.get(path + query)
        assert reply.status == 400
        assert reply.content_type == "application/json; charset=utf-8"
        assert reply.body == {"error": error}


def test_search_within_a_range(served_index):
    client, records = served_index
    times = sorted(r.create_time for r in records)
    bounds = {"since": str(times[50]), "until": str(times[350])}
    for q in ("fox", "castle dusk", "robot -retro", "KSampler"):
        everything = _get(client, {"q": q})["jobs"]
        expected = [job for job in everything if _inside(job, bounds)]
        assert 0 < len(expected) or q == "robot -retro"
        bounded = _get(client, {"q": q, **bounds})
        assert bounded["jobs"] == expected and bounded["pagination"]["total"] == len(expected), q
        walked, after = [], None
        while True:
            page = _get(client, {"q": q, **bounds, "limit": 20, **({"after": after} if after else {})})
            assert page["pagination"]["total"] == len(expected)
            walked += page["jobs"]
            if not page["pagination"]["has_more"]:
                break
            after = page["pagination"]["next_cursor"]
        assert walked == expected, q
        counts = client.get("/api/jobs-index/counts?" + urlencode({"q": q, **bounds})).body
        assert counts["total"] == len(expected)
        assert counts["counts"] == {s: sum(job["status"] == s for job in expected) for s in STATUSES}
