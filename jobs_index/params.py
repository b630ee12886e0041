"""Parse and validate the query string of ``GET /api/jobs`` exactly as ComfyUI does.

Validation order and error bodies follow ComfyUI's ``server.py``; the first failing
parameter wins. The result is a ``ListQuery`` that the query layer turns into SQL.
Extensions (ComfyUI ignores them): ``source=``, ``q=`` (full-text search,
``search.parse``; a malformed one is a 400 after ComfyUI's own checks) and
``since=`` / ``until=`` (bounds on ``create_time``: ``since <= create_time < until``,
each epoch milliseconds or an ISO 8601 date or date-time, UTC unless it names an
offset; a malformed one is a 400, checked last).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .cursor import CURSOR_SORT_FIELD, Cursor, decode_cursor
from .errors import BadRequest
from .search import SearchQuery
from .search import parse as parse_search

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_FIELDS = ("created_at", "execution_duration")
TIME_PARAMS = ("since", "until")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH_MS = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ListQuery:
    """A validated listing request."""

    statuses: tuple[str, ...] = STATUSES  # empty tuple selects nothing
    workflow_id: str | None = None
    source: str | None = None  # jobs-index extension; ComfyUI ignores unknown params
    sort_by: str = "created_at"
    sort_order: str = "desc"
    limit: int | None = None
    offset: int = 0
    cursor: Cursor | None = None  # set only when sort_by is created_at
    search: SearchQuery | None = None  # ``q=``, jobs-index extension (``search.parse``)
    since: int | None = None  # ``since=``: create_time >= since (epoch ms), jobs-index extension
    until: int | None = None  # ``until=``: create_time < until (epoch ms), jobs-index extension
    # ``pagination.next_cursor`` in the answer; False inside a ComfyUI whose jobs API
    # pages by offset only (v0.16 to v0.26: its answers have none, and it ignores ``after``)
    next_cursor: bool = True

    @property
    def descending(self) -> bool:
        return self.sort_order == "desc"

    @property
    def all_statuses(self) -> bool:
        return set(self.statuses) >= set(STATUSES)

    @property
    def time_bounded(self) -> bool:
        """A ``since``/``until`` bound: the total is counted from the rows, not ``job_counts``."""
        return self.since is not None or self.until is not None


def _python_int(value: str, message: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequest(message) from exc


def parse_time(name: str, value: str) -> int | None:
    """``since``/``until`` as epoch milliseconds (None when empty): an integer is epoch
    milliseconds; anything else an ISO 8601 date or date-time (``datetime.fromisoformat``:
    ``2026-12-06``, ``2026-12-06T05:00``, ``...Z``, ``...+01:00``), UTC when it names
    no offset. Raises BadRequest."""
    text = value.strip()
    if not text:
        return None
    message = f"{name} must be epoch milliseconds or an ISO 8601 date or date-time"
    if _EPOCH_MS.fullmatch(text):
        try:
            ms = int(text)
        except ValueError as exc:  # more digits than Python converts: far out of range anyway
            raise BadRequest(f"{name} is out of range") from exc
    else:
        try:  # (Python 3.10's fromisoformat does not read a "Z" offset)
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
        except ValueError as exc:
            raise BadRequest(message) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    if not _INT64_MIN <= ms <= _INT64_MAX:
        raise BadRequest(f"{name} is out of range")
    return ms


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    """Validate ``query`` (first value of each parameter) into a ListQuery.

    Raises BadRequest (or its subclass InvalidCursor) with ComfyUI's exact body.
    """
    statuses: tuple[str, ...] = STATUSES
    status_param = query.get("status")
    if status_param:  # "" means no filter; "," leaves no values and selects nothing
        requested = [s.strip().lower() for s in status_param.split(",") if s.strip()]
        invalid = [s for s in requested if s not in STATUSES]
        if invalid:
            raise BadRequest(f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(STATUSES)}")
        statuses = tuple(s for s in STATUSES if s in requested)

    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in SORT_FIELDS:
        raise BadRequest("sort_by must be 'created_at' or 'execution_duration'")

    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        raise BadRequest("sort_order must be 'asc' or 'desc'")

    limit = None
    if "limit" in query:
        limit = _python_int(query["limit"], "limit must be an integer")
        if limit <= 0:
            raise BadRequest("limit must be a positive integer")

    offset = 0
    if "offset" in query:
        offset = max(0, _python_int(query["offset"], "offset must be an integer"))

    workflow_id = query.get("workflow_id") or None
    source = query.get("source") or None

    after = query.get("after")
    cursor = None
    if after is not None and sort_by == CURSOR_SORT_FIELD:
        cursor = decode_cursor(after, sort_order)

    q = query.get("q")  # checked last: ComfyUI's own parameters keep their error order
    search = parse_search(q) if q and q.strip() else None
    since, until = (parse_time(name, query[name]) if name in query else None for name in TIME_PARAMS)

    return ListQuery(
        search=search,
        since=since,
        until=until,
        statuses=statuses,
        workflow_id=workflow_id,
        source=source,
        sort_by=sort_by,
        sort_order=sort_order,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
