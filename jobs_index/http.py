"""The HTTP API: ``GET /api/jobs`` and ``GET /api/jobs/{job_id}``, as ComfyUI answers them,
extensions for the history page (``include=source`` on listings; ``/api/jobs-index/counts``: exact counts
per status; ``/api/jobs-index/sources``: sources, their ComfyUI URLs, the source of
given jobs), and the page itself (``jobs_index.web``, under ``/ui/``).

Routes only parse and shape; the work is ``JobsIndex``'s, run in a thread pool so
no database call blocks the event loop. Every error is a JSON body rendered by one
middleware. Listings larger than one page (no ``limit``, or a huge one) are streamed
in keyset chunks, so memory stays bounded whatever the history size. Like ComfyUI,
the routes also answer under a doubled ``/api`` prefix (``/api/api/jobs``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from . import wire
from .errors import BadRequest, JobsIndexError
from .params import parse_list_query
from .services import JobsIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

INLINE_PAGE_MAX = 1000  # pages up to this size are answered in one piece, larger ones streamed
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class ServerConfig:
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8189
    pool_size: int = 8  # database connections = worker threads


INDEX_KEY = web.AppKey("jobs_index", JobsIndex)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)


# An application that embeds these routes in its own aiohttp app (the ComfyUI custom
# node answers ComfyUI's /api/jobs this way) puts its index and executor on the request.
# (typed request keys where this aiohttp has them)
_RequestKey = getattr(web, "RequestKey", None)
REQUEST_INDEX = _RequestKey("jobs_index", JobsIndex) if _RequestKey else "jobs_index.index"
REQUEST_EXECUTOR = _RequestKey("jobs_index_executor", ThreadPoolExecutor) if _RequestKey else "jobs_index.executor"


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
        return _json(exc.body(), status=exc.status)
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
    stream = await _run(request, index.stream_jobs, query)
    response = web.StreamResponse(headers={"Content-Type": f"{JSON_CONTENT_TYPE}; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(wire.jobs_array_open().encode("utf-8"))
    first = True
    while (chunk := await _run(request, stream.next_chunk)) is not None:
        if not chunk:
            continue
        text = ", ".join(chunk)
        await response.write((text if first else ", " + text).encode("utf-8"))
        first = False
    pagination = wire.pagination(query.offset, query.limit, stream.total, stream.has_more,
                                 stream.next_cursor)
    await response.write(wire.jobs_array_close(pagination).encode("utf-8"))
    await response.write_eof()
    return response


MAX_SOURCE_IDS = 500  # ids per /api/jobs-index/sources request


async def status_counts(request: web.Request) -> web.Response:
    """``{"counts": {status: n}, "total": n, "sources": [{"source", "url", "jobs"}]}``:
    exact counts for the listing's source/workflow_id/q filters (its ``status`` is
    ignored), from ``job_counts`` or the search index, and every source (``sources``)."""
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


def add_routes(app: web.Application, prefixes: tuple[str, ...] = ("/api", "/api/api")) -> None:
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/jobs", list_jobs)
        # Any id without a '/' (aiohttp's default pattern also refuses '{' and '}', so
        # such an id would miss the route and never get the contract's 404 body).
        app.router.add_get(f"{prefix}/jobs/{{job_id:[^/]+}}", get_job)
    app.router.add_get(f"{prefixes[0]}/jobs-index/counts", status_counts)
    app.router.add_get(f"{prefixes[0]}/jobs-index/sources", sources)


def create_app(config: ServerConfig | None = None, *, index: JobsIndex | None = None) -> web.Application:
    """The API application. Pass ``index`` to serve an already open index (not closed
    on shutdown); otherwise the database of ``config.db_url`` is opened on start-up
    and closed on cleanup."""
    config = config or ServerConfig()
    app = web.Application(middlewares=[error_middleware])

    async def lifetime(app: web.Application):
        executor = ThreadPoolExecutor(max_workers=config.pool_size, thread_name_prefix="jobs-index-db")
        app[EXECUTOR_KEY] = executor
        owned = index is None
        loop = asyncio.get_running_loop()
        app[INDEX_KEY] = index or await loop.run_in_executor(
            executor, lambda: JobsIndex.open(config.db_url, pool_size=config.pool_size))
        yield
        if owned:
            await loop.run_in_executor(executor, app[INDEX_KEY].close)
        executor.shutdown(wait=False)

    app.cleanup_ctx.append(lifetime)
    add_routes(app)
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
        scope = "loopback only" if config.host in ("127.0.0.1", "localhost", "::1") else "reachable from the network"
        print_fn(f"jobs-index serving {url} ({scope}) from {index.engine.url.render_as_string(hide_password=True)}; "
                 f"history page http://{config.host}:{config.port}/ui/")

    try:
        asyncio.run(_serve_forever(app, config, announce))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
