"""The JSON text of a ``GET /api/jobs`` body, assembled around jobs that are already
JSON text (each job is rendered by the database: ``queries.page_columns``).

Parsing each job into a dict only to encode the whole body again cost more than the
SQL; here a page is one ``join``. The body equals ComfyUI's after parsing; spacing
follows ``json.dumps`` except inside the embedded ``preview_output`` and
``execution_error`` objects, which keep their stored compact form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


def pagination(offset: int, limit: int | None, total: int, has_more: bool, next_cursor: str | None) -> dict:
    """The ``pagination`` object, keys in ComfyUI's order."""
    result: dict[str, object] = {"offset": offset, "limit": limit, "total": total, "has_more": has_more}
    if next_cursor is not None:
        result["next_cursor"] = next_cursor
    return result


def jobs_array_open() -> str:
    return '{"jobs": ['


def jobs_array_close(pagination_object: dict, extra: dict | None = None) -> str:
    """The body's end; ``extra`` keys (jobs-index extensions a client asked for) follow
    ``pagination``."""
    tail = "".join(f", {json.dumps(key)}: {json.dumps(value)}" for key, value in (extra or {}).items())
    return f'], "pagination": {json.dumps(pagination_object)}{tail}}}'


def page_body(jobs: Iterable[str], pagination_object: dict, extra: dict | None = None) -> str:
    """The whole response body: ``{"jobs": [...], "pagination": {...}}`` (+ ``extra``)."""
    return jobs_array_open() + ", ".join(jobs) + jobs_array_close(pagination_object, extra)
