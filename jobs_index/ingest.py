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
"""
from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .errors import InvalidDump, InvalidItem
from .normalize import IN_PROGRESS, PENDING, JobRecord, from_history, from_queue
from .services import IngestResult, JobsIndex
from .transfer import is_export_line, record_from_export

HISTORY, QUEUE, EXPORT = "history", "queue", "export"
QUEUE_KEYS = frozenset({"queue_running", "queue_pending"})


@dataclass
class Dump:
    """One parsed input: what kind it is and its items, not yet normalised."""

    name: str
    kind: str
    items: list[tuple[Any, Any, str]]  # (key, item, status) for queue; (id, item, '') history
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


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
                yield f"line {number}", json.loads(line), ""
            except (ValueError, RecursionError) as exc:
                yield f"line {number}", InvalidItem(f"line {number}", f"not valid JSON ({exc})"), ""


def read_dump(name: str, stream: BinaryIO) -> Dump:
    """Parse one input file (``name`` is only used in messages). A JSONL export is
    recognised by its first line and left to be read while it is imported."""
    first = stream.readline()
    try:
        head = json.loads(first) if first.strip() else None
    except (ValueError, RecursionError):
        head = None  # the first line is not a whole document (e.g. indented JSON)
    if is_export_line(head):
        return Dump(name, EXPORT, ExportItems(stream, head))  # type: ignore[arg-type]
    rest = stream.read()
    if head is not None and not rest.strip():
        return detect(name, head)
    try:
        data = json.loads(first + rest)
    except (ValueError, RecursionError) as exc:
        raise InvalidDump(f"{name}: not valid JSON ({exc})") from exc
    return detect(name, data)


def open_input(path: str) -> tuple[str, BinaryIO]:
    if path == "-":
        return "<stdin>", sys.stdin.buffer
    try:
        return path, open(path, "rb")
    except OSError as exc:
        raise InvalidDump(f"{path}: cannot read ({exc.strerror})") from exc


def _item_id(key: Any, item: Any) -> str:
    if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
        return item[1]
    return str(key)


def records(dump: Dump, rejected: list[tuple[str, str]],
            progress: Callable[[int], None] | None = None) -> Iterator[JobRecord]:
    """Normalise a dump's items; failures go to ``rejected`` as (id, reason)."""
    for key, item, status in dump.items:
        try:
            if dump.kind == QUEUE:
                yield from_queue(item, status)
            elif dump.kind == EXPORT:
                if isinstance(item, InvalidItem):
                    raise item
                yield record_from_export(key, item)
            else:
                yield from_history(key, item)
        except InvalidItem as exc:
            rejected.append((str(exc.job_id), exc.reason))
        except (TypeError, ValueError, RecursionError) as exc:  # unserialisable or absurd data
            rejected.append((_item_id(key, item), f"cannot store item: {exc}"))
        if progress is not None:
            progress(1)


def live_ids(dump: Dump) -> set[str]:
    """Every id a queue dump names, even of items rejected as malformed (kept, not removed)."""
    ids = set()
    for key, item, _ in dump.items:
        if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
            ids.add(item[1])
    return ids


def import_dump(index: JobsIndex, dump: Dump, *, source: str | None = None,
                batch_size: int = 1000, progress: Callable[[int], None] | None = None) -> IngestResult:
    """Write one dump; a queue dump then reconciles the live rows of ``source``."""
    rejected: list[tuple[str, str]] = list(dump.rejected)
    result = index.ingest(records(dump, rejected, progress), source=source, batch_size=batch_size)
    if dump.kind == QUEUE and not any(key in QUEUE_KEYS for key, _ in dump.rejected):
        result.removed += index.reconcile_live(live_ids(dump), source=source)
    result.rejected.extend(rejected)
    return result


def import_paths(index: JobsIndex, paths: Iterable[str], *, source: str | None = None,
                 batch_size: int = 1000, on_dump: Callable[[Dump], Callable[[int], None] | None] | None = None,
                 ) -> tuple[IngestResult, list[str]]:
    """Import files in order. Returns the summed result and the per-file errors."""
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
            total.add(import_dump(index, dump, source=source, batch_size=batch_size, progress=progress))
    return total, errors
