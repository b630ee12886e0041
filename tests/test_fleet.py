"""Many readers: ``jobs-index serve`` is stateless. Three real server processes on
the same database (one SQLite file / one PostgreSQL schema) answer every query with
the same body, and a cursor walk may hop servers page by page (as behind a load
balancer) and still equal one server's walk. A write made elsewhere is seen by
all servers on their next request (no cache)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from jobs_index import JobsIndex
from jobs_index.normalize import from_history, from_queue
from jobs_index.sample import synthetic_history

from .conftest import BACKENDS, make_db_url

JOBS_INDEX = Path(sys.executable).with_name("jobs-index")
SERVERS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(base: str, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(base + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if get(base, "/api/jobs?limit=1")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"server at {base} not ready after {timeout}s")


@pytest.fixture(scope="module", params=BACKENDS)
def fleet(request, tmp_path_factory):
    """The database filled through the library, then three ``serve`` processes on it
    (started once per backend for the whole module)."""
    urls = make_db_url(request.param, tmp_path_factory.mktemp("fleet"))
    db_url = next(urls)
    try:
        yield from _fleet(db_url)
    finally:
        urls.close()  # drops the PostgreSQL schema


def _fleet(db_url: str):
    history = [from_history(job_id, item) for job_id, item in synthetic_history(240, seed=7)]
    queued = [
        from_queue(
            [1000 + i, f"queued-{i}", {}, {"create_time": history[-1].create_time + i}, []],
            "pending" if i else "in_progress",
        )
        for i in range(4)
    ]
    with JobsIndex.open(db_url) as index:
        index.ingest(history[:120], source="gpu-1")
        index.ingest(history[120:], source="gpu-2")
        index.ingest(queued, source="gpu-2")
    procs, bases = [], []
    try:
        for _ in range(SERVERS):
            port = free_port()
            proc = subprocess.Popen(
                [str(JOBS_INDEX), "--db", db_url, "serve", "--port", str(port), "--pool-size", "2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(procs, bases, strict=True):
            wait_ready(proc, base)
        workflow = Counter(r.workflow_id for r in history).most_common(1)[0][0]
        yield bases, history, workflow, db_url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def queries(workflow: str, some_id: str) -> list[str]:
    qs = [
        "",
        "limit=10",
        "limit=10&offset=25",
        "sort_order=asc&limit=7",
        "status=pending,in_progress",
        "status=failed,cancelled&limit=5",
        "status=completed&sort_by=execution_duration&limit=9",
        f"workflow_id={workflow}",
        f"workflow_id={workflow}&status=completed&limit=3",
        "source=gpu-1&limit=11",
        "source=gpu-2&status=pending",
        "limit=0",
        "status=bogus",
        "after=not-a-cursor&limit=5",
        "limit=1000000",
    ]
    return [f"/api/jobs?{q}" if q else "/api/jobs" for q in qs] + [
        f"/api/jobs/{urllib.parse.quote(some_id)}",
        "/api/jobs/no-such-job",
        "/api/api/jobs?limit=2",
    ]


def test_servers_answer_identically(fleet):
    bases, history, workflow, _ = fleet
    for path in queries(workflow, history[17].id):
        answers = [get(base, path) for base in bases]
        assert all(a == answers[0] for a in answers[1:]), path
    # Sanity: the listing is the whole index.
    status, body = get(bases[0], "/api/jobs")
    assert status == 200 and body["pagination"]["total"] >= len(history) + 4


@pytest.mark.parametrize(
    "params",
    [
        "limit=13",
        "limit=9&sort_order=asc",
        "limit=5&status=completed,failed",
        "limit=4&source=gpu-2",
        "limit=6&workflow_id={workflow}",
    ],
)
def test_cursor_walk_hops_servers(fleet, params):
    """Page 1 from A, page 2 from B with A's cursor, page 3 from C, ...: the same
    pages, cursors included, as walking on one server."""
    bases, _, workflow, _ = fleet
    params = params.format(workflow=workflow)

    def walk(pick) -> list[dict]:
        pages, after = [], None
        while True:
            path = f"/api/jobs?{params}" + (f"&after={after}" if after else "")
            status, body = get(pick(len(pages)), path)
            assert status == 200, body
            pages.append(body)
            after = body["pagination"].get("next_cursor")
            if not body["pagination"]["has_more"]:
                return pages
            assert after and len(pages) < 200

    hopping = walk(lambda n: bases[n % len(bases)])
    single = walk(lambda n: bases[0])
    assert hopping == single
    ids = [job["id"] for page in hopping for job in page["jobs"]]
    assert len(ids) == len(set(ids)) == hopping[0]["pagination"]["total"]
    status, whole = get(bases[1], f"/api/jobs?{params.split('&', 1)[1] if '&' in params else ''}")
    assert [job["id"] for job in whole["jobs"]] == ids


def test_a_write_is_seen_by_every_server(fleet):
    bases, history, _, db_url = fleet
    before = [get(base, "/api/jobs?limit=1")[1]["pagination"]["total"] for base in bases]
    with JobsIndex.open(db_url) as index:  # an importer elsewhere in the fleet
        index.ingest(
            [from_queue([5000, "late-arrival", {}, {"create_time": history[-1].create_time + 99}, []], "pending")],
            source="gpu-3",
        )
    for base, total in zip(bases, before, strict=True):
        status, body = get(base, "/api/jobs?limit=1")
        assert body["pagination"]["total"] == total + 1
        assert body["jobs"][0]["id"] == "late-arrival"
        assert get(base, "/api/jobs?source=gpu-3")[1]["pagination"]["total"] == 1
