"""jobs-index as a ComfyUI custom node, inside the in-process ComfyUI stand-in
(``tests.standins.comfy_server``: PromptServer, PromptQueue and a real prompt-worker
thread), over real loopback HTTP. Database cases run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sqlite3
import sys
import threading
import time
import types
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from jobs_index.cli import cli
from jobs_index.comfyui import NodeConfig, current, default_db_url, setup
from jobs_index.comfyui.install import SHIM_DIR
from jobs_index.normalize import from_history

from .fixtures_util import capture_history, load_capture
from .live_util import Oracle, eventually, get_json, mismatches
from .standins.comfy_server import (
    PromptServer,
    comfy_modules_installed,
    default_executor,
    remove_sensitive_from_queue,
    run_worker,
)

pytestmark = pytest.mark.timeout(90)

PROMPT = load_capture("post_prompt_success.json")["request"]["body"]
WAIT = 15.0  # bound of condition waits on the database (see test_follow.WAIT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(coro, timeout: float = 60):
    async def guarded():
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            for other in asyncio.all_tasks():
                other.print_stack(file=sys.stderr)
            task.cancel()
            raise TimeoutError(f"scenario still running after {timeout}s")
        return task.result()

    return asyncio.run(guarded())


class Gate:
    """A prompt executor that holds each job until the test releases it (the job is
    running meanwhile and reacts to interrupts), then runs it like SaveImage."""

    def __init__(self) -> None:
        self._permits = threading.Semaphore(0)
        self.started: list[str] = []

    def __call__(self, run) -> None:
        self.started.append(run.prompt_id)
        while not self._permits.acquire(timeout=0.01):
            run.check_interrupted()
        default_executor(run)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._permits.release()


class Comfy:
    """One ComfyUI process: server, custom node, worker, an HTTP session."""

    def __init__(self, server: PromptServer, node, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.node = node
        self.session = session
        self.queue = server.prompt_queue
        self.oracle = Oracle()

    @property
    def url(self) -> str:
        return self.server.url

    async def submit(self, **fields) -> str:
        """POST /prompt; ``fields`` are added to the body (``number=2.5``, ``front=True``)."""
        async with self.session.post(self.url + "/prompt", json={**PROMPT, **fields}) as response:
            assert response.status == 200
            return (await response.json())["prompt_id"]

    async def post(self, path: str, payload) -> tuple[int, object]:
        async with self.session.post(self.url + path, json=payload) as response:
            body = await response.text()
            return response.status, (json.loads(body) if body else None)

    async def get(self, path: str) -> tuple[int, object]:
        return await get_json(self.session, self.url + path)

    def observe(self) -> None:
        self.oracle.observe(self.queue.get_history())

    def reference(self):
        """ComfyUI's answer over every job it ever held (evicted ones included)."""
        self.observe()
        running, pending = self.queue.get_current_queue_volatile()
        return self.oracle.reference(remove_sensitive_from_queue(running), remove_sensitive_from_queue(pending))

    def builtin(self):
        """What ComfyUI's own in-memory /api/jobs answers now."""
        running, pending = self.queue.get_current_queue_volatile()
        oracle = Oracle()
        oracle.observe(self.queue.get_history())
        return oracle.reference(remove_sensitive_from_queue(running), remove_sensitive_from_queue(pending))

    async def parity(self, reference=None, **options) -> list[str]:
        problems: list[str] = []

        async def check():
            problems[:] = await mismatches(self.session, self.url, reference or self.reference(), **options)
            return not problems

        await eventually(check, WAIT, interval=0.05)
        return problems

    async def status_of(self, job_id: str) -> str | None:
        status, body = await self.get(f"/api/jobs/{job_id}")
        return body["status"] if status == 200 else None

    async def finished(self, count: int) -> None:
        assert await eventually(
            lambda: _true(
                len(self.queue.history) >= count and not self.queue.queue and not self.queue.currently_running
            ),
            WAIT,
        )


async def _true(value):
    return value


@asynccontextmanager
async def comfyui(
    db_url: str | None,
    *,
    executor=None,
    jobs_api: bool = True,
    max_history_size=None,
    before_start=None,
    wait_ready: bool = True,
    port: int = 0,
    **node_options,
):
    """ComfyUI's start-up order: PromptServer, custom nodes imported (``setup``), routes
    added and server started on ``port`` (0: any free one), then the prompt worker
    thread. The node's source is then ``<host>:<port>`` unless given."""
    with comfy_modules_installed():
        server = PromptServer(asyncio.get_running_loop(), jobs_api=jobs_api, max_history_size=max_history_size)
        node = None
        if db_url is not None:
            # A long read barrier: it returns as soon as the writes land; a short one would
            # let ComfyUI's built-in answer whenever the shared test database is busy.
            options = {"retry_cap": 0.2, "wait_ms": int(WAIT * 1000), **node_options}
            node = setup(server, config=NodeConfig(db_url=db_url, **options))
            assert node is not None
        if before_start is not None:
            before_start(server)
        await server.start(port=port)
        worker = run_worker(server.prompt_queue, executor)
        try:
            async with aiohttp.ClientSession() as session:
                comfy = Comfy(server, node, session)
                if node is not None and wait_ready:  # a new index's schema: a child process, slow on a busy machine
                    assert await eventually(lambda: _true(node.writer.ready), 4 * WAIT)
                yield comfy
        finally:
            worker.stop()
            if node is not None:
                node.close()
            await server.stop()


# -- serving from the index ----------------------------------------------------


def test_answers_like_comfyui_reads_its_own_writes_and_keeps_evicted_jobs(db_url):
    gate = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate, max_history_size=2) as comfy:
            ids = []
            for _ in range(4):
                job = await comfy.submit()
                ids.append(job)
                # Read-your-writes: the job is there as soon as POST /prompt answered.
                assert await comfy.status_of(job) in ("pending", "in_progress")
            assert await eventually(lambda: _true(gate.started == ids[:1]), WAIT)
            assert await comfy.status_of(ids[0]) == "in_progress"
            assert await comfy.parity() == []
            assert await comfy.parity(comfy.builtin()) == []  # nothing evicted yet: same as built-in
            ids += [await comfy.submit() for _ in range(2)]
            for job in ids:  # one at a time, each seen before ComfyUI evicts it
                gate.release()
                assert await eventually(lambda job=job: _true(job in comfy.queue.history), WAIT)
                comfy.observe()
                assert await comfy.status_of(job) == "completed"  # without waiting: the barrier
            assert len(comfy.queue.history) == 3 < len(ids)  # ComfyUI evicted (cap 2 + 1) ...
            assert await comfy.parity() == []  # ... the index kept everything
            assert comfy.node.writer.stats["dropped"] == 0
            assert await asyncio.get_running_loop().run_in_executor(None, comfy.node.writer.index.counts_consistent)

    run(scenario())


def test_client_chosen_queue_numbers_are_kept_as_comfyui_holds_them(db_url):
    """POST /prompt with "number" stores float(number): the node records those jobs
    (none rejected) and the index answers their priorities as ComfyUI does, 4.0 as 4.0,
    pending and finished."""
    gate = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate) as comfy:
            ids = [await comfy.submit()]  # runs first and holds the queue
            assert await eventually(lambda: _true(gate.started == ids), WAIT)
            for fields in ({"number": 2.5}, {"number": "7"}, {"number": 4}, {"front": True}, {}):
                ids.append(await comfy.submit(**fields))
            assert await comfy.parity() == []
            _, body = await comfy.get("/api/jobs")
            listed = {job["id"]: json.dumps(job["priority"]) for job in body["jobs"]}
            assert [listed[i] for i in ids] == ["0", "2.5", "7.0", "4.0", "-1", "2"]
            gate.release(len(ids))
            await comfy.finished(len(ids))
            assert await comfy.parity() == []
            _, detail = await comfy.get(f"/api/jobs/{ids[1]}")
            assert (detail["status"], json.dumps(detail["priority"])) == ("completed", "2.5")
            assert comfy.node.writer.stats["failures"] == 0

    run(scenario())


def test_a_restart_keeps_history_and_drops_the_job_that_was_running(db_url):
    """ComfyUI stops with a job running and one pending; the next ComfyUI (empty memory)
    still lists every finished job; the running and pending ones are gone, as ComfyUI
    forgot them (never in_progress forever)."""
    gate = Gate()
    port = free_port()  # restarted on the same port: the same ComfyUI, the same source

    async def first_run():
        async with comfyui(db_url, executor=gate, port=port) as comfy:
            done = [await comfy.submit() for _ in range(3)]
            gate.release(3)
            await comfy.finished(3)
            crashed, queued = await comfy.submit(), await comfy.submit()
            assert await eventually(lambda: _true(gate.started[-1:] == [crashed]), WAIT)
            assert await comfy.status_of(crashed) == "in_progress"
            assert await comfy.status_of(queued) == "pending"
            comfy.node.close()  # ComfyUI dies here: the index saw no more
            gate.release(2)
            return done, crashed, queued

    done, crashed, queued = run(first_run())

    async def second_run():
        async with comfyui(db_url, port=port) as comfy:
            assert comfy.queue.history == {}
            assert await comfy.status_of(crashed) is None
            assert await comfy.status_of(queued) is None
            status, body = await comfy.get("/api/jobs")
            assert status == 200 and sorted(job["id"] for job in body["jobs"]) == sorted(done)
            assert all(job["status"] == "completed" for job in body["jobs"])
            new = await comfy.submit()
            await comfy.finished(1)
            assert await comfy.status_of(new) == "completed"
            _, body = await comfy.get("/api/jobs?limit=1")
            assert body["pagination"]["total"] == 4 and body["jobs"][0]["id"] == new

    run(second_run())


# -- a slow or failing database never stops ComfyUI -----------------------------


class HeldLock:
    """Another connection holding the database's write lock (SQLite) or an exclusive
    table lock (PostgreSQL) until released."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def __enter__(self) -> HeldLock:
        if self.db_url.startswith("sqlite"):
            self.conn = sqlite3.connect(self.db_url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(self.db_url)
            self.conn = self.engine.connect()
            self.transaction = self.conn.begin()
            self.conn.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))  # reads go on, writes wait
        return self

    def __exit__(self, *exc) -> None:
        if self.db_url.startswith("sqlite"):
            self.conn.execute("ROLLBACK")
            self.conn.close()
        else:
            self.transaction.rollback()
            self.conn.close()
            self.engine.dispose()


def test_a_locked_database_never_blocks_the_worker_and_the_index_catches_up(db_url):
    async def scenario():
        async with comfyui(db_url, queue_max=4, wait_ms=200) as comfy:
            warmup = await comfy.submit()
            await comfy.finished(1)
            assert await comfy.status_of(warmup) == "completed"
            with HeldLock(db_url):
                started = time.monotonic()
                ids = [await comfy.submit() for _ in range(12)]
                submitted = time.monotonic() - started
                await comfy.finished(13)  # the worker ran every job meanwhile
                ran = time.monotonic() - started
                # /api/jobs still answers: ComfyUI's in-memory handler, after wait_ms
                assert await comfy.parity(comfy.builtin(), params_list=[{}, {"limit": "2"}], details=False) == []
                assert comfy.node.writer.done_seq < comfy.node.writer.last_seq  # the index is behind
                assert comfy.node.writer.outbox.count() > 0  # changes wait in the outbox, not in the queue
            assert submitted < 3 and ran < 5, (submitted, ran)
            assert await comfy.parity() == []  # caught up: a resync repaired the dropped writes
            assert all([await comfy.status_of(job) == "completed" for job in ids])
            assert comfy.node.writer.outbox.count() == 0

    run(scenario())


def test_an_unusable_database_path_then_recovery(tmp_path):
    """The database cannot even be opened (its path is a directory): ComfyUI runs and
    answers from memory; once the path is usable the index backfills everything."""
    blocker = tmp_path / "db" / "jobs.sqlite3"
    blocker.mkdir(parents=True)  # a directory where the database file should be

    async def scenario():
        async with comfyui(f"sqlite:///{blocker}", wait_ready=False) as comfy:
            node = comfy.node
            assert current() is node
            ids = [await comfy.submit() for _ in range(3)]
            await comfy.finished(3)
            # the writer's first attempt to open the database may still be under way
            assert await eventually(lambda: _true(node.writer.failing is not None), WAIT)
            assert not node.writer.ready
            assert await comfy.parity(comfy.builtin()) == []  # ComfyUI's own answer
            blocker.rmdir()
            assert await eventually(lambda: _true(node.writer.ready), WAIT)
            assert await comfy.parity() == []
            assert all([await comfy.status_of(job) == "completed" for job in ids])

    run(scenario())


# -- routes ----------------------------------------------------------------------


def test_the_middleware_wins_over_builtin_routes_and_a_route_would_not(db_url):
    """ComfyUI's built-in /api/jobs is registered first, so a custom node's route for
    the same path never matches; the middleware answers before any handler."""

    def add_competing_route(server):
        @server.routes.get("/api/jobs")
        async def competing(request):
            return web.json_response({"competing": True})

    async def scenario():
        async with comfyui(db_url, max_history_size=0, before_start=add_competing_route) as comfy:
            ids = [await comfy.submit() for _ in range(3)]
            await comfy.finished(1)
            comfy.node.serving = False  # the middleware passing through: the built-in wins over the route
            status, body = await comfy.get("/api/jobs")
            assert status == 200 and "competing" not in body and body["pagination"]["total"] == 1
            comfy.node.serving = True
            for path in ("/api/jobs", "/api/api/jobs"):
                status, body = await comfy.get(path)
                assert status == 200 and body["pagination"]["total"] == 3  # evicted ones too: the index
            assert sorted(job["id"] for job in body["jobs"]) == sorted(ids)
            assert [await comfy.status_of(job) for job in ids] == ["completed"] * 3

    run(scenario())


def test_a_comfyui_without_jobs_routes_gets_them_from_the_index(db_url):
    async def scenario():
        async with comfyui(db_url, jobs_api=False) as comfy:
            job = await comfy.submit()
            await comfy.finished(1)
            assert await comfy.parity() == []
            assert (await comfy.get(f"/api/api/jobs/{job}"))[1]["status"] == "completed"
            assert await comfy.get("/api/jobs/unknown") == (404, {"error": "Job not found"})
            assert (await comfy.get("/api/jobs?limit=0"))[0] == 400
            comfy.node.serving = False
            async with comfy.session.get(comfy.url + "/api/jobs") as response:
                assert response.status == 404  # nothing without the node

    run(scenario())


def test_the_history_page_is_served_under_jobs_index(db_url):
    """The page at /jobs-index/ of ComfyUI itself, and the API calls it makes (relative
    ``../api/...``: this ComfyUI's /api/jobs, answered from the index)."""

    async def scenario():
        async with comfyui(db_url) as comfy:
            job = await comfy.submit()
            await comfy.finished(1)
            async with comfy.session.get(comfy.url + "/jobs-index?status=completed") as response:
                assert response.status == 200 and response.url.path == "/jobs-index/"
                assert response.url.query_string == "status=completed"
                assert "Content-Security-Policy" in response.headers
                assert '<script src="static/app.js"' in await response.text()
            async with comfy.session.get(comfy.url + "/jobs-index/static/app.js") as response:
                assert response.status == 200 and response.content_type == "text/javascript"
                assert 'new URL("../api/", document.baseURI)' in await response.text()
            async with comfy.session.get(comfy.url + "/jobs-index/static/..%2f__init__.py") as response:
                assert response.status == 404
            status, body = await comfy.get("/api/jobs-index/counts")
            assert status == 200 and body["counts"]["completed"] == 1 and body["total"] == 1
            status, body = await comfy.get("/api/jobs?limit=5&include=source")
            assert status == 200 and body["job_sources"] == {job: comfy.node.writer.source}
            assert (await comfy.get(f"/api/jobs-index/sources?id={job}"))[1]["job_sources"] == {
                job: comfy.node.writer.source
            }
            seen = await asyncio.get_running_loop().run_in_executor(None, _browse_page, comfy.url + "/jobs-index/", job)
            if seen is not None:  # a browser is installed: the page works under this prefix
                assert seen == {"rows": [job], "detail": True, "counts": "1"}

    run(scenario())


def _browse_page(url: str, job: str) -> dict | None:
    """What headless Chromium shows at ``url`` (None without Playwright or chromium:
    tests/test_web_page.py says why it skips)."""
    from .browser import BROWSER_ARGS, CHROMIUM

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if CHROMIUM is None:
        return None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#rows tr", timeout=15_000)
            page.click("#rows tr")
            page.wait_for_selector("#detail h2", timeout=15_000)
            page.wait_for_function("() => document.querySelector('#statuses button .count').textContent !== ''")
            return {
                "rows": page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.id)"),
                "detail": job in page.inner_text("#detail h2"),
                "counts": page.inner_text('#statuses button[data-status="completed"] .count'),
            }
        finally:
            browser.close()


def test_cancel_endpoints_and_queue_edits_still_work(db_url):
    gate = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate) as comfy:
            running, first, second, third, fourth = [await comfy.submit() for _ in range(5)]
            assert await eventually(lambda: _true(gate.started == [running]), WAIT)
            assert await comfy.post(f"/api/jobs/{first}/cancel", None) == (200, {"cancelled": True})
            assert await comfy.status_of(first) is None  # gone at once, as in ComfyUI
            assert await comfy.post("/api/jobs/cancel", {"job_ids": [second]}) == (200, {"cancelled": True})
            assert await comfy.status_of(second) is None
            assert await comfy.post("/api/jobs/cancel", {"job_ids": ["nope"]}) == (
                400,
                {"error": "job_ids contains invalid id(s)", "invalid_ids": ["nope"]},
            )
            assert (await comfy.post("/queue", {"delete": [third]}))[0] == 200
            assert await comfy.status_of(third) is None
            assert await comfy.status_of(fourth) == "pending"
            assert (await comfy.post("/queue", {"clear": True}))[0] == 200
            assert await comfy.status_of(fourth) is None
            assert await comfy.parity() == []
            assert await comfy.post(f"/api/jobs/{running}/cancel", None) == (200, {"cancelled": True})
            await comfy.finished(1)
            assert await comfy.status_of(running) == "cancelled"
            assert await comfy.post(f"/api/jobs/{running}/cancel", None) == (200, {"cancelled": False})
            assert await comfy.parity() == []

    run(scenario())


# -- deletions -------------------------------------------------------------------


def test_deletions_in_comfyui_are_followed(db_url):
    """Deleting from the history panel removes the job from the index (even one ComfyUI
    already evicted); clearing removes this ComfyUI's finished jobs, not its queue and
    not other sources' jobs."""
    gate = Gate()

    async def scenario():
        async with comfyui(db_url, executor=gate, max_history_size=0) as comfy:
            index = comfy.node.writer.index
            other = [from_history(job_id, item) for job_id, item in capture_history().items()]
            await asyncio.get_running_loop().run_in_executor(None, lambda: index.ingest(other, source="other"))
            ids = [await comfy.submit() for _ in range(3)]
            gate.release(3)
            await comfy.finished(1)
            assert ids[0] not in comfy.queue.history  # evicted from memory, still in the index
            assert (await comfy.post("/history", {"delete": [ids[0]]}))[0] == 200
            assert await comfy.status_of(ids[0]) is None
            assert await comfy.status_of(ids[1]) == "completed"
            waiting = await comfy.submit()
            assert (await comfy.post("/history", {"clear": True}))[0] == 200
            assert comfy.node.writer.source == f"{socket.gethostname()}:{comfy.server.port}"
            _, body = await comfy.get(f"/api/jobs?source={comfy.node.writer.source}")
            assert [job["id"] for job in body["jobs"]] == [waiting]
            assert await comfy.status_of(waiting) in ("pending", "in_progress")
            _, body = await comfy.get("/api/jobs?source=other&limit=1")
            assert body["pagination"]["total"] == len(other)
            gate.release()

    run(scenario())


def test_deletions_can_be_kept(db_url):
    async def scenario():
        async with comfyui(db_url, follow_deletes=False) as comfy:
            job = await comfy.submit()
            await comfy.finished(1)
            assert (await comfy.post("/history", {"clear": True}))[0] == 200
            assert comfy.queue.history == {}
            assert await comfy.status_of(job) == "completed"

    run(scenario())


# -- installing ------------------------------------------------------------------


def test_install_import_as_comfyui_does_and_uninstall(tmp_path, monkeypatch):
    root = tmp_path / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "user").mkdir()
    comfy_db = root / "user" / "comfyui.db"
    comfy_db.write_bytes(b"ComfyUI's own database")
    monkeypatch.delenv("JOBS_INDEX_DB", raising=False)
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_user_directory = lambda: str(root / "user")
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)

    runner = CliRunner()
    result = runner.invoke(cli, ["install-comfyui", str(root)])
    assert result.exit_code == 0, result.output
    shim = root / "custom_nodes" / SHIM_DIR / "__init__.py"
    assert shim.is_file() and runner.invoke(cli, ["install-comfyui", str(root)]).exit_code == 0
    assert runner.invoke(cli, ["install-comfyui", str(tmp_path)]).exit_code == 1  # not a ComfyUI

    async def scenario():
        with comfy_modules_installed():
            server = PromptServer(asyncio.get_running_loop())
            # ComfyUI's loader: import the package from its path under a module name.
            spec = importlib.util.spec_from_file_location("custom_nodes.jobs_index_node", shim)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert module.NODE_CLASS_MAPPINGS == {}
            node = current()
            assert node is not None and node.server is server
            assert node.config.db_url == default_db_url()
            assert node.config.db_url.endswith("/ComfyUI/user/jobs-index/jobs.sqlite3")
            await server.start()
            worker = run_worker(server.prompt_queue)
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.post(server.url + "/prompt", json=PROMPT) as response:
                        job = (await response.json())["prompt_id"]
                    assert await eventually(lambda: _true(job in server.prompt_queue.history), WAIT)
                    assert await eventually(lambda: _true(node.writer.ready), WAIT)
                    status, body = await get_json(session, f"{server.url}/api/jobs/{job}")
                    assert status == 200 and body["status"] == "completed"
            finally:
                worker.stop()
                node.close()
                await server.stop()

    run(scenario())
    assert (root / "user" / "jobs-index" / "jobs.sqlite3").is_file()
    assert comfy_db.read_bytes() == b"ComfyUI's own database"
    result = runner.invoke(cli, ["install-comfyui", "--uninstall", str(root)])
    assert result.exit_code == 0 and not (root / "custom_nodes" / SHIM_DIR).exists()
    assert "not installed" in runner.invoke(cli, ["install-comfyui", "--uninstall", str(root)]).output


def test_configuration_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "folder_paths", raising=False)
    config = NodeConfig.from_env({}, comfyui_dir=tmp_path)
    assert config.db_url == f"sqlite:///{tmp_path.resolve()}/user/jobs-index/jobs.sqlite3"
    assert (config.source, config.serve, config.follow_deletes) == (None, None, True)  # None: <host>:<port>; auto
    assert config.outbox == f"{tmp_path.resolve()}/user/jobs-index/outbox.sqlite3"
    assert NodeConfig.from_env({"JOBS_INDEX_OUTBOX": "off"}, comfyui_dir=tmp_path).outbox is None
    config = NodeConfig.from_env(
        {
            "JOBS_INDEX_DB": "postgresql+psycopg://u@h/db",
            "JOBS_INDEX_SOURCE": "gpu1",
            "JOBS_INDEX_SERVE": "0",
            "JOBS_INDEX_FOLLOW_DELETES": "no",
            "JOBS_INDEX_QUEUE_MAX": "10",
            "JOBS_INDEX_WAIT_MS": "50",
        }
    )
    assert (config.db_url, config.source, config.serve, config.follow_deletes, config.queue_max, config.wait_ms) == (
        "postgresql+psycopg://u@h/db",
        "gpu1",
        False,
        False,
        10,
        50,
    )

    async def scenario():
        with comfy_modules_installed():
            server = PromptServer(asyncio.get_running_loop())
            bad = NodeConfig.from_env({"JOBS_INDEX_DB": str(tmp_path / "user" / "comfyui.db")})
            assert setup(server, config=bad) is None  # never ComfyUI's own database
            assert server.app.middlewares == [] and "put" not in vars(server.prompt_queue)

    run(scenario())


def test_a_database_error_mid_stream_closes_the_connection_not_handed_to_comfyui(index, db_url):
    """Issue 18 item 4 inside ComfyUI: a streamed /api/jobs answer whose database
    fails after the body began is cut off (the client sees an incomplete body at
    once); the request is not handed to ComfyUI's own handler (which would write a
    second response into the first)."""
    from .bulkdata import bulk_load
    from .test_stream_errors import PROMPT_S, read_broken_listing, record_checkouts
    from .test_stream_snapshot import BIG

    bulk_load(index, BIG)  # the node's database: a listing larger than the socket buffers
    reached_comfyui: list[str] = []

    def watch_builtin(server):
        @web.middleware
        async def inner(request, handler):  # runs only when the node passes a request on
            reached_comfyui.append(request.path)
            return await handler(request)

        server.app.middlewares.append(inner)

    async def scenario():
        async with comfyui(db_url, before_start=watch_builtin) as comfy:
            checkouts = record_checkouts(comfy.node.writer.index.engine)
            async with comfy.session.get(comfy.url + "/api/jobs") as response:
                body, took = await read_broken_listing(response, checkouts[-1], db_url)
            assert took < PROMPT_S
            assert body.startswith(b'{"jobs": [') and b'"pagination"' not in body
            assert "/api/jobs" not in reached_comfyui
            status, page = await comfy.get("/api/jobs?limit=2")  # the node still answers
            assert status == 200 and page["pagination"]["total"] == BIG

    run(scenario())
