"""The custom node as a good citizen of ComfyUI's process: ComfyUI's own start-up
(its Alembic upgrade of ``comfyui.db`` on the main thread, right after the custom
nodes are imported) and the node's start never touch each other's database, and the
node leaves process-wide state (logging, ``sys.path``, SQLAlchemy registries and
listeners) as it found it. Runs the stand-in ComfyUI of ``tests.standins``."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from jobs_index import JobsIndex
from jobs_index.comfyui import NodeConfig, setup
from jobs_index.database import VERSION_TABLE, head_revision
from jobs_index.schema import Base

from .standins import comfy_database
from .standins.comfy_server import PromptServer, comfy_modules_installed
from .test_custom_node import WAIT as DB_WAIT
from .test_custom_node import _true, comfyui, eventually, run

WAIT = 60.0
# The models' tables, the version table, and SQLite's search tables (0008_search: not
# models; FTS5 adds its shadow tables job_search_fts_*).
SEARCH_TABLES = frozenset(
    {"job_search", "job_search_fts", "job_search_fts_data", "job_search_fts_idx", "job_search_fts_config"}
    | {"job_search_orphans"}  # 0009_search_narrow
    | {"job_search_grams"}  # 0012_search_grams
    | {"job_search_facets"}  # 0014_search_facets
)
OUR_TABLES = frozenset(Base.metadata.tables) | {VERSION_TABLE} | SEARCH_TABLES


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    finally:
        conn.close()


def scalar(path: Path, sql: str):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def logging_state() -> dict:
    """Everything a ``logging.config.fileConfig``/``basicConfig`` would change."""
    manager = logging.Logger.manager
    loggers = {
        name: (logger.level, logger.disabled, logger.propagate, tuple(logger.handlers))
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root = logging.getLogger()
    return {"root": (root.level, tuple(root.handlers)), "disable": manager.disable, "loggers": loggers}


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# Delays between the node's start and ComfyUI's own upgrade: from "at once" to "well
# into the node's first open", so every phase of both start-ups meets the other.
DELAYS = (0.0, 0.001, 0.004, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.25)


@pytest.mark.timeout(900)
def test_comfyui_database_start_up_and_the_node_never_cross(tmp_path, caplog):
    """20 fresh starts in a row, each as ComfyUI does it: the node is set up (import of
    the custom node), then on the main thread ComfyUI upgrades its own ``comfyui.db``
    with its own Alembic scripts. Each time ComfyUI's upgrade succeeds, its file is at
    its head with exactly its tables, ours holds exactly ours, the node becomes ready
    without a failure, and logging and ``sys.path`` are as before."""
    caplog.set_level(logging.INFO, logger="jobs_index")
    comfy_logger = logging.getLogger("comfy.standin")  # a logger ComfyUI configured before
    comfy_logger.setLevel(logging.DEBUG)
    before, path_before = logging_state(), list(sys.path)
    for attempt in range(20):
        user = tmp_path / f"user{attempt}"
        ours, theirs = user / "jobs-index" / "jobs.sqlite3", user / "comfyui.db"
        user.mkdir()  # ComfyUI's user directory exists before it starts
        loop = asyncio.new_event_loop()
        try:
            with comfy_modules_installed():
                server = PromptServer(loop)
                node = setup(server, config=NodeConfig(db_url=f"sqlite:///{ours}", source="standin", retry_cap=0.2))
                assert node is not None
                try:
                    time.sleep(DELAYS[attempt % len(DELAYS)])
                    comfy_database.init_db(f"sqlite:///{theirs}")  # raises if the two migrations crossed
                    assert wait_until(lambda node=node: node.writer.ready), f"start {attempt}: {node.writer.failing}"
                    assert node.writer.stats["failures"] == 0, f"start {attempt}: {node.writer.failing}"
                finally:
                    node.close()
        finally:
            loop.close()
        assert tables(theirs) == comfy_database.TABLES, f"start {attempt}"
        assert scalar(theirs, "SELECT version_num FROM alembic_version") == comfy_database.HEAD
        assert scalar(theirs, "PRAGMA journal_mode") == "delete"  # none of our connection settings
        assert tables(ours) == OUR_TABLES, f"start {attempt}"
        assert scalar(ours, f"SELECT version_num FROM {VERSION_TABLE}") == head_revision()
    errors = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert errors == []
    after = logging_state()  # loggers created since (alembic's, sqlalchemy's) are not compared
    assert (after["root"], after["disable"]) == (before["root"], before["disable"])
    assert {name: after["loggers"][name] for name in before["loggers"]} == before["loggers"]
    assert not comfy_logger.disabled and comfy_logger.level == logging.DEBUG
    assert sys.path == path_before
    assert set(comfy_database.metadata.tables) == set(comfy_database.TABLES) - {"alembic_version"}
    assert frozenset(Base.metadata.tables) | {VERSION_TABLE} | SEARCH_TABLES == OUR_TABLES


# -- an index that cannot be opened ------------------------------------------------


def open_failure_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("jobs_index") and record.levelno >= logging.ERROR
    ]


async def unavailable_then_back(db_url: str, caplog, fix, *words: str) -> None:
    """ComfyUI starts, runs jobs and answers /api/jobs from its memory while the index
    cannot be opened; one log line says why and what to do; after ``fix()`` the node
    opens the index and catches up from ComfyUI's memory."""
    async with comfyui(db_url, wait_ready=False) as comfy:
        node = comfy.node
        ids = [await comfy.submit() for _ in range(3)]
        await comfy.finished(3)
        assert await eventually(lambda: _true(node.writer.failing is not None), DB_WAIT)
        assert not node.writer.ready
        assert await comfy.parity(comfy.builtin()) == []  # ComfyUI's own answer, from memory
        await asyncio.sleep(1.5)  # retries every <= 0.2 s meanwhile: still one line
        (line,) = open_failure_lines(caplog)
        assert "cannot open the jobs index" in line and "answers /api/jobs from its own memory" in line
        for word in words:
            assert word in line, (word, line)
        result = fix()
        if asyncio.iscoroutine(result):
            await result
        # a new schema is created by a child process: allow for a loaded machine
        assert await eventually(lambda: _true(node.writer.ready), WAIT)
        assert await comfy.parity() == []  # caught up from ComfyUI's memory
        assert [await comfy.status_of(job) for job in ids] == ["completed"] * 3


def test_a_damaged_index_file_then_moved_aside(tmp_path, caplog):
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not a SQLite database, it was damaged " * 200)
    run(
        unavailable_then_back(
            f"sqlite:///{path}",
            caplog,
            lambda: path.rename(tmp_path / "damaged.sqlite3"),
            "file is not a database",
            "is damaged: move it aside",
        )
    )


def test_an_index_from_a_newer_jobs_index_is_left_alone(tmp_path, caplog):
    path = tmp_path / "jobs.sqlite3"
    JobsIndex.open(f"sqlite:///{path}").close()

    def set_revision(revision: str) -> None:
        sqlite3.connect(path).execute(f"UPDATE {VERSION_TABLE} SET version_num = ?", (revision,)).connection.commit()

    set_revision("9999_from_the_future")
    run(
        unavailable_then_back(
            f"sqlite:///{path}",
            caplog,
            lambda: set_revision(head_revision()),
            "'9999_from_the_future'",
            "written by a newer jobs-index: update this node",
        )
    )
    assert not list(tmp_path.glob("*.bak-*"))  # no upgrade attempted (no backup made)


def _read_only(directory: Path) -> bool:
    """Make ``directory`` read-only for this process (root ignores modes: use the
    immutable attribute there). False if neither works here."""
    directory.chmod(0o555)
    probe = directory / "probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    directory.chmod(0o755)
    return subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0


def _writable(directory: Path) -> None:
    subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    directory.chmod(0o755)


def test_a_read_only_directory_then_writable(tmp_path, caplog):
    directory = tmp_path / "ro"
    directory.mkdir()
    if not _read_only(directory):
        pytest.skip("cannot make a directory read-only for this user here")
    try:
        run(
            unavailable_then_back(
                f"sqlite:///{directory / 'jobs.sqlite3'}",
                caplog,
                lambda: _writable(directory),
                "unable to open database file",
                "writable",
            )
        )
    finally:
        _writable(directory)


class TcpProxy:
    """A PostgreSQL server that is down until ``up()``: a loopback port refusing
    connections, then forwarding them to the real server. It forwards on its own
    thread's event loop, as a real server would answer: the node may make a blocking
    database call on ComfyUI's loop (lease release at close), which must not wait on
    that same loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nothing listens there until up()
        self.server = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def up(self) -> None:
        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        ready = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()

            async def start() -> None:
                self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
                ready.set()

            loop.run_until_complete(start())
            loop.run_forever()
            loop.close()

        threading.Thread(target=serve, name="pg-proxy", daemon=True).start()
        assert ready.wait(10), "the proxy did not start"

    def close(self) -> None:
        """Stop forwarding: the connections' tasks are cancelled and awaited on the
        proxy's loop (a pending task left to the garbage collector logs "Task was
        destroyed but it is pending!" in whichever test runs then)."""
        if self._loop is None or self.server is None:
            return
        server = self.server

        async def shutdown() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def test_postgresql_down_at_start_then_back(pg_url, caplog):
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    down = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        run(unavailable_then_back(down, caplog, proxy.up, "Connection refused", "start the database server"))
    finally:
        proxy.close()
