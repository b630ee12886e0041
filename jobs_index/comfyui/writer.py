"""The custom node's background writer: ComfyUI's queue changes → the index, off the
worker thread, never blocking it.

ComfyUI threads (the prompt worker, the event loop) only ``submit`` small operations
while they hold the prompt queue's mutex: a sequence number and an append to an
in-memory hand-off. One daemon thread (the pump) takes them, normalises them and moves
them into the **outbox** (``outbox.py``: a local SQLite file beside ComfyUI's user
directory); the writer thread applies the outbox to the index in order and deletes what
is applied. While the index is down, changes keep moving into the outbox, and what is
there survives a crash or restart of ComfyUI: it is replayed first.

**What may be dropped.** Only a change a resync can redo from ComfyUI's memory: past
``max_queue`` waiting changes (the pump lags: a slow disk, a loaded machine) a
pending/running update is dropped and a *resync* is due; ComfyUI holds that item until
it finishes, and its finish is never dropped for lag. A finished job or a deletion is
kept until ``hard_limit`` changes wait (the pump is stuck): ComfyUI may forget a
finished job at any time (its history is capped), so dropping one would lose it. When a
fails (database locked past its busy timeout, unwritable, server down) the error is
logged, the thread backs off (still moving changes into the outbox) and a resync is
due. The job itself runs on regardless.

**One writer per source.** Rows are written under one ``jobs.source`` (by default
``<host>:<port>`` of this ComfyUI, see ``node.py``). Before writing, the writer takes
the source's lease in the database (``JobsIndex.acquire_lease``), renews it while it
runs and releases it when it stops. A second process configured with the same source
logs who holds it and writes nothing until the lease is released or expires (a holder
on this host whose process is gone is taken over at once). Destructive writes
(reconcile, "clear history", deletes) check the lease in their own transaction and
only ever touch rows of this source.

**Resync** repairs any gap from ComfyUI's in-memory state: under the mutex it copies
the history dict and the queue (references; ComfyUI never mutates an entry after
storing it) and notes the last sequence number; then, outside the mutex, it applies
the outbox up to that number, writes the history entries this writer has not written
(or found stored) before and the queue items, and removes this source's pending/running
rows that are not queued any more. A job this writer wrote once and someone deleted
since (``prune``, SQL) is not written again: deletion wins. A resync runs at start
(backfill, and clean-up of live rows left by a previous run), after a drop, failure or
lease gap, and every ``resync_interval``.

**Read-your-writes.** ``done_seq`` is the highest sequence number whose operation and
all before it are in the database (a dropped operation holds it back until a resync).
``wait_for(seq)`` lets the HTTP side wait, without blocking the event loop, until what
ComfyUI announced has been written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LeaseLost
from ..leases import holder_is_gone, new_holder
from ..normalize import IN_PROGRESS, PENDING, STAGE_HISTORY, JobRecord, from_history, from_queue
from ..services import JobsIndex
from .outbox import Entry, FileOutbox, MemoryOutbox, OutboxFull, open_outbox

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
    the order of ComfyUI's changes. ``source`` is the source name or a callable
    returning it (None while not known yet: the writer waits). ``outbox``: the outbox
    file (None: in memory). ``lease_ttl``: seconds a lease lasts without renewal.
    ``legacy_source``: a source whose pending/running rows this writer removes once
    at start if it can take that source's lease (see ``node.LEGACY_SOURCE``).
    ``max_queue`` / ``hard_limit``: changes waiting for the pump past which
    pending/running updates / all changes are dropped (see the module docstring).
    """

    def __init__(
        self,
        *,
        open_index: Callable[[], JobsIndex],
        read_state: Callable[[], State],
        mutex,
        source: str | Callable[[], str | None] | None,
        max_queue: int = 1000,
        batch_size: int = 500,
        resync_interval: float = 600.0,
        retry_base: float = 0.25,
        retry_cap: float = 30.0,
        outbox: str | Path | None = None,
        lease_ttl: float = 60.0,
        legacy_source: str | None = None,
        delete_batch: int = 1000,
        open_hint: Callable[[Exception], str] | None = None,
        hard_limit: int = 100_000,
    ) -> None:
        self._open_index = open_index
        self._open_hint = open_hint
        self._read_state = read_state
        self.mutex = mutex
        self._identify = source if callable(source) else (lambda: source)
        self.source: str | None = None
        self.holder = new_holder()
        self.outbox_path = outbox
        self.outbox: FileOutbox | MemoryOutbox | None = None
        self.lease_ttl = lease_ttl
        self.legacy_source = legacy_source
        self.delete_batch = delete_batch
        self.batch_size = batch_size
        self.resync_interval = resync_interval
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.index: JobsIndex | None = None
        self.ready = False  # the first resync is done: the index answers for ComfyUI
        self.failing: str | None = None  # the current error, while writes fail
        self.waiting_for: str | None = None  # the other holder of our source's lease, while it holds it
        self.last_seq = 0  # assigned by submit (mutex held)
        self.done_seq = 0
        self.stats = {
            "written": 0,
            "dropped": 0,
            "resyncs": 0,
            "failures": 0,
            "rejected": 0,
            "spooled": 0,
            "replayed": 0,
        }
        self.max_queue = max(1, max_queue)
        self.hard_limit = max(self.max_queue, hard_limit)
        self._ops: deque[Op] = deque()  # appended under _lock (seq order), taken by the pump
        self._submitted = threading.Event()  # set by submit: wakes the pump
        self._lock = threading.Lock()  # guards the fields below and done_seq/waiters
        self._deferred: list[Op] = []  # deletions that could not be queued
        self._drop_min: int | None = None  # lowest dropped seq not yet covered by a resync
        self._drop_max: int | None = None
        self._resync_due = True
        self._pumped_seq = 0  # every op up to here is in the outbox (or was malformed)
        self._written: set[str] = set()  # finished ids written or found stored (bounded by ComfyUI's history)
        self._lease_until = 0.0  # monotonic time our lease must be renewed by
        self._legacy_done = legacy_source is None
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="jobs-index-writer", daemon=True)
        # The pump thread moves ops from the queue into the outbox, so that a database
        # call blocking the writer thread (a busy timeout, a connect timeout) never
        # lets the queue overflow. ``_pump_lock`` keeps the outbox in queue order.
        self._pump_thread = threading.Thread(target=self._pump_loop, name="jobs-index-outbox", daemon=True)
        self._pump_lock = threading.Lock()
        self._pumped = threading.Event()  # set when the pump added entries (wakes the writer)
        self._next_resync = 0.0
        self._last_logged: tuple[str, float] = ("", 0.0)

    # -- ComfyUI side (any thread, mutex held) ------------------------------------

    def submit(self, kind: str, payload: Any = None) -> int:
        """Record one change; never blocks. Call with ComfyUI's mutex held."""
        with self._lock:
            self.last_seq += 1
            op = Op(self.last_seq, kind, payload)
            waiting = len(self._ops)
            queued = waiting < self.hard_limit and (kind != QUEUED or waiting < self.max_queue)
            if queued:
                self._ops.append(op)
            else:  # a resync redoes it from ComfyUI's memory
                self.stats["dropped"] += 1
                if kind in DELETIONS:
                    self._deferred.append(op)  # a resync cannot see deletions: keep them (small)
                self._drop_min = op.seq if self._drop_min is None else self._drop_min
                self._drop_max = op.seq
                self._resync_due = True
            seq = self.last_seq
        if queued:
            self._submitted.set()
        return seq

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
        """Write what is pending (up to ``flush_timeout``), stop, release the lease,
        close the database. What could not be written stays in the outbox."""
        if self._thread.is_alive() and self.index is not None and self.failing is None and self.ready:
            self.flush(flush_timeout)
        self._stop.set()
        self._pumped.set()  # wake the writer thread
        self._submitted.set()  # wake the pump thread
        for thread in (self._thread, self._pump_thread):
            if thread.is_alive():
                thread.join(flush_timeout + 5)
        if self.outbox is not None and not self._pump_thread.is_alive():
            try:
                self._pump()  # what arrived meanwhile waits in the outbox for the next start
            except Exception as exc:
                log.warning("jobs-index: could not keep the last changes in the outbox (%s)", exc)
        if self.index is not None:
            if self._lease_until and self.source is not None:
                try:
                    self.index.release_lease(self.source, self.holder)
                except Exception as exc:  # it expires by itself
                    log.warning("jobs-index: could not release the lease of %r (%s)", self.source, exc)
            self.index.close()
        if self.outbox is not None and not self._thread.is_alive():
            self.outbox.close()

    # -- the thread -----------------------------------------------------------------

    # ``_run`` sets ``source``, then opens ``outbox``, then ``index``, before it does
    # anything else; the pump thread starts once the outbox is open. The methods that
    # run only after that read them through these.

    @property
    def _known_source(self) -> str:
        assert self.source is not None, "_run identifies the source first"
        return self.source

    @property
    def _opened_outbox(self) -> FileOutbox | MemoryOutbox:
        assert self.outbox is not None, "_run opens the outbox before the pump thread starts"
        return self.outbox

    @property
    def _opened_index(self) -> JobsIndex:
        assert self.index is not None, "_run opens the index before any read or write of it"
        return self.index

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self.source is None:
                    self.source = self._identify()
                    if self.source is None:  # ComfyUI's port is not known yet
                        self._stop.wait(0.05)
                        continue
                if self.outbox is None:
                    self.outbox = open_outbox(self.outbox_path, self.source, self.holder)
                    self._pump_thread.start()
                if self.index is None:
                    self.index = self._open_index()
                    log.info("jobs-index: database %s open", self.index.engine.url.render_as_string(hide_password=True))
                if not self._hold_lease():
                    self._stop.wait(min(5.0, self.lease_ttl / 4))
                    continue
                with self._lock:
                    due = self._resync_due or time.monotonic() >= self._next_resync
                if due:
                    self._resync()
                self._pumped.wait(min(0.5, max(0.0, self._next_resync - time.monotonic())))
                self._pumped.clear()
                self._apply_pending()
                attempt = 0
                if self.failing is not None:
                    log.warning("jobs-index: database writable again; caught up")
                    self.failing = None
            except LeaseLost as exc:
                log.error(
                    "jobs-index: lost the lease of source %r (%s); writing stops until it is taken again",
                    self.source,
                    exc.message,
                )
                self._lease_until = 0.0
                self.ready = False
                self.request_resync()
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
                log.error(
                    "jobs-index: cannot open the jobs index (%s); ComfyUI answers /api/jobs from its "
                    "own memory meanwhile. To fix: %s. The node retries and catches up from "
                    "ComfyUI's memory once the index opens",
                    message,
                    hint,
                )
                self._last_logged = (message, time.monotonic())
        elif message != last or time.monotonic() - when > 60:  # do not flood ComfyUI's log
            log.error(
                "jobs-index: cannot write to the jobs database (%s); ComfyUI runs on, "
                "changes wait in the outbox and the index catches up when the database is back",
                message,
            )
            self._last_logged = (message, time.monotonic())

    def _outbox_failed(self, exc: Exception) -> None:
        if self.outbox is not None and self.outbox.durable:
            log.error(
                "jobs-index: the outbox failed (%s: %s); changes wait in memory from now on", type(exc).__name__, exc
            )
            self.outbox = MemoryOutbox(self._known_source, self.holder)
            self.request_resync()

    # -- the lease ------------------------------------------------------------------

    def _hold_lease(self) -> bool:
        """True while we hold our source's lease (renewed once a third of it has passed)."""
        now = time.monotonic()
        if self._lease_until - now > self.lease_ttl / 3 * 2:
            return True
        ttl_ms = int(self.lease_ttl * 1000)
        had = self._lease_until > 0
        if had and self._opened_index.renew_lease(self._known_source, self.holder, ttl_ms) is not None:
            self._lease_until = now + self.lease_ttl
            return True
        acquired, holder, expires_at = self._opened_index.acquire_lease(
            self._known_source, self.holder, ttl_ms, stale=holder_is_gone
        )
        if not acquired:
            self._lease_until = 0.0
            self.ready = False
            if self.waiting_for != holder:
                log.error(
                    "jobs-index: source %r is being recorded by another process (%s, lease until "
                    "%s); this ComfyUI writes nothing to the index until that lease is released or "
                    "expires. Give each ComfyUI its own JOBS_INDEX_SOURCE (the default is "
                    "<host>:<port>).",
                    self.source,
                    holder,
                    time.strftime("%H:%M:%S", time.localtime(expires_at / 1000)),
                )
                self.waiting_for = holder
            return False
        self._lease_until = now + self.lease_ttl
        if self.waiting_for is not None or had:
            log.warning("jobs-index: took the lease of source %r; catching up", self.source)
        self.waiting_for = None
        self.request_resync()  # whatever happened while we did not hold it
        return True

    # -- queue → outbox -------------------------------------------------------------

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._pump(timeout=0.2)
            except Exception as exc:  # never let the thread die
                log.error("jobs-index: outbox pump failed (%s: %s)", type(exc).__name__, exc)
                self._stop.wait(0.5)

    def _pump(self, timeout: float = 0.0) -> int:
        """Move every waiting op into the outbox (waiting up to ``timeout`` for one)."""
        if timeout > 0:
            self._submitted.wait(timeout)
        self._submitted.clear()  # before taking: an op appended after this sets it again
        with self._pump_lock:  # an op taken is in the outbox before anyone else looks
            count = self._pump_locked()
        if count:
            self._pumped.set()
        return count

    def _pump_locked(self) -> int:
        """Every waiting op into the outbox, a batch at a time; the number moved."""
        count = 0
        while ops := self._take(self.batch_size):
            self._spool(ops)
            count += len(ops)
        return count

    def _take(self, limit: int) -> list[Op]:
        ops: list[Op] = []
        while len(ops) < limit:
            try:
                ops.append(self._ops.popleft())
            except IndexError:
                break
        return ops

    def _spool(self, ops: list[Op]) -> None:
        entries = []
        for op in ops:
            if op.kind in DELETIONS:
                entries.append(Entry(op.seq, op.kind, op.payload))
            elif (record := _record(op)) is not None:
                entries.append(Entry(op.seq, op.kind, record))
        try:
            try:
                self._opened_outbox.append(entries)
            except OutboxFull:
                raise
            except Exception as exc:
                self._outbox_failed(exc)
                self._opened_outbox.append(entries)
        except OutboxFull:  # in memory only, and full: dropped, as from a full queue (resync repairs)
            with self._lock:
                self.stats["dropped"] += len(ops)
                self._deferred.extend(op for op in ops if op.kind in DELETIONS)
                if ops:
                    self._drop_min = ops[0].seq if self._drop_min is None else self._drop_min
                    self._drop_max = ops[-1].seq
                self._resync_due = True
        if ops:
            self._pumped_seq = max(self._pumped_seq, ops[-1].seq)
        if self.failing is not None or not self.ready:
            self.stats["spooled"] += len(entries)

    def _drain_into_outbox(self) -> None:
        """Every op submitted so far into the outbox (the pump thread may be moving some)."""
        with self._pump_lock:
            self._pump_locked()

    # -- outbox → index -------------------------------------------------------------

    def _apply_pending(self, upto: int | None = None) -> None:
        """Apply the outbox in order (this run's entries up to seq ``upto``; all if None)."""
        with self._pump_lock:
            pumped = self._pumped_seq  # in the outbox before the reads below
        while True:
            entries = self._opened_outbox.pending(self.batch_size, upto)
            if not entries:
                break
            self._apply(entries)
            self._opened_outbox.ack(entries)
            replayed = sum(not entry.current for entry in entries)
            if replayed:
                self.stats["replayed"] += replayed
                log.info("jobs-index: replayed %d change(s) left in the outbox by an earlier run", replayed)
            self._advance(max((entry.seq for entry in entries if entry.current), default=0))
        if upto is None:
            self._advance(pumped)

    def _apply(self, entries: list[Entry]) -> None:
        """Consecutive upserts in one ingest, deletions as they come."""
        index = self._opened_index
        records: list[JobRecord] = []
        for entry in entries:
            if entry.kind in DELETIONS:
                self._write(index, records)
                records = []
                self._delete(index, entry)
            else:
                records.append(entry.payload)
        self._write(index, records)

    def _write(self, index: JobsIndex, records: list[JobRecord]) -> None:
        if records:
            result = index.ingest(records, source=self.source)
            self.stats["written"] += result.inserted + result.updated
            self.stats["rejected"] += len(result.rejected)
            for job_id, reason in result.rejected:  # never dropped without a word
                log.warning("jobs-index: job %r not recorded: %s", job_id, reason)
            refused = {job_id for job_id, _ in result.rejected}
            self._written.update(
                record.id for record in records if record.stage == STAGE_HISTORY and record.id not in refused
            )

    def _delete(self, index: JobsIndex, op: Entry | Op) -> None:
        """A deletion in ComfyUI, for this source's rows only."""
        if op.kind == CLEARED:
            index.delete_finished(source=self.source, holder=self.holder, batch_size=self.delete_batch)
        elif op.payload:
            index.delete_jobs(op.payload, source=self.source, holder=self.holder)

    def _resync(self) -> None:
        with self.mutex:
            state = self._read_state()
            with self._lock:
                snap_seq = self.last_seq
                deferred = [op for op in self._deferred if op.seq <= snap_seq]
                drop_max = self._drop_max
                self._resync_due = False
        try:
            self._drain_into_outbox()  # every op up to snap_seq is queued or dropped: into the outbox
            for op in sorted(deferred, key=lambda op: op.seq):  # dropped deletions, in their place
                self._apply_pending(upto=op.seq - 1)
                self._delete(self._opened_index, op)
            self._apply_pending(upto=snap_seq)  # earlier runs' entries, then ours up to the snapshot
            if not self._legacy_done:
                self._clean_legacy()
            self._write_state(state)
        except Exception:
            with self._lock:
                self._resync_due = True
            raise
        with self._lock:
            done = {id(op) for op in deferred}
            self._deferred = [op for op in self._deferred if id(op) not in done]
            if drop_max is not None and self._drop_max is not None:
                if self._drop_max <= snap_seq:
                    self._drop_min = self._drop_max = None
                else:
                    self._drop_min = snap_seq + 1  # a later drop: held back until the next resync
            self.stats["resyncs"] += 1
        self._next_resync = time.monotonic() + self.resync_interval
        self.ready = True
        self._advance(snap_seq)

    def _clean_legacy(self) -> None:
        """Remove the pending/running rows of the legacy source (a ComfyUI that used
        it has stopped: nobody else writes it), once, if its lease is free."""
        if self.legacy_source is None:  # not called then (_legacy_done starts True)
            self._legacy_done = True
            return
        if not self._opened_index.live_ids(self.legacy_source):  # the usual case: a read, no write lock
            self._legacy_done = True
            return
        ttl_ms = int(self.lease_ttl * 1000)
        acquired, _, _ = self._opened_index.acquire_lease(self.legacy_source, self.holder, ttl_ms, stale=holder_is_gone)
        if acquired:
            try:
                removed = self._opened_index.reconcile_live([], source=self.legacy_source, holder=self.holder)
                if removed:
                    log.info(
                        "jobs-index: removed %d pending/running job(s) left under the old source %r",
                        removed,
                        self.legacy_source,
                    )
            finally:
                self._opened_index.release_lease(self.legacy_source, self.holder)
        self._legacy_done = True

    def _write_state(self, state: State) -> None:
        """Write what the index lacks of ``state``; remove live rows no longer queued.

        A history entry this writer already wrote (or found stored) is not written
        again: if its row is gone, someone deleted it (``prune``, SQL) and that wins."""
        index = self._opened_index
        candidates = [prompt_id for prompt_id in state.history if prompt_id not in self._written]
        stored = index.finished_ids(candidates) if candidates else set()
        self._written.update(stored)
        records = []
        for prompt_id in candidates:
            if prompt_id not in stored:
                records.append(_record(Op(0, FINISHED, (prompt_id, state.history[prompt_id]))))
        live = []
        for items, status in ((state.running, IN_PROGRESS), (state.pending, PENDING)):
            for item in items:
                records.append(_record(Op(0, QUEUED, (item, status))))
                if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
                    live.append(item[1])
        self._write(index, [record for record in records if record is not None])
        removed = index.reconcile_live(live, source=self.source, holder=self.holder)
        self._written.intersection_update(state.history)  # ComfyUI forgot the others: they cannot come back
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
    return [item[1] for item in items if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str)]
