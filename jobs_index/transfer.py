"""The JSONL export format: one job per line, enough to rebuild its row exactly.

Pure (no database, no I/O). Each line is a JSON object::

    {"job": <the GET /api/jobs/{id} dict>,
     "raw_kind": "history" | "queue",
     "raw": <the ComfyUI item as stored: a /history item, or a queue item's 5-tuple>,
     "source": <the source name, or null>}

``job`` is for people and tools (``jq``); ``raw`` is what an import reads: the row
is re-derived from it by ``normalize`` exactly as at the first ingest, so the
rebuilt row has the same ``raw_digest`` and answers the same. A queue item does
not say whether it was running or pending, so ``job.status`` does, and ``job.id``
keys a history item. See docs/queries.md ("Moving an index").
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidItem
from .normalize import IN_PROGRESS, KIND_HISTORY, KIND_QUEUE, PENDING, JobRecord, detail_dict, from_history, from_queue
from .rawcodec import ZLIB, Encoder

EXPORT_KEYS = frozenset({"job", "raw_kind", "raw"})


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def export_line(row: Any, raw_json: bytes) -> str:
    """One JSONL line (without the newline) for a full ``jobs`` row whose ``raw``
    holds ``raw_json`` (``rawcodec.Reader.json``).

    ``raw`` is spliced in as the stored JSON text itself (compact, one line: JSON
    escapes newlines in strings), so it is neither parsed nor re-encoded.
    """
    raw_text = raw_json.decode("utf-8")
    item = json.loads(raw_text) if row.raw_kind == KIND_HISTORY else None
    return (
        f'{{"job":{_compact(detail_dict(row, item))},"raw_kind":{_compact(row.raw_kind)},'
        f'"raw":{raw_text},"source":{_compact(row.source)}}}'
    )


def is_export_line(value: Any) -> bool:
    """Does this parsed JSON look like a line of an export (and not a /history dump)?"""
    return (
        isinstance(value, dict)
        and EXPORT_KEYS <= value.keys()
        and isinstance(value.get("job"), dict)
        and value.get("raw_kind") in (KIND_HISTORY, KIND_QUEUE)
    )


def record_from_export(key: str, line: Any, encoder: Encoder = ZLIB) -> JobRecord:
    """Rebuild the row of one export line; ``key`` (e.g. ``line 12``) names it in errors;
    ``encoder`` writes its ``raw``."""
    if not is_export_line(line):
        raise InvalidItem(key, "not an export line: expected an object with job, raw_kind (history|queue) and raw")
    job, raw = line["job"], line["raw"]
    job_id = job.get("id")
    if not isinstance(job_id, str):
        raise InvalidItem(key, "job.id must be a string")
    if line["raw_kind"] == KIND_HISTORY:
        record = from_history(job_id, raw, encoder=encoder)
    else:
        status = job.get("status")
        if status not in (PENDING, IN_PROGRESS):
            raise InvalidItem(job_id, f"a queue item's job.status must be pending or in_progress, got {status!r}")
        record = from_queue(raw, status, encoder=encoder)
        if record.id != job_id:
            raise InvalidItem(job_id, f"raw queue item is job {record.id!r}, not {job_id!r}")
    source = line.get("source")
    if source is not None and not isinstance(source, str):
        raise InvalidItem(job_id, "source must be a string or null")
    record.source = source
    return record
