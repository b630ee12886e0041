"""Helpers shared by the ``test_reliability_*`` suites (issue #6).

* ``RawClient``: an HTTP/1.1 keep-alive client that sends the request target exactly
  as given (bytes), so tests can put percent-encoding junk, raw UTF-8 or a 10 MB
  line on the wire; it reads chunked (streamed) answers too.
* ``served(app)``: run an aiohttp application on ``127.0.0.1:<free port>`` in a
  background thread (the same server aiohttp's ``TestServer`` runs).
* ``ServeProcess``: ``jobs-index serve`` as a real subprocess, ready when it has
  announced itself on stderr and answers.
* ``write_history_dump``: a ``GET /history`` dump of ``jobs_index.sample`` jobs,
  written once and cached per test session.
* SQLite checks used after crashes: integrity, duplicates, ids.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .live_server import served  # noqa: F401 (re-exported for the reliability tests)

REPO = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("jobs-index")
# The installed console script (as a user runs it), else the module.
JOBS_INDEX = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "jobs_index.cli"]


# -- HTTP -----------------------------------------------------------------------


class _RawConnection(http.client.HTTPConnection):
    """``http.client`` minus request-target validation: the bytes go out verbatim."""

    def _validate_path(self, url):  # http.client hook
        return None

    def _encode_request(self, request):
        return request.encode("utf-8", "surrogateescape")


@dataclass
class Reply:
    status: int
    headers: dict
    raw: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.raw)


class RawClient:
    """One keep-alive connection; reconnects after the server closes it."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 60) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: _RawConnection | None = None

    def get(self, target: str | bytes) -> Reply:
        if isinstance(target, bytes):
            target = target.decode("utf-8", "surrogateescape")
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _RawConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.putrequest("GET", target, skip_accept_encoding=True)
                self._conn.endheaders()
                response = self._conn.getresponse()
                raw = response.read()
                headers = {k.lower(): v for k, v in response.getheaders()}
                if response.will_close:
                    self.close()
                return Reply(response.status, headers, raw)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``jobs-index --db URL serve`` in a subprocess (stderr captured to a file)."""

    def __init__(
        self,
        db_url: str,
        workdir: Path,
        *,
        extra_args: tuple[str, ...] = (),
        global_args: tuple[str, ...] = (),
        port: int | None = None,
        env: dict | None = None,
    ) -> None:
        self.port = port or free_port()
        self.stderr_path = workdir / f"serve-{self.port}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [*JOBS_INDEX, "--db", db_url, *global_args, "serve", "--port", str(self.port), *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=workdir,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 60) -> str:
        """Wait for the start-up line and a first answer; return the stderr so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr()}")
            if "jobs-index serving" in self.stderr():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return self.stderr()
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"serve did not start in {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self._stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- data -----------------------------------------------------------------------


def write_history_dump(path: Path, count: int, *, seed: int = 42) -> Path:
    """Write ``{prompt_id: item}`` for ``count`` sample jobs (once: reused if present)."""
    if path.exists():
        return path
    from jobs_index.sample import synthetic_history

    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("{")
        for n, (job_id, item) in enumerate(synthetic_history(count, seed=seed)):
            out.write((", " if n else "") + json.dumps(job_id) + ": " + json.dumps(item))
        out.write("}")
    tmp.rename(path)
    return path


def session_dir(tmp_path_factory) -> Path:
    """A directory shared by every reliability test of this session (data cache)."""
    path = tmp_path_factory.getbasetemp() / "reliability-cache"
    path.mkdir(exist_ok=True)
    return path


# -- SQLite checks ----------------------------------------------------------------


def sqlite_file(url: str) -> Path:
    assert url.startswith("sqlite:///"), url
    return Path(url[len("sqlite:///") :])


def check_sqlite_file(path: Path) -> set[str]:
    """Open a (possibly just crashed) SQLite index like a new process would and check
    it: integrity, no duplicate ids, counters equal to a recount. Returns the ids."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "jobs" not in tables:
            return set()
        ids = [row[0] for row in conn.execute("SELECT id FROM jobs")]
        (rows,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        (distinct,) = conn.execute("SELECT count(DISTINCT id) FROM jobs").fetchone()
        assert rows == distinct == len(ids) == len(set(ids)), (rows, distinct, len(ids))
        (total,) = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM job_counts WHERE source = '' AND workflow_id = ''"
        ).fetchone()
        assert total == rows, (total, rows)
        return set(ids)
    finally:
        conn.close()
