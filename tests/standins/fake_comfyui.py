"""FakeComfyUI: a scriptable ComfyUI server on a real loopback port, for an ingester.

It is the in-process ``comfy_server.PromptServer`` (same routes, same websocket
protocol, same ``PromptQueue``) with the worker replaced by test code:

    async with running_fake_comfyui() as fake:          # or FakeComfyUIThread().start()
        prompt_id = fake.submit(client_id="ingester")    # like POST /prompt
        fake.start_next()                                # execution_start ... executing
        fake.finish(prompt_id, status="error")           # execution_error, history entry

What it reproduces (see ``comfy_server`` for the details and sources):

* HTTP: ``GET /history`` (``max_items``/``offset`` paged as ComfyUI does),
  ``GET /history/{prompt_id}``, ``GET /queue`` (pending in heap order, 5-element
  items), ``GET /prompt``, ``POST /prompt`` (numbering, ``front``, client prompt ids,
  400 bodies as captured), ``POST /queue``, ``POST /history``, ``POST /interrupt``,
  ``/features``, each also under ``/api``; ``jobs_api=True`` adds ``/api/jobs`` and
  the cancel routes.
* Websocket ``/ws?clientId=``: the ``status`` greeting with ``sid``; ``status``
  broadcast on every queue change; ``execution_start``, ``execution_cached``,
  ``executing``, ``executed``, ``progress``, ``progress_state``,
  ``execution_success``/``execution_error`` sent only to the client that submitted the
  prompt (its ``client_id``), ``execution_interrupted`` broadcast when the prompt has
  no client, all in the captured shapes (``ws_events.json``).
* History entries built by ``task_done`` with ms timestamps in ``status.messages``.

Scripting and faults: ``add_pending``, ``submit``, ``start_next``, ``progress``,
``finish``, ``evict`` (silent removal, like the 10,000-entry cap), ``restart`` (all
connections cut, queue and history gone, numbering from 0), ``drop_connections``
(connections cut, state kept), ``pause_ws``/``resume_ws`` (queued events held back).
A cancel or interrupt of the running job finishes it as interrupted at once
(``auto_interrupt``); ``auto_execute`` runs every queued prompt to success.

Every control method is synchronous and thread-safe: called from the server's own
event loop (async tests) it acts at once; from another thread (sync tests with
``FakeComfyUIThread``) it is run on the loop and waited for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import heapq
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from ..fixtures_util import load_capture, snapshot_history
from ..reference import Reference
from .comfy_server import (
    ExecutionRun,
    PromptQueue,
    PromptServer,
    default_output,
    now_ms,
    remove_sensitive_from_queue,
)


def sample_prompt(color: int = 16711680) -> dict:
    """The EmptyImage -> SaveImage graph the captures were made with."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "capture_ok"}},
    }


def _on_loop(method: Callable) -> Callable:
    """Run a control method on the server's event loop (see the module docstring)."""

    @functools.wraps(method)
    def wrapper(self: FakeComfyUI, *args, **kwargs):
        return self._in_loop(method, self, *args, **kwargs)

    return wrapper


def _in_memory_queue_item(item) -> tuple:
    """A served (JSON) queue item as ComfyUI holds it: a tuple with a 6th element."""
    item = tuple(copy.deepcopy(item))
    return item if len(item) > 5 else item + ({},)


def _in_memory_history_entry(entry: dict) -> dict:
    """A served history entry as ComfyUI holds it: prompt and messages are tuples."""
    entry = copy.deepcopy(entry)
    if isinstance(entry.get("prompt"), list):
        entry["prompt"] = tuple(entry["prompt"])
    status = entry.get("status")
    if isinstance(status, dict) and isinstance(status.get("messages"), list):
        status["messages"] = [tuple(m) if isinstance(m, list) else m for m in status["messages"]]
    return entry


def _as_json(value: Any) -> Any:
    """What an HTTP client sees of an in-memory value (tuples become lists)."""
    return json.loads(json.dumps(value))


class _LoopQueue(PromptQueue):
    """The fake's queue: ``interrupt_if_running`` takes the mutex on the server loop,
    where an interrupt finishes the running job (taking the mutex again)."""

    def interrupt_if_running(self, prompt_id: str) -> bool:
        return self.server._in_loop(super().interrupt_if_running, prompt_id)


class FakeComfyUI(PromptServer):
    """A ComfyUI server whose execution is scripted by the test.

    ``jobs_api``: serve the built-in ``/api/jobs`` routes (an older ComfyUI has none).
    ``auto_interrupt``: a cancel/interrupt of the running job finishes it as
    interrupted immediately; otherwise the request only sets ``processing_interrupted()``
    and the test calls ``finish(status="interrupted")``.
    ``auto_execute``: run every queued prompt to success as soon as it is queued.
    """

    queue_class = _LoopQueue

    def __init__(
        self,
        *,
        jobs_api: bool = False,
        max_history_size: int | None = None,
        clock: Callable[[], int] = now_ms,
        auto_interrupt: bool = True,
        auto_execute: bool = False,
    ):
        super().__init__(None, jobs_api=jobs_api, max_history_size=max_history_size, clock=clock, set_instance=False)
        self.auto_interrupt = auto_interrupt
        self.auto_execute = auto_execute
        self._run: ExecutionRun | None = None
        self._ws_open = asyncio.Event()
        self._ws_open.set()
        self._generation = 0  # bumped by restart(): older queued events are dropped
        self._outputs_made = 0

    @classmethod
    def from_capture(
        cls,
        history: str | None = "history.json",
        queue: str | None = "queue_running_pending.json",
        *,
        history_at_queue_snapshot: bool = False,
        **kwargs,
    ) -> FakeComfyUI:
        """A fake holding the captured state (files under tests/fixtures/comfyui).

        The capture's queue snapshot was taken before its history snapshot, so by
        default the three queued jobs also appear in history;
        ``history_at_queue_snapshot=True`` seeds the history as it was at the queue
        snapshot instead (the state ``jobs_with_running_pending.json`` answers).
        """
        fake = cls(**kwargs)
        if history_at_queue_snapshot:
            history_body = snapshot_history()
        else:
            history_body = load_capture(history)["body"] if history is not None else {}
        running, pending = [], []
        if queue is not None:
            queue_body = load_capture(queue)["body"]
            running, pending = queue_body["queue_running"], queue_body["queue_pending"]
        fake.seed(history_body, running, pending)
        return fake

    # -- loop marshalling

    def _in_loop(self, function: Callable, *args, **kwargs):
        loop = self.loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            return function(*args, **kwargs)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(function(*args, **kwargs))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(timeout=10)

    # -- PromptServer hooks

    def send_sync(self, event, data, sid=None) -> None:
        if self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self._enqueue, self._generation, (event, data, sid))

    def _enqueue(self, generation: int, message: tuple) -> None:
        self.messages.put_nowait((generation, message))

    async def publish_loop(self) -> None:
        while True:
            generation, message = await self.messages.get()
            await self._ws_open.wait()
            if generation == self._generation:
                await self.send(*message)

    def queue_updated(self) -> None:
        super().queue_updated()
        if self.auto_execute and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while self._run is None and self.prompt_queue.queue:
            self.start_next()
            self.finish()

    @_on_loop
    def interrupt_processing(self, value: bool = True) -> None:
        super().interrupt_processing(value)
        if value and self.auto_interrupt and self._run is not None:
            self.finish(self._run.prompt_id, status="interrupted")

    cancel_job = _on_loop(PromptServer.cancel_job)

    # -- state

    @_on_loop
    def seed(self, history: dict | None = None, running=(), pending=()) -> None:
        """Replace the whole state with served (JSON) shapes: ``{id: entry}`` and lists
        of queue items. A running item counts as started before the test (its
        ``execution_start`` is recorded silently). Numbering continues after the
        largest seeded number."""
        if len(running) > 1:
            raise ValueError("ComfyUI runs one prompt at a time")
        queue = self.prompt_queue
        with queue.mutex:
            queue.history = {pid: _in_memory_history_entry(entry) for pid, entry in (history or {}).items()}
            queue.queue = [_in_memory_queue_item(item) for item in pending]
            heapq.heapify(queue.queue)
            queue.currently_running = {}
            self._run = None
            for item in running:
                item = _in_memory_queue_item(item)
                item_id = queue.task_counter
                queue.task_counter += 1
                queue.currently_running[item_id] = item
                self._run = ExecutionRun(self, item, item_id)
                self._run.begin(silent=True)
            numbers = [entry["prompt"][0] for entry in queue.history.values()]
            numbers += [item[0] for item in list(queue.queue) + list(queue.currently_running.values())]
            self.number = max((abs(int(n)) for n in numbers), default=-1) + 1

    @_on_loop
    def add_pending(self, item) -> str:
        """Queue a raw item ``(number, prompt_id, prompt, extra_data, outputs[, sensitive])``."""
        item = _in_memory_queue_item(item)
        self.prompt_queue.put(item)
        return item[1]

    @_on_loop
    def submit(
        self,
        prompt: dict | None = None,
        *,
        prompt_id: str | None = None,
        client_id: str | None = None,
        extra_data: dict | None = None,
        front: bool = False,
        workflow_id: str | None = None,
        number: Any = None,
    ) -> str:
        """Queue a prompt exactly as ``POST /prompt`` would; returns its id.
        ``workflow_id`` sets ``extra_data.extra_pnginfo.workflow.id``; ``number`` is
        the client's queue number (ComfyUI stores ``float(number)``)."""
        body: dict[str, Any] = {"prompt": prompt if prompt is not None else sample_prompt()}
        extra = copy.deepcopy(extra_data) if extra_data is not None else {}
        if workflow_id is not None:
            extra.setdefault("extra_pnginfo", {})["workflow"] = {
                "id": workflow_id,
                "nodes": [],
                "links": [],
                "version": 0.4,
            }
        body["extra_data"] = extra
        if client_id is not None:
            body["client_id"] = client_id
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        if front:
            body["front"] = True
        if number is not None:
            body["number"] = number
        status, answer = self.queue_prompt(body)
        if status != 200:
            raise ValueError(f"ComfyUI would answer {status}: {answer}")
        return answer["prompt_id"]

    def _current(self, prompt_id: str | None = None) -> ExecutionRun:
        if self._run is None:
            raise LookupError("no job is running")
        if prompt_id is not None and prompt_id != self._run.prompt_id:
            raise LookupError(f"{prompt_id} is not running ({self._run.prompt_id} is)")
        return self._run

    @property
    def running_prompt_id(self) -> str | None:
        return self._run.prompt_id if self._run is not None else None

    @_on_loop
    def start_next(self, cached=()) -> str:
        """Take the next pending job (lowest number) and start it: ``status``,
        ``execution_start``, ``execution_cached`` (``cached`` node ids), then the first
        node to run starts (``progress_state``, ``executing``). Returns its id."""
        if self._run is not None:
            raise RuntimeError(f"{self._run.prompt_id} is still running")
        got = self.prompt_queue.get(timeout=0)
        if got is None:
            raise LookupError("no pending job")
        self._run = run = ExecutionRun(self, *got)
        run.begin(cached)
        remaining = run.remaining_nodes()
        if remaining:
            run.enter_node(remaining[0])
        return run.prompt_id

    @_on_loop
    def progress(self, value: float, maximum: float = 1.0) -> None:
        """A sampler step in the running node: ``progress_state`` and ``progress``."""
        run = self._current()
        if run.current_node is None:
            run.enter_node(run.remaining_nodes()[0])
        run.progress(value, maximum)

    def _default_outputs(self, run: ExecutionRun) -> dict:
        outputs = {}
        for node_id in run.outputs_to_execute:
            self._outputs_made += 1
            outputs[node_id] = default_output(node_id, self._outputs_made)
        return outputs

    @_on_loop
    def finish(
        self,
        prompt_id: str | None = None,
        status: str = "success",
        outputs: dict | None = None,
        *,
        error: dict | None = None,
    ) -> dict:
        """End the running job and move it to history; returns the entry as
        ``GET /history/{prompt_id}`` serves it.

        ``status="success"``: the remaining nodes run, ``outputs`` (``{node_id: ui}``,
        default an image per output node) are sent as ``executed`` and stored, then
        ``execution_success``. ``"error"``: ``execution_error`` at the current node;
        ``error`` may set ``exception_type``, ``exception_message``,
        ``traceback_lines``, ``current_inputs``. ``"interrupted"``:
        ``execution_interrupted``. Then ``status`` and ``executing`` with node null.
        """
        run = self._current(prompt_id)
        if status == "success":
            pending_outputs = dict(outputs) if outputs is not None else self._default_outputs(run)
            if run.current_node is not None:
                run.leave_node(pending_outputs.pop(run.current_node, None))
            for node_id in run.remaining_nodes():
                run.run_node(node_id, pending_outputs.pop(node_id, None))
            for node_id, output in pending_outputs.items():  # cached output nodes
                run.record_output(node_id, output)
            run.succeed()
        elif status in ("error", "interrupted"):
            for node_id, output in (outputs or {}).items():
                run.record_output(node_id, output)
            if status == "error":
                run.fail(**(error or {}))
            else:
                run.interrupt()
        else:
            raise ValueError(f"status must be success, error or interrupted, not {status!r}")
        self._run = None
        run.complete()
        return _as_json(self.prompt_queue.get_history(prompt_id=run.prompt_id)[run.prompt_id])

    @_on_loop
    def evict(self, prompt_id: str) -> bool:
        """Remove a history entry without telling anyone (the cap's silent eviction)."""
        with self.prompt_queue.mutex:
            return self.prompt_queue.history.pop(prompt_id, None) is not None

    # -- faults

    @_on_loop
    def drop_connections(self) -> None:
        """Cut every websocket connection (TCP abort); the server state is unchanged."""
        self.abort_websockets()
        self.sockets.clear()
        self.sockets_metadata.clear()

    @_on_loop
    def restart(self, *, keep_history: bool = False) -> None:
        """What a ComfyUI restart does: every connection cut, undelivered events lost,
        queue, running job and (unless ``keep_history``) history gone, queue numbers
        and task counter back to 0. HTTP keeps answering on the same port."""
        self._generation += 1
        self.drop_connections()
        queue = self.prompt_queue
        with queue.mutex:
            queue.queue = []
            queue.currently_running = {}
            queue.task_counter = 0
            queue.flags = {}
            if not keep_history:
                queue.history = {}
        self._run = None
        self.number = 0
        self.client_id = self.last_node_id = self.last_prompt_id = None
        self._interrupted.clear()

    @_on_loop
    def pause_ws(self) -> None:
        """Hold back queued websocket events (a stalled network); HTTP still answers."""
        self._ws_open.clear()

    @_on_loop
    def resume_ws(self) -> None:
        """Deliver the held events, in order."""
        self._ws_open.set()

    # -- raw state, as ComfyUI's /api/jobs handlers see it

    def history_dict(self) -> dict:
        """Deep copy of the in-memory history ``{prompt_id: entry}`` (tuples as in memory)."""
        with self.prompt_queue.mutex:
            return copy.deepcopy(self.prompt_queue.history)

    def queue_running(self) -> list:
        """Running items without the sensitive element (5-tuples)."""
        running, _ = self.prompt_queue.get_current_queue()
        return remove_sensitive_from_queue(running)

    def queue_pending(self) -> list:
        """Pending items without the sensitive element, in heap order (as /queue)."""
        _, pending = self.prompt_queue.get_current_queue()
        return remove_sensitive_from_queue(pending)

    def reference(self) -> Reference:
        """The oracle over the state as an HTTP client sees it (JSON round trip)."""
        return Reference(_as_json(self.history_dict()), _as_json(self.queue_running()), _as_json(self.queue_pending()))

    def connected_client_ids(self) -> list[str]:
        return list(self.sockets)


@asynccontextmanager
async def running_fake_comfyui(
    port: int = 0, *, fake: FakeComfyUI | None = None, **kwargs
) -> AsyncIterator[FakeComfyUI]:
    """Serve ``fake`` (or ``FakeComfyUI(**kwargs)``) on 127.0.0.1:``port`` in the
    running loop for the duration of the block; ``fake.url`` is its base URL."""
    fake = fake if fake is not None else FakeComfyUI(**kwargs)
    await fake.start(port=port)
    try:
        yield fake
    finally:
        await fake.stop()


class FakeComfyUIThread:
    """A FakeComfyUI served from a background thread with its own event loop, for
    synchronous tests. Control methods and state readers of the fake are available
    directly on this object (``thread.finish(...)``) or as ``thread.fake``."""

    def __init__(self, fake: FakeComfyUI | None = None, **kwargs):
        self.fake = fake if fake is not None else FakeComfyUI(**kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> FakeComfyUIThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.fake.start(port=port))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.fake.stop())
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-comfyui", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("FakeComfyUI did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    @property
    def url(self) -> str:
        return self.fake.url

    def __enter__(self) -> FakeComfyUIThread:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __getattr__(self, name: str):
        return getattr(self.fake, name)
