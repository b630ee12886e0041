"""In-process stand-ins for ComfyUI's ``server.PromptServer`` and ``execution.PromptQueue``.

No ComfyUI package can be installed here, so this module reimplements (it does not
copy: ComfyUI is GPL-3.0) the parts a jobs indexer touches, after ComfyUI's
``server.py``, ``execution.py``, ``main.py`` and ``comfy_execution/progress.py`` and
the captures in ``tests/fixtures/comfyui/``:

* ``PromptQueue``: same method names, signatures and threading semantics (one
  ``RLock`` as ``mutex``, a ``Condition`` on it as ``not_empty``, the pending ``queue``
  a heap of tuples, ``currently_running`` keyed by a task counter, ``history`` an
  insertion-ordered dict, the eviction check done *before* inserting).
* ``PromptServer``: ``PromptServer.instance``, ``.routes`` (a ``web.RouteTableDef``),
  ``.app``, ``.prompt_queue``, ``send``/``send_json``/``send_sync``/``queue_updated``/
  ``publish_loop``, the websocket greeting and per-client routing, and the HTTP routes
  ``/ws``, ``/features``, ``GET /prompt``, ``/history``, ``/history/{prompt_id}``,
  ``GET /queue``, ``POST /prompt``, ``POST /queue``, ``POST /interrupt``,
  ``POST /history`` and (``jobs_api=True``) the built-in ``/api/jobs``,
  ``/api/jobs/{job_id}``, ``POST /api/jobs/{job_id}/cancel`` and
  ``POST /api/jobs/cancel``. ``add_routes()`` adds the ``/api``-prefixed duplicate of
  every route, exactly as ComfyUI does (hence ``/api/api/jobs``).
* ``ExecutionRun``: what ``PromptExecutor`` + ``main.prompt_worker`` report for one
  prompt (websocket events, ``status.messages`` with ms timestamps, the history entry
  via ``task_done`` with the sensitive 6th element stripped), driven step by step.
  ``run_worker`` drives it from a worker thread; ``fake_comfyui.FakeComfyUI`` drives it
  from test code.
* ``install_comfy_modules()`` puts modules named ``server`` and ``execution`` into
  ``sys.modules`` so that ``from server import PromptServer`` works in a custom node.

Simplified on purpose: no node classes (``validate_prompt`` is structural only, see
there), no image previews or binary frames, no credentials handshake, one in-memory
``/api/jobs`` answer taken from the project's oracle ``tests.reference.Reference``
(the seed's contract; ComfyUI itself would answer 500 on some malformed data where the
oracle normalises).
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import logging
import sys
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import aiohttp
from aiohttp import web

from ..reference import Reference

log = logging.getLogger(__name__)

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

# GET /features as captured (tests/fixtures/comfyui/features.json).
SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
    "node_replacements": True,
    "assets": False,
}


def now_ms() -> int:
    """Epoch milliseconds, the unit of ``create_time`` and message ``timestamp``s."""
    return int(time.time() * 1000)


def remove_sensitive(item: tuple) -> tuple:
    """``main.prompt_worker``'s ``process_item``: drop index 5 before history."""
    return item[:5] + item[6:]


def remove_sensitive_from_queue(queue: list) -> list:
    """``server._remove_sensitive_from_queue``: queue items as served (5 elements)."""
    return [item[:5] for item in queue]


def validate_job_id(job_id: Any) -> str:
    """``comfy_execution.jobs.validate_job_id``: a canonical lowercase hyphenated UUID.

    Raises ``ValueError`` otherwise (as the captures show, "NOT-A-UUID" and an
    upper-case UUID are both rejected).
    """
    if not isinstance(job_id, str) or str(uuid.UUID(job_id)) != job_id:
        raise ValueError(f"not a canonical UUID: {job_id!r}")
    return job_id


class InterruptProcessingException(Exception):
    """``comfy.model_management.InterruptProcessingException``."""


def full_type_name(klass: type) -> str:
    """``execution.full_type_name``: builtins by bare name, others module-qualified."""
    if klass.__module__ == "builtins":
        return klass.__qualname__
    return f"{klass.__module__}.{klass.__qualname__}"


# ----------------------------------------------------------------------------- queue


class ExecutionStatus(NamedTuple):
    """``execution.PromptQueue.ExecutionStatus``; stored in history via ``_asdict()``."""

    status_str: Literal["success", "error"]
    completed: bool
    messages: list[Any]


class PromptQueue:
    """``execution.PromptQueue``: pending heap, running dict, history dict, flags.

    Items are ``(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)``
    tuples; the heap orders them by ``number`` (``front=True`` numbers are negative).
    ``get()`` deep-copies the item into ``currently_running``; ``task_done()`` pops it,
    evicts the oldest history entry if the history is already *over* the cap (so it
    holds at most cap + 1 entries, as in ComfyUI), applies ``process_item`` and stores
    ``{"prompt", "outputs": {}, "status"}`` updated with ``history_result``.
    """

    ExecutionStatus = ExecutionStatus

    def __init__(self, server: PromptServer, max_history_size: int | None = None):
        self.server = server
        self.max_history_size = max_history_size
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.task_counter = 0
        self.queue: list = []
        self.currently_running: dict = {}
        self.history: dict = {}
        self.flags: dict = {}

    @property
    def history_cap(self) -> int:
        return MAXIMUM_HISTORY_SIZE if self.max_history_size is None else self.max_history_size

    def put(self, item: tuple) -> bool:
        """Push a queue item. Returns True (newer ComfyUI returns False on a duplicate
        prompt id; ComfyUI v0.26.0 and this stand-in accept duplicates)."""
        with self.mutex:
            heapq.heappush(self.queue, item)
            self.server.queue_updated()
            self.not_empty.notify()
        return True

    def get(self, timeout: float | None = None):
        """Block until an item is pending; return ``(item, task_id)``, or None on timeout."""
        with self.not_empty:
            while len(self.queue) == 0:
                self.not_empty.wait(timeout=timeout)
                if timeout is not None and len(self.queue) == 0:
                    return None
            item = heapq.heappop(self.queue)
            task_id = self.task_counter
            self.currently_running[task_id] = copy.deepcopy(item)
            self.task_counter += 1
            self.server.queue_updated()
            return item, task_id

    def task_done(
        self,
        item_id,
        history_result: dict,
        status: ExecutionStatus | None,
        process_item: Callable[[tuple], tuple] | None = None,
    ) -> None:
        """Move a running item to history (called from the worker thread)."""
        with self.mutex:
            prompt = self.currently_running.pop(item_id)
            if len(self.history) > self.history_cap:
                self.history.pop(next(iter(self.history)))
            status_dict = copy.deepcopy(status._asdict()) if status is not None else None
            if process_item is not None:
                prompt = process_item(prompt)
            self.history[prompt[1]] = {"prompt": prompt, "outputs": {}, "status": status_dict}
            self.history[prompt[1]].update(history_result)
            self.server.queue_updated()

    def get_current_queue(self) -> tuple[list, list]:
        """(running items, deep copy of the pending heap)."""
        with self.mutex:
            return list(self.currently_running.values()), copy.deepcopy(self.queue)

    def get_current_queue_volatile(self) -> tuple[list, list]:
        """(running items, shallow copy of the pending heap, in heap order)."""
        with self.mutex:
            return list(self.currently_running.values()), copy.copy(self.queue)

    def interrupt_if_running(self, prompt_id: str) -> bool:
        """Signal an interrupt only if ``prompt_id`` is running, atomically."""
        with self.mutex:
            for item in self.currently_running.values():
                if item[1] == prompt_id:
                    self.server.interrupt_processing()
                    return True
        return False

    def get_tasks_remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.currently_running)

    def wipe_queue(self) -> list:
        """Drop every pending item; returns them (newer ComfyUI does, older returns None)."""
        with self.mutex:
            removed, self.queue = self.queue, []
            self.server.queue_updated()
            return removed

    def delete_queue_item(self, function: Callable[[tuple], bool]) -> bool:
        """Remove the first pending item ``function`` accepts."""
        with self.mutex:
            for index, item in enumerate(self.queue):
                if function(item):
                    if len(self.queue) == 1:
                        self.wipe_queue()
                    else:
                        self.queue.pop(index)
                        heapq.heapify(self.queue)
                    self.server.queue_updated()
                    return True
        return False

    def get_history(self, prompt_id=None, max_items=None, offset=-1, map_function=None) -> dict:
        """ComfyUI's paging: a negative ``offset`` with ``max_items`` means "the last
        ``max_items``"; entries from index ``offset`` on are taken until ``max_items``
        are out (the count is checked only after adding, so ``max_items=0`` with
        ``offset>=0`` still yields one entry). One id is deep-copied."""
        with self.mutex:
            if prompt_id is None:
                out = {}
                if offset < 0 and max_items is not None:
                    offset = len(self.history) - max_items
                for index, key in enumerate(self.history):
                    if index >= offset:
                        entry = self.history[key]
                        out[key] = map_function(entry) if map_function is not None else entry
                        if max_items is not None and len(out) >= max_items:
                            break
                return out
            if prompt_id in self.history:
                entry = self.history[prompt_id]
                return {prompt_id: copy.deepcopy(entry) if map_function is None else map_function(entry)}
            return {}

    def wipe_history(self) -> None:
        with self.mutex:
            self.history = {}

    def delete_history_item(self, id_to_delete) -> None:
        with self.mutex:
            self.history.pop(id_to_delete, None)

    def set_flag(self, name: str, data: Any) -> None:
        with self.mutex:
            self.flags[name] = data
            self.not_empty.notify()

    def get_flags(self, reset: bool = True) -> dict:
        with self.mutex:
            if reset:
                flags, self.flags = self.flags, {}
                return flags
            return self.flags.copy()


# ------------------------------------------------------------------------ validation


def _links(node: Any) -> Iterator[str]:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    for value in (inputs or {}).values():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            yield value[0]


def validate_prompt(prompt_id: str, prompt: Any, partial_execution_targets=None):
    """Structural stand-in for ``execution.validate_prompt``.

    Returns ComfyUI's ``(valid, error, outputs_to_execute, node_errors)``. Without node
    classes, an "output node" is a node no other node links from; a node missing
    ``class_type`` and a graph without outputs fail with ComfyUI's error dicts. Replace
    ``PromptServer.validate_prompt`` to script other answers (e.g. node_errors).
    """
    if not isinstance(prompt, dict):
        prompt = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                False,
                {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {},
                },
                [],
                {},
            )
    linked = {source for node in prompt.values() for source in _links(node)}
    outputs = [node_id for node_id in prompt if node_id not in linked]
    if partial_execution_targets is not None:
        outputs = [node_id for node_id in outputs if node_id in partial_execution_targets]
    if not outputs:
        return (
            False,
            {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
            [],
            {},
        )
    return True, None, outputs, {}


def execution_order(prompt: dict, outputs: list, skip=()) -> list[str]:
    """The nodes ``outputs`` need, dependencies first (a simplification of ComfyUI's
    ExecutionList order), leaving out ``skip`` (cached nodes)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen or node_id not in prompt:
            return
        seen.add(node_id)
        for source in _links(prompt[node_id]):
            visit(source)
        order.append(node_id)

    for node_id in outputs:
        visit(node_id)
    return [node_id for node_id in order if node_id not in skip]


# --------------------------------------------------------------------------- server


async def _send_catching(function, message) -> None:
    """``server.send_socket_catch_exception``: a dead socket is logged, not raised."""
    try:
        await function(message)
    except (
        aiohttp.ClientError,
        aiohttp.ClientPayloadError,
        ConnectionResetError,
        BrokenPipeError,
        ConnectionError,
    ) as err:
        log.warning("send error: %s", err)


class PromptServer:
    """``server.PromptServer`` reduced to what the jobs feature touches.

    Usage as in ComfyUI: construct (routes are defined in ``__init__``), let custom
    nodes add to ``PromptServer.instance.routes``, then ``add_routes()``; ``start()``
    does that if needed, binds a loopback port and runs ``publish_loop``.

    ``jobs_api`` registers the built-in ``/api/jobs`` routes (ComfyUI >= 0.26);
    ``clock`` supplies epoch-ms times (``create_time``, message timestamps);
    ``max_history_size`` overrides ``MAXIMUM_HISTORY_SIZE`` for this queue.
    """

    instance: PromptServer
    queue_class: type = PromptQueue

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        jobs_api: bool = True,
        max_history_size: int | None = None,
        clock: Callable[[], int] = now_ms,
        set_instance: bool = True,
    ):
        if set_instance:
            PromptServer.instance = self
        self.loop = loop
        self.clock = clock
        self.messages: asyncio.Queue = asyncio.Queue()
        self.number = 0
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict] = {}
        self.on_prompt_handlers: list = []
        self.supports = ["custom_nodes_from_web"]
        self.validate_prompt = validate_prompt
        self.prompt_queue = self.queue_class(self, max_history_size)
        self.app = web.Application(middlewares=self._middlewares())
        self.routes = web.RouteTableDef()
        self.address = "127.0.0.1"
        self.port: int | None = None
        self._interrupted = threading.Event()
        self._live_ws: dict[web.WebSocketResponse, asyncio.BaseTransport] = {}
        self._routes_added = False
        self._runner: web.AppRunner | None = None
        self._publisher: asyncio.Task | None = None
        self._loop_thread: int | None = None
        self._define_routes(jobs_api)

    # -- hooks for subclasses

    def _middlewares(self) -> list:
        return []

    # -- interrupt flag (nodes.interrupt_processing / processing_interrupted)

    def interrupt_processing(self, value: bool = True) -> None:
        """``nodes.interrupt_processing``: set (or clear) the interrupt flag the
        executing prompt polls. Per server here, global in ComfyUI."""
        if value:
            self._interrupted.set()
        else:
            self._interrupted.clear()

    def processing_interrupted(self) -> bool:
        return self._interrupted.is_set()

    # -- routes

    def _define_routes(self, jobs_api: bool) -> None:
        """Registered in ComfyUI's order so that shadowing by later routes is real."""
        routes = self.routes
        routes.get("/ws")(self._websocket_handler)
        routes.get("/features")(self._get_features)
        routes.get("/prompt")(self._get_prompt)
        if jobs_api:
            register_builtin_job_routes(self)
        routes.get("/history")(self._get_history)
        routes.get("/history/{prompt_id}")(self._get_history_prompt_id)
        routes.get("/queue")(self._get_queue)
        routes.post("/prompt")(self._post_prompt)
        routes.post("/queue")(self._post_queue)
        routes.post("/interrupt")(self._post_interrupt)
        routes.post("/history")(self._post_history)

    def add_routes(self) -> None:
        """Add every route twice to the app: ``/api`` + path first, then the path."""
        api_routes = web.RouteTableDef()
        for route in self.routes:
            if isinstance(route, web.RouteDef):
                api_routes.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
        self.app.add_routes(api_routes)
        self.app.add_routes(self.routes)
        self._routes_added = True

    async def _websocket_handler(self, request: web.Request) -> web.WebSocketResponse:
        """``GET /ws?clientId=``: greet with ``status`` + ``sid``; a reconnect with the
        same clientId replaces the old socket; first ``feature_flags`` is answered."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        self._live_ws[ws] = request.transport
        try:
            await self.send("status", {"status": self.get_queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                    await self.send("feature_flags", dict(SERVER_FEATURES), sid)
                first_message = False
        finally:
            self._live_ws.pop(ws, None)
            if self.sockets.get(sid) is ws:
                self.sockets.pop(sid, None)
                self.sockets_metadata.pop(sid, None)
        return ws

    async def _get_features(self, request):
        return web.json_response(dict(SERVER_FEATURES))

    async def _get_prompt(self, request):
        return web.json_response(self.get_queue_info())

    async def _get_history(self, request):
        """``GET /history?max_items=&offset=`` (a non-integer is a 500, as in ComfyUI)."""
        query = request.rel_url.query
        max_items = query.get("max_items")
        offset = query.get("offset")
        return web.json_response(
            self.prompt_queue.get_history(
                max_items=int(max_items) if max_items is not None else None,
                offset=int(offset) if offset is not None else -1,
            )
        )

    async def _get_history_prompt_id(self, request):
        return web.json_response(self.prompt_queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def _get_queue(self, request):
        running, pending = self.prompt_queue.get_current_queue_volatile()
        return web.json_response(
            {
                "queue_running": remove_sensitive_from_queue(running),
                "queue_pending": remove_sensitive_from_queue(pending),
            }
        )

    async def _post_prompt(self, request):
        json_data = self.trigger_on_prompt(await request.json())
        status, body = self.queue_prompt(json_data)
        return web.json_response(body, status=status)

    def queue_prompt(self, json_data: dict) -> tuple[int, dict]:
        """The body of ``POST /prompt``: ``(http_status, json_body)``.

        The queue number is taken (and ``self.number`` advanced) before anything is
        validated, so rejected prompts use up numbers too (the captures show it);
        ``front`` negates it. A client ``prompt_id`` must be a canonical UUID.
        ``extra_data`` gets ``client_id``, loses the sensitive keys (kept as the 6th
        item element) and gets ``create_time`` last.
        """
        if "number" in json_data:
            number = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            return 400, {
                "error": {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "No prompt provided",
                    "extra_info": {},
                },
                "node_errors": {},
            }
        prompt = json_data["prompt"]
        client_prompt_id = json_data.get("prompt_id")
        if client_prompt_id is None:
            prompt_id = str(uuid.uuid4())
        else:
            try:
                prompt_id = validate_job_id(client_prompt_id)
            except ValueError:
                return 400, {
                    "error": {
                        "type": "invalid_prompt_id",
                        "message": "prompt_id must be a valid UUID",
                        "details": "prompt_id must be a UUID string in canonical lowercase hyphenated "
                        "form; omit it to let the server generate one",
                        "extra_info": {},
                    },
                    "node_errors": {},
                }
        valid = self.validate_prompt(prompt_id, prompt, json_data.get("partial_execution_targets"))
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return 400, {"error": valid[1], "node_errors": valid[3]}
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        extra_data["create_time"] = self.clock()
        self.prompt_queue.put((number, prompt_id, prompt, extra_data, valid[2], sensitive))
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": valid[3]}

    async def _post_queue(self, request):
        json_data = await request.json()
        if json_data.get("clear"):
            self.prompt_queue.wipe_queue()
        for id_to_delete in json_data.get("delete", []):
            self.prompt_queue.delete_queue_item(lambda item, pid=id_to_delete: item[1] == pid)
        return web.Response(status=200)

    async def _post_interrupt(self, request):
        """Targeted (``{"prompt_id"}``: only if it is running) or global interrupt."""
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            running, _ = self.prompt_queue.get_current_queue()
            if any(item[1] == prompt_id for item in running):
                self.interrupt_processing()
        else:
            self.interrupt_processing()
        return web.Response(status=200)

    async def _post_history(self, request):
        json_data = await request.json()
        if json_data.get("clear"):
            self.prompt_queue.wipe_history()
        for id_to_delete in json_data.get("delete", []):
            self.prompt_queue.delete_history_item(id_to_delete)
        return web.Response(status=200)

    # -- jobs (in memory)

    def jobs_reference(self) -> Reference:
        """The in-memory jobs state as ComfyUI's handlers hand it to
        ``comfy_execution.jobs``: live history, queue items without index 5."""
        running, pending = self.prompt_queue.get_current_queue_volatile()
        return Reference(
            self.prompt_queue.get_history(), remove_sensitive_from_queue(running), remove_sensitive_from_queue(pending)
        )

    def cancel_job(self, job_id: Any) -> bool:
        """``_cancel_job_by_id``: interrupt if running, dequeue if pending, else no-op
        (finished or unknown). True when a cancel was dispatched."""
        running, pending = self.prompt_queue.get_current_queue()
        if job_id in self.prompt_queue.get_history():
            return False
        if any(item[1] == job_id for item in running):
            return self.prompt_queue.interrupt_if_running(job_id)
        if any(item[1] == job_id for item in pending):
            return self.prompt_queue.delete_queue_item(lambda item: item[1] == job_id)
        return False

    # -- messaging

    def get_queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}

    async def send(self, event, data, sid=None) -> None:
        await self.send_json(event, data, sid)

    async def send_json(self, event, data, sid=None) -> None:
        """``{"type": event, "data": data}`` to ``sid``, or to every socket if None.
        A message for a sid that is not connected is dropped."""
        message = {"type": event, "data": data}
        if sid is None:
            for ws in list(self.sockets.values()):
                await _send_catching(ws.send_json, message)
        elif sid in self.sockets:
            await _send_catching(self.sockets[sid].send_json, message)

    def send_sync(self, event, data, sid=None) -> None:
        """Thread-safe enqueue for ``publish_loop`` (dropped before ``start()``)."""
        if self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def queue_updated(self) -> None:
        """Broadcast ``status`` (no ``sid``) after every queue change."""
        self.send_sync("status", {"status": self.get_queue_info()})

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            await self.send(event, data, sid)

    def add_on_prompt_handler(self, handler) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict) -> dict:
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:
                log.warning("on_prompt handler failed", exc_info=True)
        return json_data

    # -- running on a loopback port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def start(self, address: str = "127.0.0.1", port: int = 0) -> str:
        """``add_routes()`` if not done, serve on ``address:port`` (0 = any free port),
        run ``publish_loop``; returns the base URL."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if not self._routes_added:
            self.add_routes()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port)
        await site.start()
        self.address = address
        self.port = site._server.sockets[0].getsockname()[1]
        self._publisher = asyncio.create_task(self.publish_loop())
        return self.url

    async def stop(self) -> None:
        self.abort_websockets()
        if self._publisher is not None:
            self._publisher.cancel()
            try:
                await self._publisher
            except asyncio.CancelledError:
                pass
            self._publisher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def abort_websockets(self) -> None:
        """Cut every websocket's TCP connection (no close frame), as a crash or a
        network drop does. Their handlers then unregister them."""
        for transport in list(self._live_ws.values()):
            if transport is not None:
                transport.abort()


def register_builtin_job_routes(server: PromptServer) -> None:
    """ComfyUI's built-in jobs routes on ``server.routes``, answered from memory.

    ``GET /api/jobs`` and ``GET /api/jobs/{job_id}`` answer via ``tests.reference``
    (the seed's contract) over the live queue and history. The cancel routes behave as
    captured: the single cancel does not validate the id and answers
    ``{"cancelled": bool}``; the batch cancel rejects a non-list (``job_ids must be a
    list``) or any non-canonical id (``invalid_ids``, non-strings as ``repr``) with 400.
    """
    routes = server.routes

    @routes.get("/api/jobs")
    async def get_jobs(request):
        query = request.rel_url.query
        params = {key: query.get(key) for key in query.keys()}  # first value wins
        status, body = server.jobs_reference().list_jobs(params)
        return web.json_response(body, status=status)

    @routes.get("/api/jobs/{job_id}")
    async def get_job_by_id(request):
        status, body = server.jobs_reference().get_job(request.match_info["job_id"])
        return web.json_response(body, status=status)

    @routes.post("/api/jobs/{job_id}/cancel")
    async def cancel_job_by_id(request):
        return web.json_response({"cancelled": server.cancel_job(request.match_info["job_id"])})

    @routes.post("/api/jobs/cancel")
    async def cancel_jobs_batch(request):
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "Request body must be valid JSON"}, status=400)
        job_ids = json_data.get("job_ids") if isinstance(json_data, dict) else None
        if not isinstance(job_ids, list):
            return web.json_response({"error": "job_ids must be a list"}, status=400)
        invalid_ids = []
        for job_id in job_ids:
            try:
                validate_job_id(job_id)
            except (ValueError, AttributeError, TypeError):
                invalid_ids.append(job_id if isinstance(job_id, str) else repr(job_id))
        if invalid_ids:
            return web.json_response(
                {"error": "job_ids contains invalid id(s)", "invalid_ids": invalid_ids}, status=400
            )
        cancelled = False
        for job_id in job_ids:
            cancelled = server.cancel_job(job_id) or cancelled
        return web.json_response({"cancelled": cancelled})


# ------------------------------------------------------------------------ execution


def default_output(node_id: str, counter: int) -> dict:
    """A SaveImage-like UI output, shaped as in history_item_success.json."""
    return {"images": [{"filename": f"ComfyUI_{counter:05d}_.png", "subfolder": "", "type": "output"}]}


class ExecutionRun:
    """One prompt's execution as ComfyUI's ``PromptExecutor`` and ``prompt_worker``
    report it, driven one step at a time.

    * ``begin()``: ``execution_start`` and ``execution_cached`` (added to
      ``status_messages`` with a ``timestamp``; sent to the prompt's ``client_id``
      only, and not at all when it has none).
    * ``enter_node``/``leave_node``/``run_node``: ``progress_state`` (sent to the
      client, broadcast when there is none, as ComfyUI's progress handler does),
      ``executing`` and ``executed`` (client only).
    * ``progress()``: the legacy ``progress`` event plus ``progress_state``.
    * ``succeed()``/``fail()``/``interrupt()``: ``execution_success`` /
      ``execution_error`` / ``execution_interrupted`` (the latter broadcast when there
      is no client).
    * ``complete()``: ``task_done`` with the sensitive element stripped, then
      ``executing`` with ``node: null``.
    """

    def __init__(self, server: PromptServer, item: tuple, item_id: int):
        self.server = server
        self.item = item
        self.item_id = item_id
        self.prompt_id: str = item[1]
        self.prompt: dict = item[2] if isinstance(item[2], dict) else {}
        sensitive = item[5] if len(item) > 5 and isinstance(item[5], dict) else {}
        self.extra_data: dict = {**(item[3] or {}), **sensitive}  # what nodes see
        self.outputs_to_execute: list = list(item[4] or [])
        self.client_id: str | None = self.extra_data.get("client_id")
        self.status_messages: list = []
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.current_node: str | None = None
        self.node_states: dict[str, dict] = {}
        self.ui_outputs: dict = {}
        self.meta: dict = {}
        self.success = True
        self.outcome: str | None = None  # "success" | "error" | "interrupted"

    # -- messages

    def _send(self, event: str, data: dict) -> None:
        self.server.send_sync(event, data, self.client_id)

    def add_message(self, event: str, data: dict, broadcast: bool) -> None:
        """``PromptExecutor.add_message``: stamp, record for history, maybe send."""
        data = {**data, "timestamp": self.server.clock()}
        self.status_messages.append((event, data))
        if self.client_id is not None or broadcast:
            self._send(event, data)

    def _send_progress_state(self) -> None:
        nodes = {
            node_id: {
                **state,
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in self.node_states.items()
        }
        self._send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    # -- steps

    def begin(self, cached=(), *, silent: bool = False) -> None:
        """Start executing. ``silent`` records ``execution_start`` without sending
        anything (for a job that was already running before the test began)."""
        self.server.client_id = self.client_id
        self.server.last_prompt_id = self.prompt_id
        self.server.interrupt_processing(False)
        self.cached = [node_id for node_id in cached]
        if silent:
            self.status_messages.append(
                ("execution_start", {"prompt_id": self.prompt_id, "timestamp": self.server.clock()})
            )
            return
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        self.add_message("execution_cached", {"nodes": list(self.cached), "prompt_id": self.prompt_id}, broadcast=False)

    def remaining_nodes(self) -> list[str]:
        done = set(self.executed) | set(self.cached)
        if self.current_node is not None:
            done.add(self.current_node)
        return execution_order(self.prompt, self.outputs_to_execute, skip=done)

    def enter_node(self, node_id: str) -> None:
        self.current_node = node_id
        self.node_states[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        self._send_progress_state()
        if self.client_id is not None:
            self.server.last_node_id = node_id
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})

    def progress(self, value: float, maximum: float) -> None:
        node_id = self.current_node
        self.node_states[node_id] = {"value": value, "max": maximum, "state": "running"}
        self._send_progress_state()
        self._send("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id})

    def record_output(self, node_id: str, output: dict) -> None:
        """Store a UI output for history and send ``executed`` (cached nodes too)."""
        self.ui_outputs[node_id] = output
        self.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        if self.client_id is not None:
            self._send(
                "executed", {"node": node_id, "display_node": node_id, "output": output, "prompt_id": self.prompt_id}
            )

    def leave_node(self, output: dict | None = None) -> None:
        node_id = self.current_node
        if output is not None:
            self.record_output(node_id, output)
        state = self.node_states[node_id]
        self.node_states[node_id] = {"value": state["max"], "max": state["max"], "state": "finished"}
        self._send_progress_state()
        self.executed.append(node_id)
        self.current_node = None

    def run_node(self, node_id: str, output: dict | None = None) -> None:
        self.enter_node(node_id)
        self.leave_node(output)

    def check_interrupted(self) -> None:
        """``throw_exception_if_processing_interrupted``."""
        if self.server.processing_interrupted():
            raise InterruptProcessingException()

    def _failing_node(self) -> str | None:
        if self.current_node is None:
            remaining = self.remaining_nodes()
            if remaining:
                self.enter_node(remaining[0])
        return self.current_node

    def _node_type(self, node_id: str | None) -> str | None:
        node = self.prompt.get(node_id) if node_id is not None else None
        return node.get("class_type") if isinstance(node, dict) else None

    def succeed(self) -> None:
        self.outcome = "success"
        self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)

    def interrupt(self) -> None:
        """Interrupted at the current (or next) node: broadcast when there is no client."""
        node_id = self._failing_node()
        self.success, self.outcome = False, "interrupted"
        self.add_message(
            "execution_interrupted",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self._node_type(node_id),
                "executed": list(self.executed),
            },
            broadcast=True,
        )

    def fail(
        self,
        exception_type: str = "RuntimeError",
        exception_message: str = "stand-in failure",
        traceback_lines: list | None = None,
        current_inputs: dict | None = None,
    ) -> None:
        """An exception in the current (or next) node, keys as in history_item_error.json."""
        node_id = self._failing_node()
        self.success, self.outcome = False, "error"
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self._node_type(node_id),
                "executed": list(self.executed),
                "exception_message": exception_message,
                "exception_type": exception_type,
                "traceback": list(traceback_lines or []),
                "current_inputs": dict(current_inputs or {}),
                "current_outputs": list(self.executed) + list(self.cached),
            },
            broadcast=False,
        )

    def fail_from_exception(self, ex: BaseException) -> None:
        self.fail(full_type_name(type(ex)), str(ex), traceback.format_tb(ex.__traceback__))

    def status(self) -> ExecutionStatus:
        return ExecutionStatus("success" if self.success else "error", self.success, self.status_messages)

    def complete(self) -> None:
        """``task_done`` (history entry) then ``executing`` with ``node: null``."""
        self.server.last_node_id = None
        self.server.prompt_queue.task_done(
            self.item_id,
            {"outputs": self.ui_outputs, "meta": self.meta},
            status=self.status(),
            process_item=remove_sensitive,
        )
        if self.client_id is not None:
            self._send("executing", {"node": None, "prompt_id": self.prompt_id})


def default_executor(run: ExecutionRun) -> None:
    """Run every needed node in order; output nodes produce an image, like SaveImage."""
    for node_id in run.remaining_nodes():
        run.check_interrupted()
        output = default_output(node_id, run.item_id) if node_id in run.outputs_to_execute else None
        run.run_node(node_id, output)


class Worker:
    """A ``prompt_worker`` thread: ``get()`` an item, execute it, ``task_done``."""

    def __init__(self, queue: PromptQueue, executor_fn: Callable[[ExecutionRun], Any], poll_interval: float = 0.05):
        self.queue = queue
        self.executor_fn = executor_fn
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="comfy-standin-worker", daemon=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            got = self.queue.get(timeout=self.poll_interval)
            if got is None:
                continue
            item, item_id = got
            run = ExecutionRun(self.queue.server, item, item_id)
            run.begin()
            try:
                self.executor_fn(run)
                if run.outcome is None:
                    run.succeed()
            except InterruptProcessingException:
                run.interrupt()
            except Exception as ex:  # a node raised: execution_error, like ComfyUI
                run.fail_from_exception(ex)
            run.complete()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.thread.join(timeout)


def run_worker(
    queue: PromptQueue, executor_fn: Callable[[ExecutionRun], Any] | None = None, *, poll_interval: float = 0.05
) -> Worker:
    """Start a daemon worker thread over ``queue``; ``worker.stop()`` ends it.

    ``executor_fn(run)`` plays the nodes with ``run.run_node(node_id, output)`` /
    ``run.progress()`` / ``run.check_interrupted()``; returning means success, raising
    ``InterruptProcessingException`` means interrupted, any other exception is an
    ``execution_error`` at the current node. Default: ``default_executor``.
    """
    worker = Worker(queue, executor_fn or default_executor, poll_interval)
    worker.thread.start()
    return worker


# ------------------------------------------------------------------- sys.modules


def _module(name: str, doc: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def install_comfy_modules() -> Callable[[], None]:
    """Make ``import server`` / ``import execution`` resolve to these stand-ins.

    Returns a function restoring whatever was there before. ``server`` exports
    ``PromptServer``; ``execution`` exports ``PromptQueue``, ``validate_prompt``,
    ``MAXIMUM_HISTORY_SIZE`` (informational: pass ``max_history_size`` to change the
    cap) and ``SENSITIVE_EXTRA_DATA_KEYS``. Construct a ``PromptServer`` before
    importing the custom node, as ComfyUI does.
    """
    modules = {
        "server": _module("server", "Stand-in for ComfyUI's server module.", PromptServer=PromptServer),
        "execution": _module(
            "execution",
            "Stand-in for ComfyUI's execution module.",
            PromptQueue=PromptQueue,
            validate_prompt=validate_prompt,
            MAXIMUM_HISTORY_SIZE=MAXIMUM_HISTORY_SIZE,
            SENSITIVE_EXTRA_DATA_KEYS=SENSITIVE_EXTRA_DATA_KEYS,
        ),
    }
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)

    def uninstall() -> None:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous

    return uninstall


@contextmanager
def comfy_modules_installed() -> Iterator[None]:
    """``install_comfy_modules()`` for the duration of a ``with`` block."""
    uninstall = install_comfy_modules()
    try:
        yield
    finally:
        uninstall()
