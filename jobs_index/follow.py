"""Follow running ComfyUI servers live: ``jobs-index follow URL [URL ...]``.

One ``Follower`` (an asyncio task, aiohttp client) per ComfyUI server; each server is
a *source* (``jobs.source``; default name ``host:port``). A follower:

1. connects the websocket ``/ws?clientId=...`` (heartbeat on), then **syncs**:
   ``GET /queue`` first, then the ``/history`` entries newer than the source's
   *watermark* (below), written as history rows; then the queue items are written and
   the source's pending/running rows that are in neither are removed
   (``reconcile_live``: ComfyUI forgot them);
2. syncs again on every ``status`` / ``execution_*`` / ``executing`` event, coalesced
   (a burst of events during a sync causes one more sync), and at least every
   ``poll_interval`` seconds as a safety net;
3. on any failure (connection refused or cut, heartbeat lost, bad answer, database
   error) reconnects with capped, jittered exponential backoff and syncs again, so a
   job that finished while disconnected is read from ``/history`` then.

**Why a watermark, not ``GET /history/{id}`` per job.** ComfyUI sends
``execution_success``/``_error`` only to the client that queued the prompt, and before
``task_done`` writes the history entry; what every client gets is ``status`` after
each queue change. A job can also be queued, run and finish between two syncs. So
each sync reads what is *new in /history*: the watermark is the id of the newest
entry read with every entry before it (ComfyUI's history is insertion-ordered).
``GET /history?max_items=n`` returns the last ``n`` entries; a sync asks for the
last 8, then 64, ... up to ``page_size`` until the watermark is among them; if it is
not (ComfyUI restarted, or more than ``page_size`` jobs finished while disconnected)
the whole history is read forward in pages (``max_items=page_size&offset=k``), never
in one response. The watermark is stored (``followed_sources``), so a restarted
``follow`` reads only the tail. A forward scan survives entries vanishing under it
(ComfyUI's 10,000-entry cap evicts the oldest at each new job): pages overlap by one
entry, a page that holds no entry already read is not used (indices shifted: the scan
steps back, as often as needed), so the watermark never passes an unread entry.

**One writer per source.** Each sync first takes (or renews) the source's lease in
the database (``JobsIndex.acquire_lease``; see migration ``0007``): a second
``follow`` — or a ComfyUI custom node — writing the same source name waits, saying
who holds it, until the lease is released (a follower stopping releases it) or
expires (60 s without renewal; at once when its holder was a process of this host
that has exited). The removal of stale live rows checks the lease in its own
transaction.

**What the index keeps.** Eviction by ComfyUI's cap and loss on restart are not
deletions: finished rows stay. Explicit deletions in ComfyUI (``POST /history``
``delete``/``clear``) are not propagated: the index is the long-term record (use
SQL or ``prune``). Pending/running rows of a source that are in neither its newest
queue snapshot nor its history are removed, so the job that was running when ComfyUI
crashed disappears (as in ComfyUI) instead of staying ``in_progress`` forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from .errors import ConfigError, JobsIndexError
from .ingest import HISTORY, QUEUE, QUEUE_KEYS, Dump, detect, live_ids, records
from .leases import holder_is_gone, new_holder
from .rawcodec import EncoderCell
from .services import IngestResult, JobsIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100  # /history entries per request (an entry holds its workflow: 10-500 kB)
TAIL_PROBE = 8  # first tail size asked for when looking for the watermark
TAIL_GROWTH = 8
MAX_SCAN_REQUESTS = 10_000  # per forward scan (a full 10,000-entry history takes ~100 at page size 100)
SAVE_INTERVAL = 5.0  # seconds between stores of a moving watermark
# Events after which the queue or the history may have changed. Only ``status`` (and
# ``execution_interrupted`` of a prompt without client) reach a client that did not
# queue the prompt; the others arrive for prompts queued with our client id.
TRIGGER_EVENTS = frozenset(
    {"status", "execution_start", "execution_success", "execution_error", "execution_interrupted", "executing"}
)


class FollowError(JobsIndexError):
    """ComfyUI answered something unusable (the follower reconnects and retries)."""

    status = 502


class SourceBusy(FollowError):
    """Another process holds the lease of this follower's source (it retries)."""

    status = 409


# -- targets -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One ComfyUI server to follow: its base URL and the source name of its jobs."""

    url: str  # http(s)://host:port[/prefix], no trailing slash
    source: str


def normalize_url(url: str) -> str:
    """``host:port`` → ``http://host:port``; no trailing slash; http(s) only."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parsed = URL(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"not a ComfyUI URL: {url!r} (expected http://host:port)")
    if parsed.query_string or parsed.fragment:
        raise ConfigError(f"not a ComfyUI base URL: {url!r} (no query or fragment)")
    return str(parsed).rstrip("/")


def default_source(url: str) -> str:
    """The default source name of a followed URL: ``host:port`` (default port filled in)."""
    parsed = URL(normalize_url(url))
    host = f"[{parsed.host}]" if ":" in (parsed.host or "") else parsed.host
    return f"{host}:{parsed.port}"


def make_targets(urls: Sequence[str], source: str | None = None) -> list[Target]:
    """Targets for ``follow URL... [--source NAME]``; raises ConfigError."""
    if not urls:
        raise ConfigError("give at least one ComfyUI URL")
    if source is not None and len(urls) > 1:
        raise ConfigError(
            "--source names one server: follow several URLs with their default "
            "names (host:port), or run one follow per URL"
        )
    if source is not None and not source.strip():
        raise ConfigError("--source must not be empty")
    targets = [Target(normalize_url(url), source or default_source(url)) for url in urls]
    seen: dict[str, str] = {}
    for target in targets:
        if target.source in seen:
            raise ConfigError(f"{seen[target.source]} and {target.url} would both be source {target.source!r}")
        seen[target.source] = target.url
    return targets


# -- backoff -------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt ``n`` waits a random time in
    ``[c/2, c]`` where ``c = min(cap, base * factor**n)``; jitter spreads the
    reconnects of many followers after a shared outage."""

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(attempt, 64))
        return ceiling / 2 + rand() * ceiling / 2


# -- ComfyUI client ------------------------------------------------------------


class ComfyClient:
    """The few ComfyUI endpoints a follower reads, with shape checks."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        async with self.session.get(url, params=params) as response:
            if response.status != 200:
                raise FollowError(f"GET {url}: HTTP {response.status}")
            text = await response.text()
        try:
            return json.loads(text)
        except ValueError as exc:
            raise FollowError(f"GET {url}: not JSON ({exc})") from exc

    async def queue(self) -> dict:
        body = await self.get_json("/queue")
        if not isinstance(body, dict) or not body.keys() & QUEUE_KEYS:
            raise FollowError(f"GET {self.base_url}/queue: not a ComfyUI queue")
        return body

    async def history(self, max_items: int, offset: int | None = None) -> dict:
        params = {"max_items": str(max_items)}
        if offset is not None:
            params["offset"] = str(offset)
        body = await self.get_json("/history", params)
        if not isinstance(body, dict):
            raise FollowError(f"GET {self.base_url}/history: not a ComfyUI history")
        return body

    async def websocket(self, client_id: str, heartbeat: float) -> aiohttp.ClientWebSocketResponse[bool]:
        return await self.session.ws_connect(
            self.base_url + "/ws", params={"clientId": client_id}, heartbeat=heartbeat, max_msg_size=0
        )


# -- the follower --------------------------------------------------------------


@dataclass
class FollowStats:
    connects: int = 0
    syncs: int = 0
    history_written: int = 0  # history rows inserted or updated
    live_written: int = 0
    removed: int = 0  # live rows removed (no longer queued)
    rejected: int = 0
    last_error: str | None = None
    # For /metrics and /readyz (``metrics.follower_status``); wall-clock seconds.
    started_at: float = field(default_factory=time.time)
    last_event_at: float | None = None  # the last websocket message
    last_synced_at: float | None = None  # the last successful sync (the watermark was current)
    last_sync_seconds: float | None = None  # how long that sync took
    disconnects: int = 0  # connections lost or refused
    # The latest /history requests, (max_items, offset): bounded, for tests and debugging.
    history_requests: deque = field(default_factory=lambda: deque(maxlen=256))


class Follower:
    """Keeps one source of the index in step with one ComfyUI server (see module doc).

    ``run()`` never returns (cancel it to stop); ``sync_once()`` is one HTTP-only sync.
    Database calls run on ``executor`` (never on the event loop).
    """

    def __init__(
        self,
        index: JobsIndex,
        target: Target,
        *,
        executor: ThreadPoolExecutor | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        backoff: Backoff = Backoff(),
        heartbeat: float = 20.0,
        poll_interval: float = 30.0,
        request_timeout: float = 120.0,
        client_id: str | None = None,
        lease_ttl: float = 60.0,
    ) -> None:
        if page_size < 2:
            raise ConfigError("page size must be at least 2")
        self.index = index
        self.target = target
        self.executor = executor
        self.page_size = page_size
        self.backoff = backoff
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=min(10.0, request_timeout))
        self.client_id = client_id or f"jobs-index-{uuid.uuid4().hex[:12]}"
        self.stats = FollowStats()
        self.connected = False
        self.synced = asyncio.Event()  # set after every successful sync (tests, --once)
        self._watermark: str | None = None
        self._state_loaded = False
        self._live_written: set[tuple[str, str]] = set()  # (id, status) written by the last sync
        self._live_ids: set[str] | None = None  # ids of the last reconciled snapshot (None: unknown)
        self._saved_at = 0.0  # monotonic time the watermark was last stored
        self.holder = new_holder()  # this follower's name in the source's lease
        self.lease_ttl = lease_ttl
        self._lease_until = 0.0  # monotonic time by which the lease must be renewed

    @property
    def source(self) -> str:
        return self.target.source

    @property
    def watermark(self) -> str | None:
        return self._watermark

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- running

    async def run(self) -> None:
        """Follow forever: connect, sync, listen; on failure back off and reconnect.
        Cancelled: releases the source's lease."""
        try:
            await self._run()
        finally:
            self.release_lease()

    async def _run(self) -> None:
        attempt = 0
        down_since: float | None = None  # monotonic time of the first failure of this outage
        while True:
            try:
                async with aiohttp.ClientSession(timeout=self.timeout) as session:
                    client = ComfyClient(session, self.target.url)
                    ws = await client.websocket(self.client_id, self.heartbeat)
                    async with ws:
                        self.connected = True
                        self.stats.connects += 1
                        if down_since is None:
                            log.info("%s: connected to %s", self.source, self.target.url)
                        else:
                            down = time.monotonic() - down_since
                            log.info("%s: reconnected to %s after %.1fs; resyncing", self.source, self.target.url, down)
                            down_since = None
                        await self.sync(client, full=True)
                        attempt = 0  # a sync went through: the next outage starts from the base delay
                        await self._listen(client, ws)
                    reason = "websocket closed"
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, JobsIndexError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # a bug or an absurd answer: log it, never stop following
                log.exception("%s: unexpected error", self.source)
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
            self.stats.last_error = reason
            self.stats.disconnects += 1
            if down_since is None:
                down_since = time.monotonic()
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.warning("%s: %s; reconnecting in %.1fs", self.source, reason, delay)
            await asyncio.sleep(delay)

    async def sync_once(self) -> None:
        """One sync over HTTP (no websocket): backfill history and queue, then return."""
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                await self.sync(ComfyClient(session, self.target.url), full=True)
        finally:
            await self._db(self.release_lease)

    def _hold_lease(self) -> str | None:
        """Take or renew the source's lease (blocking); None if held, else who holds it."""
        now = time.monotonic()
        if self._lease_until - now > self.lease_ttl * 2 / 3:
            return None
        acquired, holder, _ = self.index.acquire_lease(
            self.source, self.holder, int(self.lease_ttl * 1000), stale=holder_is_gone
        )
        self._lease_until = now + self.lease_ttl if acquired else 0.0
        return None if acquired else holder

    def release_lease(self) -> None:
        """Give the source's lease back (blocking; best effort: it expires anyway)."""
        if not self._lease_until:
            return
        self._lease_until = 0.0
        try:
            self.index.release_lease(self.source, self.holder)
        except JobsIndexError as exc:
            log.warning("%s: could not release the lease (%s)", self.source, exc)

    async def _listen(self, client: ComfyClient, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        """Sync on trigger events until the websocket closes or a sync fails."""
        trigger = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                self.stats.last_event_at = time.time()
                if message.type == aiohttp.WSMsgType.TEXT:
                    try:
                        event = json.loads(message.data)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and event.get("type") in TRIGGER_EVENTS:
                        trigger.set()
                elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
            if ws.exception() is not None:
                raise aiohttp.ClientError(f"websocket: {ws.exception()}")

        async def sync_on_trigger() -> None:
            while True:
                # Quiet for poll_interval: sync anyway (safety net). asyncio.wait, not
                # wait_for: Python 3.11's wait_for can swallow a cancellation.
                waiter = asyncio.ensure_future(trigger.wait())
                try:
                    await asyncio.wait({waiter}, timeout=self.poll_interval)
                finally:
                    waiter.cancel()
                trigger.clear()
                await self.sync(client)

        tasks = [asyncio.create_task(read()), asyncio.create_task(sync_on_trigger())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a failed sync or read

    # -- syncing

    async def sync(self, client: ComfyClient, *, full: bool = False) -> None:
        """Queue snapshot first, then the history delta, then the live rows.

        The queue is read first: a job that finishes between the two reads appears in
        both (its history row wins), never in neither (which would remove its row)."""
        started = time.perf_counter()
        other = await self._db(self._hold_lease)
        if other is not None:
            raise SourceBusy(
                f"source {self.source!r} is being written by another process ({other}); "
                f"not following {self.target.url} until its lease is released or expires "
                f"(give this follower its own --source)"
            )
        if not self._state_loaded:
            state = await self._db(self.index.follow_state, self.source)
            self._watermark = state[1] if state is not None else None
            self._state_loaded = True
        if full:
            self._live_written.clear()
            self._live_ids = None
        queue = await client.queue()
        start = self._watermark
        finished: set[str] = set()
        async for entries, watermark in self._history_delta(client):
            if entries:
                result = await self._db(self._write_history, entries)
                self.stats.history_written += result.inserted + result.updated
                self.stats.rejected += len(result.rejected)
                finished.update(entries.keys() - {job_id for job_id, _ in result.rejected})
            self._watermark = watermark
        result = await self._db(self._write_queue, queue, finished)
        self.stats.live_written += result.inserted + result.updated
        self.stats.removed += result.removed
        # The stored watermark may lag (a restarted follower then reads a little more):
        # stored on every (re)connect and at most every SAVE_INTERVAL otherwise.
        now = asyncio.get_running_loop().time()
        if full or (self._watermark != start and now - self._saved_at >= SAVE_INTERVAL):
            await self._db(self.index.save_follow_state, self.source, self.target.url, self._watermark)
            self._saved_at = now
        self.stats.syncs += 1
        self.stats.last_sync_seconds = time.perf_counter() - started
        self.stats.last_synced_at = time.time()
        self.synced.set()
        if result.removed:
            log.info("%s: removed %d pending/running job(s) no longer queued", self.source, result.removed)

    async def _history_delta(self, client: ComfyClient) -> AsyncIterator[tuple[dict, str | None]]:
        """Yield ``(entries, watermark after them)``: the history newer than the watermark."""
        watermark = self._watermark
        if watermark is not None:
            size = min(TAIL_PROBE, self.page_size)
            while True:
                self.stats.history_requests.append((size, None))
                tail = await client.history(max_items=size)
                keys = list(tail)
                if watermark in tail:
                    new = keys[keys.index(watermark) + 1 :]
                    if new:
                        yield {key: tail[key] for key in new}, new[-1]
                    return
                if len(tail) < size:  # the whole history, without the watermark (restart, clear)
                    yield tail, (keys[-1] if keys else None)
                    return
                if size >= self.page_size:
                    break  # more than a page is new, or the watermark was deleted: read everything
                size = min(size * TAIL_GROWTH, self.page_size)
            log.info("%s: reading the whole history (%d per request)", self.source, self.page_size)
        empty = True
        async for page in self._scan(client):
            empty = False
            yield page, next(reversed(page))
        if empty:
            yield {}, None

    async def _scan(self, client: ComfyClient) -> AsyncIterator[dict]:
        """The whole history, oldest first, in pages of ``page_size``, never skipping
        an entry ComfyUI still holds.

        Pages overlap by one entry. Between two requests ComfyUI may evict its oldest
        entries (its cap) or the user may delete some, so indices shift down. A page is
        used only if it continues what was read without a gap: it starts at offset 0,
        or it holds an entry read already (then every entry before that one was read
        too, the history being append-only). Otherwise the scan steps back
        ``page_size - 1`` entries (towards offset 0, always usable) and asks again, as
        often as needed. Entries already read are skipped, so the watermark (the last
        entry yielded) never passes an entry that was not read. A history changing
        faster than it can be read gives up after ``MAX_SCAN_REQUESTS`` requests
        (``FollowError``; what was yielded stays valid)."""
        size = self.page_size
        offset = 0
        seen: set[str] = set()
        for _ in range(MAX_SCAN_REQUESTS):
            self.stats.history_requests.append((size, offset))
            page = await client.history(max_items=size, offset=offset)
            keys = list(page)
            if offset > 0 and not any(key in seen for key in keys):
                offset = max(0, offset - (size - 1))  # shifted (or shrunk) under us: step back
                continue
            new = [key for key in keys if key not in seen]
            seen.update(new)
            if new:
                yield {key: page[key] for key in new}
            if len(keys) < size:
                return
            offset += len(keys) - 1
        raise FollowError(
            f"{self.target.url}/history changes faster than it can be read "
            f"({MAX_SCAN_REQUESTS} requests); reading it again"
        )

    # -- database side (run on the executor)

    def _write_history(self, entries: dict) -> IngestResult:
        rejected: list[tuple[str, str]] = []
        dump = Dump(f"{self.target.url}/history", HISTORY, [(key, item, "") for key, item in entries.items()])
        cell = EncoderCell()  # raw written with the index's dictionary by the normalising code itself
        result = self.index.ingest(records(dump, rejected, cell=cell), source=self.source, cell=cell)
        result.rejected.extend(rejected)
        for job_id, reason in result.rejected:  # malformed, or refused by the database
            log.warning("%s: rejected history item %r: %s", self.source, job_id, reason)
        return result

    def _write_queue(self, body: dict, finished: set[str]) -> IngestResult:
        """Write queue items not written by the previous sync, then remove the live rows
        the snapshot no longer names (unless the snapshot is malformed).

        The removal (a write transaction) is skipped when no row can be stale: every id
        of the previously reconciled snapshot is still queued or has just been written
        as finished. Only a cancelled pending job (or a restart) needs it."""
        dump = detect(f"{self.target.url}/queue", body)
        assert dump.kind == QUEUE
        snapshot = {
            (item[1], status)
            for _, item, status in dump.items
            if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str)
        }
        fresh = Dump(
            dump.name,
            QUEUE,
            [
                entry
                for entry in dump.items
                if not (
                    isinstance(entry[1], (list, tuple))
                    and len(entry[1]) > 1
                    and (entry[1][1], entry[2]) in self._live_written
                )
            ],
        )
        rejected: list[tuple[str, str]] = list(dump.rejected)
        cell = EncoderCell()
        result = self.index.ingest(records(fresh, rejected, cell=cell), source=self.source, cell=cell)
        ids = live_ids(dump)
        if not any(key in QUEUE_KEYS for key, _ in dump.rejected):
            if self._live_ids is None or self._live_ids - ids - finished:
                result.removed += self.index.reconcile_live(ids, source=self.source, holder=self.holder)
            self._live_ids = ids
        else:
            self._live_ids = None  # not reconciled: the next sync must
        # Items met for the first time (a rejected one is in ``snapshot``, so not
        # retried and not reported again): malformed, or refused by the database.
        for job_id, reason in rejected[len(dump.rejected) :] + result.rejected:
            log.warning("%s: rejected queue item %r: %s", self.source, job_id, reason)
        result.rejected.extend(rejected)
        self._live_written = snapshot
        return result


# -- the command ---------------------------------------------------------------


async def follow(
    index: JobsIndex,
    targets: Sequence[Target],
    *,
    serve=None,
    once: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    print_fn: Callable[[str], None] = print,
    **follower_options: Any,
) -> None:
    """Follow ``targets`` concurrently until cancelled (``once``: one sync each, then
    return). ``serve`` (an ``http.ServerConfig``) also serves the API in this loop."""
    from aiohttp import web

    from .access import access_notice
    from .http import create_app

    executor = ThreadPoolExecutor(max_workers=max(2, min(8, 2 * len(targets))), thread_name_prefix="jobs-index-follow")
    followers = [
        Follower(index, target, executor=executor, page_size=page_size, **follower_options) for target in targets
    ]
    runner = None
    try:
        if once:
            for follower in followers:
                await follower.sync_once()
                print_fn(
                    f"{follower.source}: {follower.stats.history_written} history, "
                    f"{follower.stats.live_written} live written, {follower.stats.removed} removed"
                )
            return
        if serve is not None:
            runner = web.AppRunner(create_app(serve, index=index, followers=followers), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, serve.host, serve.port).start()
            print_fn(
                f"jobs-index serving http://{serve.host}:{serve.port}/api/jobs; "
                f"history page http://{serve.host}:{serve.port}/ui/"
            )
            for line in access_notice(serve.host, serve.port, serve.token, serve.show_token):
                print_fn(line)
        for follower in followers:
            print_fn(f"following {follower.target.url} as source {follower.source!r}")
        await asyncio.gather(*(follower.run() for follower in followers))
    finally:
        if runner is not None:
            await runner.cleanup()
        executor.shutdown(wait=True, cancel_futures=True)


def run(index: JobsIndex, targets: Sequence[Target], **options: Any) -> None:
    """Run ``follow`` until SIGINT/SIGTERM (blocking)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None, "asyncio.run runs main() as a task"
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, task.cancel)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        try:
            await follow(index, targets, **options)
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
