"""A ComfyUI process with the custom node, killed (issue 19 item 3, and the lease of
item 1 across a crash): jobs that finished while the database was down are in the
outbox beside ComfyUI's user directory and reach the index when ComfyUI starts again
with the database back; a restarted ComfyUI takes over the lease its killed
predecessor held at once. The stand-in ComfyUI runs as a real process
(``tests.standins.comfy_process``), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jobs_index import JobsIndex
from jobs_index.errors import JobNotFound

from .fixtures_util import load_capture
from .test_fleet import free_port

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = load_capture("post_prompt_success.json")["request"]["body"]
WAIT = 30.0


class ComfyProcess:
    def __init__(self, comfy_dir: Path, port: int, db_url: str, log: Path) -> None:
        env = {**os.environ, "JOBS_INDEX_DB": db_url, "PYTHONPATH": str(ROOT)}
        env.pop("JOBS_INDEX_SOURCE", None)
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.standins.comfy_process", "--port", str(port), "--dir", str(comfy_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), f"stand-in ComfyUI did not start: {line!r} (see {log})"
        self.url = line.split()[1]

    def submit(self) -> str:
        request = urllib.request.Request(
            self.url + "/prompt", data=json.dumps(PROMPT).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["prompt_id"]

    def history(self) -> dict:
        with urllib.request.urlopen(self.url + "/history", timeout=10) as response:
            return json.loads(response.read())

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no atexit, no flush, no lease release
        self.proc.wait(timeout=20)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: ComfyUI exits, atexit runs
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.log.close()


def until(check, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.1)


def statuses(db_url: str, ids: list[str]) -> dict[str, str | None]:
    found = {}
    with JobsIndex.open(db_url) as index:
        for job_id in ids:
            try:
                found[job_id] = index.get_job(job_id)["status"]
            except JobNotFound:
                found[job_id] = None
    return found


def outbox_finished(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE kind = 'finished'").fetchone()[0]
    except sqlite3.OperationalError:  # the node is creating it right now
        return 0
    finally:
        conn.close()


def test_jobs_finished_while_the_database_was_down_survive_a_killed_comfyui(db_url, tmp_path):
    comfy_dir = tmp_path / "ComfyUI"
    (comfy_dir / "user").mkdir(parents=True)
    outbox = comfy_dir / "user" / "jobs-index" / "outbox.sqlite3"
    port = free_port()
    log = tmp_path / "comfyui.log"
    if db_url.startswith("sqlite"):
        blocker = Path(db_url.removeprefix("sqlite:///"))
        blocker.mkdir(parents=True)  # a directory where the database file should be
        down_url = db_url
    else:
        blocker = None
        down_url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    comfy = ComfyProcess(comfy_dir, port, down_url, log)
    try:
        ids = [comfy.submit() for _ in range(4)]
        until(lambda: len(comfy.history()) == 4, what="4 jobs finished")
        until(lambda: outbox_finished(outbox) == 4, what="4 finished jobs in the outbox")
    finally:
        comfy.kill()
    if blocker is not None:
        blocker.rmdir()  # the database is back
    source = f"{socket.gethostname()}:{port}"

    comfy = ComfyProcess(comfy_dir, port, db_url, log)
    try:
        until(lambda: set(statuses(db_url, ids).values()) == {"completed"}, what="the outbox replayed")
        with JobsIndex.open(db_url) as index:
            assert index.lease_of(source)[0].split("/")[1] == str(comfy.proc.pid)
        assert outbox_finished(outbox) == 0
        late = comfy.submit()
        until(lambda: statuses(db_url, [late])[late] == "completed", what="a job of the second run")
    finally:
        comfy.kill()  # killed holding its source's lease (60 s)

    started = time.monotonic()
    comfy = ComfyProcess(comfy_dir, port, db_url, log)
    try:
        third = comfy.submit()
        until(lambda: statuses(db_url, [third])[third] == "completed", what="the lease taken over")
        assert time.monotonic() - started < 30  # not after the dead holder's lease expired
        with JobsIndex.open(db_url) as index:
            assert index.lease_of(source)[0].split("/")[1] == str(comfy.proc.pid)
            assert index.total() == 6
    finally:
        comfy.stop()
    with JobsIndex.open(db_url) as index:
        assert index.lease_of(source) is None  # a clean stop releases it
