"""Nothing leaks (issue #6, item 5).

ComfyUI's queue items carry a sixth, sensitive element in memory (API keys for paid
API nodes, e.g. ``{"api_key_comfy_org": ...}``). A dump may contain it (a queue or
history dump written by a patched server, a custom node, a debugging session). We
plant a key in the sixth element of every queue and history item, import the dumps
with the real ``jobs-index`` command (logging at DEBUG, SQLAlchemy's statement and
row logging included), serve them with logging at DEBUG captured to a file, hit
every endpoint, then search for the key in: every answer, the SQLite file, its WAL
and shared-memory files, every ``raw`` blob after decompression, every text cell of
every table, and all the logs. On PostgreSQL: every cell, blobs decompressed.

Also: ``serve`` binds 127.0.0.1 by default, says so at start, and is not reachable
on another local address.
"""

from __future__ import annotations

import copy
import json
import socket
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard
from sqlalchemy import create_engine, inspect, text

from jobs_index import JobsIndex, rawcodec
from jobs_index.ingest import detect, import_dump

from .fixtures_util import capture_history, capture_queue
from .reliability_support import RawClient, ServeProcess, free_port, sqlite_file

SECRET = "sk-PLANTED-SECRET-123"
SENSITIVE = {"api_key_comfy_org": SECRET, "auth_token_comfy_org": SECRET + "-token"}
NEEDLES = [SECRET.encode(), SECRET.encode("utf-16-le"), b"PLANTED-SECRET"]

# Runs the real CLI with the root logger at DEBUG writing to a file (the CLI's own
# basicConfig is then a no-op), so every logger, SQLAlchemy's included, is captured.
DEBUG_CLI = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, filename=sys.argv[1],
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("sqlalchemy").setLevel(logging.DEBUG)  # statements, parameters, rows
sys.argv = ["jobs-index"] + sys.argv[2:]
from jobs_index.cli import main
main()
"""


def planted_dumps() -> tuple[dict, dict]:
    """A history and a queue dump whose prompt arrays carry the sensitive element."""
    history = copy.deepcopy(capture_history())
    for item in history.values():
        item["prompt"] = list(item["prompt"][:5]) + [SENSITIVE]
    running, pending = capture_queue()
    queue = {
        "queue_running": [list(i[:5]) + [SENSITIVE] for i in running],
        "queue_pending": [list(i[:5]) + [SENSITIVE] for i in pending],
    }
    # The queued jobs are not in this history, so both kinds of row are served.
    for item in running + pending:
        history.pop(item[1], None)
    # A malformed item with the secret too: it is rejected, and its reason is printed.
    queue["queue_pending"].append(["not-a-number", "bad-item", {}, {}, [], SENSITIVE])
    return history, queue


def assert_clean(blob: bytes, where: str) -> None:
    for needle in NEEDLES:
        assert needle not in blob, f"planted secret found in {where}"


def every_cell(conn) -> list[tuple[str, object]]:
    """(table.column, value) of every cell of every table of the index. (SQLite's
    contentless FTS5 table cannot be read row by row: its words are in its shadow
    tables, ``job_search_fts_data`` etc., read like the others.)"""
    cells = []
    for table in inspect(conn).get_table_names():
        if table == "job_search_fts":
            continue
        result = conn.execute(text(f'SELECT * FROM "{table}"'))
        for row in result:
            cells += [(f"{table}.{column}", value) for column, value in zip(result.keys(), row, strict=True)]
    return cells


def assert_cells_clean(cells) -> int:
    blobs = 0
    dictionaries = {  # raw compressed with a trained dictionary (rawcodec) is searched decompressed too
        d.id: d for d in (rawcodec.dictionary_of(bytes(v)) for w, v in cells if w == "raw_dictionaries.data")
    }
    for where, value in cells:
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            assert_clean(value, where)
            try:
                if value[:4] == rawcodec.ZSTD_MAGIC:
                    dict_id = zstandard.get_frame_parameters(value).dict_id
                    value = rawcodec.decode(value, dict_id or None, dictionaries.__getitem__)
                else:
                    value = zlib.decompress(value)
                blobs += 1
            except zlib.error:
                continue
            assert_clean(value, f"{where} (decompressed)")
        elif value is not None:
            assert_clean(str(value).encode("utf-8", "surrogatepass"), where)
    return blobs


def endpoint_targets(ids: list[str]) -> list[str]:
    targets = []
    for prefix in ("/api", "/api/api"):
        targets += [
            f"{prefix}/jobs",
            f"{prefix}/jobs?limit=1",
            f"{prefix}/jobs?limit=5000",
            f"{prefix}/jobs?status=pending,in_progress",
            f"{prefix}/jobs?sort_by=execution_duration",
            f"{prefix}/jobs?status=failed&sort_order=asc&limit=2",
            f"{prefix}/jobs?after=junk",
            f"{prefix}/jobs/unknown-id",
            f"{prefix}/jobs?source=x",
        ]
        targets += [f"{prefix}/jobs/{job_id}" for job_id in ids]
    targets += ["/", "/api", "/history", "/queue", "/api/jobs/%2F", "/metrics", "/healthz", "/readyz"]
    return targets


def test_planted_api_key_is_never_stored_logged_or_served(tmp_path):
    history, queue = planted_dumps()
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "queue.json").write_text(json.dumps(queue))
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    import_log = tmp_path / "import.log"
    # Create the index and hold a connection open for the whole test: the WAL then
    # keeps every frame the import writes (the last connection to close would
    # checkpoint and delete it), so the WAL's bytes are searched too.
    JobsIndex.open(url).close()
    keeper = sqlite3.connect(sqlite_file(url))
    keeper.execute("SELECT count(*) FROM jobs").fetchall()

    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            DEBUG_CLI,
            str(import_log),
            "--db",
            url,
            "-v",
            "import",
            str(tmp_path / "history.json"),
            str(tmp_path / "queue.json"),
        ],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr.decode()
    assert b"1 rejected" in imported.stdout and b"bad-item" in imported.stderr
    assert b"sqlalchemy.engine" in import_log.read_bytes()  # statements really were logged
    for name, blob in (
        ("import stdout", imported.stdout),
        ("import stderr", imported.stderr),
        ("import log", import_log.read_bytes()),
    ):
        assert_clean(blob, name)

    ids = list(history) + [item[1] for item in queue["queue_running"] + queue["queue_pending"][:-1]]
    serve_log = tmp_path / "serve.log"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", DEBUG_CLI, str(serve_log), "--db", url, "-v", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        client = RawClient(port)
        _wait_for_port(port, server)
        answers = b""
        served = set()
        for target in endpoint_targets(ids):
            reply = client.get(target)
            assert reply.status < 500, (target, reply.status)
            answers += reply.raw + json.dumps(reply.headers).encode()
            if reply.status == 200 and "/jobs/" in target:
                served.add(reply.json()["id"])
        assert served == set(ids)  # every job was served, queued and finished ones
        client.close()
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert_clean(answers, "HTTP answers")
    assert_clean(out + err, "serve stdout/stderr")
    log_bytes = serve_log.read_bytes()
    assert b"sqlalchemy.engine" in log_bytes and b"DEBUG" in log_bytes
    assert_clean(log_bytes, "serve log")

    # The database files, byte for byte (main file, WAL, shared memory, backups).
    db_files = sorted(tmp_path.glob("jobs.sqlite3*"))
    wal = sqlite_file(url).with_name("jobs.sqlite3-wal")
    assert wal in db_files and wal.stat().st_size > 100_000, "the WAL holds the import's frames"
    for path in db_files:
        assert_clean(path.read_bytes(), path.name)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            blobs = assert_cells_clean(every_cell(conn))
    finally:
        engine.dispose()
    assert blobs >= len(ids)  # every raw item was decompressed and searched
    # And the raw pages: decompress every zlib stream found anywhere in the files.
    for path in db_files:
        assert_clean(_inflate_all(path.read_bytes()), f"{path.name} (every zlib stream)")
    keeper.close()


def test_planted_api_key_is_never_in_json_logs(tmp_path):
    """``serve --log-format json`` at DEBUG (SQLAlchemy's statements and rows too):
    every line of the log is one JSON event, and none holds the planted key."""
    history, queue = planted_dumps()
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with JobsIndex.open(url) as index:
        import_dump(index, detect("history.json", history))
        import_dump(index, detect("queue.json", queue))
    ids = list(history) + [item[1] for item in queue["queue_running"] + queue["queue_pending"][:-1]]
    serve_log = tmp_path / "serve.log"
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DEBUG_CLI,
            str(serve_log),
            "--db",
            url,
            "-v",
            "serve",
            "--port",
            str(port),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        client = RawClient(port)
        _wait_for_port(port, server)
        answers = b""
        for target in endpoint_targets(ids):
            reply = client.get(target)
            assert reply.status < 500, (target, reply.status)
            answers += reply.raw
        client.close()
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert_clean(answers + out + err, "HTTP answers, serve stdout/stderr")
    lines = serve_log.read_bytes().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    assert all(set(event) >= {"time", "level", "logger", "message"} for event in events)
    assert any(e["logger"].startswith("sqlalchemy.engine") and e["level"] == "DEBUG" for e in events)
    assert any(e["message"].startswith("jobs-index serving http://127.0.0.1:") for e in events)
    assert_clean(serve_log.read_bytes(), "serve JSON log")
    for event in events:  # the key is not hidden by JSON escaping either
        assert_clean(event["message"].encode("utf-8", "surrogatepass"), "a JSON log message")


def test_planted_api_key_is_never_stored_on_postgresql(pg_url):
    history, queue = planted_dumps()
    with JobsIndex.open(pg_url) as index:
        result = import_dump(index, detect("history", history))
        result.add(import_dump(index, detect("queue", queue)))
        assert len(result.rejected) == 1
        with index.engine.connect() as conn:
            cells = every_cell(conn)
        assert assert_cells_clean(cells) >= len(history)
        for job_id in history:
            assert_clean(json.dumps(index.get_job(job_id)).encode(), f"detail of {job_id}")


def _inflate_all(data: bytes) -> bytes:
    """Every zlib stream (0x78 header) that decompresses, concatenated."""
    out = []
    view = memoryview(data)
    start = 0
    while (start := data.find(b"\x78", start)) != -1:
        try:
            out.append(zlib.decompressobj().decompress(view[start:]))
        except zlib.error:
            pass
        start += 1
    return b"".join(out)


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


# -- bind address ----------------------------------------------------------------


def _listeners(port: int) -> list[str]:
    """Local addresses listening on ``port``, from the kernel's socket tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, state = fields[1], fields[3]
            host, hex_port = address.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(host) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1]))
                else:
                    words = [bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def test_serve_binds_loopback_by_default_and_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with ServeProcess(url, tmp_path) as server:
        stderr = server.wait_ready()
        line = next(line for line in stderr.splitlines() if "jobs-index serving" in line)
        assert f"http://127.0.0.1:{server.port}/api/jobs" in line
        assert "loopback only" in line
        # The kernel's view: one listener, on 127.0.0.1 only (not 0.0.0.0, not ::).
        assert _listeners(server.port) == ["127.0.0.1"]
        assert RawClient(server.port).get("/api/jobs").status == 200
        # Another local address of this machine (127.0.0.2 is local on Linux) is refused.
        # The machine's non-loopback interface addresses are not dialled (tests talk to
        # loopback only); the listener table above shows they cannot reach it either.
        with pytest.raises(OSError):
            with socket.create_connection(("127.0.0.2", server.port), timeout=2):
                pass
