"""The custom node's outbox: changes taken from ComfyUI but not yet in the index,
kept in a small local SQLite file so that they survive the process.

The writer thread moves every change it takes from its in-memory queue into the
outbox (one local transaction per batch, WAL, ``synchronous=NORMAL``: a killed
process loses nothing committed), applies the outbox to the index in order, and
deletes what is applied. While the index is down (or its source's lease is held by
another writer) changes keep arriving in the outbox, however many jobs finish;
when the index is back, or when ComfyUI starts again after a crash, the outbox is
replayed first. Nothing here runs on a ComfyUI thread.

What is stored is already normalised: job rows (``JobRecord``, ComfyUI's sensitive
extra data removed as in the index) and deletions (ids, or "clear"), each under the
source it belongs to, so one file can serve several ComfyUIs of one install (each
replays only its own source's rows). ``MemoryOutbox`` has the same interface and is
used when the file cannot be opened (or ``JOBS_INDEX_OUTBOX=off``): then a crash
loses what was not yet written, as before.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..normalize import JobRecord

log = logging.getLogger("jobs_index.comfyui")

UPSERT_KINDS = ("queued", "finished")  # writer.QUEUED / writer.FINISHED (payload: a JobRecord)


@dataclass(slots=True)
class Entry:
    """One change in the outbox: ``seq`` of the run that took it (``current``: this
    process), its kind (``writer.QUEUED`` ...) and payload (a ``JobRecord`` for an
    upsert, ids or None for a deletion)."""

    seq: int
    kind: str
    payload: Any
    current: bool = True
    key: int | None = None  # row id in the outbox


def _encode(kind: str, payload: Any) -> str:
    if kind in UPSERT_KINDS:
        fields = {name: getattr(payload, name) for name in JobRecord.__slots__}
        fields["raw"] = base64.b64encode(fields["raw"]).decode("ascii")
        # The search document is derived from raw again when the entry is written
        # (search_queries._document), so the outbox does not store it.
        fields["search"] = None
        return json.dumps(fields, separators=(",", ":"))
    return json.dumps(payload, separators=(",", ":"))


def _decode(kind: str, body: str) -> Any:
    value = json.loads(body)
    if kind in UPSERT_KINDS:
        value["raw"] = base64.b64decode(value["raw"])
        return JobRecord(**value)
    return value


class OutboxFull(Exception):
    """The in-memory outbox holds ``MemoryOutbox.limit`` entries: nothing was added."""


class MemoryOutbox:
    """An outbox in memory (lost with the process), of at most ``limit`` entries."""

    durable = False

    def __init__(self, source: str, run: str, limit: int = 100_000) -> None:
        self.source, self.run, self.limit = source, run, limit
        self._entries: list[Entry] = []
        self._next = 0

    def append(self, entries: list[Entry]) -> None:
        if entries and len(self._entries) + len(entries) > self.limit:
            raise OutboxFull(f"{len(self._entries)} changes wait in memory")
        for entry in entries:
            self._next += 1
            entry.key = self._next
        self._entries.extend(entries)

    def pending(self, limit: int, upto: int | None = None) -> list[Entry]:
        out: list[Entry] = []
        for entry in self._entries:
            if len(out) >= limit or (entry.current and upto is not None and entry.seq > upto):
                break
            out.append(entry)
        return out

    def ack(self, entries: list[Entry]) -> None:
        done = {entry.key for entry in entries}
        self._entries = [entry for entry in self._entries if entry.key not in done]

    def count(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        pass


class FileOutbox:
    """The outbox in a local SQLite file (see the module docstring)."""

    durable = True

    def __init__(self, path: str | Path, source: str, run: str) -> None:
        self.path = Path(path)
        self.source, self.run = source, run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "source TEXT NOT NULL, run TEXT NOT NULL, seq INTEGER NOT NULL, "
                "kind TEXT NOT NULL, body TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS outbox_source ON outbox (source, id)")
        except sqlite3.Error:
            self._db.close()
            raise

    def append(self, entries: list[Entry]) -> None:
        rows = [(self.source, self.run, e.seq, e.kind, _encode(e.kind, e.payload)) for e in entries]
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                for entry, row in zip(entries, rows, strict=True):
                    cursor.execute("INSERT INTO outbox (source, run, seq, kind, body) VALUES (?, ?, ?, ?, ?)", row)
                    entry.key = cursor.lastrowid
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise

    def pending(self, limit: int, upto: int | None = None) -> list[Entry]:
        """The oldest entries of this source: earlier runs' first, then this run's up
        to seq ``upto`` (all if None)."""
        sql = "SELECT id, run, seq, kind, body FROM outbox WHERE source = ?"
        args: list[Any] = [self.source]
        if upto is not None:
            sql += " AND (run != ? OR seq <= ?)"
            args += [self.run, upto]
        sql += " ORDER BY id LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        out = []
        for key, run, seq, kind, body in rows:
            try:
                payload = _decode(kind, body)
            except (ValueError, TypeError, KeyError) as exc:  # written by another version: skip it
                log.warning("jobs-index: dropped an unreadable outbox entry %d (%s)", key, exc)
                self.ack([Entry(seq, kind, None, key=key)])
                continue
            out.append(Entry(seq, kind, payload, current=run == self.run, key=key))
        return out

    def ack(self, entries: list[Entry]) -> None:
        keys = [(entry.key,) for entry in entries if entry.key is not None]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", keys)
            self._db.execute("COMMIT")

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox WHERE source = ?", (self.source,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_outbox(path: str | Path | None, source: str, run: str) -> FileOutbox | MemoryOutbox:
    """The file outbox at ``path``, or (no path, or it cannot be opened) one in memory."""
    if path is None:
        return MemoryOutbox(source, run)
    try:
        return FileOutbox(path, source, run)
    except (OSError, sqlite3.Error) as exc:
        log.error(
            "jobs-index: cannot open the outbox %s (%s); changes wait in memory until written "
            "(a crash while the database is down loses them)",
            path,
            exc,
        )
        return MemoryOutbox(source, run)
