"""Which ComfyUI the custom node runs in: its jobs API, and its prompt queue's shape.

Both checks run once, in ``JobsNode.install`` (ComfyUI has imported ``server`` and
with it ``comfy_execution.jobs`` before it imports custom nodes).

**The jobs API** (``detect``). jobs-index answers ``GET /api/jobs`` with the seed's
semantics (``tests/reference.py``). ComfyUI's own answer is computed by its module
``comfy_execution.jobs``; the node reads that live module and classifies it:

* ``absent``: no such module (ComfyUI before v0.6, or a stand-in). The node serves its
  own API, all parameters.
* ``offset``: ``get_all_jobs(running, queued, history, status_filter, workflow_id,
  sort_by, sort_order, limit, offset)`` returning ``(jobs, total)`` (v0.16 to v0.26 and
  ComfyUI's master of July 2026). No cursor: ``after`` is not one of its parameters.
* ``cursor``: the same plus ``after``, returning a 4-tuple ``(jobs, total, has_more,
  next_cursor)`` (the seed's commit 33109e0a, ComfyUI's cursor pagination).
* ``unknown``: anything else; the node then records jobs but does not serve them
  (``JOBS_INDEX_SERVE=1`` forces it).

Beyond the signature, the module must *behave* as the index does: a few probe jobs
(every status, text/3D/video outputs, null items, a queue item) go through the live
module's ``get_job`` and ``get_all_jobs`` and through the node's own normalisation
(``jobs_index.normalize``), and the answers must be equal. A ComfyUI that counts or
previews outputs differently, adds or drops a field, or renames a status is
``unknown``: serving it would answer with another version's fields.

**Parameters** (``JobsApi.answers``). A listing request is answered from the index
only when every query parameter is one both the node and that ComfyUI implement
(``offset``: ``status workflow_id sort_by sort_order limit offset``; ``cursor`` adds
``after``); anything else (a filter added by a newer ComfyUI, ``after`` on v0.26) goes
to ComfyUI's own handler, which answers from memory the question actually asked. A
request carrying one of jobs-index's own parameters (``source``, ``q``, ``include``:
the history page's) is addressed to the index and answered with all of its
parameters, ``after`` included. A detail request has no ComfyUI parameter.

**The prompt queue** (``check_queue``). The node wraps ``put``, ``get``,
``task_done``, ``delete_queue_item``, ``wipe_queue``, ``delete_history_item`` and
``wipe_history`` and reads ``mutex`` (re-entrant), ``queue`` (list),
``currently_running`` (dict), ``history`` (dict) and ``get_current_queue_volatile``
(or ``get_current_queue``). ``check_queue`` verifies each exists with the parameter
the wrapper reads (``put(item)``, ``task_done(item_id, ...)``,
``delete_history_item(id_to_delete)``, ...) and reads the live state once; it returns
the problems found (an empty list: the queue is as expected).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..normalize import IN_PROGRESS, PENDING, detail_dict, from_history, from_queue, list_dict
from ..params import STATUSES

JOBS_MODULE = "comfy_execution.jobs"

# Query parameters ComfyUI's GET /api/jobs reads, per kind of jobs API.
OFFSET_PARAMS = frozenset({"status", "workflow_id", "sort_by", "sort_order", "limit", "offset"})
CURSOR_PARAMS = OFFSET_PARAMS | {"after"}
# jobs-index's own listing parameters (ComfyUI ignores them): a request with one of
# these is addressed to the index (the history page sends them).
INDEX_PARAMS = frozenset({"source", "q", "include", "since", "until"})

_LIST_SIGNATURE = ("running", "queued", "history", "status_filter", "workflow_id", "sort_by", "sort_order", "limit")
OFFSET_SIGNATURE = (*_LIST_SIGNATURE, "offset")
CURSOR_SIGNATURE = (*OFFSET_SIGNATURE, "after")
GET_JOB_SIGNATURE = ("prompt_id", "running", "queued", "history")

ABSENT, OFFSET, CURSOR, UNKNOWN = "absent", "offset", "cursor", "unknown"


@dataclass(frozen=True)
class JobsApi:
    """The jobs API of the ComfyUI the node runs in."""

    kind: str  # ABSENT, OFFSET, CURSOR or UNKNOWN
    reason: str = ""  # for UNKNOWN: what differs

    @property
    def recognised(self) -> bool:
        return self.kind != UNKNOWN

    @property
    def params(self) -> frozenset[str]:
        """ComfyUI's listing parameters the node answers for."""
        return OFFSET_PARAMS if self.kind == OFFSET else CURSOR_PARAMS

    def answers(self, query: Iterable[str], detail: bool) -> bool:
        """True if the node answers a request with these query parameter names; False:
        ComfyUI's own handler should (a parameter the node or this ComfyUI lacks)."""
        names = set(query)
        if detail:  # ComfyUI's detail reads no parameter
            return names <= INDEX_PARAMS
        if names & INDEX_PARAMS:  # addressed to the index: all of its parameters
            return names <= CURSOR_PARAMS | INDEX_PARAMS
        return names <= self.params

    def describe(self) -> str:
        return {
            ABSENT: "no jobs API of its own",
            OFFSET: "the offset-paged jobs API (v0.16 to v0.26)",
            CURSOR: "the cursor-paged jobs API (commit 33109e0a)",
        }.get(self.kind, f"a jobs API jobs-index does not know ({self.reason})")


def live_jobs_module() -> ModuleType | None:
    """ComfyUI's ``comfy_execution.jobs`` if this process has one."""
    module = sys.modules.get(JOBS_MODULE)
    if module is not None:
        return module
    try:
        return importlib.import_module(JOBS_MODULE)
    except Exception:  # ImportError outside ComfyUI; anything else: treated as absent
        return None


def _parameters(function: Any) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def detect(module: ModuleType | None) -> JobsApi:
    """Classify ComfyUI's ``comfy_execution.jobs`` (None: there is none)."""
    if module is None:
        return JobsApi(ABSENT)
    try:
        statuses = tuple(getattr(getattr(module, "JobStatus", None), "ALL", ()))
        if statuses != STATUSES:
            return JobsApi(UNKNOWN, f"job statuses {list(statuses)}")
        listing = _parameters(getattr(module, "get_all_jobs", None))
        if listing == OFFSET_SIGNATURE:
            kind = OFFSET
        elif listing == CURSOR_SIGNATURE:
            kind = CURSOR
        else:
            return JobsApi(UNKNOWN, f"get_all_jobs{listing or '?'}")
        if _parameters(getattr(module, "get_job", None)) != GET_JOB_SIGNATURE:
            return JobsApi(UNKNOWN, "get_job's parameters")
        problem = _probe(module, kind)
    except Exception as exc:  # a probe ComfyUI's module raised on
        problem = f"its jobs module raised {type(exc).__name__} on a probe job"
    return JobsApi(kind) if problem is None else JobsApi(UNKNOWN, problem)


# -- probes: jobs whose answers changed between ComfyUI versions ---------------------


def _item(number: int, job_id: str, create_time: int, outputs: dict, status: dict) -> dict:
    extra = {"create_time": create_time, "extra_pnginfo": {"workflow": {"id": f"wf-{number % 2}"}}, "client_id": "c"}
    return {
        "prompt": [number, job_id, {"1": {"class_type": "X"}}, extra, ["1"]],
        "outputs": outputs,
        "status": status,
        "meta": {},
    }


def _status(outcome: str, start: int, end: int) -> dict:
    event = {"success": "execution_success", "error": "execution_error", "interrupted": "execution_interrupted"}
    data: dict[str, Any] = {"prompt_id": "p", "timestamp": end}
    if outcome == "error":
        data.update(node_id="1", node_type="X", exception_message="boom", exception_type="E", traceback=[])
    return {
        "status_str": "success" if outcome == "success" else "error",
        "completed": outcome == "success",
        "messages": [["execution_start", {"prompt_id": "p", "timestamp": start}], [event[outcome], data]],
    }


def _probe_history() -> dict[str, dict]:
    image = {"filename": "a.png", "subfolder": "", "type": "output"}
    temp = {"filename": "b.png", "subfolder": "", "type": "temp"}
    return {
        "probe-1": _item(1, "probe-1", 1001, {"9": {"images": [temp, image]}}, _status("success", 10, 30)),
        "probe-2": _item(2, "probe-2", 1002, {}, _status("error", 11, 12)),
        "probe-3": _item(3, "probe-3", 1003, {"4": {"images": [temp]}}, _status("interrupted", 13, 19)),
        "probe-4": _item(
            4,
            "probe-4",
            1004,
            {"7": {"text": ["hello"]}, "8": {"text": ["x" * 1500, "y"]}},
            _status("success", 20, 25),
        ),
        "probe-5": _item(
            5,
            "probe-5",
            1005,
            {
                "3": {"3d": ["model.glb", None], "result": ["Mesh.USDZ"]},
                "5": {"gifs": [{"filename": "v.webm", "format": "video/webm", "type": "temp", "subfolder": ""}]},
            },
            _status("success", 26, 40),
        ),
        "probe-6": _item(
            6,
            "probe-6",
            1006,
            {"2": {"files": [{"filename": "notes.txt", "subfolder": "", "type": "output"}]}, "6": {"text": ["z"]}},
            _status("success", 41, 42),
        ),
        "probe-7": _item(7, "probe-7", 1007, {"1": {"images": [image], "animated": [False]}}, {}),
    }


def _probe_queue() -> tuple[list, list]:
    running = [[8, "probe-8", {"1": {"class_type": "X"}}, {"create_time": 1008, "client_id": "c"}, ["1"]]]
    pending = [[9, "probe-9", {"1": {"class_type": "X"}}, {"create_time": 1009, "extra_pnginfo": {}}, ["1"]]]
    return running, pending


def _ours(history: Mapping[str, dict], running: list, pending: list, detail: bool) -> dict[str, dict]:
    as_dict = detail_dict if detail else list_dict
    answers = {job_id: as_dict(from_history(job_id, item)) for job_id, item in history.items()}
    answers.update({item[1]: as_dict(from_queue(item, IN_PROGRESS)) for item in running})
    answers.update({item[1]: as_dict(from_queue(item, PENDING)) for item in pending})
    return answers


def _probe(module: ModuleType, kind: str) -> str | None:
    """None if ``module`` answers the probe jobs as the index does, else what differs."""
    history = _probe_history()
    running, pending = _probe_queue()
    for job_id, expected in _ours(history, running, pending, detail=True).items():
        if module.get_job(job_id, running, pending, history) != expected:
            return f"its answer for a probe job ({job_id}) differs"
    expected_list = _ours(history, running, pending, detail=False)
    order = sorted(expected_list, key=lambda job_id: expected_list[job_id]["create_time"], reverse=True)
    answer = module.get_all_jobs(running, pending, history)
    if not isinstance(answer, tuple) or len(answer) != (2 if kind == OFFSET else 4):
        return "get_all_jobs's answer has another shape"
    jobs, total = answer[0], answer[1]
    if total != len(order) or list(jobs) != [expected_list[job_id] for job_id in order]:
        return "its listing of the probe jobs differs"
    return None


# -- the prompt queue -------------------------------------------------------------

# method -> the parameters the wrapper reads, in order (a prefix of the signature)
QUEUE_METHODS: dict[str, tuple[str, ...]] = {
    "put": ("item",),
    "get": ("timeout",),
    "task_done": ("item_id", "history_result"),
    "delete_queue_item": ("function",),
    "wipe_queue": (),
    "delete_history_item": ("id_to_delete",),
    "wipe_history": (),
}
QUEUE_ATTRIBUTES: dict[str, type] = {"queue": list, "currently_running": dict, "history": dict}


def _reentrant(lock: Any) -> bool:
    if not lock.acquire(timeout=5):
        return False
    try:
        again = lock.acquire(blocking=False)
        if again:
            lock.release()
        return again
    finally:
        lock.release()


def check_queue(queue: Any) -> list[str]:
    """What makes ``queue`` (ComfyUI's ``PromptQueue``) unlike the one the node hooks;
    an empty list if nothing."""
    problems: list[str] = []
    mutex: Any = getattr(queue, "mutex", None)
    if not (callable(getattr(mutex, "acquire", None)) and callable(getattr(mutex, "release", None))):
        return ["no mutex"]
    try:
        if not _reentrant(mutex):
            return ["its mutex is not re-entrant"]
    except Exception as exc:
        return [f"its mutex failed ({type(exc).__name__})"]
    for name, expected in QUEUE_METHODS.items():
        method = getattr(queue, name, None)
        if not callable(method):
            problems.append(f"no {name}()")
            continue
        parameters = _parameters(method)
        if parameters is None or parameters[: len(expected)] != expected:
            problems.append(f"{name}{parameters or '(?)'} instead of {name}({', '.join(expected)}, ...)")
    read: Any = getattr(queue, "get_current_queue_volatile", None) or getattr(queue, "get_current_queue", None)
    if not callable(read):
        problems.append("no get_current_queue_volatile()")
    if problems:
        return problems
    with mutex:
        try:
            for name, kind in QUEUE_ATTRIBUTES.items():
                if not isinstance(getattr(queue, name, None), kind):
                    problems.append(f"{name} is not a {kind.__name__}")
            state = read()
            if not (isinstance(state, (tuple, list)) and len(state) == 2 and all(isinstance(s, list) for s in state)):
                problems.append("get_current_queue_volatile() is not (running, pending)")
        except Exception as exc:
            problems.append(f"reading it raised {type(exc).__name__}: {exc}")
    return problems
