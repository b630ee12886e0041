"""The jobs-index command, run as a real subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .fixtures_util import capture_history, load_capture

EXE = [sys.executable, "-m", "jobs_index.cli"]


def run(*args: str, db: str | None = None, stdin: bytes | None = None, env=None) -> subprocess.CompletedProcess:
    command = EXE + (["--db", db] if db else []) + list(args)
    return subprocess.run(command, input=stdin, capture_output=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def dumps(tmp_path: Path) -> dict[str, Path]:
    history = tmp_path / "history.json"
    history.write_text(json.dumps(capture_history()))
    queue = tmp_path / "queue.json"
    queue.write_text(json.dumps(load_capture("queue_running_pending.json")["body"]))
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": json')
    return {"history": history, "queue": queue, "broken": broken}


def test_import_history_and_queue(db_url, dumps):
    done = run("import", str(dumps["history"]), str(dumps["queue"]), db=db_url)
    assert done.returncode == 0, done.stderr
    # Two of the three queued jobs finished later in the run: their queue versions are
    # older than their history rows and change nothing; the job cancelled while
    # pending never reached history and is indexed as pending.
    assert done.stdout.decode().strip() == "2 file(s): 8 inserted, 0 updated, 2 unchanged, 0 rejected"
    again = run("import", str(dumps["history"]), db=db_url)
    assert "0 inserted, 0 updated, 7 unchanged" in again.stdout.decode()


def test_import_from_stdin_and_env_var(sqlite_url, dumps):
    done = run("import", "-", stdin=dumps["history"].read_bytes(), env={"JOBS_INDEX_DB": sqlite_url})
    assert done.returncode == 0, done.stderr
    assert "7 inserted" in done.stdout.decode()


def test_bad_file_is_reported_and_the_good_one_imported(sqlite_url, dumps):
    done = run("import", str(dumps["broken"]), str(dumps["history"]), db=sqlite_url)
    assert done.returncode == 0
    assert "broken.json: not valid JSON" in done.stderr.decode()
    assert "7 inserted" in done.stdout.decode()


@pytest.mark.parametrize("content", ['{"not": json', "[1, 2]", '{"a": {"outputs": {}}}'])
def test_nothing_valid_exits_non_zero(sqlite_url, tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    done = run("import", str(path), db=sqlite_url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr.decode()
    assert done.stderr.decode().strip()


def test_missing_file_and_bad_url_are_one_line_errors(tmp_path):
    done = run("import", str(tmp_path / "nope.json"), db=f"sqlite:///{tmp_path}/x.sqlite3")
    assert done.returncode == 1 and "cannot read" in done.stderr.decode()
    done = run("import", str(tmp_path / "nope.json"), db="mysql://nobody@nowhere/db")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("Error: unsupported database")


def test_every_command_has_help_with_an_example():
    top = run("--help").stdout.decode()
    assert "jobs-index" in top and "Default:" in top  # names the default database file
    commands = [line.split()[0] for line in top.split("Commands:")[1].strip().splitlines()]
    assert {"import", "serve", "demo", "migrate"} <= set(commands)
    for command in commands:
        text = run(command, "--help").stdout.decode()
        assert "Example" in text, command


def test_serve_answers_on_loopback(sqlite_url, dumps):
    assert run("import", str(dumps["history"]), db=sqlite_url).returncode == 0
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        EXE + ["--db", sqlite_url, "serve", "--port", str(port)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        line = server.stderr.readline().decode()
        assert f"http://127.0.0.1:{port}/api/jobs (loopback only)" in line
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs?limit=2", timeout=5) as reply:
                    body = json.loads(reply.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert body["pagination"]["total"] == 7 and len(body["jobs"]) == 2
        assert f"history page http://127.0.0.1:{port}/ui/" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?status=failed", timeout=5) as reply:  # redirected
            assert reply.url == f"http://127.0.0.1:{port}/ui/?status=failed"
            assert reply.headers.get_content_type() == "text/html" and b"static/app.js" in reply.read()
    finally:
        server.terminate()
        server.wait(10)
