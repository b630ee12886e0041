"""Turn ComfyUI history and queue items into job rows, and rows back into job dicts.

This module is pure (no database, no I/O). It reimplements the behaviour of
ComfyUI's ``comfy_execution/jobs.py`` (see ``CONTRACT.md``):

* ``from_history`` / ``from_queue`` validate one raw item and compute the columns of
  its row (``JobRecord``), including the compressed, lossless raw item;
* ``list_dict`` builds the ``GET /api/jobs`` dict from a row's columns;
* ``detail_dict`` adds the detail fields, re-derived from the raw item.

Where ComfyUI itself would raise on malformed data, we normalise defensively and
keep the job; each such choice is marked "defensive" below. An item whose shape
makes it meaningless (no prompt tuple, no string id, a queue number that is not a
number) is rejected with ``InvalidItem``.

Queue numbers are kept exactly as ComfyUI holds them (``POST /prompt`` with
``"number"`` stores ``float(number)``): ``priority`` is the number for SQL and
``priority_json`` its JSON text as ComfyUI's ``json.dumps`` writes it (``4.0``,
``2.5``, ``NaN``, ``Infinity``), None for a 64-bit integer (``priority`` says it).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Any, overload

import orjson

from . import rawcodec
from .errors import InvalidItem
from .rawcodec import ZLIB, Encoder
from .search import Document, document

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = ("pending", "in_progress", "completed", "failed", "cancelled")

# How far a job has come; a newer stage replaces an older one on re-ingest.
STAGE_PENDING, STAGE_RUNNING, STAGE_HISTORY = 0, 1, 2
KIND_HISTORY, KIND_QUEUE = "history", "queue"

PREVIEWABLE_MEDIA_TYPES = frozenset({"images", "video", "audio", "3d", "text"})
THREE_D_EXTENSIONS = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
TEXT_PREVIEW_MAX_LENGTH = 1024
# BIGINT range: integers outside it cannot be stored in a column (raw keeps them).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class JobRecord:
    """The columns of one ``jobs`` row (see ``schema.Job``)."""

    id: str
    status: str
    stage: int
    # the queue number for SQL (see ``priority_of``); check.py puts PostgreSQL's numeric
    # here, a Decimal, to compare it with the stored one (``write_queries.pg_priority``)
    priority: int | float | str | Decimal
    create_time: int  # the sort key: ComfyUI's ``create_time or 0``
    create_time_missing: bool
    execution_start_time: int | None
    execution_end_time: int | None
    execution_duration: int
    outputs_count: int
    preview_output: str | None  # JSON text
    execution_error: str | None  # JSON text of the execution_error event
    error_type: str | None
    error_message: str | None
    error_node_id: str | None
    error_node_type: str | None
    workflow_id: str | None
    raw_kind: str
    raw: bytes  # compressed JSON of the ComfyUI item, sensitive data removed (``rawcodec``)
    raw_digest: str
    # The queue number's JSON text when it is not a 64-bit integer (None: ``priority``).
    priority_json: str | None = None
    source: str | None = None
    # Rows of the side tables ``job_outputs`` / ``job_search`` (not ``jobs`` columns).
    output_files: list[dict] = field(default_factory=list)
    search: Document | None = None  # the search document (``search.document``)
    raw_dict_id: int | None = None  # the dictionary ``raw`` is compressed with (None: zlib)

    def as_row(self) -> dict[str, Any]:
        """The ``jobs`` row (side-table rows excluded)."""
        return dict(zip(_ROW_FIELDS, _row_values(self), strict=True))

    def __reduce__(self):
        # Pickled between import processes: a plain tuple of the fields, rebuilt by
        # the constructor (several times cheaper than the dataclass's generic state).
        return JobRecord, _all_values(self)


_SIDE_TABLE_FIELDS = frozenset({"output_files", "search"})
_ROW_FIELDS = tuple(name for name in JobRecord.__slots__ if name not in _SIDE_TABLE_FIELDS)
_row_values = attrgetter(*_ROW_FIELDS)
_all_values = attrgetter(*JobRecord.__slots__)


# -- text columns that keep a value exactly ---------------------------------------
#
# PostgreSQL text cannot hold NUL, and every engine stores what every other stores:
# ``jobs.id`` and ``jobs.workflow_id`` (the columns a job is answered and filtered by)
# hold a NUL as "\x01\x01" and a "\x01" as "\x01\x02", on every engine. The mapping
# keeps code point order (ids sort as ComfyUI sorts them), leaves any other string
# unchanged, and is undone for every answer (``column_text`` / ``answer_text``; in SQL,
# ``queries._job_json_sql``). ``raw`` keeps the item itself, NUL included.


@overload
def column_text(value: str) -> str: ...
@overload
def column_text(value: None) -> None: ...
def column_text(value: str | None) -> str | None:
    """A job id or workflow id as its column stores it (no NUL)."""
    if value is None or ("\x00" not in value and "\x01" not in value):
        return value
    return value.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")


@overload
def answer_text(value: str) -> str: ...
@overload
def answer_text(value: None) -> None: ...
def answer_text(value: str | None) -> str | None:
    """The inverse of ``column_text``: the value ComfyUI answers with."""
    if value is None or "\x01" not in value:
        return value
    # Left to right, "\x01" always starts a pair: NUL pairs first, then the rest.
    return value.replace("\x01\x01", "\x00").replace("\x01\x02", "\x01")


# -- small defensive helpers -------------------------------------------------


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_int(value: Any) -> int | None:
    """An integer (an integral float counts; bool does not), else None (defensive)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return _as_int(int(value))
    return None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# orjson hands these to ``default`` (there is none: it raises) instead of writing
# them its own way (a datetime as a string, a str/int/dict/list subclass as its base):
# such values take the standard library's path, which keeps today's verdict on them.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def json_bytes(value: Any, exact: bool = False) -> bytes:
    """Compact UTF-8 JSON of ``value`` that ``json.loads`` reads back as ``value``:
    the canonical text of the JSON value ``value`` stands for, so its digest is the
    same whatever Python types held it (a tuple or a list, a subclass or its base
    type, an int key or its string) and whichever encoder wrote the JSON it came from.

    orjson writes it where that is exact; otherwise (a tuple, a non-string key, a
    subclass, or a value orjson cannot write) the value is written by the standard
    library, read back (the plain JSON value: lists, string keys, base types) and
    that is written by orjson if orjson writes it exactly. What orjson cannot write
    (NaN and infinities, which it would write as ``null``; integers beyond 64 bits;
    lone surrogates; nesting deeper than 255) keeps the standard library's text,
    which then depends only on the value too. ``exact=True`` says ``value`` came from
    ``orjson.loads`` of text without an integer literal of 19 or more digits
    (``orjson_exact``): only JSON types, finite floats and 64-bit integers, so
    orjson's text needs no check. Otherwise orjson's text is read back and kept only
    if it equals ``value`` (a NaN never equals; a tuple never equals its list).
    The two writers differ only in the form of some floats (``1e-05`` vs
    ``0.00001``, ``1e-07`` vs ``1e-7``): without the second step a job held in
    ComfyUI's memory (tuples) and the same job read from ``/history`` (lists) would
    get two digests.
    """
    data = _orjson_checked(value, exact)
    if data is not None:
        return data
    text = _dumps(value).encode("utf-8")
    plain, plain_exact = loads_exact(text)
    data = _orjson_checked(plain, plain_exact)
    return text if data is None else data


def _orjson_checked(value: Any, exact: bool) -> bytes | None:
    """orjson's text of ``value`` if it reads back as ``value`` (always, if ``exact``)."""
    try:
        data = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return None
    if exact or orjson.loads(data) == value:
        return data
    return None


def json_text(value: Any, exact: bool = False) -> str:
    """``json_bytes`` as a string (for the JSON text columns)."""
    return json_bytes(value, exact).decode("utf-8")


# Digits become "9", every other byte a space: a run of 19 nines is a number literal
# orjson may have read as a float (it keeps integers only up to 64 bits).
_DIGIT_RUNS = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"9" * 19


def orjson_exact(text: bytes) -> bool:
    """Does ``orjson.loads(text)`` (when it succeeds) equal ``json.loads(text)``?

    orjson refuses what it cannot read exactly (NaN/Infinity tokens, numbers beyond
    a float's range, lone surrogates, invalid UTF-8), with one exception: an integer
    beyond 64 bits becomes a float. Any such literal has 19+ digits in a row.
    """
    return _LONG_RUN not in text.translate(_DIGIT_RUNS)


def loads_exact(text: bytes) -> tuple[Any, bool]:
    """``json.loads(text)`` and whether it is an ``exact`` value (see ``json_bytes``):
    orjson when it reads it exactly, else the standard library."""
    if orjson_exact(text):
        try:
            return orjson.loads(text), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(text), False


def encode_raw(item: Any, exact: bool = False, encoder: Encoder = ZLIB) -> tuple[bytes, str]:
    """Compress an item losslessly; return (blob, digest of the uncompressed JSON).

    The blob is ``encoder``'s (``rawcodec``: zlib, or zstd with the index's
    dictionary); ``exact`` as in ``json_bytes``.
    """
    data = json_bytes(item, exact)
    return encoder.encode(data), hashlib.blake2b(data, digest_size=16).hexdigest()


# -- metadata shared by queue and history items -------------------------------


def _prompt_tuple(job_id: Any, prompt: Any) -> list:
    if not isinstance(prompt, (list, tuple)) or len(prompt) < 5:
        raise InvalidItem(job_id, "prompt must be a list [number, prompt_id, prompt, extra_data, outputs_to_execute]")
    # The sixth element (sensitive extra data such as API keys) is never kept.
    return list(prompt[:5])


def priority_of(job_id: str, number: Any) -> tuple[int | float | str, str | None]:
    """``(priority, priority_json)`` of a queue number, exactly as ComfyUI holds it.

    An int stays an int and a float a float (``float(number)`` is what ``POST /prompt``
    stores for a client's ``"number"``: ``4.0``, ``2.5``, ``nan``, ``inf``).
    ``priority_json`` is the number as ComfyUI's ``json.dumps`` writes it (``4.0``,
    ``NaN``, ``Infinity``, a 30-digit int), None when it is an integer that fits
    ``priority`` (64 bits). ``priority`` is the SQL value: the number, a float for an
    integer beyond 64 bits, the text ``'NaN'`` for a NaN. Anything that is not a number (a string, a bool, null)
    is rejected: ComfyUI always stores an int or a float.
    """
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise InvalidItem(job_id, f"queue number must be a number, got {number!r}")
    if isinstance(number, int):
        number = int(number)  # an int subclass is stored as the int it is
        if _INT64_MIN <= number <= _INT64_MAX:
            return number, None
        try:
            value = float(number)
        except OverflowError:
            value = math.copysign(math.inf, number)
        return value, str(number)
    number = float(number)
    # SQLite turns a NaN into NULL (and the column is NOT NULL): it is stored as the
    # text 'NaN', which SQLite orders after every number, as PostgreSQL orders NaN.
    return ("NaN" if number != number else number), json.dumps(number)


def _check_id(job_id: Any) -> str:
    """Any string is a prompt id ComfyUI can list (``str(json["prompt_id"])``; the
    empty string and ids longer than a cursor can carry included)."""
    if not isinstance(job_id, str):
        raise InvalidItem(job_id, "prompt id must be a string")
    return job_id


def _metadata(extra_data: Any) -> tuple[int | None, str | None]:
    """create_time and workflow id from extra_data (defensive: any level may be missing)."""
    extra = _as_dict(extra_data)
    workflow = _as_dict(_as_dict(extra.get("extra_pnginfo")).get("workflow"))
    return _as_int(extra.get("create_time")), _as_str(workflow.get("id"))


def _base_record(
    job_id: str,
    status: str,
    stage: int,
    number: Any,
    create_time: int | None,
    workflow_id: str | None,
    raw_kind: str,
    raw_item: Any,
    exact: bool = False,
    encoder: Encoder = ZLIB,
) -> JobRecord:
    priority, priority_json = priority_of(job_id, number)
    raw, digest = encode_raw(raw_item, exact, encoder)
    return JobRecord(
        job_id,
        status,
        stage,
        priority,
        create_time or 0,
        create_time is None,
        None,
        None,
        0,
        0,
        None,
        None,
        None,
        None,
        None,
        None,
        workflow_id,
        raw_kind,
        raw,
        digest,
        priority_json,
        raw_dict_id=encoder.dict_id,
    )


def from_queue(item: Any, status: str, exact: bool = False, encoder: Encoder = ZLIB) -> JobRecord:
    """A running (``in_progress``) or ``pending`` queue item → row.
    ``exact``: the item came from ``loads_exact`` (see ``json_bytes``); ``encoder``
    writes ``raw`` (``rawcodec``)."""
    job_id = _check_id(item[1] if isinstance(item, (list, tuple)) and len(item) > 1 else None)
    number, _, _, extra_data, _ = prompt = _prompt_tuple(job_id, item)
    create_time, workflow_id = _metadata(extra_data)
    stage = STAGE_RUNNING if status == IN_PROGRESS else STAGE_PENDING
    record = _base_record(job_id, status, stage, number, create_time, workflow_id, KIND_QUEUE, prompt, exact, encoder)
    record.search = document(KIND_QUEUE, prompt)
    return record


# -- history items -----------------------------------------------------------


def _execution_events(status_info: Any) -> tuple[int | None, int | None, dict | None, bool]:
    """Walk status.messages: (start, end, execution_error event, interrupted)."""
    start = end = error = None
    interrupted = False
    messages = _as_dict(status_info).get("messages")
    for entry in messages if isinstance(messages, (list, tuple)) else ():
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 2 and isinstance(entry[1], dict)):
            continue
        name, data = entry[0], entry[1]
        if name == "execution_start":
            start = _as_int(data.get("timestamp"))
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = _as_int(data.get("timestamp"))
            if name == "execution_error":
                error = data
            elif name == "execution_interrupted":
                interrupted = True
    return start, end, error, interrupted


def _has_3d_extension(name: str) -> bool:
    return name.lower().endswith(THREE_D_EXTENSIONS)


def _three_d_output(name: str) -> dict:
    return {"filename": name, "type": "output", "subfolder": "", "mediaType": "3d"}


def _is_previewable(media_type: str, item: dict) -> bool:
    if media_type in PREVIEWABLE_MEDIA_TYPES:
        return True
    fmt = item.get("format")
    if isinstance(fmt, str) and fmt.startswith(("video/", "audio/")):
        return True
    filename = item.get("filename")  # defensive: ComfyUI raises on a non-string filename
    return isinstance(filename, str) and _has_3d_extension(filename)


def _text_preview(value: Any, node_id: str, media_type: str) -> dict:
    # A JSON list stands for the in-memory tuple ``(value,)``: preview its first element.
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    text = value if isinstance(value, str) else str(value)
    preview: dict[str, Any] = {"content": text[:TEXT_PREVIEW_MAX_LENGTH]}
    if len(text) > TEXT_PREVIEW_MAX_LENGTH:
        preview["truncated"] = True
    return {**preview, "nodeId": node_id, "mediaType": media_type}


def _outputs_walk(outputs: Any) -> tuple[int, dict | None, list[dict]]:
    """One pass over ``outputs``: (outputs_count, preview_output, output_files)."""
    count = 0
    preview = fallback = None
    files: list[dict] = []
    if not isinstance(outputs, dict):
        return count, None, files
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        node_text = str(node_id)
        file_node = None if "\x00" in node_text else node_text
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            listed = file_node is not None and isinstance(media_type, str) and "\x00" not in media_type
            for item in items:
                if isinstance(item, dict):
                    pass
                elif isinstance(item, str) and _has_3d_extension(item):
                    item = _three_d_output(item)
                else:
                    if media_type == "text":
                        count += 1
                        if preview is None and fallback is None:
                            fallback = _text_preview(item, node_id, media_type)
                    continue
                count += 1
                if listed:
                    filename = item.get("filename")
                    if isinstance(filename, str) and "\x00" not in filename:
                        files.append(
                            {
                                "ordinal": len(files),
                                "node_id": file_node,
                                "media_type": media_type,
                                "filename": filename,
                                "subfolder": _side_text(item.get("subfolder")),
                                "type": _side_text(item.get("type")),
                            }
                        )
                if preview is not None or not _is_previewable(media_type, item):
                    continue
                enriched = {**item, "nodeId": node_id}
                if "mediaType" not in item:
                    enriched["mediaType"] = media_type
                if item.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, preview or fallback, files


def outputs_summary(outputs: Any) -> tuple[int, dict | None]:
    """(outputs_count, preview_output) in one pass, as ComfyUI computes them."""
    count, preview, _ = _outputs_walk(outputs)
    return count, preview


def normalize_outputs(outputs: Any) -> dict:
    """Detail ``outputs``: 3D filename strings become file dicts, None items dropped."""
    result = {}
    for node_id, node_outputs in _as_dict(outputs).items():
        if not isinstance(node_outputs, dict):
            result[node_id] = node_outputs
            continue
        node = {}
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                node[media_type] = items
                continue
            node[media_type] = [
                _three_d_output(item) if isinstance(item, str) and _has_3d_extension(item) else item
                for item in items
                if item is not None
            ]
        result[node_id] = node
    return result


def output_files(outputs: Any) -> list[dict]:
    """The files a job wrote, in outputs order: rows of ``job_outputs`` (minus job_id).

    A file is an output item that is a dict with a string ``filename``, or a 3D
    filename string (as ComfyUI converts it). ``media_type`` is the key the item is
    listed under; ``subfolder``/``type`` are None when absent or not strings.
    Defensive: a string with a NUL character (no file has one; PostgreSQL text
    cannot hold one) is treated as absent.
    """
    return _outputs_walk(outputs)[2]


def _side_text(value: Any) -> str | None:
    """A string fit for a side-table text column, else None (defensive: no NUL)."""
    return value if isinstance(value, str) and "\x00" not in value else None


def _history_status(status_info: Any, interrupted: bool) -> str:
    status_str = _as_dict(status_info).get("status_str")
    if status_str == "error":
        return CANCELLED if interrupted else FAILED
    return COMPLETED  # "success", anything else, or no status at all


def from_history(job_id: Any, item: Any, exact: bool = False, encoder: Encoder = ZLIB) -> JobRecord:
    """A ``/history`` item keyed by ``job_id`` → row.
    ``exact``: the item came from ``loads_exact`` (see ``json_bytes``); ``encoder``
    writes ``raw`` (``rawcodec``)."""
    job_id = _check_id(job_id)
    if not isinstance(item, dict):
        raise InvalidItem(job_id, "history item must be an object")
    number, _, _, extra_data, _ = prompt = _prompt_tuple(job_id, item.get("prompt"))
    create_time, workflow_id = _metadata(extra_data)
    status_info = item.get("status", {})
    start, end, error, interrupted = _execution_events(status_info)
    count, preview, files = _outputs_walk(item.get("outputs", {}))
    priority, priority_json = priority_of(job_id, number)

    raw_item = dict(item)
    raw_item["prompt"] = prompt
    raw, digest = encode_raw(raw_item, exact, encoder)
    if error is None:
        execution_error = error_type = error_message = error_node_id = error_node_type = None
    else:
        execution_error = json_text(error, exact)
        # Helper columns for SQL users (the served error is execution_error, lossless):
        # like the side tables, no NUL, which PostgreSQL text cannot hold.
        error_type = _side_text(error.get("exception_type"))
        error_message = _side_text(error.get("exception_message"))
        error_node_id = _side_text(error.get("node_id"))
        error_node_type = _side_text(error.get("node_type"))
    return JobRecord(
        job_id,
        _history_status(status_info, interrupted),
        STAGE_HISTORY,
        priority,
        create_time or 0,
        create_time is None,
        start,
        end,
        end - start if start and end else 0,
        count,
        json_text(preview, exact) if preview is not None else None,
        execution_error,
        error_type,
        error_message,
        error_node_id,
        error_node_type,
        workflow_id,
        KIND_HISTORY,
        raw,
        digest,
        priority_json,
        None,
        files,
        document(KIND_HISTORY, raw_item),
        encoder.dict_id,
    )


# -- rows back to job dicts ----------------------------------------------------


def list_dict(row: Any) -> dict:
    """The ``GET /api/jobs`` dict of a row (attribute access), keys in ComfyUI's order."""
    job: dict[str, Any] = {"id": answer_text(row.id), "status": row.status, "priority": priority_value(row)}
    if not row.create_time_missing:
        job["create_time"] = row.create_time
    if row.execution_start_time is not None:
        job["execution_start_time"] = row.execution_start_time
    if row.execution_end_time is not None:
        job["execution_end_time"] = row.execution_end_time
    if row.execution_error is not None:
        job["execution_error"] = json.loads(row.execution_error)
    job["outputs_count"] = row.outputs_count
    if row.preview_output is not None:
        job["preview_output"] = json.loads(row.preview_output)
    if row.workflow_id is not None:
        job["workflow_id"] = answer_text(row.workflow_id)
    return job


def priority_value(row: Any) -> int | float:
    """The queue number of a row as ComfyUI holds it (an int, or a float)."""
    if row.priority_json is not None:
        return json.loads(row.priority_json)  # NaN / Infinity: Python's json reads them
    return int(row.priority)  # PostgreSQL's numeric arrives as a Decimal


def detail_dict(row: Any, item: Any = None) -> dict:
    """The ``GET /api/jobs/{id}`` dict. Queue rows answer with the list dict, as ComfyUI does.
    ``item``: the row's raw item, decoded (``rawcodec.Reader``); None decodes it here,
    for a record this process encoded (``rawcodec.decode``)."""
    job = list_dict(row)
    if row.raw_kind != KIND_HISTORY:
        return job
    if item is None:
        item = rawcodec.decode_item(row.raw, row.raw_dict_id)
    _, _, prompt, extra_data, _ = item["prompt"]
    job["outputs"] = normalize_outputs(item.get("outputs", {}))
    job["execution_status"] = item.get("status", {})
    job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def normalise_items(
    kind: str, items: list[tuple[Any, Any, str]], exact: bool = False, encoder: Encoder = ZLIB
) -> tuple[list[JobRecord], list[tuple[str, str]]]:
    """Normalise ``(key, item, status)`` triples of a ``history`` or ``queue`` dump.

    An item given as ``bytes`` is its JSON text, parsed here (``loads_exact``);
    ``exact`` says the other items came from ``loads_exact`` with exact=True;
    ``encoder`` writes ``raw`` (``rawcodec``).
    Returns the records and the rejections ``(id, reason)``. A top-level function of
    this light module, so import workers (other processes) can run it.
    """
    records, rejected, _ = _normalise(kind, items, exact, False, encoder)
    return records, rejected


def normalise_spans(
    kind: str, items: list[tuple[Any, Any, str]], unchecked: bool, encoder: Encoder = ZLIB
) -> tuple[list[JobRecord], list[tuple[str, str]], int | None]:
    """``normalise_items`` of a streamed dump's items. ``unchecked``: their JSON texts
    were cut from the dump by a guess nobody checked: the first that is not one JSON
    value stops the chunk, and its position in ``items`` is returned (else None)."""
    return _normalise(kind, items, False, unchecked, encoder)


def _normalise(
    kind: str, items: list[tuple[Any, Any, str]], exact: bool, unchecked: bool, encoder: Encoder
) -> tuple[list[JobRecord], list[tuple[str, str]], int | None]:
    records: list[JobRecord] = []
    rejected: list[tuple[str, str]] = []
    for position, (key, item, status) in enumerate(items):
        try:
            item_exact = exact
            if isinstance(item, bytes):
                try:
                    item, item_exact = loads_exact(item)
                except (ValueError, RecursionError):
                    if unchecked:
                        return records, rejected, position
                    raise
            records.append(
                from_queue(item, status, item_exact, encoder)
                if kind == KIND_QUEUE
                else from_history(key, item, item_exact, encoder)
            )
        except InvalidItem as exc:
            rejected.append((str(exc.job_id), exc.reason))
        except (TypeError, ValueError, RecursionError) as exc:  # unserialisable or absurd data
            rejected.append((_item_key(key, item), f"cannot store item: {exc}"))
    return records, rejected, None


def _item_key(key: Any, item: Any) -> str:
    if isinstance(item, (list, tuple)) and len(item) > 1 and isinstance(item[1], str):
        return item[1]
    return str(key)
