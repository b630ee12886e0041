"""Resource limits (issue #6, item 4).

* Listing: ``limit=10**9`` streams every job in keyset chunks (Python memory of the
  server stays a small fraction of the answer, measured with tracemalloc; the RSS
  of a real ``jobs-index serve`` is printed); ``offset=10**12`` is answered from the
  exact total without walking the index.
* Input: a 100,000-item ``/history`` dump is imported by a real ``jobs-index import``
  whose peak RSS (``wait4``'s ``ru_maxrss``) stays far below what parsing the whole
  dump takes; the item-by-item reader gives exactly ``json.load``'s values; 5 MB
  history items are stored and served whole.
* Requests: a 10 MB request line, a 10 MB header and invalid URL bytes are answered
  with a JSON 400 by ``jobs-index serve``, which keeps serving.

We enforce no maximum page size beyond ComfyUI's contract: pages up to 1,000 jobs
are answered in one piece, larger pages (or no limit) are streamed.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from jobs_index import JobsIndex
from jobs_index.http import create_app
from jobs_index.ingest import STREAM_THRESHOLD, ObjectItems, detect, import_dump, read_dump
from jobs_index.rawcodec import decode_item as decode_raw

from .fixtures_util import capture_history
from .reliability_support import JOBS_INDEX, RawClient, ServeProcess, rss_kib, served

N_LISTED = 50_000


# -- a 50,000-job index, built quickly -------------------------------------------------


def fill_index(index: JobsIndex, copies: int) -> int:
    """The 7 captured jobs, then ``copies`` copies of each with new ids and times
    (INSERT ... SELECT, so the triggers keep the counts)."""
    import_dump(index, detect("history", capture_history()))
    columns = [row[1] for row in index.engine.connect().exec_driver_sql("PRAGMA table_info(jobs)")]
    exprs = {c: c for c in columns}
    exprs["id"] = "jobs.id || '-' || printf('%06d', n.i)"
    exprs["create_time"] = "jobs.create_time - n.i * 997"
    select_list = ", ".join(exprs[c] for c in columns)
    with index.engine.begin() as conn:
        conn.exec_driver_sql(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies}) "
            f"INSERT INTO jobs ({', '.join(columns)}) SELECT {select_list} FROM jobs CROSS JOIN n "
            "WHERE jobs.id NOT LIKE '%-%-%-%-%-%'"
        )
    return index.total()


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("limits") / "jobs.sqlite3"
    with JobsIndex.open(f"sqlite:///{path}") as index:
        total = fill_index(index, N_LISTED // 7)
        assert total >= N_LISTED - 7 and index.counts_consistent()
        yield index, path


# A client in its own process, so that only the server's allocations are traced here.
FETCH = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=300)
conn.request("GET", sys.argv[2])
response = conn.getresponse()
with open(sys.argv[3], "wb") as out:
    while chunk := response.read(1 << 16):
        out.write(chunk)
print(response.status, response.getheader("Transfer-Encoding"))
"""


def test_huge_limit_streams_in_bounded_python_memory(big_index, tmp_path):
    index, _ = big_index
    total = index.total()
    body_path = tmp_path / "body.json"
    with served(create_app(index=index)) as port:
        RawClient(port).get("/api/jobs?limit=10")  # warm up (first query, thread pool)
        tracemalloc.start()
        try:
            started = time.monotonic()
            fetched = subprocess.run(
                [sys.executable, "-c", FETCH, str(port), f"/api/jobs?limit={10**9}", str(body_path)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert fetched.stdout.split() == ["200", "chunked"], fetched.stderr
    size = body_path.stat().st_size
    body = json.loads(body_path.read_bytes())
    assert len(body["jobs"]) == total and body["pagination"] == {
        "offset": 0,
        "limit": 10**9,
        "total": total,
        "has_more": False,
    }
    assert len({job["id"] for job in body["jobs"]}) == total
    print(
        f"\nlimit=10**9: {total} jobs, {size / 1e6:.1f} MB in {elapsed:.1f}s; "
        f"server Python peak {peak / 1e6:.1f} MB (tracemalloc)"
    )
    assert peak < size / 4, (peak, size)  # one chunk of 1,000 jobs at a time, not the answer


def test_offset_past_the_end_is_answered_without_a_scan(big_index):
    index, _ = big_index
    total = index.total()
    with served(create_app(index=index)) as port:
        client = RawClient(port)
        client.get("/api/jobs?limit=10")
        timings = {}
        for target in (
            f"/api/jobs?offset={10**12}",
            f"/api/jobs?offset={10**12}&limit=10",
            f"/api/jobs?offset={10**12}&limit={10**9}&status=completed,failed",
            f"/api/jobs?offset={10**30}&sort_by=execution_duration",
            f"/api/jobs?offset={total}&limit=5",
        ):
            started = time.monotonic()
            reply = client.get(target)
            timings[target] = time.monotonic() - started
            body = reply.json()
            assert reply.status == 200 and body["jobs"] == [] and body["pagination"]["has_more"] is False
            assert body["pagination"]["total"] in (
                total,
                index.total(__import__("jobs_index").parse_list_query({"status": "completed,failed"})),
            )
        started = time.monotonic()
        last = client.get(f"/api/jobs?offset={total - 1}&limit=5").json()  # walks to the end
        walk = time.monotonic() - started
        client.close()
    assert len(last["jobs"]) == 1
    print(
        "\npast-the-end offsets:",
        {k: round(v, 3) for k, v in timings.items()},
        f"offset=total-1 (a real skip) {walk:.3f}s",
    )
    assert max(timings.values()) < max(walk / 3, 0.5), timings


def test_serve_process_rss_stays_bounded_while_streaming(big_index, tmp_path):
    _, path = big_index
    with ServeProcess(f"sqlite:///{path}", tmp_path) as server:
        server.wait_ready()
        client = RawClient(server.port)
        client.get("/api/jobs?limit=1")
        before = rss_kib(server.proc.pid)
        size = 0
        for _ in range(2):
            reply = client.get("/api/jobs")  # no limit: the whole index, streamed
            assert reply.status == 200
            size = len(reply.raw)
        after = rss_kib(server.proc.pid)
        client.close()
    db_size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    print(
        f"\nserve RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB streaming {size / 1e6:.1f} MB "
        f"twice (database file {db_size / 1e6:.0f} MB; SQLite's page cache is capped at 64 MiB a connection)"
    )
    # Bounded by the page cache and one chunk, not by the answer or the data.
    assert (after - before) * 1024 < 64 * 2**20 + size / 2


# -- input size -------------------------------------------------------------------


def write_small_items_dump(path: Path, count: int) -> int:
    """``count`` small history items (about 450 bytes each)."""
    with open(path, "w") as out:
        out.write("{")
        for i in range(count):
            job_id = f"job-{i:07d}"
            item = {
                "prompt": [
                    i,
                    job_id,
                    {"1": {"class_type": "SaveImage", "inputs": {"x": i}}},
                    {
                        "create_time": 1_700_000_000_000 + i,
                        "client_id": "c",
                        "extra_pnginfo": {"workflow": {"id": f"wf-{i % 10}"}},
                    },
                    ["1"],
                ],
                "outputs": {
                    "1": {"images": [{"filename": f"ComfyUI_{i:07d}_.png", "subfolder": "", "type": "output"}]}
                },
                "status": {
                    "status_str": "success",
                    "completed": True,
                    "messages": [
                        ["execution_start", {"timestamp": 1_700_000_000_000 + i + 1}],
                        ["execution_success", {"timestamp": 1_700_000_000_000 + i + 20}],
                    ],
                },
                "meta": {},
            }
            out.write((", " if i else "") + json.dumps(job_id) + ": " + json.dumps(item))
        out.write("}")
    return path.stat().st_size


# A small launcher runs the measured command and reports RUSAGE_CHILDREN. Measuring a
# direct child of the (large) test process would not do: Linux charges a child's
# ru_maxrss with the address space it was forked from, i.e. with pytest's own RSS.
LAUNCH = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_measured(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, int, str, str]:
    """(exit status, peak RSS in KiB, stdout, stderr) of one command."""
    out, err, rss = cwd / "child.out", cwd / "child.err", cwd / "child.maxrss"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.run(
            [sys.executable, "-c", LAUNCH, str(rss), *args], stdout=stdout, stderr=stderr, cwd=cwd, timeout=timeout
        ).returncode
    return code, int(rss.read_text()), out.read_text(), err.read_text()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_100k_item_dump_imports_in_bounded_memory(tmp_path):
    dump = tmp_path / "history.json"
    size = write_small_items_dump(dump, 100_000)
    assert size > 2 * STREAM_THRESHOLD
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    started = time.monotonic()
    code, peak_kib, out, err = run_measured([*JOBS_INDEX, "--db", url, "import", str(dump)], tmp_path)
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert "100000 inserted" in out and "0 rejected" in out
    # What parsing the whole dump at once costs, for comparison (measured, not assumed).
    code, whole_kib, _, _ = run_measured(
        ["python3", "-c", f"import json; d = json.load(open({str(dump)!r}, 'rb')); print(len(d))"], tmp_path
    )
    assert code == 0
    print(
        f"\n100,000 items, {size / 1e6:.0f} MB: import peak RSS {peak_kib / 1024:.0f} MiB in {elapsed:.0f}s; "
        f"json.load of the dump alone {whole_kib / 1024:.0f} MiB"
    )
    assert peak_kib < 250 * 1024, peak_kib
    assert peak_kib < whole_kib, (peak_kib, whole_kib)
    with JobsIndex.open(url) as index:
        assert index.total() == 100_000 and index.counts_consistent()


def test_large_dump_is_streamed_and_damage_is_reported_after_the_good_items(tmp_path):
    """A truncated download: the items before the damage are imported, the file is
    reported as invalid (it would be rejected whole if read at once)."""
    dump = tmp_path / "history.json"
    size = write_small_items_dump(dump, 35_000)
    assert size > STREAM_THRESHOLD
    damaged = tmp_path / "damaged.json"
    damaged.write_bytes(dump.read_bytes()[: size - 5000])
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    result = subprocess.run(
        [*JOBS_INDEX, "--db", url, "import", str(damaged)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "not valid JSON" in result.stderr and "the items before it were imported" in result.stderr
    with JobsIndex.open(url) as index:
        stored = index.total()
        assert 34_000 < stored < 35_000 and index.counts_consistent()
    result = subprocess.run(
        [*JOBS_INDEX, "--db", url, "import", str(dump)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and f"{35_000 - stored} inserted, 0 updated, {stored} unchanged" in result.stdout


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**100), 2**100),
        st.floats(allow_nan=True),
        st.text(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "\udfff", "\x00"])),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=25,
)


class Trickle(io.BytesIO):
    """A stream that returns at most ``n`` bytes a read (as a slow pipe might)."""

    def __init__(self, data: bytes, n: int) -> None:
        super().__init__(data)
        self.n = n

    def read(self, size: int = -1) -> bytes:
        return super().read(self.n if size < 0 else min(self.n, size))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    document=st.dictionaries(st.text(max_size=6), json_values, max_size=6),
    indent=st.sampled_from([None, 0, 1, "\t"]),
    ascii_only=st.booleans(),
    chunk=st.integers(1, 40),
    prefix=st.integers(0, 40),
    damage=st.integers(-1, 10**6),
    bom=st.booleans(),
)
def test_item_reader_gives_exactly_json_load(document, indent, ascii_only, chunk, prefix, damage, bom):
    """ObjectItems == json.loads on any object (NaN, huge ints, lone surrogates, any
    chunking), and fails exactly where json.loads fails (truncation, junk)."""
    data = (b"\xef\xbb\xbf" if bom else b"") + json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )
    if damage >= 0:
        cut = damage % (len(data) + 1)
        data = data[:cut] + (b"" if damage % 2 else b"#") + data[cut + (damage % 3) :]
    ObjectItems.CHUNK, default = chunk, ObjectItems.CHUNK
    try:
        items = ObjectItems("dump", Trickle(data[prefix:], chunk), data[:prefix])
        pairs = list(items.pairs())
    finally:
        ObjectItems.CHUNK = default
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError):
        assert items.exception is not None
        return
    if not isinstance(expected, dict):
        assert items.exception is not None
        return
    assert items.exception is None
    assert json.dumps(pairs) == json.dumps(list(expected.items()))


def test_streamed_read_of_real_captured_history_equals_json_load(tmp_path):
    history = capture_history()
    padding = {f"pad-{i}": {"x": "y" * 1000} for i in range(STREAM_THRESHOLD // 1000 + 10)}
    path = tmp_path / "history.json"
    path.write_text(json.dumps({**history, **padding}, indent=2))
    with open(path, "rb") as stream:
        dump = read_dump("history.json", stream)
        assert dump.kind == "history" and len(dump) == 0  # streamed: length unknown
        items = {key: item for key, item, _ in dump.items}
    assert dump.error is None
    assert items == {**history, **padding}


def test_5mb_history_items_are_stored_and_served_whole(tmp_path):
    history = capture_history()
    job_id, item = next(iter(history.items()))
    big_text = "ä" * (5 * 2**20 // 2)  # 5 MiB of UTF-8
    big = dict(item)
    big["outputs"] = {"9": {"text": [big_text]}}
    items = {f"big-{i}": {**big, "prompt": [i, f"big-{i}", *item["prompt"][2:5]]} for i in range(4)}
    path = tmp_path / "history.json"
    path.write_text(json.dumps(items))
    assert path.stat().st_size > STREAM_THRESHOLD  # read item by item
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    code, peak_kib, out, err = run_measured([*JOBS_INDEX, "--db", url, "import", str(path)], tmp_path)
    assert code == 0 and "4 inserted" in out, err
    print(f"\n4 x 5 MiB items: import peak RSS {peak_kib / 1024:.0f} MiB")
    with JobsIndex.open(url) as index:
        with served(create_app(index=index)) as port:
            client = RawClient(port)
            detail = client.get("/api/jobs/big-2").json()
            assert detail["outputs"]["9"]["text"] == [big_text]
            listed = client.get("/api/jobs?limit=4").json()["jobs"]
            assert {job["id"] for job in listed} == set(items)
            preview = listed[0]["preview_output"]
            assert preview["content"] == big_text[:1024] and preview["truncated"] is True
            client.close()
        with index.engine.connect() as conn:
            raw = conn.execute(text("SELECT raw FROM jobs WHERE id = 'big-0'")).scalar_one()
        assert decode_raw(raw)["outputs"]["9"]["text"] == [big_text]
        assert len(raw) < 100_000  # compressed


# -- request size ------------------------------------------------------------------


def send_huge(port: int, head: bytes, filler: int, tail: bytes) -> tuple[bytes, int]:
    """Send ``head + b'x' * filler + tail`` while reading; stop sending once the server
    answers. Returns (the answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent, answer = 0, b""
    try:
        sock.sendall(head)
        sock.setblocking(False)
        block = b"x" * 65536
        remaining = filler
        while True:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if remaining > 0:
                try:
                    sent_now = sock.send(block[: min(remaining, len(block))])
                    remaining -= sent_now
                    sent += sent_now
                except BlockingIOError:
                    time.sleep(0.001)
                except (BrokenPipeError, ConnectionResetError):
                    remaining = 0
            elif remaining == 0:
                try:
                    sock.sendall(tail)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
                remaining = -1
            else:
                time.sleep(0.01)
                if answer.endswith(b"}") or len(answer) > 10_000:
                    break
    finally:
        sock.close()
    return answer, sent


def parse_answer(answer: bytes) -> tuple[int, str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers.get("content-type", ""), json.loads(body)


def test_10mb_request_line_and_header_get_a_json_400(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with ServeProcess(url, tmp_path) as server:
        server.wait_ready()
        before = rss_kib(server.proc.pid)
        cases = {
            "request line": (b"GET /api/jobs?after=", 10 * 2**20, b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            "header": (b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Big: ", 10 * 2**20, b"\r\n\r\n"),
            "path": (b"GET /api/jobs/", 10 * 2**20, b" HTTP/1.1\r\n\r\n"),
        }
        for name, (head, filler, tail) in cases.items():
            answer, sent = send_huge(server.port, head, filler, tail)
            status, content_type, body = parse_answer(answer)
            assert (status, body) == (400, {"error": "Bad request: request line or header too long"}), name
            assert content_type.startswith("application/json"), name
            print(f"\n{name}: JSON 400 after {sent / 1e6:.2f} MB sent")
        client = RawClient(server.port)
        for target in (b"/api/jobs/\xc3\xa9", b"/api/jobs?x=\x01", b"/api/jobs?a b"):
            reply = client.get(target)
            assert reply.status == 400 and reply.content_type.startswith("application/json"), target
            assert reply.json()["error"].startswith("Bad request"), target
        assert client.get("/api/jobs").status == 200  # still serving
        client.close()
        after = rss_kib(server.proc.pid)
        assert after - before < 32 * 1024, (before, after)  # the 10 MB were never buffered
        assert "Traceback" not in server.stderr()
