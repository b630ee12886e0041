"""Loading the captured ComfyUI responses under tests/fixtures/comfyui.

Each capture is `{"request": {"method", "path", "body"}, "status", "body", ...}`.
States (see tests/fixtures/comfyui/INDEX.txt and README.md):

* `capture_history()` is GET /history at the end of the run (7 jobs, queue idle);
  most `jobs_*` and `job_detail_*` captures were answered from exactly that state.
* `capture_queue()` is the GET /queue snapshot (1 running, 2 pending); the history at
  that moment held only the jobs finished before it, see `snapshot_history()`.
* `cursor_branch_history()` synthesises the history behind `cursor_branch/`, which
  ships responses only.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


@cache
def _load(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def load_capture(name: str):
    """A capture file (e.g. "jobs_all.json" or "cursor_branch/jobs_page1.json"), deep-copied."""
    return copy.deepcopy(_load(name))


def request_params(capture: dict) -> dict[str, str]:
    """The capture's query string as the raw params dict (first value of a repeat wins,
    like aiohttp's `query.get`)."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(urlsplit(capture["request"]["path"]).query, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def request_job_id(capture: dict) -> str:
    """The `{id}` of a GET /api/jobs/{id} capture."""
    return urlsplit(capture["request"]["path"]).path.rsplit("/", 1)[1]


def capture_history() -> dict[str, dict]:
    """GET /history body: {prompt_id: item}, all 7 jobs of the run."""
    return load_capture("history.json")["body"]


def capture_queue() -> tuple[list[list], list[list]]:
    """(running, pending) from the GET /queue snapshot."""
    body = load_capture("queue_running_pending.json")["body"]
    return body["queue_running"], body["queue_pending"]


def snapshot_history() -> dict[str, dict]:
    """The history at the time of the queue snapshot: the jobs that
    jobs_with_running_pending.json lists and that are not queued."""
    running, pending = capture_queue()
    queued = {item[1] for item in running + pending}
    listed = {job["id"] for job in load_capture("jobs_with_running_pending.json")["body"]["jobs"]}
    return {k: v for k, v in capture_history().items() if k in listed - queued}


def cursor_branch_history() -> dict[str, dict]:
    """Minimal history items that normalise to exactly cursor_branch/jobs_all.json."""
    history = {}
    for job in reversed(load_capture("cursor_branch/jobs_all.json")["body"]["jobs"]):
        preview = job["preview_output"]
        image = {k: preview[k] for k in ("filename", "subfolder", "type")}
        jid = job["id"]
        history[jid] = {
            "prompt": [
                job["priority"],
                jid,
                {},
                {"create_time": job["create_time"], "extra_pnginfo": {"workflow": {"id": job["workflow_id"]}}},
                [preview["nodeId"]],
            ],
            "outputs": {preview["nodeId"]: {preview["mediaType"]: [image]}},
            "status": {
                "status_str": "success",
                "completed": True,
                "messages": [
                    ["execution_start", {"prompt_id": jid, "timestamp": job["execution_start_time"]}],
                    ["execution_success", {"prompt_id": jid, "timestamp": job["execution_end_time"]}],
                ],
            },
            "meta": {},
        }
    return history
