"""In-memory reference implementation of the jobs API, written from CONTRACT.md.

This is the test oracle: small and readable rather than fast. It takes ComfyUI's raw
shapes (history dict, running/pending queue lists) and raw query-string parameters,
and answers `(http_status, json_body)` as ComfyUI (at the seed commit) would.

Where ComfyUI itself would raise on malformed data, this module normalises
defensively instead; each such place is marked "DEFENSIVE".
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
HISTORY_STATUSES = {"completed", "failed", "cancelled"}
PREVIEWABLE = {"images", "video", "audio", "3d", "text"}
EXTENSIONS_3D = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
TEXT_PREVIEW_MAX = 1024
CURSOR_MAX_LEN = 8192

NOT_FOUND = {"error": "Job not found"}
INVALID_CURSOR_BODY = {"error": "Invalid pagination cursor", "code": "INVALID_CURSOR"}


class InvalidCursor(Exception):
    pass


# --------------------------------------------------------------------------- cursor


def encode_cursor(value: str, job_id: str, order: str) -> str:
    payload = {"s": "created_at", "v": value, "id": job_id, "o": order}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, sort_order: str) -> tuple[int, str]:
    """Return the keyset `(create_time, id)` a cursor points at, or raise InvalidCursor."""
    if len(cursor) > CURSOR_MAX_LEN:
        raise InvalidCursor("too long")
    try:
        # Python's lenient decoder, as ComfyUI uses it: non-alphabet characters are
        # skipped, non-ASCII input raises ValueError.
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)  # bytes: JSON's utf-8/16/32 detection applies
    except (ValueError, binascii.Error, RecursionError) as exc:
        # RecursionError: deeply nested JSON; ComfyUI would answer 500, we say 400.
        raise InvalidCursor("undecodable") from exc
    if not isinstance(payload, dict):
        raise InvalidCursor("not an object")
    s, v, job_id, o = (payload.get(k) for k in ("s", "v", "id", "o"))
    if not (isinstance(s, str) and isinstance(v, str) and isinstance(job_id, str)):
        raise InvalidCursor("s/v/id must be strings")
    if not job_id or len(job_id) > 128 or len(v) > 512 or s != "created_at":
        raise InvalidCursor("bad s/v/id")
    if not isinstance(o, str) or o not in ("asc", "desc") or o != sort_order:
        raise InvalidCursor("bad order")
    try:
        return int(v), job_id  # Python int(): " 7", "+7", "1_0", "٧" all parse
    except ValueError as exc:
        raise InvalidCursor("v not an integer") from exc


# ------------------------------------------------------------------ normalisation


def _as_dict(value: Any) -> dict:
    # DEFENSIVE: a missing/None/wrong-typed container (extra_data, extra_pnginfo,
    # workflow, outputs, status) reads as empty; ComfyUI would raise on `.get`.
    return value if isinstance(value, dict) else {}


def _as_int(value: Any) -> int | None:
    # DEFENSIVE: create_time and message timestamps must be ints (bool excluded);
    # an integral float counts as that int; anything else is treated as missing.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _prune(job: dict) -> dict:
    return {k: v for k, v in job.items() if v is not None}


def _metadata(extra_data: Any) -> tuple[int | None, Any]:
    extra = _as_dict(extra_data)
    workflow = _as_dict(_as_dict(extra.get("extra_pnginfo")).get("workflow"))
    # The workflow id is passed through as ComfyUI would (any non-null JSON value).
    return _as_int(extra.get("create_time")), workflow.get("id")


def _is_3d(name: Any) -> bool:
    return isinstance(name, str) and name.lower().endswith(EXTENSIONS_3D)


def _file_3d(name: str) -> dict:
    return {"filename": name, "type": "output", "subfolder": "", "mediaType": "3d"}


def _is_previewable(media_type: str, item: dict) -> bool:
    if media_type in PREVIEWABLE:
        return True
    # DEFENSIVE: a non-string `format` or `filename` is ignored (ComfyUI would raise).
    fmt = item.get("format")
    if isinstance(fmt, str) and fmt.startswith(("video/", "audio/")):
        return True
    return _is_3d(item.get("filename"))


def _text_preview(item: Any, node_id: str) -> dict:
    if isinstance(item, list):
        # A list is JSON's rendering of ComfyUI's in-memory `(value,)` tuple.
        value = item[0] if item else ""
        # DEFENSIVE: a non-string first element is rendered with str() (ComfyUI
        # would raise on len()).
        value = value if isinstance(value, str) else str(value)
    else:
        value = str(item)  # ComfyUI: str() of any other scalar, e.g. None -> "None"
    preview = {"content": value[:TEXT_PREVIEW_MAX]}
    if len(value) > TEXT_PREVIEW_MAX:
        preview["truncated"] = True
    return {**preview, "nodeId": node_id, "mediaType": "text"}


def outputs_summary(outputs: dict) -> tuple[int, dict | None]:
    """One pass over the outputs: (outputs_count, preview_output)."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    if not _is_3d(item):
                        # Only `text` counts other non-dict items (None included).
                        if media_type == "text":
                            count += 1
                            if preview is None and fallback is None:
                                fallback = _text_preview(item, node_id)
                        continue
                    item = _file_3d(item)
                count += 1
                if preview is not None or not _is_previewable(media_type, item):
                    continue
                enriched = {**item, "nodeId": node_id}
                if "mediaType" not in item:
                    enriched["mediaType"] = media_type
                if item.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, preview or fallback


def normalize_outputs(outputs: dict) -> dict:
    """Outputs as served in the detail: 3D strings become file dicts, None items go."""
    result = {}
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            result[node_id] = node_outputs
            continue
        node = {}
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                node[media_type] = items
            else:
                node[media_type] = [_file_3d(i) if _is_3d(i) else i for i in items if i is not None]
        result[node_id] = node
    return result


def _status_info(item: dict) -> dict | None:
    # ComfyUI reads `item.get("status", {})`: a missing key is {} (served as {}),
    # an explicit null stays null.
    # DEFENSIVE: any other non-dict status is treated as null.
    status = item.get("status", {})
    return status if isinstance(status, dict) else None


def normalize_history_item(prompt_id: str, item: dict, detail: bool = False) -> dict:
    priority, _, graph, extra_data = item["prompt"][:4]
    create_time, workflow_id = _metadata(extra_data)
    status_info = _status_info(item)
    outputs = _as_dict(item.get("outputs"))
    count, preview = outputs_summary(outputs)

    start = end = error = None
    interrupted = False
    messages = (status_info or {}).get("messages")
    # DEFENSIVE: messages that are not a list (null, a number...) read as no messages.
    for entry in messages if isinstance(messages, list) else []:
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 2 and isinstance(entry[1], dict)):
            continue
        event, data = entry[0], entry[1]
        if event == "execution_start":
            start = _as_int(data.get("timestamp"))
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = _as_int(data.get("timestamp"))  # last end event wins, even if it has no time
            if event == "execution_error":
                error = data
            elif event == "execution_interrupted":
                interrupted = True

    status_str = (status_info or {}).get("status_str")
    if status_str == "error":
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"  # "success", missing or anything else

    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "preview_output": preview,
            "workflow_id": workflow_id,
        }
    )
    if detail:
        job["outputs"] = normalize_outputs(outputs)
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": graph, "extra_data": extra_data}
    return job


def normalize_queue_item(item: list, status: str) -> dict:
    priority, prompt_id, _, extra_data = item[:4]
    create_time, workflow_id = _metadata(extra_data)
    return _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )


# ------------------------------------------------------------------------ listing


def created_key(job: dict) -> tuple[int, str]:
    return job.get("create_time") or 0, job["id"]


def duration_key(job: dict) -> tuple[int, str]:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return (end - start if start and end else 0), job["id"]


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class Reference:
    def __init__(
        self, history: dict[str, dict], running: list[list], pending: list[list], comfyui_mint_errors: bool = False
    ):
        self.history = history
        self.running = running
        self.pending = pending
        # True: answer 400 where ComfyUI cannot mint a next_cursor (an empty id, or one
        # over 128 characters, ends the page); False: jobs-index's page without a cursor.
        self.comfyui_mint_errors = comfyui_mint_errors

    def get_job(self, job_id: str) -> tuple[int, dict]:
        if job_id in self.history:
            return 200, normalize_history_item(job_id, self.history[job_id], detail=True)
        for queue, status in ((self.running, "in_progress"), (self.pending, "pending")):
            for item in queue:
                if item[1] == job_id:
                    return 200, normalize_queue_item(item, status)
        return 404, dict(NOT_FOUND)

    def all_jobs(self, statuses: list[str]) -> list[dict]:
        """Normalised jobs with the given statuses: running, then pending, then history."""
        jobs = []
        if "in_progress" in statuses:
            jobs += [normalize_queue_item(i, "in_progress") for i in self.running]
        if "pending" in statuses:
            jobs += [normalize_queue_item(i, "pending") for i in self.pending]
        if HISTORY_STATUSES & set(statuses):
            for prompt_id, item in self.history.items():
                job = normalize_history_item(prompt_id, item)
                if job["status"] in statuses:
                    jobs.append(job)
        return jobs

    def list_jobs(self, params: dict[str, str]) -> tuple[int, dict]:
        # -- validation, in ComfyUI's order
        statuses = list(STATUSES)
        if params.get("status"):  # "" is falsy: no filter at all (unlike ",")
            statuses = [s.strip().lower() for s in params["status"].split(",") if s.strip()]
            bad = [s for s in statuses if s not in STATUSES]
            if bad:
                return 400, {"error": f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(STATUSES)}"}
        sort_by = params.get("sort_by", "created_at").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return 400, {"error": "sort_by must be 'created_at' or 'execution_duration'"}
        sort_order = params.get("sort_order", "desc").lower()
        if sort_order not in ("asc", "desc"):
            return 400, {"error": "sort_order must be 'asc' or 'desc'"}
        limit = None
        if "limit" in params:
            limit = _parse_int(params["limit"])
            if limit is None:
                return 400, {"error": "limit must be an integer"}
            if limit <= 0:
                return 400, {"error": "limit must be a positive integer"}
        offset = 0
        if "offset" in params:
            offset = _parse_int(params["offset"])
            if offset is None:
                return 400, {"error": "offset must be an integer"}
            offset = max(offset, 0)
        workflow_id = params.get("workflow_id")
        after = params.get("after") if sort_by == "created_at" else None

        # -- filter and sort
        jobs = self.all_jobs(statuses)
        if workflow_id:
            jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
        key = created_key if sort_by == "created_at" else duration_key
        jobs.sort(key=key, reverse=sort_order == "desc")
        total = len(jobs)

        cursor = None
        if after is not None:  # decoded before the empty early-out: bad cursors always 400
            # (the seed checks int(v) only after it; README, "Which ComfyUI versions")
            try:
                cursor = decode_cursor(after, sort_order)
            except InvalidCursor:
                return 400, dict(INVALID_CURSOR_BODY)

        pagination = {"offset": offset, "limit": limit, "total": total, "has_more": False}
        if total == 0:
            return 200, {"jobs": [], "pagination": pagination}

        # -- page: a cursor replaces the offset
        if cursor is not None:
            if sort_order == "asc":
                jobs = [j for j in jobs if created_key(j) > cursor]
            else:
                jobs = [j for j in jobs if created_key(j) < cursor]
        else:
            jobs = jobs[offset:]
        pagination["has_more"] = has_more = limit is not None and len(jobs) > limit
        if limit is not None:
            jobs = jobs[:limit]
        if sort_by == "created_at" and has_more:
            last = jobs[-1]
            if 0 < len(last["id"]) <= 128:
                pagination["next_cursor"] = encode_cursor(str(last.get("create_time") or 0), last["id"], sort_order)
            elif self.comfyui_mint_errors:
                # ComfyUI's encoder refuses an empty id or one over 128 characters and
                # the whole request answers 400. jobs-index answers the page without a
                # cursor instead (README, "Jobs ComfyUI lists"): set False to model it.
                return 400, dict(INVALID_CURSOR_BODY)
        return 200, {"jobs": jobs, "pagination": pagination}
