"""One listing, one snapshot (issue 18 item 3): a listing read in several chunks sees
the index as it was when it began, whatever writers do between the chunks; the
connection it holds goes back to the pool when it ends, is closed, or its HTTP
client goes away."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from jobs_index import JobsIndex, http
from jobs_index.normalize import IN_PROGRESS, PENDING, from_history, from_queue
from jobs_index.params import parse_list_query

from .bulkdata import bulk_load

T0 = 1_790_000_000_000


def history(job_id: str, number: int, duration: int) -> dict:
    start = T0 + number * 1000
    return {
        "prompt": [number, job_id, {}, {"create_time": T0 + number}, []],
        "outputs": {},
        "status": {
            "status_str": "success",
            "completed": True,
            "messages": [
                ["execution_start", {"prompt_id": job_id, "timestamp": start}],
                ["execution_success", {"prompt_id": job_id, "timestamp": start + duration}],
            ],
        },
    }


def queued(job_id: str, number: int) -> list:
    return [number, job_id, {}, {"create_time": T0 + number}, []]


def listed_ids(chunks) -> list[str]:
    return [json.loads(text)["id"] for chunk in chunks for text in chunk]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_job_finishing_between_two_chunks_is_listed_once(index, order):
    """Sorted by duration, a pending job (duration 0) read in the first chunk finishes
    with a duration that sorts it into a later chunk; another job is deleted and a
    new one added meanwhile. The listing is the state at its start: each job once,
    as many rows as its total."""
    index.ingest(
        [from_queue(queued("p1", 1), PENDING), from_queue(queued("p2", 2), IN_PROGRESS)]
        + [from_history(f"c{d}", history(f"c{d}", 10 + d, d * 10), True) for d in (1, 2, 3, 4)]
    )
    query = parse_list_query({"sort_by": "execution_duration", "sort_order": order})
    with index.stream_jobs(query, chunk=2) as stream:
        first = stream.next_chunk()
        assert stream.total == 6
        # Between two chunks: p1 (read first when ascending) finishes last; c4 is
        # deleted; c5 is new; p2 finishes too.
        index.ingest(
            [
                from_history("p1", history("p1", 1, 35), True),
                from_history("p2", history("p2", 2, 5), True),
                from_history("c5", history("c5", 15, 50), True),
            ]
        )
        assert index.delete_jobs(["c1" if order == "asc" else "c4"]) == 1
        rest = list(stream.chunks())
    ids = listed_ids([first, *rest])
    expected = ["p1", "p2", "c1", "c2", "c3", "c4"]  # duration 0 (ids ascending), then 10..40
    if order == "desc":
        expected = ["c4", "c3", "c2", "c1", "p2", "p1"]
    assert ids == expected
    assert len(ids) == stream.total == 6
    # The next listing sees the writes.
    after = index.list_jobs(parse_list_query({"sort_by": "execution_duration", "sort_order": "asc"}))
    assert len(after.jobs) == after.total == 6
    assert {job["id"] for job in after.jobs} == {"p1", "p2", "c1", "c2", "c3", "c4", "c5"} - {
        "c1" if order == "asc" else "c4"
    }


def test_a_snapshot_is_released_when_the_listing_ends_or_closes(index):
    index.ingest([from_history(f"c{d}", history(f"c{d}", d, d), True) for d in range(1, 6)])
    pool = index.engine.pool
    query = parse_list_query({})
    stream = index.stream_jobs(query, chunk=2)
    assert pool.checkedout() == 1  # held across chunks
    assert len(listed_ids(stream.chunks())) == 5
    assert pool.checkedout() == 0  # read to the end: returned
    stream = index.stream_jobs(query, chunk=2)
    stream.next_chunk()
    stream.close()
    stream.close()
    assert pool.checkedout() == 0
    assert len(index.list_jobs(parse_list_query({"limit": "2"})).jobs) == 2
    assert pool.checkedout() == 0


async def start_server(index):
    """The API on loopback, serving ``index``: (runner, URL of /api/jobs)."""
    app = http.create_app(index=index)
    runner = http.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/api/jobs"


# Enough jobs that a streamed listing (~8 MB) cannot fit in the socket buffers: a
# client that stops reading holds the server between two chunks.
BIG = 40_000


async def eventually_released(pool) -> int:
    deadline = time.monotonic() + 10
    while pool.checkedout() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return pool.checkedout()


def test_concurrent_writes_during_a_streamed_http_listing(index):
    """Over HTTP: a client reads the start of a listing sorted by duration, then stops
    reading (the server waits between two chunks); meanwhile the jobs it has read
    finish again with the shortest durations (so they sort to the end), others are
    deleted and new ones added. The listing it then reads to the end has each job
    once and as many rows as its ``total``: the index as it was when it began."""
    bulk_load(index, BIG)
    pool = index.engine.pool

    async def scenario():
        runner, url = await start_server(index)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}?sort_by=execution_duration&sort_order=desc") as response:
                    assert response.status == 200
                    head = await response.content.readexactly(4000)
                    seen = re.findall(r'"id": "(job-\d+)"', head.decode())
                    assert len(seen) >= 5
                    moved = [from_history(job_id, history(job_id, int(job_id[4:]), 1), True) for job_id in seen]
                    added = [from_history(f"new-{i}", history(f"new-{i}", i, 100 + i), True) for i in range(50)]
                    await asyncio.to_thread(index.ingest, moved + added)
                    gone = [f"job-{i:07d}" for i in range(BIG - 300, BIG)]
                    assert await asyncio.to_thread(index.delete_jobs, gone) == 300
                    body = json.loads(head + await response.read())
            ids = [job["id"] for job in body["jobs"]]
            assert len(ids) == len(set(ids)) == body["pagination"]["total"] == BIG
            assert not any(job_id.startswith("new-") for job_id in ids)
            assert await eventually_released(pool) == 0
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_an_http_client_that_goes_away_mid_listing_releases_the_snapshot(index):
    """A real client reads the first bytes of a streamed listing and disconnects: the
    server ends the listing's transaction and returns its connection."""
    bulk_load(index, BIG)
    pool = index.engine.pool

    async def scenario():
        runner, url = await start_server(index)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:  # no limit: streamed
                    assert response.status == 200
                    await response.content.readexactly(200)
                    assert pool.checkedout() == 1
                    response.close()  # the client goes away
            assert await eventually_released(pool) == 0
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    body = await response.json()
            assert len(body["jobs"]) == body["pagination"]["total"] == BIG
            assert await eventually_released(pool) == 0
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_client_that_stops_reading_is_cut_off_and_its_snapshot_released(index, monkeypatch):
    """A client that takes nothing for STREAM_STALL_TIMEOUT loses its connection; the
    snapshot it held (which keeps SQLite's WAL and PostgreSQL's vacuum waiting) goes."""
    monkeypatch.setattr(http, "STREAM_STALL_TIMEOUT", 0.5)
    bulk_load(index, BIG)
    pool = index.engine.pool

    async def scenario():
        runner, url = await start_server(index)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    await response.content.readexactly(200)
                    assert pool.checkedout() == 1
                    assert await eventually_released(pool) == 0  # while the client still holds on
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await asyncio.wait_for(response.read(), 15)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_streamed_listings_hold_at_most_the_pools_base_size_of_connections(db_url):
    """Streams beyond the pool's base size wait on the event loop for a turn (not on a
    worker thread), and each is answered whole in the end."""
    with JobsIndex.open(db_url, pool_size=1) as index:
        bulk_load(index, BIG)
        pool = index.engine.pool

        async def scenario():
            runner, url = await start_server(index)
            try:
                async with aiohttp.ClientSession() as session:
                    first = await session.get(url)
                    head = await first.content.readexactly(200)
                    second = asyncio.ensure_future(session.get(url))
                    await asyncio.sleep(0.5)
                    assert not second.done() and pool.checkedout() == 1
                    async with session.get(f"{url}?limit=5") as page:  # pages still answer
                        assert len((await page.json())["jobs"]) == 5
                    whole = json.loads(head + await first.read())
                    first.release()
                    second = await second
                    other = await second.json()
                    second.release()
                assert len(whole["jobs"]) == len(other["jobs"]) == BIG
                assert await eventually_released(pool) == 0
            finally:
                await runner.cleanup()

        asyncio.run(scenario())
