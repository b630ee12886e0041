"""Concurrency (issue #6, item 2), on SQLite and PostgreSQL.

* Readers during writes: a real ``jobs-index serve`` process answers 8 reader
  threads that walk full ``next_cursor`` chains while a writer process ingests new
  jobs (with create_times spread among the existing ones, i.e. in front of and
  behind every cursor) and rewrites jobs it wrote earlier. No reader may see an
  error (``database is locked`` would be a 503), a job twice in one walk, or miss
  a job committed before its walk began; pages must stay in keyset order. The
  p50/p99 page latency under this load is printed, not asserted.
* Two ingesters at once: two real ``jobs-index import`` processes write the same
  /queue and /history dumps (in opposite orders, small batches) into one index;
  the rows (raw_digest, status, stage per id) and counts equal those of a single
  import.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from jobs_index import JobsIndex
from jobs_index.ingest import detect, import_dump
from jobs_index.sample import queue_item, synthetic_history

from .reliability_support import JOBS_INDEX, RawClient, ServeProcess

READERS = 8
INITIAL_JOBS = 3000
WALK_SECONDS = {"sqlite": 30, "postgresql": 20}

WRITER = """
import os, random, sys, time
from jobs_index import JobsIndex
from jobs_index.normalize import from_history
from jobs_index.sample import history_item

url, stop, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
written, times, batches = [], {}, 0
with JobsIndex.open(url) as index:
    while not os.path.exists(stop):
        batch = []
        for _ in range(20):  # new jobs, anywhere in the existing time range
            job_id = f"w-{len(written):06d}"
            times[job_id] = rng.randint(lo, hi)
            written.append(job_id)
            batch.append(from_history(job_id, history_item(rng, job_id, 10**6 + len(written), times[job_id], "wf-w")))
        for job_id in rng.sample(written, min(5, len(written))):  # new versions of earlier ones
            batch.append(from_history(job_id, history_item(rng, job_id, 7, times[job_id], "wf-w")))
        index.ingest(batch, batch_size=10)
        batches += 1
print(len(written), batches)
"""


def committed_ids(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT id FROM jobs"))}
    finally:
        engine.dispose()


def walk(client: RawClient, order: str, limit: int, latencies: list[float]) -> list[dict]:
    """Every job of a full cursor walk, in order."""
    jobs, after = [], None
    while True:
        target = f"/api/jobs?sort_order={order}&limit={limit}" + (f"&after={after}" if after else "")
        started = time.monotonic()
        reply = client.get(target)
        latencies.append(time.monotonic() - started)
        assert reply.status == 200, (target, reply.status, reply.raw[:300])
        body = reply.json()
        jobs += body["jobs"]
        after = body["pagination"].get("next_cursor")
        if not after:
            assert not body["pagination"]["has_more"]
            return jobs


def test_readers_walk_cursor_chains_while_a_writer_ingests(db_url, backend, tmp_path):
    with JobsIndex.open(db_url) as index:
        history = dict(synthetic_history(INITIAL_JOBS, seed=3))
        import_dump(index, detect("history", history))
        times = [item["prompt"][3]["create_time"] for item in history.values()]
    stop = tmp_path / "stop"
    writer_out = open(tmp_path / "writer.out", "w+")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url, str(stop), str(min(times)), str(max(times))],
        stdout=writer_out,
        stderr=subprocess.STDOUT,
    )
    failures: list[str] = []
    latencies: list[float] = []
    walks: list[tuple[int, int]] = []
    with ServeProcess(db_url, tmp_path, extra_args=("--pool-size", "8")) as server:
        server.wait_ready()
        deadline = time.monotonic() + WALK_SECONDS[backend]

        def reader(number: int) -> None:
            client = RawClient(server.port)
            mine: list[float] = []
            try:
                turn = 0
                while time.monotonic() < deadline:
                    order = ("desc", "asc")[(number + turn) % 2]
                    limit = (25, 100, 333, 1000)[(number + turn) % 4]
                    before = committed_ids(db_url)  # committed before the walk began
                    jobs = walk(client, order, limit, mine)
                    ids = [job["id"] for job in jobs]
                    keys = [(job.get("create_time", 0), job["id"]) for job in jobs]
                    assert len(ids) == len(set(ids)), f"a job twice in one walk ({order}, {limit})"
                    assert not before - set(ids), f"{len(before - set(ids))} committed jobs missed"
                    assert keys == sorted(keys, reverse=order == "desc"), "walk out of keyset order"
                    walks.append((len(ids), len(before)))
                    turn += 1
            except Exception as exc:  # reported below, with the others
                failures.append(f"reader {number}: {exc!r}"[:500])
            finally:
                latencies.extend(mine)
                client.close()

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WALK_SECONDS[backend] + 300)
        stop.touch()
        writer.wait(120)
        serve_log = server.stderr()
    writer_out.seek(0)
    written = writer_out.read()
    assert writer.returncode == 0, written
    assert not failures, failures
    assert "database is locked" not in serve_log and "Traceback" not in serve_log
    new_jobs, batches = map(int, written.split())
    assert new_jobs > 0 and len(walks) >= READERS
    with JobsIndex.open(db_url) as index:
        assert index.total() == INITIAL_JOBS + new_jobs and index.counts_consistent()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\n[{backend}] {len(walks)} full walks by {READERS} readers ({len(latencies)} pages) while a writer "
        f"added {new_jobs} jobs in {batches} rounds: page latency p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


# -- two ingesters, same jobs --------------------------------------------------------


def dumps(tmp_path: Path) -> tuple[Path, Path]:
    import random

    history = dict(synthetic_history(1500, seed=11))
    rng = random.Random(5)
    ids = list(history)
    # Stale queue entries for 300 jobs that have finished, plus 200 still queued.
    stale = [[history[i]["prompt"][0], i, {}, history[i]["prompt"][3], []] for i in ids[:300]]
    live = [queue_item(rng, f"q-{n:04d}", 5000 + n, 1_800_000_000_000 + n, "wf-q") for n in range(200)]
    queue = {"queue_running": live[:1], "queue_pending": stale + live[1:]}
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "queue.json").write_text(json.dumps(queue))
    return tmp_path / "history.json", tmp_path / "queue.json"


def rows(url: str) -> dict[str, tuple]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return {
                row[0]: tuple(row[1:])
                for row in conn.execute(
                    text("SELECT id, raw_digest, status, stage, create_time, workflow_id FROM jobs")
                )
            }
    finally:
        engine.dispose()


def test_two_ingesters_writing_the_same_jobs_converge(db_url, backend, tmp_path):
    history, queue = dumps(tmp_path)
    reference_url = f"sqlite:///{tmp_path / 'reference.sqlite3'}"
    single = subprocess.run(
        [*JOBS_INDEX, "--db", reference_url, "import", str(queue), str(history)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    JobsIndex.open(db_url).close()  # created once, before the race
    racers = [
        subprocess.Popen(
            [*JOBS_INDEX, "--db", db_url, "import", "--batch-size", "25", *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for files in ((str(queue), str(history)), (str(history), str(queue)))
    ]
    outputs = [racer.communicate(timeout=600) for racer in racers]
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
        assert "0 rejected" in out and "Error" not in err, (out, err)
    expected, got = rows(reference_url), rows(db_url)
    assert len(got) == len(expected) == 1700
    assert got == expected  # same digest, status, stage (and keys) for every id
    with JobsIndex.open(db_url) as index:
        assert index.counts_consistent() and index.total() == 1700
    print(f"\n[{backend}] two racing ingesters: {[out.strip() for out, _ in outputs]}")
