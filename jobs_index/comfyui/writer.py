"""The custom node's background writer: ComfyUI's queue changes → the index, off the
worker thread, never blocking it.

ComfyUI threads (the prompt worker, the event loop) only ``submit`` small operations
while they hold the prompt queue's mutex: a sequence number and a ``put_nowait`` on a
bounded queue. One daemon thread normalises and writes them in batches. When the queue
is full the operation is dropped and a *resync* is due; when a write fails (database
locked past its busy timeout, unwritable, server down) the error is logged, the thread
backs off and a resync is due. The job itself runs on regardless.

**Resync** repairs any gap from ComfyUI's in-memory state: under the mutex it copies
the history dict and the queue (references; ComfyUI never mutates an entry after
storing it) and notes the last sequence number; then, outside the mutex, it applies the
deletions submitted up to that number, writes the history entries the index does not
yet hold as finished and the queue items, and removes this source's pending/running
rows that are not queued any more. Operations up to that number are then covered; later
ones are applied after it. A resync runs at start (backfill, and clean-up of live rows
left by a previous run), after a drop or failure, and every ``resync_interval``.

**Read-your-writes.** ``done_seq`` is the highest sequence number whose operation and
all before it are in the database (a dropped operation holds it back until a resync).
``wait_for(seq)`` lets the HTTP side wait, without blocking the event loop, until what
ComfyUI announced has been written.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..normalize import IN_PROGRESS, PENDING, JobRecord, from_history, from_queue
from ..services import JobsIndex

log = logging.getLogger("jobs_index.comfyui")

# Operation kinds.
QUEUED = "queued"  # payload (item, status): a pending or running queue item
FINISHED = "finished"  # payload (prompt_id, history entry)
UNQUEUED = "unqueued"  # payload [ids]: pending items removed from the queue
DELETED = "deleted"  # payload [ids]: history items deleted by the user
CLEARED = "cleared"  # payload None: the user cleared the history
DELETIONS = frozenset({UNQUEUED, DELETED, CLEARED})


@dataclass(slots=True)
class Op:
    seq: int
    kind: str
    payload: Any


@dataclass
class State:
    """ComfyUI's in-memory jobs, as read under its mutex."""

    history: dict  # {prompt_id: entry}, insertion order
    running: list  # queue items
    pending: list


def _record(op: Op) -> JobRecord | None:
    """Normalise one upsert; a malformed item is logged and skipped."""
    try:
        if op.kind == QUEUED:
            item, status = op.payload
            return from_queue(item, status)
        prompt_id, entry = op.payload
        return from_history(prompt_id, entry)
    except Exception as exc:  # InvalidItem, unserialisable data, a dict changing under us
        log.warning("jobs-index: skipped a malformed job (%s)", exc)
        return None


class Writer:
    """Bounded, failure-tolerant writer thread (see the module docstring).

    ``open_index`` opens (and migrates) the database, in the writer thread; when it
    fails, ``open_hint(exc)`` says what the user can do (logged once per reason);
    ``read_state`` reads ComfyUI's state and is called with ``mutex`` held;
    ``submit`` must be called with ``mutex`` held, so sequence order = queue order =
    the order of ComfyUI's changes.
    """

    def __init__(self, *, open_index: Callable[[], JobsIndex], read_state: Callable[[], State],
                 mutex, source: str | None, max_queue: int = 1000, batch_size: int = 500,
                 resync_interval: float = 600.0, retry_base: float = 0.25, retry_cap: float = 30.0,
                 open_hint: Callable[[Exception], str] | None = None) -> None:
        self._open_index = open_index
        self._open_hint = open_hint
        self._read_state = read_state
        self.mutex = mutex
        self.source = source
        self.batch_size = batch_size
        self.resync_interval = resync_interval
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.index: JobsIndex | None = None
        self.ready = False  # the first resync is done: the index answers for ComfyUI
        self.failing: str | None = None  # the current error, while writes fail
        self.last_seq = 0  # assigned by submit (mutex held)
        self.done_seq = 0
        self.covered_seq = 0  # upserts up to here are covered by the last resync
        self.stats = {"written": 0, "dropped": 0, "resyncs": 0, "failures": 0}
        self._ops: queue.Queue[Op | None] = queue.Queue(max(1, max_queue))
        self._carry: deque[Op] = deque()  # taken from the queue, not yet applied
        self._lock = threading.Lock()  # guards the fields below and done_seq/waiters
        self._deferred: list[Op] = []  # deletions that could not be queued or applied
        self._drop_min: int | None = None  # lowest dropped seq not yet covered by a resync
        self._drop_max: int | None = None
        self._resync_due = True
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="jobs-index-writer", daemon=True)
        self._next_resync = 0.0
        self._last_logged: tuple[str, float] = ("", 0.0)

    # -- ComfyUI side (any thread, mutex held) ------------------------------------

    def submit(self, kind: str, payload: Any = None) -> int:
        """Record one change; never blocks. Call with ComfyUI's mutex held."""
        with self._lock:
            self.last_seq += 1
            op = Op(self.last_seq, kind, payload)
        try:
            self._ops.put_nowait(op)
        except queue.Full:
            with self._lock:
                self.stats["dropped"] += 1
                if kind in DELETIONS:
                    self._deferred.append(op)  # a resync cannot see deletions: keep them (small)
                self._drop_min = op.seq if self._drop_min is None else self._drop_min
                self._drop_max = op.seq
                self._resync_due = True
        return op.seq

    def request_resync(self) -> None:
        with self._lock:
            self._resync_due = True

    # -- HTTP side (event loop) ---------------------------------------------------

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """True once every change up to ``seq`` is written; False after ``timeout``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.done_seq >= seq:
                return True
            waiter = (seq, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            done, _ = await asyncio.wait({waiter[2]}, timeout=timeout)
            return bool(done)
        finally:
            waiter[2].cancel()
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            target = self.last_seq
            while self.done_seq < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, flush_timeout: float = 5.0) -> None:
        """Write what is pending (up to ``flush_timeout``), stop, close the database."""
        if self._thread.is_alive() and self.index is not None and self.failing is None:
            self.flush(flush_timeout)
        self._stop.set()
        try:
            self._ops.put_nowait(None)  # wake the thread
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(flush_timeout + 5)
        if self.index is not None:
            self.index.close()

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self.index is None:
                    self.index = self._open_index()
                    log.info("jobs-index: database %s open",
                             self.index.engine.url.render_as_string(hide_password=True))
                with self._lock:
                    due = self._resync_due or time.monotonic() >= self._next_resync
                if due:
                    self._resync()
                ops = self._take(timeout=min(0.5, max(0.0, self._next_resync - time.monotonic())))
                if ops:
                    self._apply(ops)
                attempt = 0
                if self.failing is not None:
                    log.warning("jobs-index: database writable again; caught up")
                    self.failing = None
            except Exception as exc:  # never let the thread die: log, back off, resync
                self._failed(exc)
                delay = min(self.retry_cap, self.retry_base * 2 ** min(attempt, 16))
                attempt += 1
                self._stop.wait(delay)

    def _failed(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.stats["failures"] += 1
            self._resync_due = True
        self.failing = message
        last, when = self._last_logged
        if self.index is None:  # not open: one line per distinct reason, saying what to do
            if message != last:
                hint = self._open_hint(exc) if self._open_hint is not None else "see the error"
                log.error("jobs-index: cannot open the jobs index (%s); ComfyUI answers /api/jobs from its "
                          "own memory meanwhile. To fix: %s. The node retries and catches up from "
                          "ComfyUI's memory once the index opens", message, hint)
                self._last_logged = (message, time.monotonic())
        elif message != last or time.monotonic() - when > 60:  # do not flood ComfyUI's log
            log.error("jobs-index: cannot write to the jobs database (%s); ComfyUI runs on, "
                      "the index catches up when the database is back", message)
            self._last_logged = (message, time.monotonic())

    def _take(self, timeout: float) -> list[Op]:
        ops = list(self._carry)
        self._carry.clear()
        if not ops:
            try:
                first = self._ops.get(timeout=timeout)
            except queue.Empty:
                return []
            if first is None:
                return []
            ops.append(first)
        while len(ops) < self.batch_size:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                ops.append(op)
        return ops

    def _apply(self, ops: list[Op]) -> None:
        """Apply ops in order: consecutive upserts in one ingest, deletions as they come."""
        index = self.index
        try:
            records: list[JobRecord] = []
            for op in ops:
                if op.kind in DELETIONS:
                    self._write(index, records)
                    records = []
                    self._delete(index, op)
                elif op.seq > self.covered_seq:
                    record = _record(op)
                    if record is not None:
                        records.append(record)
            self._write(index, records)
        except Exception:
            with self._lock:  # deletions must survive (a resync cannot see them); upserts are covered by it
                self._deferred.extend(op for op in ops if op.kind in DELETIONS)
                self._deferred.sort(key=lambda op: op.seq)
            raise
        self._advance(ops[-1].seq)

    def _write(self, index: JobsIndex, records: list[JobRecord]) -> None:
        if records:
            result = index.ingest(records, source=self.source)
            self.stats["written"] += result.inserted + result.updated

    def _delete(self, index: JobsIndex, op: Op) -> None:
        if op.kind == CLEARED:
            index.delete_finished(source=self.source)
        elif op.payload:
            index.delete_jobs(op.payload)

    def _resync(self) -> None:
        with self.mutex:
            state = self._read_state()
            with self._lock:
                snap_seq = self.last_seq
                deferred = [op for op in self._deferred if op.seq <= snap_seq]
                drop_max = self._drop_max
                self._resync_due = False
        taken = list(self._carry) + self._drain()
        self._carry = deque(taken)  # restored as is if the resync fails
        try:
            earlier = sorted([op for op in taken if op.seq <= snap_seq and op.kind in DELETIONS] + deferred,
                             key=lambda op: op.seq)
            for op in earlier:  # deletions first: the snapshot already reflects them
                self._delete(self.index, op)
            self._write_state(state)
        except Exception:
            with self._lock:
                self._resync_due = True
            raise
        self._carry = deque(op for op in taken if op.seq > snap_seq)
        with self._lock:
            done = {id(op) for op in deferred}
            self._deferred = [op for op in self._deferred if id(op) not in done]
            if drop_max is not None and self._drop_max is not None:
                if self._drop_max <= snap_seq:
                    self._drop_min = self._drop_max = None
                else:
                    self._drop_min = snap_seq + 1  # a later drop: held back until the next resync
            self.covered_seq = max(self.covered_seq, snap_seq)
            self.stats["resyncs"] += 1
        self._next_resync = time.monotonic() + self.resync_interval
        self.ready = True
        self._advance(snap_seq)

    def _drain(self) -> list[Op]:
        ops = []
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return ops
            if op is not None:
                ops.append(op)

    def _write_state(self, state: State) -> None:
        """Write what the index lacks of ``state``; remove live rows no longer queued."""
        index = self.index
        stored = index.finished_ids(state.history.keys())
        records = []
        for prompt_id, entry in state.history.items():
            if prompt_id not in stored:
                records.append(_record(Op(0, FINISHED, (prompt_id, entry))))
        live = []
        for items, status in ((state.running, IN_PROGRESS), (state.pending, PENDING)):
            for item in items:
                records.append(_record(Op(0, QUEUED, (item, status))))
                if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
                    live.append(item[1])
        self._write(index, [record for record in records if record is not None])
        removed = index.reconcile_live(live, source=self.source)
        if removed:
            log.info("jobs-index: removed %d pending/running job(s) that ComfyUI no longer holds", removed)

    def _advance(self, seq: int) -> None:
        ready = []
        with self._lock:
            limit = self._drop_min - 1 if self._drop_min is not None else seq
            self.done_seq = max(self.done_seq, min(seq, limit))
            for waiter in list(self._waiters):
                if waiter[0] <= self.done_seq:
                    self._waiters.remove(waiter)
                    ready.append(waiter)
            self._idle.notify_all()
        for _, loop, future in ready:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed
                pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(True)


def queue_ids(items: Iterable) -> list[str]:
    """The prompt ids of queue items (malformed ones skipped)."""
    return [item[1] for item in items
            if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str)]
