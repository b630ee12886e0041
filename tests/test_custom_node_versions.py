"""The custom node inside ComfyUIs it knows and ones it does not (issue 20), in the
stand-in ComfyUI over real loopback HTTP (``tests.test_custom_node.comfyui``):

* a request with a parameter the node (or that ComfyUI) does not implement is
  answered by ComfyUI's own handler, the rest by the index;
* a ComfyUI whose ``comfy_execution.jobs`` is not one the node recognises: jobs are
  recorded, ``/api/jobs`` is ComfyUI's, one warning line says so and how to override;
* a prompt queue of another shape: the node is not enabled at all, one error line;
* v0.26.0's own module (when ``JOBS_INDEX_COMFYUI_GIT`` has it): ``after`` goes to
  ComfyUI, the frontend's requests are served.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types

import pytest
from aiohttp import web

from jobs_index.comfyui import NodeConfig, compat, setup
from jobs_index.errors import JobNotFound
from jobs_index.params import STATUSES

from . import comfyui_versions as versions
from .live_util import eventually
from .standins.comfy_server import PromptServer, comfy_modules_installed
from .test_custom_node import WAIT, comfyui, run

pytestmark = pytest.mark.timeout(90)


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


def watching(reached: list[str]):
    """A ``before_start`` that notes each jobs request ComfyUI's own handlers get (an app
    middleware after the node's runs only when the node passes a request on)."""

    def install(server):
        @web.middleware
        async def inner(request, handler):
            if request.path.startswith("/api/jobs"):
                reached.append(str(request.rel_url))
            return await handler(request)

        server.app.middlewares.append(inner)

    return install


async def recorded(node, *jobs: str, status: str = "completed") -> bool:
    """True once the node's index holds each of ``jobs`` with ``status``."""
    index = node.writer.index
    try:
        return index is not None and all(index.get_job(job)["status"] == status for job in jobs)
    except JobNotFound:
        return False


def unknown_jobs_module() -> types.ModuleType:
    """A ``comfy_execution.jobs`` of a ComfyUI the node does not know (an ``ids`` filter)."""
    module = types.ModuleType("comfy_execution.jobs")
    module.JobStatus = types.SimpleNamespace(ALL=list(STATUSES))

    def get_all_jobs(
        running, queued, history, status_filter=None, workflow_id=None, ids=None, sort_by="created_at",
        sort_order="desc", limit=None, offset=0,
    ):  # fmt: skip
        return [], 0

    def get_job(prompt_id, running, queued, history):
        return None

    module.get_all_jobs, module.get_job = get_all_jobs, get_job
    return module


# -- unit: which requests the node answers -------------------------------------------


def test_which_requests_the_node_answers():
    offset, cursor, absent = compat.JobsApi(compat.OFFSET), compat.JobsApi(compat.CURSOR), compat.JobsApi(compat.ABSENT)
    frontend = ["status", "limit", "offset"]
    for api in (offset, cursor, absent):
        assert api.answers(frontend, detail=False) and api.answers([], detail=True)
        assert not api.answers(["status", "ids"], detail=False)  # a filter the node lacks
        assert not api.answers(["foo"], detail=True)
        assert api.answers(["after", "include", "limit"], detail=False)  # the history page: the index's
        assert not api.answers(["include", "ids"], detail=False)
    assert not offset.answers(["after", "limit"], detail=False)  # v0.26 ignores after: its handler answers
    assert cursor.answers(["after", "limit"], detail=False) and absent.answers(["after"], detail=False)


def test_an_unknown_module_and_absent_one():
    assert compat.detect(None).kind == compat.ABSENT
    api = compat.detect(unknown_jobs_module())
    assert api.kind == compat.UNKNOWN and "ids" in api.reason
    old = unknown_jobs_module()
    old.JobStatus.ALL = ["pending", "in_progress", "completed", "failed"]  # before "cancelled"
    assert compat.detect(old).kind == compat.UNKNOWN


# -- the prompt queue's shape --------------------------------------------------------


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda q: setattr(q, "delete_history_item", lambda prompt_id: None), "delete_history_item("),
        (lambda q: setattr(q, "put", None), "no put()"),
        (lambda q: setattr(q, "task_done", lambda item, result, status: None), "task_done("),
        (lambda q: setattr(q, "history", []), "history is not a dict"),
        (lambda q: setattr(q, "mutex", None), "no mutex"),
        (lambda q: setattr(q, "mutex", __import__("threading").Lock()), "not re-entrant"),
    ],
)
def test_a_prompt_queue_of_another_shape_disables_the_node(tmp_path, caplog, change, problem):
    caplog.set_level(logging.INFO, logger="jobs_index")

    async def scenario():
        with comfy_modules_installed():
            server = PromptServer(asyncio.get_running_loop())
            queue = server.prompt_queue
            change(queue)
            changed = set(vars(queue))
            assert setup(server, config=NodeConfig(db_url=sqlite_url(tmp_path))) is None
            assert server.app.middlewares == [] and set(vars(queue)) == changed  # nothing hooked, nothing served

    run(scenario())
    # the node's own lines (another test's leftovers may log through asyncio meanwhile)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("jobs_index")]
    assert len(lines) == 1 and lines[0].startswith("jobs-index: not enabled: this ComfyUI's prompt queue")
    assert problem in lines[0] and "nothing is recorded" in lines[0]
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_the_stand_in_queue_passes_the_self_test():
    async def scenario():
        with comfy_modules_installed():
            assert compat.check_queue(PromptServer(asyncio.get_running_loop()).prompt_queue) == []

    run(scenario())


# -- parameters ----------------------------------------------------------------------


def test_a_parameter_the_node_does_not_implement_goes_to_comfyui(tmp_path):
    reached: list[str] = []

    async def scenario():
        async with comfyui(sqlite_url(tmp_path), before_start=watching(reached)) as comfy:
            job = await comfy.submit()
            await comfy.finished(1)
            assert await eventually(lambda: recorded(comfy.node, job), WAIT)
            served = ["/api/jobs?status=completed&limit=5&offset=0", f"/api/jobs/{job}", "/api/jobs?include=source"]
            for path in served:
                status, _ = await comfy.get(path)
                assert status == 200
            assert reached == []
            passed = ["/api/jobs?ids=" + job, "/api/jobs?status=completed&new_filter=1", f"/api/jobs/{job}?fields=x"]
            for path in passed:
                status, body = await comfy.get(path)
                assert status == 200  # ComfyUI's stand-in handler: from memory, the job is there
            assert reached == passed

    run(scenario())


async def _ready(comfy) -> bool:
    return comfy.node.writer.ready


# -- a jobs API the node does not know ------------------------------------------------


JOBS_MODULES = [
    pytest.param(unknown_jobs_module, id="synthetic-ids-filter"),
    pytest.param(lambda: versions.load("jobs-ids-filter-b6562175"), id="jobs-ids-filter-b6562175"),
]


@pytest.mark.parametrize("make_module", JOBS_MODULES)
@pytest.mark.parametrize("serve", [None, True, False])
def test_an_unknown_jobs_api_is_recorded_not_served(tmp_path, caplog, monkeypatch, make_module, serve):
    module = make_module()
    if module is None:
        pytest.skip(versions.skip_reason("jobs-ids-filter-b6562175"))
    monkeypatch.setitem(sys.modules, "comfy_execution.jobs", module)
    caplog.set_level(logging.INFO, logger="jobs_index")
    reached: list[str] = []

    async def scenario():
        async with comfyui(sqlite_url(tmp_path), before_start=watching(reached), serve=serve) as comfy:
            assert comfy.node.jobs_api.kind == compat.UNKNOWN and comfy.node.serving is bool(serve)
            job = await comfy.submit()
            await comfy.finished(1)
            assert await eventually(lambda: recorded(comfy.node, job), WAIT)
            status, body = await comfy.get("/api/jobs?limit=5")
            assert status == 200 and [j["id"] for j in body["jobs"]] == [job]
            assert reached == ([] if serve else ["/api/jobs?limit=5"])
            # Probes and metrics always; the page, its API and listings addressed to the
            # index (ComfyUI has no answer of its own to them) unless JOBS_INDEX_SERVE=0.
            reached.clear()
            async with comfy.session.get(comfy.url + "/jobs-index/healthz") as response:
                assert response.status == 200
            assert await eventually(lambda: _ready(comfy), WAIT)
            async with comfy.session.get(comfy.url + "/jobs-index/readyz") as response:
                assert response.status == 200
            async with comfy.session.get(comfy.url + "/jobs-index/") as response:
                assert response.status == (404 if serve is False else 200)
            status, body = await comfy.get(f"/api/jobs?limit=5&source={comfy.node.writer.source}")
            assert status == 200 and [j["id"] for j in body["jobs"]] == [job]
            assert reached == ([f"/api/jobs?limit=5&source={comfy.node.writer.source}"] if serve is False else [])
            reached.clear()  # the page opens a job as the index's (from before a restart too)
            status, body = await comfy.get(f"/api/jobs/{job}?include=source")
            assert status == 200 and body["id"] == job
            assert reached == ([f"/api/jobs/{job}?include=source"] if serve is False else [])

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if serve is False:  # JOBS_INDEX_SERVE=0: nothing to warn about
        assert lines == []
        return
    assert len(lines) == 1 and "a jobs API jobs-index does not know" in lines[0], lines
    assert "JOBS_INDEX_SERVE=1" in lines[0]
    assert ("anyway" in lines[0]) is bool(serve)


# -- v0.26.0's own module -------------------------------------------------------------


def test_inside_v0_26_after_goes_to_comfyui(tmp_path, monkeypatch):
    module = versions.load("v0.26.0")
    if module is None:
        pytest.skip(versions.skip_reason("v0.26.0"))
    monkeypatch.setitem(sys.modules, "comfy_execution.jobs", module)
    reached: list[str] = []

    async def scenario():
        async with comfyui(sqlite_url(tmp_path), before_start=watching(reached)) as comfy:
            assert comfy.node.jobs_api.kind == compat.OFFSET and comfy.node.serving
            jobs = [await comfy.submit() for _ in range(3)]
            await comfy.finished(3)
            assert await eventually(lambda: recorded(comfy.node, *jobs), WAIT)
            status, page = await comfy.get("/api/jobs?status=completed,failed,cancelled&limit=2&offset=0")
            assert status == 200 and page["pagination"]["total"] == 3 and reached == []
            # As v0.26.0's answers: no next_cursor (that ComfyUI ignores after: a cursor
            # handed out here would bring the first page back).
            assert page["pagination"]["has_more"] and "next_cursor" not in page["pagination"]
            status, page = await comfy.get("/api/jobs?limit=2&include=source")  # the history page's request
            assert status == 200 and page["pagination"]["next_cursor"] and reached == []
            status, _ = await comfy.get(f"/api/jobs?limit=2&after={page['pagination']['next_cursor']}")
            assert status == 200 and reached == [f"/api/jobs?limit=2&after={page['pagination']['next_cursor']}"]

    run(scenario())


def test_the_start_up_line_names_the_jobs_api(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jobs_index")

    async def scenario():
        async with comfyui(sqlite_url(tmp_path)) as comfy:
            assert comfy.node.jobs_api.kind == compat.ABSENT

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if "recording ComfyUI jobs" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(
        "; serving /api/jobs from it (this ComfyUI has no jobs API of its own)"
    )
