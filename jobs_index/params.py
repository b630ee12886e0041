"""Parse and validate the query string of ``GET /api/jobs`` exactly as ComfyUI does.

Validation order and error bodies follow ComfyUI's ``server.py``; the first failing
parameter wins. The result is a ``ListQuery`` that the query layer turns into SQL.
Extensions (ComfyUI ignores them): ``source=`` and ``q=`` (full-text search,
``search.parse``; a malformed one is a 400 after ComfyUI's own checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .cursor import CURSOR_SORT_FIELD, Cursor, decode_cursor
from .errors import BadRequest
from .search import SearchQuery
from .search import parse as parse_search

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_FIELDS = ("created_at", "execution_duration")


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

    @property
    def descending(self) -> bool:
        return self.sort_order == "desc"

    @property
    def all_statuses(self) -> bool:
        return set(self.statuses) >= set(STATUSES)


def _python_int(value: str, message: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequest(message) from exc


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

    return ListQuery(
        search=search,
        statuses=statuses,
        workflow_id=workflow_id,
        source=source,
        sort_by=sort_by,
        sort_order=sort_order,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
