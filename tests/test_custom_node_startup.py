"""The custom node as a good citizen of ComfyUI's process: ComfyUI's own start-up
(its Alembic upgrade of ``comfyui.db`` on the main thread, right after the custom
nodes are imported) and the node's start never touch each other's database, and the
node leaves process-wide state (logging, ``sys.path``, SQLAlchemy registries and
listeners) as it found it. Runs the stand-in ComfyUI of ``tests.standins``."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from jobs_index.comfyui import NodeConfig, setup
from jobs_index.database import VERSION_TABLE, head_revision
from jobs_index.schema import Base

from .standins import comfy_database
from .standins.comfy_server import PromptServer, comfy_modules_installed

WAIT = 60.0
OUR_TABLES = frozenset(Base.metadata.tables) | {VERSION_TABLE}


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
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
    loggers = {name: (logger.level, logger.disabled, logger.propagate, tuple(logger.handlers))
               for name, logger in manager.loggerDict.items() if isinstance(logger, logging.Logger)}
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
        loop = asyncio.new_event_loop()
        try:
            with comfy_modules_installed():
                server = PromptServer(loop)
                node = setup(server, config=NodeConfig(db_url=f"sqlite:///{ours}", retry_cap=0.2))
                assert node is not None
                try:
                    time.sleep(DELAYS[attempt % len(DELAYS)])
                    comfy_database.init_db(f"sqlite:///{theirs}")  # raises if the two migrations crossed
                    assert wait_until(lambda: node.writer.ready), f"start {attempt}: {node.writer.failing}"
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
    assert frozenset(Base.metadata.tables) | {VERSION_TABLE} == OUR_TABLES
