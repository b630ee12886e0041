"""jobs-index inside ComfyUI: record every job in the index and serve ``/api/jobs`` from it.

``setup()`` runs when ComfyUI imports the custom node (``PromptServer.instance`` and
its ``prompt_queue`` exist; routes are not yet added to the app, the app has not
started, the prompt worker has not started). It

* wraps the prompt queue's ``put``, ``get``, ``task_done``, ``delete_queue_item``,
  ``wipe_queue``, ``delete_history_item`` and ``wipe_history`` (instance attributes;
  the originals run unchanged, their results and exceptions pass through). Each
  wrapper holds the queue's mutex (an ``RLock``, re-entered by the original) across
  the original call and a non-blocking ``Writer.submit``, so the index sees changes
  in ComfyUI's order. ``get`` is wrapped too: it is when a job starts running;
* appends an aiohttp middleware to ComfyUI's app that answers ``GET /api/jobs`` and
  ``GET /api/jobs/{id}`` (and the ``/api/api`` twins) from the index. A middleware
  runs before whichever handler the router picked, so it wins over ComfyUI's built-in
  routes whatever their registration order, and works on a ComfyUI without them. A
  route added to ``PromptServer.instance.routes`` would lose: aiohttp resolves the
  first resource registered for a path, and ComfyUI's own come first. Everything
  else (``POST /api/jobs/{id}/cancel``, ``POST /api/jobs/cancel``, ...) passes through.
  The same middleware serves the history page (``jobs_index.web``) at ``/jobs-index/``
  and its ``/api/jobs-index/counts`` and ``/sources``: the page's relative ``../api/``
  URLs then reach this ComfyUI, whose ``/api/view`` gives the thumbnails;
* starts the writer thread, which opens the database (migrating it in a child process,
  never with Alembic in ComfyUI's own process: see ``upgrade``) and resyncs from
  ComfyUI's memory: backfill, and removal of pending/running rows a previous run left
  (ComfyUI forgot those jobs when it stopped; they were never finished).

**Versions** (``compat``). At start the node checks the prompt queue's shape (the
methods it wraps, with their parameters, and the attributes it reads): a mismatch
disables it, one error line, nothing hooked. It classifies ComfyUI's own
``comfy_execution.jobs``: inside a jobs API it does not know it records but does not
serve (one warning line; ``JOBS_INDEX_SERVE=1`` serves anyway). A request with a query
parameter the node or that ComfyUI does not implement goes to ComfyUI's handler.

Before answering, the middleware waits (``wait_ms``, default 1 s, on the event loop,
without blocking it) until every change ComfyUI announced before the request is
written, so the queue panel refreshing on a ``status`` event sees the new job. If the
database is not open, fails, or is behind past that wait, ComfyUI's built-in handler
answers (from memory); on a ComfyUI without one, the index answers as it is (503 if it
is not open).

**Source.** This ComfyUI's rows carry ``jobs.source`` = ``<host>:<port>`` (the port
ComfyUI listens on: ``--port``), so several ComfyUIs started from one install
(``--port 8188`` / ``--port 8189``) and a fleet sharing one PostgreSQL never act on
each other's rows; ``JOBS_INDEX_SOURCE`` names it explicitly. One process at a time
writes a source (a lease in the database, see ``writer.py``). Rows recorded under the
old default source ``comfyui`` stay as they are (they cannot be attributed: two
ComfyUIs of one install both wrote them); only their pending/running rows, stale by
definition, are removed once by the first writer that can take that source's lease.

Explicit deletions are followed (``JOBS_INDEX_FOLLOW_DELETES=1``, the default): the
panel shows the index, so a job deleted there, or "clear history", must disappear
from it. Both act on this source's rows only: a job of another machine shown in the
panel is not deleted by deleting it here, and clear removes this source's finished
jobs in short transactions (as ``prune``). Rows are removed, not tombstoned. Eviction
at ComfyUI's 10,000-entry cap is not a deletion: the index keeps those jobs.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import update_wrapper
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import ENV_VAR, resolve_url
from ..database import make_engine
from ..errors import ConfigError, JobsIndexError, StorageError
from ..metrics import Metrics
from ..normalize import IN_PROGRESS, PENDING
from ..services import JobsIndex
from . import compat
from .upgrade import ensure_schema, open_failure_hint
from .writer import CLEARED, DELETED, FINISHED, QUEUED, UNQUEUED, State, Writer, queue_ids

log = logging.getLogger("jobs_index.comfyui")

LEGACY_SOURCE = "comfyui"  # the source of every node before sources were <host>:<port>
DB_DIRNAME, DB_FILENAME, OUTBOX_FILENAME = "jobs-index", "jobs.sqlite3", "outbox.sqlite3"
COMFYUI_DB = "comfyui.db"  # ComfyUI's own database: never ours
LIST_PATHS = frozenset({"/api/jobs", "/api/api/jobs"})
PAGE_PREFIX = "/jobs-index"  # the history page (``jobs_index.web``); it calls ../api/...
PAGE_API_PATHS = frozenset({"/api/jobs-index/counts", "/api/jobs-index/sources"})
DETAIL_PATH = re.compile(r"/api(?:/api)?/jobs/([^/]+)")
OPS_PATHS = frozenset({"/jobs-index/metrics", "/jobs-index/healthz", "/jobs-index/readyz"})  # http.add_ops_routes
HOOKED_METHODS = ("put", "get", "task_done", "delete_queue_item", "wipe_queue", "delete_history_item", "wipe_history")


def _flag(value: str | None, default: bool) -> bool:
    setting = _tristate(value)
    return default if setting is None else setting


def _tristate(value: str | None) -> bool | None:
    """None if unset or empty, else False for 0/false/no/off and True otherwise."""
    if value is None or not value.strip():
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _comfy_user_directory() -> Path | None:
    try:
        import folder_paths  # ComfyUI's module; absent outside ComfyUI
    except ImportError:
        return None
    get = getattr(folder_paths, "get_user_directory", None)
    return Path(get()) if callable(get) else None


def _user_directory(comfyui_dir: str | os.PathLike | None) -> Path:
    user_dir = _comfy_user_directory()
    if user_dir is None:
        user_dir = Path(comfyui_dir) / "user" if comfyui_dir else Path.cwd() / "user"
    return Path(user_dir).resolve()


def default_db_url(comfyui_dir: str | os.PathLike | None = None) -> str:
    """``<ComfyUI user directory>/jobs-index/jobs.sqlite3``: ComfyUI's
    ``folder_paths.get_user_directory()`` if available, else ``<comfyui_dir>/user``."""
    return f"sqlite:///{_user_directory(comfyui_dir) / DB_DIRNAME / DB_FILENAME}"


def default_outbox(comfyui_dir: str | os.PathLike | None = None) -> str:
    """``<ComfyUI user directory>/jobs-index/outbox.sqlite3`` (whatever the database)."""
    return str(_user_directory(comfyui_dir) / DB_DIRNAME / OUTBOX_FILENAME)


def comfyui_port(server: Any) -> int | None:
    """The port this ComfyUI listens on: the server's once it listens, else
    ComfyUI's ``--port`` argument (known when custom nodes are imported)."""
    port = getattr(server, "port", None)
    if isinstance(port, int) and port > 0:
        return port
    try:
        from comfy.cli_args import args  # ComfyUI's module; absent outside ComfyUI
    except ImportError:
        return None
    port = getattr(args, "port", None)
    return port if isinstance(port, int) and port > 0 else None


def default_source(server: Any) -> str | None:
    """``<host name>:<port>``: one running ComfyUI (None until the port is known)."""
    port = comfyui_port(server)
    return None if port is None else f"{socket.gethostname()}:{port}"


@dataclass(frozen=True)
class NodeConfig:
    """Settings of the custom node (environment variables in brackets)."""

    db_url: str  # [JOBS_INDEX_DB] default: <ComfyUI user dir>/jobs-index/jobs.sqlite3
    source: str | None = None  # [JOBS_INDEX_SOURCE] the jobs.source of this ComfyUI's rows; None: <host>:<port>
    # [JOBS_INDEX_SERVE] answer /api/jobs from the index: None (unset) if this ComfyUI's
    # jobs API is one jobs-index knows (``compat.detect``), True always, False never
    serve: bool | None = None
    follow_deletes: bool = True  # [JOBS_INDEX_FOLLOW_DELETES] delete from the index what the user deletes
    queue_max: int = 1000  # [JOBS_INDEX_QUEUE_MAX] waiting changes past which queue updates drop
    wait_ms: int = 1000  # [JOBS_INDEX_WAIT_MS] how long a read waits for pending writes
    resync_interval: float = 600.0  # seconds between safety resyncs
    retry_cap: float = 30.0  # seconds, longest wait between retries of a failing database
    outbox: str | None = None  # [JOBS_INDEX_OUTBOX] changes not yet written; "off": memory only
    lease_ttl: float = 60.0  # seconds a source's lease lasts unless renewed (a dead holder's expires)
    delete_batch: int = 1000  # rows per transaction of "clear history"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, comfyui_dir: str | os.PathLike | None = None
    ) -> NodeConfig:
        env = os.environ if environ is None else environ
        url = resolve_url(env[ENV_VAR]) if env.get(ENV_VAR) else default_db_url(comfyui_dir)
        try:
            queue_max = int(env.get("JOBS_INDEX_QUEUE_MAX") or 1000)
            wait_ms = int(env.get("JOBS_INDEX_WAIT_MS") or 1000)
        except ValueError as exc:
            raise ConfigError(f"JOBS_INDEX_QUEUE_MAX / JOBS_INDEX_WAIT_MS must be integers ({exc})") from exc
        outbox = (env.get("JOBS_INDEX_OUTBOX") or "").strip() or default_outbox(comfyui_dir)
        return cls(
            db_url=url,
            source=(env.get("JOBS_INDEX_SOURCE") or "").strip() or None,
            outbox=None if outbox.lower() in ("off", "0", "none") else outbox,
            serve=_tristate(env.get("JOBS_INDEX_SERVE")),
            follow_deletes=_flag(env.get("JOBS_INDEX_FOLLOW_DELETES"), True),
            queue_max=max(1, queue_max),
            wait_ms=max(0, wait_ms),
        )

    def check(self) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(self.db_url)
        if parsed.get_backend_name() == "sqlite" and Path(parsed.database or "").name == COMFYUI_DB:
            raise ConfigError(
                f"{self.db_url} is ComfyUI's own database; jobs-index keeps its own "
                f"(unset {ENV_VAR} to use <ComfyUI>/user/{DB_DIRNAME}/{DB_FILENAME})"
            )


class QueueMismatch(ConfigError):
    """ComfyUI's prompt queue is not the shape the node hooks (``compat.check_queue``)."""


class JobsNode:
    """The custom node's state in one ComfyUI process: hooks, writer, middleware."""

    def __init__(self, server: Any, config: NodeConfig) -> None:
        config.check()
        self.server = server
        self.config = config
        problems = compat.check_queue(getattr(server, "prompt_queue", None))
        if problems:  # checked once here, not found out job by job
            raise QueueMismatch(
                f"this ComfyUI's prompt queue is not the one jobs-index hooks ({'; '.join(problems)}); "
                "nothing is recorded and /api/jobs stays ComfyUI's own"
            )
        self.queue = server.prompt_queue
        self.mutex = self.queue.mutex
        self.jobs_api = compat.detect(compat.live_jobs_module())
        self.writer = Writer(
            open_index=self._open_index,
            read_state=self._read_state,
            mutex=self.mutex,
            source=config.source or (lambda: default_source(server)),
            max_queue=config.queue_max,
            resync_interval=config.resync_interval,
            retry_cap=config.retry_cap,
            outbox=config.outbox,
            lease_ttl=config.lease_ttl,
            legacy_source=LEGACY_SOURCE if config.source != LEGACY_SOURCE else None,
            delete_batch=config.delete_batch,
            open_hint=self._open_hint,
        )
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jobs-index-read")
        self.serving = self.jobs_api.recognised if config.serve is None else config.serve
        # The history page, its API and listings addressed to the index (``source=``,
        # ``q=``, ...: ComfyUI has no answer of its own to them), unless JOBS_INDEX_SERVE=0.
        self.extensions = config.serve is not False
        self._originals: dict[str, Any] = {}
        self._local = threading.local()
        self._installed = False
        self.metrics = None  # metrics.Metrics over the writer's index, once open

    # -- lifecycle

    def install(self) -> JobsNode:
        for name in HOOKED_METHODS:  # each present with its parameters (compat.check_queue)
            original = getattr(self.queue, name)
            self._originals[name] = (original, name in vars(self.queue))
            setattr(self.queue, name, self._wrap(name, original))
        if not self.jobs_api.recognised and self.config.serve is not False:  # JOBS_INDEX_SERVE=0: asked not to
            log.warning(
                "jobs-index: this ComfyUI has %s; %s",
                self.jobs_api.describe(),
                "serving /api/jobs from the index anyway (JOBS_INDEX_SERVE=1)"
                if self.serving
                else "recording jobs, but /api/jobs stays ComfyUI's own (JOBS_INDEX_SERVE=1 serves it from the index)",
            )
        try:  # /jobs-index/metrics|healthz|readyz always; the page unless JOBS_INDEX_SERVE=0
            self.server.app.middlewares.append(self.middleware)
        except RuntimeError:  # the app already started: a custom node loaded late
            if self.serving:
                self.serving = False
                log.warning(
                    "jobs-index: ComfyUI's server already started; recording jobs, "
                    "but /api/jobs stays ComfyUI's own until the next start"
                )
        self.writer.start()
        atexit.register(self.close)
        self._installed = True
        source = self.config.source or default_source(self.server)
        log.info(
            "jobs-index: recording ComfyUI jobs as source %s in %s%s (this ComfyUI has %s)",
            repr(source) if source else "<host>:<port>",
            self.config.db_url,
            "; serving /api/jobs from it" if self.serving else "",
            self.jobs_api.describe(),
        )
        return self

    def close(self, flush_timeout: float = 5.0) -> None:
        """Unhook, write what is pending, stop (the middleware then passes through)."""
        if not self._installed:
            return
        self._installed = False
        self.serving = self.extensions = False
        atexit.unregister(self.close)
        for name, (original, was_instance_attribute) in self._originals.items():
            if getattr(self.queue.__dict__.get(name), "__wrapped__", None) is not original:
                continue  # re-wrapped by someone else since: leave theirs alone
            if was_instance_attribute:
                setattr(self.queue, name, original)
            else:
                delattr(self.queue, name)  # back to the class's method
        self._originals.clear()
        self.writer.close(flush_timeout)
        self.executor.shutdown(wait=False)

    def _open_index(self):
        """Open the index; a schema upgrade runs in a child process, never in ComfyUI's
        (Alembic's state is process-wide and ComfyUI migrates its own database with it
        right after importing the custom nodes; see ``upgrade``)."""
        engine = make_engine(self.config.db_url)
        try:
            ensure_schema(engine, self.config.db_url)
        except BaseException:
            engine.dispose()
            raise
        index = JobsIndex(engine)
        self.metrics = Metrics(index)  # observes the jobs this node writes as finished
        return index

    def _open_hint(self, exc: Exception) -> str:
        return open_failure_hint(exc, self.config.db_url)

    def _read_state(self) -> State:
        """ComfyUI's state (called with the mutex held): references, not copies."""
        read = getattr(self.queue, "get_current_queue_volatile", None) or self.queue.get_current_queue  # older ComfyUI
        running, pending = read()
        return State(history=dict(self.queue.history), running=list(running), pending=list(pending))

    # -- hooks

    def _wrap(self, name: str, original: Callable) -> Callable:
        """A wrapper that runs ``original`` under the mutex and submits the change.

        ``_before_<name>(args, kwargs)`` notes what is needed (mutex held, before the
        original); ``_after_<name>(noted, args, kwargs, result)`` submits. Only the
        outermost wrapper on a thread does this (``delete_queue_item`` calls
        ``wipe_queue`` on its last item; the outer before/after diff covers both)."""
        before = getattr(self, f"_before_{name}", None)
        after = getattr(self, f"_after_{name}")

        def wrapper(*args, **kwargs):
            with self.mutex:
                depth = getattr(self._local, "depth", 0)
                self._local.depth = depth + 1
                try:
                    noted = self._guard(before, args, kwargs) if depth == 0 and before else None
                    result = original(*args, **kwargs)
                    if depth == 0:
                        self._guard(after, noted, args, kwargs, result)
                    return result
                finally:
                    self._local.depth = depth

        update_wrapper(wrapper, original, assigned=(), updated=())  # sets __wrapped__ only
        wrapper.__name__ = name
        return wrapper

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Our code never breaks ComfyUI: an error here is logged and repaired by a resync."""
        try:
            return fn(*args)
        except Exception:
            log.exception("jobs-index: hook failed; a resync will repair the index")
            self.writer.request_resync()
            return None

    @staticmethod
    def _arg(args: tuple, kwargs: dict, name: str) -> Any:
        return args[0] if args else kwargs.get(name)

    def _after_put(self, noted, args, kwargs, result) -> None:
        if result is not False:  # False: a ComfyUI that refuses a duplicate prompt id
            self.writer.submit(QUEUED, (self._arg(args, kwargs, "item"), PENDING))

    def _after_get(self, noted, args, kwargs, result) -> None:
        if isinstance(result, tuple) and result:  # (item, task id); None on timeout
            self.writer.submit(QUEUED, (result[0], IN_PROGRESS))

    def _before_task_done(self, args, kwargs) -> str | None:
        running = self.queue.currently_running.get(self._arg(args, kwargs, "item_id"))
        return running[1] if running is not None else None

    def _after_task_done(self, prompt_id, args, kwargs, result) -> None:
        entry = self.queue.history.get(prompt_id) if prompt_id is not None else None
        if entry is not None:
            self.writer.submit(FINISHED, (prompt_id, entry))
        else:
            self.writer.request_resync()

    def _before_delete_queue_item(self, args, kwargs) -> list[str]:
        return queue_ids(self.queue.queue)

    def _after_delete_queue_item(self, before_ids, args, kwargs, result) -> None:
        gone = set(before_ids or ()) - set(queue_ids(self.queue.queue))
        if gone:
            self.writer.submit(UNQUEUED, sorted(gone))

    _before_wipe_queue = _before_delete_queue_item
    _after_wipe_queue = _after_delete_queue_item

    def _after_delete_history_item(self, noted, args, kwargs, result) -> None:
        job_id = self._arg(args, kwargs, "id_to_delete")
        if self.config.follow_deletes and isinstance(job_id, str):
            self.writer.submit(DELETED, [job_id])

    def _after_wipe_history(self, noted, args, kwargs, result) -> None:
        if self.config.follow_deletes:
            self.writer.submit(CLEARED)

    # -- serving

    def target_seq(self) -> int:
        """The last change ComfyUI made (read under its mutex: a ``status`` event a
        client reacted to was sent after its change was submitted)."""
        with self.mutex:
            return self.writer.last_seq

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if not self._installed or request.method != "GET":
            return await handler(request)
        path = request.path
        if path in OPS_PATHS:  # probes and metrics, whether or not /api/jobs is served
            return await self._ops(request, path)
        if not (self.serving or self.extensions):
            return await handler(request)
        if path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/"):
            return await self._page(request, handler, path[len(PAGE_PREFIX) :])
        if path in PAGE_API_PATHS:
            return await self._answer(request, handler, None, page_api=path)
        if not self.serving and not (request.rel_url.query.keys() & compat.INDEX_PARAMS):
            return await handler(request)  # record-only: ComfyUI answers its own API
        if path in LIST_PATHS:
            job_id = None
        else:
            match = DETAIL_PATH.fullmatch(path)
            if match is None:
                return await handler(request)
            job_id = match.group(1)
        builtin = getattr(request.match_info, "http_exception", None) is None
        if builtin and not self.jobs_api.answers(request.rel_url.query.keys(), detail=job_id is not None):
            # A parameter the node or this ComfyUI does not implement: ComfyUI's own
            # handler answers the question asked (from memory) rather than the index
            # answering another one.
            return await handler(request)
        return await self._answer(request, handler, job_id)

    async def _page(self, request: web.Request, handler, subpath: str) -> web.StreamResponse:
        """The history page at ``/jobs-index/`` (its API calls go to ``/api/...`` of
        this ComfyUI, so thumbnails come from this ComfyUI's ``/api/view``)."""
        from ..web import page_response

        if subpath == "":
            query = request.rel_url.query_string
            raise web.HTTPFound(PAGE_PREFIX + "/" + (f"?{query}" if query else ""))
        response = page_response(subpath)
        return response if response is not None else await handler(request)

    async def _answer(
        self, request: web.Request, handler, job_id: str | None, page_api: str | None = None
    ) -> web.StreamResponse:
        from .. import http

        builtin = getattr(request.match_info, "http_exception", None) is None
        writer = self.writer
        index = writer.index
        if not writer.ready or index is None:
            return await handler(request) if builtin else _unavailable("the jobs index is starting")
        caught_up = await writer.wait_for(self.target_seq(), self.config.wait_ms / 1000)
        if not caught_up and builtin:
            return await handler(request)  # behind (database slow or failing): ComfyUI's memory answers
        try:
            if job_id is None:
                request[http.REQUEST_INDEX] = index
                request[http.REQUEST_EXECUTOR] = self.executor
                if page_api is not None:
                    return await (http.status_counts if page_api.endswith("/counts") else http.sources)(request)
                if self.jobs_api.kind == compat.OFFSET and not (request.rel_url.query.keys() & compat.INDEX_PARAMS):
                    request[http.REQUEST_NO_CURSOR] = True  # that ComfyUI's answers have none (and it ignores after)
                return await http.list_jobs(request)
            job = await asyncio.get_running_loop().run_in_executor(self.executor, index.get_job, job_id)
            return web.json_response(job)
        except StorageError as exc:
            if builtin:
                return await handler(request)
            return _unavailable(exc.message)
        except JobsIndexError as exc:
            return web.json_response(exc.body(), status=exc.status)

    async def _ops(self, request: web.Request, path: str) -> web.StreamResponse:
        """``/jobs-index/metrics``, ``/healthz``, ``/readyz``: ``serve``'s handlers over this node's index."""
        from .. import http

        index, metrics = self.writer.index, self.metrics
        if path.endswith("/healthz"):
            return await http.healthz(request)
        if not self.writer.ready or index is None or metrics is None or metrics.index is not index:
            return _unavailable("the jobs index is starting")
        request[http.REQUEST_INDEX] = index
        request[http.REQUEST_EXECUTOR] = self.executor
        request[http.REQUEST_METRICS] = metrics
        return await (http.metrics if path.endswith("/metrics") else http.readyz)(request)


def _unavailable(reason: str) -> web.Response:
    return web.json_response({"error": f"Jobs index unavailable: {reason}"}, status=503)


_node: JobsNode | None = None
_node_lock = threading.Lock()


def setup(
    server: Any = None,
    *,
    comfyui_dir: str | os.PathLike | None = None,
    config: NodeConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobsNode | None:
    """Enable jobs-index in this ComfyUI process (called by the custom node at import).

    ``server`` defaults to ``server.PromptServer.instance``; ``config`` to
    ``NodeConfig.from_env(environ, comfyui_dir)``. Idempotent per server. Never
    raises: on any problem ComfyUI starts without jobs-index and the reason is logged.
    """
    global _node
    with _node_lock:
        try:
            if server is None:
                from server import PromptServer  # ComfyUI's module

                server = PromptServer.instance
            if _node is not None and _node.server is server and _node._installed:
                return _node
            config = config or NodeConfig.from_env(environ, comfyui_dir)
            _node = JobsNode(server, config).install()
            return _node
        except QueueMismatch as exc:  # one line: the reason is the whole story
            log.error("jobs-index: not enabled: %s", exc)
            return None
        except Exception as exc:
            log.error("jobs-index: not enabled (%s: %s)", type(exc).__name__, exc, exc_info=True)
            return None


def current() -> JobsNode | None:
    """The node ``setup()`` installed in this process, if any."""
    return _node
