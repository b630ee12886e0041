"""An error in the middle of a streamed answer (issue 18 item 4): once a 200 and part
of its body are sent, a database failure must end the connection, so a real client
sees an incomplete response at once instead of waiting for its own timeout; the
server goes on answering.

The failure is real, injected between two chunks of the listing while the client
has stopped reading (the server waits to write): on PostgreSQL the server process
of the listing's connection is terminated (``pg_terminate_backend``, as an admin or
a failover would); on SQLite the listing's connection is closed under it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import aiohttp
import pytest
from sqlalchemy import create_engine, event, text

from .bulkdata import bulk_load
from .test_stream_snapshot import BIG, eventually_released, start_server

PROMPT_S = 15.0  # a hang would last the client's timeout (aiohttp's default: 5 minutes)


def record_checkouts(engine) -> list:
    """The DBAPI connections ``engine``'s pool hands out, in order."""
    seen: list = []
    event.listen(engine, "checkout", lambda dbapi_conn, record, proxy: seen.append(dbapi_conn))
    return seen


def outage(dbapi_conn, db_url: str) -> None:
    """Make the statements on this connection fail from now on, as a real outage
    would. PostgreSQL: its server process is terminated. SQLite: a progress handler
    that aborts every statement (SQLite's own interruption: the statement fails with
    "interrupted"); installing it is safe from any thread (serialized SQLite waits
    for a statement in progress)."""
    driver = getattr(dbapi_conn, "driver_connection", dbapi_conn)
    if db_url.startswith("sqlite"):
        assert sqlite3.threadsafety == 3
        driver.set_progress_handler(lambda: 1, 1)
        return
    admin = create_engine(db_url)
    try:
        with admin.connect() as conn:
            pid = driver.info.backend_pid
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()


async def read_broken_listing(response, dbapi_conn, db_url: str) -> tuple[bytes, float]:
    """Read the start, cause the outage (the server is between two chunks or reading
    one), then read the rest: it must fail as an incomplete body, promptly.
    Returns (bytes read, seconds taken after the outage began)."""
    assert response.status == 200
    head = await response.content.readexactly(4000)
    body = bytearray(head)
    await asyncio.to_thread(outage, dbapi_conn, db_url)
    started = time.monotonic()

    async def rest():
        async for data in response.content.iter_any():
            body.extend(data)

    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(rest(), PROMPT_S)
    return bytes(body), time.monotonic() - started


def test_a_database_error_mid_stream_closes_the_connection(index, db_url):
    bulk_load(index, BIG)
    checkouts = record_checkouts(index.engine)

    async def scenario():
        runner, url = await start_server(index)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    body, took = await read_broken_listing(response, checkouts[-1], db_url)
            assert took < PROMPT_S
            assert body.startswith(b'{"jobs": [')
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)  # incomplete: never mistaken for a whole answer
            assert b'"pagination"' not in body and b'"error"' not in body
            assert await eventually_released(index.engine.pool) == 0
            # The server goes on: a new listing is whole.
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}?limit=3") as response:
                    assert response.status == 200
                    assert len((await response.json())["jobs"]) == 3
                async with session.get(url) as response:
                    whole = await response.json()
            assert len(whole["jobs"]) == whole["pagination"]["total"] == BIG
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
