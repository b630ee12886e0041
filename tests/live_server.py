"""A real jobs-index HTTP server on a loopback port, run in a background thread,
plus a tiny synchronous client, for tests that speak HTTP like a real client."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from jobs_index import JobsIndex
from jobs_index.http import AppRunner, ServerConfig, create_app


@dataclass
class Reply:
    status: int
    content_type: str
    body: object


class Client:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str) -> Reply:
        request = urllib.request.Request(self.base_url + path)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status, ctype = response.read(), response.status, response.headers["Content-Type"]
        except urllib.error.HTTPError as err:
            raw, status, ctype = err.read(), err.code, err.headers["Content-Type"]
        return Reply(status, ctype, json.loads(raw))


@contextmanager
def served(app: web.Application, **runner_args) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 in a background thread, with the runner
    ``jobs-index serve`` uses; yields the port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def start() -> None:
        runner = AppRunner(app, access_log=None, **runner_args)  # as `jobs-index serve` runs it
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # surface start-up failures to the test
            state["error"] = exc
        started.set()
        if "error" not in state:
            loop.run_forever()

    thread = threading.Thread(target=run, daemon=True, name="reliability-server")
    thread.start()
    started.wait(60)
    if "error" in state:
        raise state["error"]
    try:
        yield state["port"]
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()


@contextmanager
def live_server(index: JobsIndex | None = None, config: ServerConfig | None = None) -> Iterator[Client]:
    """Serve ``index`` (or ``config.db_url``) on 127.0.0.1:<free port> until the block ends."""
    with served(create_app(config or ServerConfig(), index=index)) as port:
        yield Client(f"http://127.0.0.1:{port}")
