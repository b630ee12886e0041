"""Read ComfyUI dumps and feed them to the index.

Recognised inputs (detected from their shape, not their name):

* a ``GET /history`` dump, ``{prompt_id: history_item, ...}`` (also a single
  ``GET /history/{id}`` answer, which has the same shape);
* a ``GET /queue`` dump, ``{"queue_running": [...], "queue_pending": [...]}``: it is
  the truth about live jobs, so pending/running rows missing from it are removed;
* a JSONL export of jobs-index (``jobs-index export``, format in ``transfer``): read
  line by line while it is imported, so its size is not bounded by memory.

A malformed item is rejected with its id and reason and never stops the others; a
file that is not JSON, or not one of these shapes, is rejected as a whole.

A ``/history`` dump larger than ``STREAM_THRESHOLD`` is read item by item
(``ObjectItems``) and written batch by batch, so memory does not grow with the dump.
Items are parsed by orjson where it reads exactly what ``json.load`` reads, else by
the standard library's own JSON scanner, so the items are exactly ``json.load``'s
(NaN, huge integers and lone surrogate escapes included). With worker processes, an
item is sent to them as its JSON text and parsed there. Damage found part-way (a
truncated download) is reported as an error for that file after the items before it
were imported.
"""

from __future__ import annotations

import codecs
import gc
import json
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from multiprocessing import get_context
from typing import Any, BinaryIO

import orjson

from . import write_queries
from .errors import InvalidDump, InvalidItem
from .normalize import IN_PROGRESS, PENDING, JobRecord, loads_exact, normalise_items, normalise_spans
from .rawcodec import Encoder, EncoderCell
from .services import IngestResult, JobsIndex
from .transfer import is_export_line, record_from_export

HISTORY, QUEUE, EXPORT = "history", "queue", "export"
QUEUE_KEYS = frozenset({"queue_running", "queue_pending"})
STREAM_THRESHOLD = 16 << 20  # larger dumps are read item by item (ObjectItems)


@dataclass
class Dump:
    """One parsed input: what kind it is and its items, not yet normalised."""

    name: str
    kind: str
    items: list[tuple[Any, Any, str]]  # (key, item, status) for queue; (id, item, '') history
    rejected: list[tuple[str, str]] = field(default_factory=list)
    exact: bool = False  # items parsed by orjson exactly (``normalize.loads_exact``)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def error(self) -> str | None:
        """Damage found while a streamed dump was read (after the items before it)."""
        return getattr(self.items, "error", None)


def detect(name: str, data: Any) -> Dump:
    """Classify parsed JSON as a /history or /queue dump."""
    if not isinstance(data, dict):
        raise InvalidDump(f"{name}: expected a JSON object from /history or /queue, got {type(data).__name__}")
    if data.keys() & QUEUE_KEYS:
        dump = Dump(name, QUEUE, [])
        for key, status in (("queue_running", IN_PROGRESS), ("queue_pending", PENDING)):
            items = data.get(key, [])
            if not isinstance(items, list):
                dump.rejected.append((key, f"{key} must be a list"))
                continue
            dump.items.extend((key, item, status) for item in items)
        return dump
    return Dump(name, HISTORY, [(job_id, item, "") for job_id, item in data.items()])


class ExportItems:
    """The items of a JSONL export, parsed lazily from the open stream:
    ``("line N", parsed line or InvalidItem, "")``. Its length is the number of
    lines when the stream can be rewound (for progress), else 1."""

    def __init__(self, stream: BinaryIO, first: Any) -> None:
        self._stream, self._first = stream, first
        self._length = 1
        if stream.seekable():
            start = stream.tell()
            self._length += sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
            stream.seek(start)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[tuple[str, Any, str]]:
        yield "line 1", self._first, ""
        for number, line in enumerate(self._stream, start=2):
            if not line.strip():
                continue
            try:
                yield f"line {number}", loads_exact(line)[0], ""
            except (ValueError, RecursionError) as exc:
                yield f"line {number}", InvalidItem(f"line {number}", f"not valid JSON ({exc})"), ""


_WHITESPACE = re.compile(rb"[ \t\n\r]*")
# A key without escapes or control characters (the usual kind): decoded directly.
_PLAIN_KEY = re.compile(rb'"([^"\\\x00-\x1f]*)"')
_PLAIN_PAIR_HEAD = re.compile(rb'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:')
# Where a /history item most likely ends: "}" then ", " and the next pair's key and
# an object that starts with "prompt" (ComfyUI's key order). A guess, checked by
# parsing exactly the bytes up to it: a JSON value is never a proper prefix of
# another, so the bytes parse as one value only if they are the whole value.
# Its groups: the next key's bytes and the next item's "{" (``ObjectItems._ahead``).
_NEXT_ITEM = re.compile(
    rb'\}[ \t\n\r]*,[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*(\{)[ \t\n\r]*"prompt"[ \t\n\r]*:'
)


class ObjectItems:
    """The ``(key, value)`` pairs of a top-level JSON object, read from a byte stream
    piece by piece: memory holds one item (and a read chunk), not the document.

    Values are exactly ``json.load``'s: a /history item's bytes are found by
    ``_NEXT_ITEM`` and parsed by ``normalize.loads_exact`` (orjson, when that is
    exact); anything else (the last item, another layout, NaN, huge integers, lone
    surrogates, damage) is decoded by ``json.JSONDecoder.raw_decode`` (the C scanner
    of ``json.loads``). A duplicated key yields both pairs in order (the importer
    keeps the last, as ``json.load`` does). UTF-8 only (with or without a BOM).
    Iteration stops at damage: ``error`` then says what and where, and ``count`` how
    many pairs came before it.
    """

    CHUNK = 1 << 20
    WINDOW = 1 << 16  # the least look-ahead for the end of an item

    def __init__(self, name: str, stream: BinaryIO, prefix: bytes = b"", *, resume: str | None = None) -> None:
        """``prefix``: the stream's first bytes, already read from it. ``resume``: the
        stream is positioned at the value of this key, inside the object
        (``_StreamedHistory.resume``)."""
        self.name, self._stream = name, stream
        self._json = json.JSONDecoder()
        self._window = self.WINDOW
        self.keep_values = True  # False: orjson's items are only checked, yielded as None
        # False (with keep_values False): an item whose end _NEXT_ITEM finds is not even
        # checked: its bytes are yielded as they are, for a worker to parse (and to
        # report, if they are not one JSON value: see ``_parallel_records``).
        self.verify = True
        self._buf = prefix
        self._pos = 0
        self._resume = resume
        # Where the buffer starts in the stream (None: the stream cannot seek back).
        self._origin: int | None = None
        try:
            if stream.seekable():
                self._origin = stream.tell() - len(prefix)
        except (OSError, ValueError):
            pass
        self.value_at: int | None = None  # where the last value yielded starts in the stream
        self._eof = False
        self.count = 0
        self.exception: Exception | None = None
        # (next key, position of its value) when the end of the last value was found
        # by ``_NEXT_ITEM``, which has read the "," and the key already.
        self._ahead: tuple[str, int] | None = None

    @property
    def rereadable(self) -> bool:
        """Can the stream be read again from a value (``value_at``)?"""
        return self._origin is not None

    @property
    def error(self) -> str | None:
        if self.exception is None:
            return None
        return (
            f"{self.name}: not valid JSON ({self.exception}) after {self.count} item(s); "
            "the items before it were imported"
        )

    def _more(self, at_least: int = 0) -> bool:
        """Append the next chunk to the buffer; False at the end of the stream."""
        if self._eof:
            return False
        data = self._stream.read(max(self.CHUNK, at_least))
        self._eof = not data
        self._buf += data
        return True

    def _skip_whitespace(self) -> None:
        while True:
            spaces = _WHITESPACE.match(self._buf, self._pos)
            assert spaces is not None  # "[ \t\n\r]*" matches anywhere, if only the empty string
            self._pos = spaces.end()
            if self._pos < len(self._buf) or not self._more():
                return

    def _text(self, at: int, end: int) -> str:
        """The buffer's bytes from ``at`` decoded, up to ``end`` or a whole character before."""
        return codecs.getincrementaldecoder("utf-8")("surrogatepass").decode(
            self._buf[at:end], final=end >= len(self._buf) and self._eof
        )

    def _error(self, message: str) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self._text(self._pos, self._pos + 64), 0)

    def _punctuation(self, allowed: bytes) -> int:
        self._skip_whitespace()
        char = self._buf[self._pos : self._pos + 1]
        if not char or char not in allowed:
            expected = " or ".join(repr(chr(c)) for c in allowed)
            raise self._error(f"Expecting {expected}")
        self._pos += 1
        return char[0]

    def _exact_value(self) -> Any:
        """The value at the position, by the standard library's scanner."""
        window = self.WINDOW
        while True:
            end = min(len(self._buf), self._pos + window)
            text = self._text(self._pos, end)
            try:
                value, stop = self._json.raw_decode(text)
            except json.JSONDecodeError as exc:
                # A value cut by the end of the text fails where the text ends (or,
                # for a string, where it starts): read on. Any other failure is damage.
                # Taking as much again as the value so far keeps re-parsing linear.
                cut = exc.pos >= len(text) - 64 or exc.msg.startswith("Unterminated string")
                if cut and (end < len(self._buf) or self._more(window)):
                    window *= 2
                    continue
                raise
            if stop > len(text) - 64 and (end < len(self._buf) or self._more(window)):
                window *= 2
                continue  # a number near the end of the text may go on after it
            self._pos += len(text[:stop].encode("utf-8", "surrogatepass"))
            return value

    def _key(self) -> str:
        self._skip_whitespace()
        if self._buf[self._pos : self._pos + 1] != b'"':
            raise self._error("Expecting property name enclosed in double quotes")
        match = _PLAIN_KEY.match(self._buf, self._pos)
        if match is not None:
            try:
                key = match.group(1).decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                self._pos = match.end()
                return key
        return self._exact_value()

    def _value(self) -> tuple[Any, bytes | None, bool]:
        """(value, its bytes when it was read by orjson, exact): see ``loads_exact``."""
        self._skip_whitespace()
        if self._pos > self.CHUNK:  # drop what was consumed (between values only)
            if self._origin is not None:
                self._origin += self._pos
            self._buf, self._pos = self._buf[self._pos :], 0
        start = self._pos
        self.value_at = None if self._origin is None else self._origin + start
        if self._buf[start : start + 1] == b"{":
            # Look as far as twice the previous value's length: enough for the items of
            # a dump, and a dump of another shape costs little and does not read ahead.
            limit = start + self._window
            if limit > len(self._buf):
                self._more(limit - len(self._buf))
            match = _NEXT_ITEM.search(self._buf, start + 1, limit)
            if match is not None:
                end = match.start() + 1
                span = self._buf[start:end]
                try:
                    if self.keep_values:
                        value, exact = loads_exact(span)
                    else:  # only its bytes are wanted: check that they are the whole item
                        if self.verify:
                            orjson.loads(span)
                        value, exact = None, False
                except (ValueError, RecursionError):
                    pass  # not where it ends, or not for orjson: read it exactly
                else:
                    self._pos = end
                    self._window = max(self.WINDOW, 2 * (end - start))
                    try:
                        self._ahead = (match.group(1).decode("utf-8"), match.start(2))
                    except UnicodeDecodeError:
                        pass  # read again by ``_key``
                    return value, span, exact
        value = self._exact_value()
        self._window = max(self.WINDOW, 2 * (self._pos - start))
        return value, None, False

    def _pairs(self) -> Iterator[tuple[str, Any, bytes | None, bool]]:
        key = self._resume
        if key is None:
            while len(self._buf) < 3 and self._more():
                pass
            if self._buf.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as json.load allows
                self._pos = 3
            self._punctuation(b"{")
            self._skip_whitespace()
        if key is None and self._buf.startswith(b"}", self._pos):
            self._pos += 1
        else:
            while True:
                if key is None:
                    head = _PLAIN_PAIR_HEAD.match(self._buf, self._pos)
                    try:
                        key = head.group(1).decode("utf-8") if head is not None else None
                    except UnicodeDecodeError:
                        key = None
                    if key is None:
                        key = self._key()
                        self._punctuation(b":")
                    elif head is not None:  # always, when it gave the key
                        self._pos = head.end()
                yield (key, *self._value())
                key = None
                while self._ahead is not None:  # the usual /history dump: item after item
                    next_key, self._pos = self._ahead
                    self._ahead = None
                    yield (next_key, *self._value())
                if self._punctuation(b",}") == 0x7D:
                    break
        self._skip_whitespace()
        if self._pos < len(self._buf):
            raise self._error("Extra data")

    def spans(self) -> Iterator[tuple[str, Any, bytes | None, bool]]:
        """``(key, value, bytes, exact)``: ``bytes`` is the value's JSON when orjson read
        it (None otherwise) and ``exact`` says it is an exact value (``loads_exact``).
        Up to the end or to the first damage (then ``error`` is set)."""
        try:
            for pair in self._pairs():
                self.count += 1
                yield pair
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            self.exception = exc

    def pairs(self) -> Iterator[tuple[str, Any]]:
        """The pairs, up to the end or to the first damage (then ``error`` is set)."""
        for key, value, _, _ in self.spans():
            yield key, value


def read_dump(name: str, stream: BinaryIO) -> Dump:
    """Parse one input file (``name`` is only used in messages). A JSONL export is
    recognised by its first line and left to be read while it is imported; so is a
    /history dump larger than STREAM_THRESHOLD."""
    first = stream.readline(STREAM_THRESHOLD)
    head, exact = None, False
    if first.endswith(b"\n") or len(first) < STREAM_THRESHOLD:  # a whole first line
        try:
            head, exact = loads_exact(first) if first.strip() else (None, False)
        except (ValueError, RecursionError):
            head = None  # the first line is not a whole document (e.g. indented JSON)
        if is_export_line(head):
            return Dump(name, EXPORT, ExportItems(stream, head))  # type: ignore[arg-type]  # iterated once, not a list
    rest = stream.read(STREAM_THRESHOLD + 1 - len(first)) if len(first) <= STREAM_THRESHOLD else b""
    if len(first) + len(rest) > STREAM_THRESHOLD and first.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return _large_object_dump(name, stream, first + rest)
    rest += stream.read()
    if head is None or rest.strip():
        try:
            head, exact = loads_exact(first + rest)
        except (ValueError, RecursionError) as exc:
            raise InvalidDump(f"{name}: not valid JSON ({exc})") from exc
    dump = detect(name, head)
    dump.exact = exact
    return dump


def _large_object_dump(name: str, stream: BinaryIO, prefix: bytes) -> Dump:
    """A large JSON object: a /history dump, streamed; a /queue dump (its first key
    says so) is collected and classified by ``detect`` like a small one."""
    items = ObjectItems(name, stream, prefix)
    entries = items.spans()
    first = next(entries, None)
    if first is not None and first[0] in QUEUE_KEYS:
        data = {key: value for key, value, _, _ in [first, *entries]}
    else:
        data = {}
    if items.exception is not None:  # nothing was imported yet: reject the file as a whole
        raise InvalidDump(f"{name}: not valid JSON ({items.exception})")
    if first is None or first[0] in QUEUE_KEYS:
        return detect(name, data)
    return Dump(name, HISTORY, _StreamedHistory(items, first, entries))  # type: ignore[arg-type]  # iterated once


Entry = tuple[str, Any, "bytes | None", bool]  # ObjectItems.spans(): (key, value, its JSON, exact)


class _StreamedHistory:
    """The items of a streamed /history dump, for ``records``."""

    def __init__(self, items: ObjectItems, first: Entry, rest: Iterator[Entry]) -> None:
        self._items, self._rest = items, rest
        self._first: Entry | None = first

    def __len__(self) -> int:
        return 0  # unknown until read

    @property
    def error(self) -> str | None:
        return self._items.error

    def keep_values(self, keep: bool) -> None:
        """False: the items orjson reads are yielded with value None (their text only)."""
        self._items.keep_values = keep

    def unchecked(self) -> bool:
        """Let the items whose end ``_NEXT_ITEM`` finds go unchecked (``ObjectItems.verify``),
        if the stream can be read again from an item (``resume``). Says whether it does."""
        self._items.verify = not (self._items.rereadable and not self._items.keep_values)
        return not self._items.verify

    @property
    def value_at(self) -> int | None:
        return self._items.value_at

    def resume(self, at: int, key: str, count: int) -> None:
        """Read on from the value of ``key`` at stream offset ``at`` (the ``count``-th
        item), checking every item from there."""
        stream = self._items._stream
        stream.seek(at)
        reader = ObjectItems(self._items.name, stream, resume=key)
        reader.keep_values, reader.count = False, count
        self._items, self._first, self._rest = reader, None, reader.spans()

    def entries(self) -> Iterator[Entry]:
        if self._first is not None:
            yield self._first
        yield from self._rest

    def __iter__(self) -> Iterator[tuple[str, Any, str]]:
        for key, item, _, _ in self.entries():
            yield key, item, ""


def open_input(path: str) -> tuple[str, BinaryIO]:
    if path == "-":
        return "<stdin>", sys.stdin.buffer
    try:
        return path, open(path, "rb")
    except OSError as exc:
        raise InvalidDump(f"{path}: cannot read ({exc.strerror})") from exc


PARALLEL_MIN_ITEMS = 2000  # smaller dumps are normalised in this process
CHUNK_ITEMS = 250  # items per task sent to a normalising worker
# Items of a streamed dump normalised at a time in this process: parsed items kept
# alive in a chunk are walked by every garbage collector pass (250 cost 272 us/job
# of CPU against 198 for 25, on a 20k-job dump).
STREAM_CHUNK_ITEMS = 25
# Items a writer of batches of N lets the workers run ahead of it: 2 N (at most
# MAX_AHEAD_ITEMS), so they keep normalising while it writes a batch (with a few
# chunks only, a worker idled through each batch's SQL and the writer then waited
# for the next batch: ~1.1 of 2 cores busy).
MAX_AHEAD_ITEMS = 40_000


def ahead_chunks(workers: int, batch_size: int) -> int:
    """Chunks of CHUNK_ITEMS in flight at most, for a writer of batches of ``batch_size``."""
    return max(workers * 4, min(2 * batch_size, MAX_AHEAD_ITEMS) // CHUNK_ITEMS)


def default_workers(dialect: str = "") -> int:
    """Normalising processes for a large import: all cores but the writer's. Into
    SQLite or PostgreSQL (``dialect``), with two cores or more: one per core. There
    the writer needs a fraction of a core while the rows go in (the workers build
    them: ``write_queries.Prepared``, ``CopyRows``; into PostgreSQL ~17 us of CPU a
    job against a worker's ~85), so with one worker fewer it waited for them; the
    extra one takes up the writer's slack (and the server's: at 1M on 2 CPUs, one
    worker 2,567 jobs/s, two 4,410, load 7-10, ``results/pg-import-1000000-i16pgc*.md``)."""
    cores = os.cpu_count() or 1
    if dialect in ("sqlite", "postgresql") and cores >= 2:
        return cores
    return max(0, cores - 1)


def records(
    dump: Dump,
    rejected: list[tuple[str, str]],
    progress: Callable[[int], None] | None = None,
    *,
    workers: int = 0,
    cell: EncoderCell | None = None,
    batch_size: int = 0,
) -> Iterator[write_queries.BulkItem]:
    """Normalise a dump's items, in order; failures go to ``rejected`` as (id, reason).

    With ``workers`` > 0 a large /history dump is normalised by that many other
    processes (JSON and compression are CPU-bound) while this one writes: a pipeline
    over the cores (``jobs-index import`` uses ``default_workers()``). ``cell``: the
    raw encoder to use, read for each chunk (``JobsIndex.ingest`` sets it); with
    ``cell.prepare`` (a bulk load), a streamed dump's chunks come as the rows the
    writer inserts (``write_queries.Prepared``, ``CopyRows``), one item each. ``batch_size``:
    the writer's, to let the workers run ahead of it (``ahead_chunks``).
    """
    cell = cell or EncoderCell()
    large = dump.kind == HISTORY and (len(dump) == 0 or len(dump) >= PARALLEL_MIN_ITEMS)
    if dump.kind == EXPORT:
        yield from _export_records(dump, rejected, progress, cell)
    elif workers > 0 and large:
        yield from _parallel_records(dump, rejected, progress, workers, cell, ahead_chunks(workers, batch_size))
    else:
        for chunk, exact in _chunks(dump, CHUNK_ITEMS if isinstance(dump.items, list) else STREAM_CHUNK_ITEMS):
            done, failed = normalise_items(dump.kind, chunk, exact, cell.encoder)
            rejected.extend(failed)
            yield from done
            if progress is not None:
                progress(len(chunk))


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _chunks(dump: Dump, size: int) -> Iterator[tuple[list, bool]]:
    """``(key, item, status)`` chunks of a dump for ``normalise_items``, with the
    ``exact`` flag of the chunk. (With workers, a streamed dump's items go to them as
    their JSON texts instead: ``_streamed_pipeline``.)"""
    if not isinstance(dump.items, _StreamedHistory):
        for chunk in _chunked(dump.items, size):
            yield chunk, dump.exact
        return
    for entries in _chunked(dump.items.entries(), size):
        yield [(key, value, "") for key, value, _, _ in entries], all(exact for *_, exact in entries)


def _prepared_spans(
    kind: str,
    items: list[tuple[Any, Any, str]],
    unchecked: bool,
    encoder: Encoder,
    source: str | None,
    prepare: Callable[[list[JobRecord], str | None], Any],
) -> tuple[Any, list[tuple[str, str]], int | None]:
    """``normalise_spans``, its records turned into the rows a bulk load writes by
    ``prepare`` (``EncoderCell.prepare``: SQLite's ``write_queries.prepare``,
    PostgreSQL's ``prepare_copy``): the writer's per-job work, done here."""
    records, rejected, stopped = normalise_spans(kind, items, unchecked, encoder)
    return prepare(records, source), rejected, stopped


def _records_again(
    kind: str, items: list[tuple[Any, Any, str]], encoder: Encoder, source: str | None
) -> list[JobRecord]:
    """The records a worker made of ``items`` (their failures it reported already),
    made again in this process: ``write_queries.CopyRows.redo``."""
    records = normalise_spans(kind, items, False, encoder)[0]
    if source is not None:
        for record in records:
            record.source = source
    return records


def _worker_start() -> None:
    """A normalising worker makes no reference cycles (JSON trees, records): the cyclic
    garbage collector, which each parsed item wakes, is off there."""
    gc.disable()


def _parallel_records(
    dump: Dump,
    rejected: list[tuple[str, str]],
    progress: Callable[[int], None] | None,
    workers: int,
    cell: EncoderCell,
    ahead: int,
) -> Iterator[write_queries.BulkItem]:
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_start) as pool:
        if isinstance(dump.items, _StreamedHistory):
            # A streamed dump from a file: the items are cut by ``_NEXT_ITEM`` without
            # being parsed here (this process also writes; the workers parse them
            # anyway). Should one not be a JSON value (the guess was wrong: an inner
            # '}, "k": {"prompt":'), its worker says so, the items from it on are
            # dropped, and the file is read again from that item, every item checked.
            streamed = dump.items
            streamed.keep_values(False)
            unchecked, index = streamed.unchecked(), 0
            while True:
                resume = yield from _streamed_pipeline(
                    pool, workers, ahead, dump, rejected, progress, unchecked, index, cell
                )
                if resume is None:
                    return
                at, key, index = resume
                streamed.resume(at, key, index)
                unchecked = False
        in_flight: deque = deque()

        def drain():
            size, future = in_flight.popleft()
            done, failed = future.result()
            rejected.extend(failed)
            if progress is not None:
                progress(size)
            return done

        for chunk, exact in _chunks(dump, CHUNK_ITEMS):
            in_flight.append((len(chunk), pool.submit(normalise_items, dump.kind, chunk, exact, cell.encoder)))
            if len(in_flight) > ahead:  # bounded: memory holds a few chunks, not the dump
                yield from drain()
        while in_flight:
            yield from drain()


def _streamed_pipeline(
    pool: ProcessPoolExecutor,
    workers: int,
    ahead: int,
    dump: Dump,
    rejected: list[tuple[str, str]],
    progress: Callable[[int], None] | None,
    unchecked: bool,
    index: int,
    cell: EncoderCell,
) -> Generator[write_queries.BulkItem, None, tuple[int, str, int] | None]:
    """The records of a streamed /history dump's items from the ``index``-th on, in
    order. Returns None at the end, or (stream offset, key, index) of an unchecked
    item that is not a JSON value, to read again from there. An item orjson can read
    goes to the workers as its JSON text: pickling the bytes costs nearly nothing,
    pickling the parsed item more than parsing it again."""
    streamed = dump.items
    assert isinstance(streamed, _StreamedHistory)
    in_flight: deque = deque()

    few = workers * 4

    def submit(chunk: list[tuple[str, Any, str]]) -> Future:
        if cell.prepare is not None:  # a bulk load: the rows it writes
            return pool.submit(_prepared_spans, dump.kind, chunk, unchecked, cell.encoder, cell.source, cell.prepare)
        return pool.submit(normalise_spans, dump.kind, chunk, unchecked, cell.encoder)

    def drain() -> tuple[list, tuple[int, str, int] | None]:
        first, chunk, starts, future = in_flight.popleft()
        done, failed, stopped = future.result()
        rejected.extend(failed)
        if progress is not None:
            progress(len(chunk) if stopped is None else stopped)
        if isinstance(done, write_queries.CopyRows):  # its records, should the writer need them
            done.redo = partial(_records_again, dump.kind, chunk[:stopped], cell.encoder, cell.source)
        if isinstance(done, write_queries.Prepared):  # the chunk's rows: one item
            done = [done] if len(done) else []
        elif isinstance(done, write_queries.CopyRows):
            done = [done] if len(done) or done.late else []
        if stopped is None:
            return done, None
        for *_, later in in_flight:
            later.cancel()
        in_flight.clear()
        return done, (starts[stopped], chunk[stopped][0], first + stopped)

    chunk: list[tuple[str, Any, str]] = []
    starts: list[int | None] = []
    for key, value, text, _ in streamed.entries():
        chunk.append((key, value if text is None else text, ""))
        starts.append(streamed.value_at)
        if len(chunk) < CHUNK_ITEMS:
            continue
        in_flight.append((index, chunk, starts, submit(chunk)))
        index += len(chunk)
        chunk, starts = [], []
        # Bounded: memory holds a few batches, not the dump. Until the chunks go as rows
        # (a bulk load, once its raw dictionary is trained), a few chunks only.
        if len(in_flight) > (ahead if cell.prepare is not None else few):
            done, resume = drain()
            yield from done
            if resume is not None:
                return resume
    if chunk:
        in_flight.append((index, chunk, starts, submit(chunk)))
    while in_flight:
        done, resume = drain()
        yield from done
        if resume is not None:
            return resume
    return None


def _export_records(
    dump: Dump, rejected: list[tuple[str, str]], progress: Callable[[int], None] | None, cell: EncoderCell
) -> Iterator[JobRecord]:
    for key, item, _ in dump.items:
        try:
            if isinstance(item, InvalidItem):
                raise item
            yield record_from_export(key, item, cell.encoder)
        except InvalidItem as exc:
            rejected.append((str(exc.job_id), exc.reason))
        except (TypeError, ValueError, RecursionError) as exc:  # unserialisable or absurd data
            rejected.append((str(key), f"cannot store item: {exc}"))
        if progress is not None:
            progress(1)


def live_ids(dump: Dump) -> set[str]:
    """Every id a queue dump names, even of items rejected as malformed (kept, not removed)."""
    ids = set()
    for _key, item, _ in dump.items:
        if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
            ids.add(item[1])
    return ids


def import_dump(
    index: JobsIndex,
    dump: Dump,
    *,
    source: str | None = None,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    bulk: bool = False,
) -> IngestResult:
    """Write one dump; a queue dump then reconciles the live rows of ``source``.
    ``workers``: normalising processes for a large dump (see ``records``);
    ``bulk``: load it in one transaction if the index is empty (``JobsIndex.bulk_load``)."""
    rejected: list[tuple[str, str]] = list(dump.rejected)
    cell = EncoderCell()  # the index's raw encoder, for the normalising code
    result = index.ingest(
        records(dump, rejected, progress, workers=workers, cell=cell, batch_size=batch_size),
        source=source,
        batch_size=batch_size,
        bulk=bulk,
        cell=cell,
    )
    if dump.kind == QUEUE and not any(key in QUEUE_KEYS for key, _ in dump.rejected):
        result.removed += index.reconcile_live(live_ids(dump), source=source)
    result.rejected.extend(rejected)
    return result


def import_paths(
    index: JobsIndex,
    paths: Iterable[str],
    *,
    source: str | None = None,
    batch_size: int = 1000,
    on_dump: Callable[[Dump], Callable[[int], None] | None] | None = None,
    workers: int = 0,
    bulk: bool = False,
) -> tuple[IngestResult, list[str]]:
    """Import files in order. Returns the summed result and the per-file errors.

    The cyclic garbage collector is paused meanwhile (and runs once after): parsed
    items, records and rows make no reference cycles, but each one allocated wakes
    it, and its passes over the batch in memory cost the writer ~10 us per job."""
    with _collector_paused():
        return _import_paths(
            index, paths, source=source, batch_size=batch_size, on_dump=on_dump, workers=workers, bulk=bulk
        )


@contextmanager
def _collector_paused() -> Iterator[None]:
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _import_paths(
    index: JobsIndex,
    paths: Iterable[str],
    *,
    source: str | None,
    batch_size: int,
    on_dump: Callable[[Dump], Callable[[int], None] | None] | None,
    workers: int,
    bulk: bool,
) -> tuple[IngestResult, list[str]]:
    total, errors = IngestResult(), []
    for path in paths:
        try:
            name, stream = open_input(path)
        except InvalidDump as exc:
            errors.append(exc.message)
            continue
        # The file stays open while it is imported: a JSONL export is read as it goes.
        with stream if path != "-" else nullcontext(stream):
            try:
                dump = read_dump(name, stream)
            except InvalidDump as exc:
                errors.append(exc.message)
                continue
            progress = on_dump(dump) if on_dump else None
            total.add(
                import_dump(
                    index, dump, source=source, batch_size=batch_size, progress=progress, workers=workers, bulk=bulk
                )
            )
            if dump.error:
                errors.append(dump.error)
    return total, errors
