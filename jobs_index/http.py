"""The HTTP API: ``GET /api/jobs`` and ``GET /api/jobs/{job_id}``, as ComfyUI answers them,
extensions for the history page (``include=source`` on listings; ``/api/jobs-index/counts``: exact counts
per status; ``/api/jobs-index/sources``: sources, their ComfyUI URLs, the source of
given jobs), and the page itself (``jobs_index.web``, under ``/ui/``).

Routes only parse and shape; the work is ``JobsIndex``'s, run in a thread pool so
no database call blocks the event loop. Every error is a JSON body rendered by one
middleware. Listings larger than one page (no ``limit``, or a huge one) are streamed
in keyset chunks, so memory stays bounded whatever the history size, all read in
one snapshot whose connection is released when the response ends or its client goes
away; an error after such a response has begun closes the connection (the client
sees an incomplete body at once, never a stalled 200). Like ComfyUI,
the routes also answer under a doubled ``/api`` prefix (``/api/api/jobs``).

For operators (``metrics``): ``GET /metrics`` (Prometheus text format), ``GET /healthz``
(the process answers) and ``GET /readyz`` (database reachable and migrated, every
follower connected; 503 otherwise), all JSON but ``/metrics``.

Who may see it (``access``): a server configured with a token (``ServerConfig.token``:
``serve`` beyond loopback, or ``--token``) answers the page, the API and ``/metrics``
only to requests that show it; ``/healthz`` and ``/readyz`` stay open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from . import wire
from .access import access_notice, exposed, token_middleware
from .errors import BadRequest, JobsIndexError
from .metrics import Metrics, readiness
from .params import parse_list_query
from .services import JobsIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

INLINE_PAGE_MAX = 1000  # pages up to this size are answered in one piece, larger ones streamed
STREAM_STALL_TIMEOUT = 60.0  # seconds a streamed listing waits for a client that does not read
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class ServerConfig:
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8189
    pool_size: int = 8  # database connections = worker threads
    token: str | None = field(default=None, repr=False)  # required of all but probes (``access``); None: open
    show_token: bool = False  # generated at start: printed in the page's URL


INDEX_KEY = web.AppKey("jobs_index", JobsIndex)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)
METRICS_KEY = web.AppKey("metrics", Metrics)
FOLLOWERS_KEY = web.AppKey("followers", Sequence)  # follow.Follower objects (``follow --serve``)


# An application that embeds these routes in its own aiohttp app (the ComfyUI custom
# node answers ComfyUI's /api/jobs this way) puts its index and executor on the request.
# (typed request keys where this aiohttp has them)
_RequestKey = getattr(web, "RequestKey", None)
REQUEST_INDEX = _RequestKey("jobs_index", JobsIndex) if _RequestKey else "jobs_index.index"
REQUEST_EXECUTOR = _RequestKey("jobs_index_executor", ThreadPoolExecutor) if _RequestKey else "jobs_index.executor"
REQUEST_METRICS = _RequestKey("jobs_index_metrics", Metrics) if _RequestKey else "jobs_index.metrics"
# Set (True) by the custom node inside a ComfyUI whose jobs API pages by offset only:
# the listing's pagination then has no ``next_cursor``, as that ComfyUI's answers.
REQUEST_NO_CURSOR = _RequestKey("jobs_index_no_cursor", bool) if _RequestKey else "jobs_index.no_cursor"


def _index(request: web.Request) -> JobsIndex:
    return request[REQUEST_INDEX] if REQUEST_INDEX in request else request.app[INDEX_KEY]


def _executor(request: web.Request) -> ThreadPoolExecutor:
    return request[REQUEST_EXECUTOR] if REQUEST_EXECUTOR in request else request.app[EXECUTOR_KEY]


async def _run(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(request), fn, *args)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=json.dumps)


def _json_text(text: str) -> web.Response:
    """A 200 JSON response of already encoded text (as ``web.json_response`` sends it)."""
    return web.Response(body=text.encode("utf-8"), content_type=JSON_CONTENT_TYPE, charset="utf-8")


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except JobsIndexError as exc:
        response = _json(exc.body(), status=exc.status)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": exc.reason}, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # last resort: never an HTML page or a dropped connection
        log.exception("unhandled error on %s", request.rel_url)
        return _json({"error": "Internal server error"}, status=500)


async def list_jobs(request: web.Request) -> web.StreamResponse:
    index = _index(request)
    query = parse_list_query(request.rel_url.query)
    if request.get(REQUEST_NO_CURSOR):
        query = replace(query, next_cursor=False)
    includes = {name.strip() for value in request.rel_url.query.getall("include", []) for name in value.split(",")}
    if "source" in includes and query.limit is not None and query.limit <= INLINE_PAGE_MAX:
        # Extension for the history page (ComfyUI ignores ``include``): the page's jobs'
        # sources, ``"job_sources": {id: source}`` after ``pagination``, in the same answer.
        page, of_jobs = await _run(request, index.list_jobs_with_sources, query)
        return _json_text(page.body_text(query, {"job_sources": of_jobs}))
    if query.limit is not None and query.limit <= INLINE_PAGE_MAX:
        page = await _run(request, index.list_jobs, query)
        return _json_text(page.body_text(query))
    return await _stream_listing(request, index, query)


async def _stream_listing(request: web.Request, index: JobsIndex, query) -> web.StreamResponse:
    """A listing larger than one page, written chunk by chunk as it is read, in one
    snapshot (``JobStream``). The snapshot's connection goes back to the pool when the
    response ends, fails, or the client goes away; at most ``_stream_limit`` listings
    of one index hold one at a time (the others wait here, not on a worker thread)."""
    async with _stream_slot(index):
        stream = await _run(request, index.stream_jobs, query)
        try:
            return await _send_stream(request, query, stream)
        finally:
            await _close_stream(request, stream)


async def _send_stream(request: web.Request, query, stream) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": f"{JSON_CONTENT_TYPE}; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    # From here on the status line is sent: an error can no longer become an error
    # response. It ends the connection instead, so the client sees an incomplete
    # body at once (not a 200 that stalls until its own timeout).
    try:
        await _write(response, wire.jobs_array_open())
        first = True
        while (chunk := await _run(request, stream.next_chunk)) is not None:
            if not chunk:
                continue
            text = ", ".join(chunk)
            await _write(response, text if first else ", " + text)
            first = False
        cursor = stream.next_cursor if query.next_cursor else None
        pagination = wire.pagination(query.offset, query.limit, stream.total, stream.has_more, cursor)
        await _write(response, wire.jobs_array_close(pagination))
        await response.write_eof()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _break_connection(request, response, exc)
    return response


async def _write(response: web.StreamResponse, text: str) -> None:
    """Write, or give up on a client that has not taken the data for STREAM_STALL_TIMEOUT
    (the listing holds a database snapshot meanwhile)."""
    await asyncio.wait_for(response.write(text.encode("utf-8")), STREAM_STALL_TIMEOUT)


def _break_connection(request: web.Request, response: web.StreamResponse, exc: Exception) -> None:
    """End a response that has begun and cannot be finished: close its connection."""
    response.force_close()
    transport = request.transport
    if isinstance(exc, ConnectionError):
        log.debug("client of %s went away mid-listing", request.rel_url)
    elif isinstance(exc, asyncio.TimeoutError):
        log.warning(
            "client of %s stopped reading a listing for %ss; connection closed", request.rel_url, STREAM_STALL_TIMEOUT
        )
        if transport is not None:
            transport.abort()  # what it has not read is dropped
        return
    elif isinstance(exc, JobsIndexError):
        log.error("listing %s failed after its response began; connection closed: %s", request.rel_url, exc)
    else:
        log.error("listing %s failed after its response began; connection closed", request.rel_url, exc_info=exc)
    if transport is not None:
        transport.close()  # what was written is flushed, then the connection ends


async def _close_stream(request: web.Request, stream) -> None:
    """Close the listing's snapshot on a worker thread (it waits for a chunk being read
    there); when the request is cancelled, the close still runs to its end."""
    try:
        closing = asyncio.get_running_loop().run_in_executor(_executor(request), stream.close)
    except RuntimeError:  # the executor is shut down (the server is stopping)
        stream.close()
        return
    await asyncio.shield(closing)


# Streamed listings of one index holding a snapshot at a time: no more than its pool's
# base size, so the pool's overflow always serves other requests and no worker thread
# waits for a connection a stalled stream holds.
_stream_slots: weakref.WeakKeyDictionary[JobsIndex, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _stream_limit(index: JobsIndex) -> int:
    size = getattr(index.engine.pool, "size", None)
    return max(1, size()) if callable(size) else 4


def _stream_slot(index: JobsIndex) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    held = _stream_slots.get(index)
    if held is None or held[0] is not loop:
        held = (loop, asyncio.Semaphore(_stream_limit(index)))
        _stream_slots[index] = held
    return held[1]


MAX_SOURCE_IDS = 500  # ids per /api/jobs-index/sources request


async def status_counts(request: web.Request) -> web.Response:
    """``{"counts": {status: n}, "total": n, "sources": [{"source", "url", "jobs"}]}``:
    exact counts for the listing's source/workflow_id/q/since/until filters (its
    ``status`` is ignored), from ``job_counts``, the search index or (a time range)
    the rows themselves, and every source (``sources``)."""
    query = parse_list_query(request.rel_url.query)
    index = _index(request)
    counts, listed = await _run(request, index.page_counts, query)
    return _json({"counts": counts, "total": sum(counts.values()), "sources": listed})


async def sources(request: web.Request) -> web.Response:
    """``{"sources": [{"source", "url", "jobs"}], "job_sources": {id: source}}`` for the
    jobs named by repeated ``id=`` parameters (at most ``MAX_SOURCE_IDS``)."""
    ids = request.rel_url.query.getall("id", [])
    if len(ids) > MAX_SOURCE_IDS:
        raise BadRequest(f"at most {MAX_SOURCE_IDS} id parameters")
    listed, of_jobs = await _run(request, _index(request).sources, ids)
    return _json({"sources": listed, "job_sources": of_jobs})


async def get_job(request: web.Request) -> web.Response:
    job = await _run(request, _index(request).get_job, request.match_info["job_id"])
    return _json(job)


async def metrics(request: web.Request) -> web.Response:
    metrics = request[REQUEST_METRICS] if REQUEST_METRICS in request else request.app[METRICS_KEY]
    body = await _run(request, metrics.scrape)
    return web.Response(body=body, headers={"Content-Type": metrics.content_type})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = await _run(request, readiness, _index(request), request.app.get(FOLLOWERS_KEY, ()))
    return _json(body, status=200 if ready else 503)


def add_ops_routes(app: web.Application, prefix: str = "") -> None:
    app.router.add_get(f"{prefix}/metrics", metrics)
    app.router.add_get(f"{prefix}/healthz", healthz)
    app.router.add_get(f"{prefix}/readyz", readyz)


def add_routes(app: web.Application, prefixes: tuple[str, ...] = ("/api", "/api/api")) -> None:
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/jobs", list_jobs)
        # Any id without a '/' (aiohttp's default pattern also refuses '{' and '}', so
        # such an id would miss the route and never get the contract's 404 body).
        app.router.add_get(f"{prefix}/jobs/{{job_id:[^/]+}}", get_job)
    app.router.add_get(f"{prefixes[0]}/jobs-index/counts", status_counts)
    app.router.add_get(f"{prefixes[0]}/jobs-index/sources", sources)


def create_app(
    config: ServerConfig | None = None, *, index: JobsIndex | None = None, followers: list | tuple = ()
) -> web.Application:
    """The API application. Pass ``index`` to serve an already open index (not closed
    on shutdown); otherwise the database of ``config.db_url`` is opened on start-up
    and closed on cleanup. ``followers`` (``follow --serve``) are reported by
    ``/metrics`` and ``/readyz``."""
    config = config or ServerConfig()
    middlewares = [error_middleware]
    if config.token is not None:
        middlewares.append(token_middleware(config.token))
    app = web.Application(middlewares=middlewares)
    app[FOLLOWERS_KEY] = list(followers)

    async def lifetime(app: web.Application):
        executor = ThreadPoolExecutor(max_workers=config.pool_size, thread_name_prefix="jobs-index-db")
        app[EXECUTOR_KEY] = executor
        owned = index is None
        loop = asyncio.get_running_loop()
        app[INDEX_KEY] = (
            index
            if index is not None
            else await loop.run_in_executor(executor, lambda: JobsIndex.open(config.db_url, pool_size=config.pool_size))
        )
        app[METRICS_KEY] = Metrics(app[INDEX_KEY], app[FOLLOWERS_KEY])
        yield
        app[METRICS_KEY].close()
        if owned:
            await loop.run_in_executor(executor, app[INDEX_KEY].close)
        executor.shutdown(wait=False)

    app.cleanup_ctx.append(lifetime)
    add_routes(app)
    add_ops_routes(app)
    add_page(app)
    return app


def add_page(app: web.Application, path: str = "/ui/") -> None:
    """Mount the history page (``jobs_index.web``) at ``path``, with redirects from
    ``/`` and from ``path`` without its slash. The page reaches the API at ``../api/``
    (relative URLs), so it works under any prefix whose parent serves ``/api/jobs``."""
    from .web import page_app

    app.add_subapp(path, page_app())
    bare = path.rstrip("/")

    async def to_page(request: web.Request) -> web.Response:
        query = request.rel_url.query_string
        raise web.HTTPFound(path + (f"?{query}" if query else ""))

    app.router.add_get(bare, to_page)
    app.router.add_get("/", to_page)


# Requests aiohttp cannot parse never reach a route or the middleware: aiohttp answers
# them itself, as text/plain. These connection handlers answer them in JSON instead.
_PROTOCOL_ERRORS = (
    (http_exceptions.LineTooLong, "Bad request: request line or header too long"),
    (http_exceptions.InvalidURLError, "Bad request: invalid URL"),
    (http_exceptions.BadHttpMethod, "Bad request: invalid method"),
    (http_exceptions.BadStatusLine, "Bad request: invalid request line"),
    (http_exceptions.InvalidHeader, "Bad request: invalid header"),
)


class _JsonErrorsRequestHandler(RequestHandler):
    def handle_error(self, request, status=500, exc=None, message=None):
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        self.logger.debug("bad request from %s: %s", request.remote, type(exc).__name__)
        reason = next((text for kind, text in _PROTOCOL_ERRORS if isinstance(exc, kind)), "Bad request")
        response = _json({"error": reason}, status=status)
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorsRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``aiohttp.web.AppRunner`` whose connections answer unparseable requests (a
    request line or header over ``max_line_size``/``max_field_size``, bytes not
    allowed in a URL) with a JSON 400 like every other error."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server:  # only the protocol class it creates changes
            server.__class__ = _JsonErrorsServer
        return server


async def _serve_forever(app: web.Application, config: ServerConfig, announce: Callable[[], None]) -> None:
    runner = AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        announce()
        await asyncio.Event().wait()  # until SIGINT/SIGTERM
    finally:
        await runner.cleanup()


def serve(config: ServerConfig, *, print_fn: Callable[[str], None] = print) -> None:
    """Run the API until interrupted."""
    app = create_app(config)

    def announce() -> None:
        index = app[INDEX_KEY]
        url = f"http://{config.host}:{config.port}/api/jobs"
        scope = "reachable from the network" if exposed(config.host) else "loopback only"
        print_fn(
            f"jobs-index serving {url} ({scope}) from {index.engine.url.render_as_string(hide_password=True)}; "
            f"history page http://{config.host}:{config.port}/ui/"
        )
        for line in access_notice(config.host, config.port, config.token, config.show_token):
            print_fn(line)

    try:
        asyncio.run(_serve_forever(app, config, announce))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
