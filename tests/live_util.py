"""Helpers for the live-ingestion tests (``test_follow``, ``test_custom_node``):
condition waits, an accumulating oracle, and JSON comparison of /api/jobs answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .reference import Reference

# Query strings every parity check runs (each also checked job by job for the detail).
PARITY_PARAMS: list[dict[str, str]] = [
    {},
    {"limit": "3"},
    {"limit": "2", "offset": "1"},
    {"status": "pending,in_progress"},
    {"status": "completed"},
    {"status": "failed,cancelled"},
    {"sort_order": "asc", "limit": "4"},
    {"sort_by": "execution_duration"},
]


def as_json(value: Any) -> Any:
    """What an HTTP client sees of an in-memory value (tuples become lists)."""
    return json.loads(json.dumps(value))


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Await ``check()`` until it returns a truthy value; its last value after ``timeout``
    is returned as is (the caller's assert shows it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


class Oracle:
    """ComfyUI's answer over everything it ever held: the history entries seen so far
    (eviction and restarts do not remove them) and the current queue."""

    def __init__(self) -> None:
        self.history: dict[str, dict] = {}

    def observe(self, history: dict) -> None:
        for prompt_id, entry in as_json(history).items():
            self.history.setdefault(prompt_id, entry)

    def forget(self, *ids: str) -> None:
        for prompt_id in ids:
            self.history.pop(prompt_id, None)

    def reference(self, running: list, pending: list) -> Reference:
        return Reference(dict(self.history), as_json(running), as_json(pending))


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


def _exact(answer) -> str:
    """Type-exact (a priority of 4.0 is not 4, as ComfyUI's JSON says), key order aside."""
    return json.dumps(answer, sort_keys=True)


async def mismatches(
    session: aiohttp.ClientSession,
    base_url: str,
    reference: Reference,
    params_list: list[dict[str, str]] = PARITY_PARAMS,
    extra: dict[str, str] | None = None,
    details: bool = True,
) -> list[str]:
    """Differences between ``base_url``'s /api/jobs and the reference (empty = equal)."""
    problems = []
    for params in params_list:
        query = {**params, **(extra or {})}
        url = base_url + "/api/jobs" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        got = await get_json(session, url)
        want = reference.list_jobs(params)
        if _exact(got) != _exact(want):
            problems.append(f"{query}: got {got} want {want}")
    if details:
        _, everything = reference.list_jobs({})
        for job in everything["jobs"]:
            got = await get_json(session, f"{base_url}/api/jobs/{job['id']}")
            want = reference.get_job(job["id"])
            if _exact(got) != _exact(want):
                problems.append(f"detail {job['id']}: got {got} want {want}")
    return problems
