"""Who may see it (``jobs_index.access``): the token of a server that listens beyond
loopback, over real aiohttp servers on loopback and the real ``jobs-index serve``
command (bound to 0.0.0.0, reached at 127.0.0.1), like an operator and a browser use
them. The page in a real browser: tests/test_web_page.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from jobs_index import JobsIndex
from jobs_index.access import access_notice, exposed, required_token
from jobs_index.errors import ConfigError
from jobs_index.http import ServerConfig, create_app
from jobs_index.normalize import from_history
from tests.fixtures_util import capture_history
from tests.live_server import served

EXE = [sys.executable, "-m", "jobs_index.cli"]
TOKEN = "s3cret-Token_value"


def test_which_addresses_are_exposed():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert not exposed(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "fe80::1", "gpu-box", "example.org", ""):
        assert exposed(host), host


def test_the_token_a_server_requires():
    assert required_token("127.0.0.1", None, False) == (None, False)  # loopback: open, as before
    token, generated = required_token("0.0.0.0", None, False)
    assert generated and len(token) >= 40  # secrets.token_urlsafe(32)
    assert required_token("0.0.0.0", None, False)[0] != token  # a new one each start
    assert required_token("0.0.0.0", TOKEN, False) == (TOKEN, False)
    assert required_token("127.0.0.1", TOKEN, False) == (TOKEN, False)  # asked for: required on loopback too
    assert required_token("0.0.0.0", None, True) == (None, False)  # the operator's explicit opt-out
    with pytest.raises(ConfigError, match="exclude each other"):
        required_token("0.0.0.0", TOKEN, True)
    with pytest.raises(ConfigError, match="empty"):
        required_token("0.0.0.0", " ", False)


def test_the_notice_at_start():
    assert access_notice("127.0.0.1", 8189, None, False) == []
    [warning] = access_notice("0.0.0.0", 8189, None, False)
    assert warning.startswith("WARNING: --no-auth") and "without a token" in warning
    [line] = access_notice("0.0.0.0", 8189, "abc-_1", True)
    assert "http://0.0.0.0:8189/ui/?token=abc-_1" in line and "Bearer abc-_1" in line
    [line] = access_notice("0.0.0.0", 8189, TOKEN, False)  # the operator's own token stays out of logs
    assert TOKEN not in line and "?token=<token>" in line
    assert "open http://[::]:8189/ui/?token=" in access_notice("::", 8189, "t", True)[0]
    assert TOKEN not in repr(ServerConfig(host="0.0.0.0", token=TOKEN))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    with JobsIndex.open(f"sqlite:///{tmp_path_factory.mktemp('access') / 'jobs.sqlite3'}") as opened:
        opened.ingest([from_history(key, item) for key, item in capture_history().items()], source="gpu-a")
        yield opened


@pytest.fixture(scope="module")
def guarded(index):
    """A server configured as one bound to 0.0.0.0 with a token (served on loopback)."""
    with served(create_app(ServerConfig(host="0.0.0.0", token=TOKEN), index=index)) as port:
        yield port


@pytest.fixture(scope="module")
def open_server(index):
    with served(create_app(index=index)) as port:
        yield port


def get(port: int, path: str, headers: dict | None = None, host: str = "127.0.0.1") -> http.client.HTTPResponse:
    """One request, redirects not followed (the reply is read)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    reply = conn.getresponse()
    reply.body = reply.read()
    conn.close()
    return reply


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "path", ["/api/jobs", "/api/jobs?limit=2", "/api/api/jobs", "/api/jobs/x", "/api/jobs-index/counts", "/metrics"]
)
def test_api_without_the_token_is_a_json_401(guarded, path):
    for headers in (
        {},
        bearer("wrong"),
        bearer(TOKEN + "x"),
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer é∂\xff".encode()},
    ):
        reply = get(guarded, path, headers)
        assert reply.status == 401, (path, headers)
        assert reply.getheader("Content-Type").startswith("application/json")
        assert json.loads(reply.body) == {"error": "Unauthorized: a token is required (Authorization: Bearer <token>)"}
        assert reply.getheader("WWW-Authenticate") == 'Bearer realm="jobs-index"'
    # a token in the URL is for the page only: API clients send the header
    assert get(guarded, path + ("&" if "?" in path else "?") + f"token={TOKEN}").status == 401


@pytest.mark.parametrize("path", ["/api/jobs", "/api/jobs?limit=2&status=failed", "/api/jobs-index/counts"])
def test_api_with_the_bearer_token_answers_as_an_open_server(guarded, open_server, path):
    reply = get(guarded, path, bearer(TOKEN))
    assert reply.status == 200
    assert reply.body == get(open_server, path).body  # byte for byte


def test_probes_stay_open_and_metrics_need_the_token(guarded):
    assert get(guarded, "/healthz").status == 200
    assert json.loads(get(guarded, "/readyz").body)["status"] == "ready"
    reply = get(guarded, "/metrics", bearer(TOKEN))
    assert reply.status == 200 and b"jobs_index" in reply.body


def test_page_without_the_token_is_a_token_required_page(guarded):
    for path in ("/ui/", "/ui/static/app.js", "/", "/ui/?status=failed&token=wrong"):
        reply = get(guarded, path)
        assert reply.status == 401, path
        assert reply.getheader("Content-Type").startswith("text/html")
        assert b"Token required" in reply.body and b"app.js" not in reply.body


def test_printed_url_sets_a_strict_httponly_cookie_and_drops_the_token(guarded):
    reply = get(guarded, f"/ui/?status=failed&token={TOKEN}&source=gpu-a")
    assert reply.status == 303
    assert reply.getheader("Location") == "/ui/?status=failed&source=gpu-a"
    cookie = reply.getheader("Set-Cookie")
    name_value = cookie.split(";")[0]
    assert name_value == f"jobs_index_token_{guarded}={TOKEN}"
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    # the browser then sends the cookie: the page, its files and its API calls answer
    for path in ("/ui/?status=failed&source=gpu-a", "/ui/static/app.js", "/api/jobs?limit=1", "/metrics"):
        assert get(guarded, path, {"Cookie": name_value}).status == 200, path
    assert get(guarded, "/api/jobs", {"Cookie": f"jobs_index_token_{guarded}=wrong"}).status == 401
    assert get(guarded, "/api/jobs", {"Cookie": f"jobs_index_token_{guarded + 1}={TOKEN}"}).status == 401


def test_token_redirect_stays_on_this_server(guarded):
    reply = get(guarded, f"//evil.example/ui/?token={TOKEN}")
    assert reply.status in (303, 401, 404)
    if reply.status == 303:
        assert reply.getheader("Location").startswith("/") and not reply.getheader("Location").startswith("//")


def test_open_server_needs_no_token(open_server):
    assert get(open_server, "/api/jobs?limit=1").status == 200
    assert get(open_server, "/ui/").status == 200


# -- the command, as an operator runs it ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db_url: str, *args: str, env: dict | None = None, command: tuple = ("serve",)) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [*EXE, "--db", db_url, *command, "--port", str(self.port), *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []

    def read_lines(self, n: int) -> list[str]:
        while len(self.lines) < n:
            line = self.process.stderr.readline().decode()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
        return self.lines

    def wait_ready(self) -> None:
        deadline = time.time() + 30
        while True:
            try:
                if get(self.port, "/healthz").status == 200:
                    return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


@pytest.fixture
def db_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with JobsIndex.open(url) as opened:
        opened.ingest([from_history(key, item) for key, item in capture_history().items()], source="gpu-a")
    return url


def test_serve_beyond_loopback_prints_a_url_with_a_generated_token(db_file):
    server = Server(db_file, "--host", "0.0.0.0")
    try:
        first, notice = server.read_lines(2)
        assert "(reachable from the network)" in first
        assert notice.startswith("token required (generated): open http://0.0.0.0:")
        url = notice.split("open ", 1)[1].split(" ;")[0]
        token = urlsplit(url).query.removeprefix("token=")
        assert len(token) >= 40
        server.wait_ready()
        assert get(server.port, "/api/jobs?limit=2").status == 401
        reply = get(server.port, "/api/jobs?limit=2", bearer(token))
        assert reply.status == 200 and json.loads(reply.body)["pagination"]["total"] == 7
        opened = get(server.port, urlsplit(url)._replace(scheme="", netloc="").geturl())  # what the browser opens
        assert opened.status == 303 and opened.getheader("Location") == "/ui/"
    finally:
        server.stop()


def test_follow_serve_beyond_loopback_requires_the_token_too(db_file):
    comfyui = f"http://127.0.0.1:{_free_port()}"  # nothing listens: follow retries, the server answers
    server = Server(db_file, "--serve", "--host", "0.0.0.0", command=("follow", comfyui))
    try:
        lines = server.read_lines(2)
        assert "history page http://0.0.0.0:" in lines[0]
        notice = next(line for line in server.read_lines(3) if line.startswith("token required"))
        token = notice.split("?token=", 1)[1].split(" ;")[0]
        server.wait_ready()
        assert get(server.port, "/api/jobs").status == 401
        assert get(server.port, "/metrics").status == 401
        reply = get(server.port, "/api/jobs?limit=3", bearer(token))
        assert reply.status == 200 and json.loads(reply.body)["pagination"]["total"] == 7
        assert get(server.port, "/readyz").status == 503  # open (a probe), and honest: the follower is down
    finally:
        server.stop()


def test_serve_with_the_token_from_the_environment(db_file):
    server = Server(db_file, "--host", "0.0.0.0", env={"JOBS_INDEX_TOKEN": TOKEN})
    try:
        _, notice = server.read_lines(2)
        assert "from --token" in notice and TOKEN not in notice
        server.wait_ready()
        assert get(server.port, "/api/jobs", bearer(TOKEN)).status == 200
        assert get(server.port, "/api/jobs").status == 401
    finally:
        server.stop()


def test_serve_no_auth_warns_and_answers_everyone(db_file):
    server = Server(db_file, "--host", "0.0.0.0", "--no-auth")
    try:
        _, warning = server.read_lines(2)
        assert warning.startswith("WARNING: --no-auth")
        server.wait_ready()
        assert get(server.port, "/api/jobs?limit=1").status == 200
        assert get(server.port, "/ui/").status == 200
    finally:
        server.stop()


def test_serve_binds_loopback_by_default_without_a_token(db_file):
    server = Server(db_file)
    try:
        [line] = server.read_lines(1)
        assert f"http://127.0.0.1:{server.port}/api/jobs (loopback only)" in line
        server.wait_ready()
        assert get(server.port, "/api/jobs?limit=1").status == 200
        # bound to loopback only: no other address of this machine answers
        others = _non_loopback_addresses()
        for address in others:
            with pytest.raises(OSError):
                socket.create_connection((address, server.port), timeout=2).close()
    finally:
        server.stop()
    assert server.read_lines(3)[1:] == []  # nothing said about tokens


def test_serve_on_a_lan_address_requires_the_token_there(db_file):
    addresses = _non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address (0.0.0.0 is tested above)")
    server = Server(db_file, "--host", addresses[0])
    try:
        _, notice = server.read_lines(2)
        token = notice.split("?token=", 1)[1].split(" ;")[0]
        deadline = time.time() + 30
        while True:
            try:
                reply = get(server.port, "/api/jobs?limit=1", host=addresses[0])
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert reply.status == 401
        assert get(server.port, "/api/jobs?limit=1", bearer(token), host=addresses[0]).status == 200
    finally:
        server.stop()


def test_no_auth_with_a_token_is_refused(db_file):
    done = subprocess.run(
        [*EXE, "--db", db_file, "serve", "--host", "0.0.0.0", "--no-auth", "--token", "x"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "Error: --no-auth and --token (or $JOBS_INDEX_TOKEN) exclude each other"


def _non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (may be none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            address = s.getsockname()[0]
    except OSError:
        return []
    return [] if address.startswith("127.") or address == "0.0.0.0" else [address]
