"""The opaque keyset cursor of ``GET /api/jobs``, byte-compatible with ComfyUI.

Wire format: base64url without padding of compact JSON
``{"s":"created_at","v":"<create_time>","id":"<id>","o":"asc|desc"}`` (key order as
written, ``ensure_ascii=False``). Decoding deliberately uses the same lenient
standard-library primitives ComfyUI uses (``urlsafe_b64decode``, ``json.loads`` on
bytes, ``int()``), so exactly the same cursors are accepted and rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import NamedTuple

from .errors import InvalidCursor

CURSOR_SORT_FIELD = "created_at"
MAX_ENCODED_LENGTH = 8192
MAX_VALUE_LENGTH = 512
MAX_ID_LENGTH = 128
ORDERS = ("asc", "desc")


class Cursor(NamedTuple):
    """A decoded cursor: the keyset position ``(create_time, id)`` and its order."""

    create_time: int
    id: str
    order: str


def cursor_can_carry(job_id: str) -> bool:
    """Can a cursor end on this job? Not on an empty id, nor on one longer than
    MAX_ID_LENGTH: ComfyUI refuses to mint those (and to read them back)."""
    return 0 < len(job_id) <= MAX_ID_LENGTH


def encode_cursor(create_time: int, job_id: str, order: str) -> str:
    payload = {"s": CURSOR_SORT_FIELD, "v": str(create_time), "id": job_id, "o": order}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, sort_order: str) -> Cursor:
    """Decode ``token`` for a request sorted in ``sort_order``; raise InvalidCursor."""
    if len(token) > MAX_ENCODED_LENGTH:
        raise InvalidCursor("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursor(f"encoding: {exc}") from exc
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidCursor(f"payload: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidCursor("payload is not an object")
    field, value, job_id, order = (payload.get(k) for k in ("s", "v", "id", "o"))
    if not (isinstance(field, str) and isinstance(value, str) and isinstance(job_id, str)):
        raise InvalidCursor("s, v and id must be strings")
    if not job_id or len(job_id) > MAX_ID_LENGTH:
        raise InvalidCursor("bad id length")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidCursor("value too long")
    if field != CURSOR_SORT_FIELD:
        raise InvalidCursor(f"unsupported sort field {field!r}")
    if not isinstance(order, str) or order not in ORDERS or order != sort_order:
        raise InvalidCursor("order missing or different from sort_order")
    try:
        create_time = int(value)
    except ValueError as exc:
        raise InvalidCursor(f"value is not an integer: {exc}") from exc
    return Cursor(create_time, job_id, order)
