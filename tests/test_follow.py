"""``jobs-index follow``: a follower against the fake ComfyUI on real loopback sockets.

Every scenario ends in a parity check: the index's ``GET /api/jobs`` (and each job's
detail) equals what ComfyUI would answer over all the history it ever held plus its
current queue (``tests.reference`` fed from the fake). Database cases run on SQLite
and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from jobs_index import JobsIndex
from jobs_index.cli import cli
from jobs_index.errors import ConfigError, JobNotFound
from jobs_index.follow import Backoff, Follower, SourceBusy, Target, default_source, make_targets, normalize_url
from jobs_index.http import ServerConfig, create_app

from .live_util import Oracle, eventually, get_json, mismatches
from .standins.fake_comfyui import FakeComfyUI, FakeComfyUIThread, running_fake_comfyui

pytestmark = pytest.mark.timeout(90)

FAST = Backoff(base=0.05, cap=0.2)
# Waits on the index return as soon as their condition holds; the bound is generous
# because PostgreSQL writers take turns on one advisory lock per schema, and the machine
# may be shared (another test run slows every write).
WAIT = 15.0
ROOT = Path(__file__).resolve().parent.parent


def run(coro, timeout: float = 60):
    async def guarded():
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:  # show where every task is stuck, then fail
            for other in asyncio.all_tasks():
                other.print_stack(file=sys.stderr)
            task.cancel()
            raise TimeoutError(f"scenario still running after {timeout}s")
        return task.result()

    return asyncio.run(guarded())


class RecordingFake(FakeComfyUI):
    """The fake ComfyUI, recording every request it answers; ``after_history_page``
    (if set) runs after each paged ``GET /history`` answer."""

    def _middlewares(self) -> list:
        self.requests: list[tuple[str, str, dict]] = []
        self.after_history_page = None

        @web.middleware
        async def record(request, handler):
            self.requests.append((request.method, request.path, dict(request.query)))
            response = await handler(request)
            if request.path == "/history" and "offset" in request.query and self.after_history_page:
                self.after_history_page()
            return response

        return [record]

    def history_requests(self) -> list[dict]:
        return [query for method, path, query in self.requests if method == "GET" and path == "/history"]


async def settled(fake: FakeComfyUI, finished: int) -> None:
    """Let an ``auto_execute`` fake run what was queued (it drains on its loop)."""
    assert await eventually(lambda: _true(len(fake.history_dict()) >= finished and not fake.queue_pending()), 10)


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@asynccontextmanager
async def serving(index: JobsIndex):
    """The jobs-index API over ``index`` on a loopback port of this loop."""
    runner = web.AppRunner(create_app(ServerConfig(pool_size=2), index=index))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def following(index: JobsIndex, *targets: Target, **options):
    """Followers for ``targets`` running as tasks of this loop."""
    executor = ThreadPoolExecutor(4, thread_name_prefix="test-follow")
    options = {"backoff": FAST, "heartbeat": 2.0, "poll_interval": 5.0, **options}
    followers = [Follower(index, target, executor=executor, **options) for target in targets]
    tasks = [asyncio.create_task(follower.run()) for follower in followers]
    try:
        yield followers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        executor.shutdown(wait=True)


def target(fake, source: str | None = None) -> Target:
    return Target(fake.url, source or default_source(fake.url))


async def parity(session, api: str, fake: FakeComfyUI, oracle: Oracle, timeout: float = WAIT, **kwargs) -> list[str]:
    """Wait until the index answers like ComfyUI over everything it held; the problems left."""
    oracle.observe(fake.history_dict())

    problems: list[str] = []

    async def check():
        oracle.observe(fake.history_dict())
        problems[:] = await mismatches(
            session, api, oracle.reference(fake.queue_running(), fake.queue_pending()), **kwargs
        )
        return not problems

    await eventually(check, timeout, interval=0.05)
    return problems


async def total(session, api: str, query: str = "") -> int:
    _, body = await get_json(session, f"{api}/api/jobs?limit=1{query}")
    return body["pagination"]["total"]


async def job_status(session, api: str, job_id: str) -> str | None:
    status, body = await get_json(session, f"{api}/api/jobs/{job_id}")
    return body.get("status") if status == 200 else None


# -- backfill ------------------------------------------------------------------


def test_backfill_pages_history_and_matches_comfyui(db_url):
    """250 finished jobs, one running, two pending: read in pages of 40, never in one
    response; the index then answers exactly as ComfyUI does."""

    async def scenario():
        fake = RecordingFake(auto_execute=True)
        async with running_fake_comfyui(fake=fake):
            for n in range(250):
                fake.submit(workflow_id=f"wf-{n % 3}")
            await settled(fake, 250)
            fake.auto_execute = False
            running = fake.submit(client_id="browser")
            fake.start_next()
            fake.submit()
            fake.submit(front=True)
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake), page_size=40):
                    oracle = Oracle()
                    assert (
                        await parity(
                            session,
                            api,
                            fake,
                            oracle,
                            params_list=[
                                {},
                                {"limit": "5"},
                                {"status": "pending,in_progress"},
                                {"workflow_id": "wf-1"},
                            ],
                            details=False,
                        )
                        == []
                    )
                    assert await job_status(session, api, running) == "in_progress"
                    assert await in_thread(index.counts_consistent)
            pages = fake.history_requests()
            assert pages and all(1 <= int(q["max_items"]) <= 40 for q in pages)  # never the whole history at once
            assert sum("offset" in q for q in pages) >= 250 // 40

    run(scenario())


def test_client_chosen_queue_numbers_backfilled_and_live(db_url):
    """Jobs a client numbered (``float(number)``: 2.5, 7.0, 4.0) are followed like any
    other, from the backfilled history and live, and answered as ComfyUI holds them."""

    async def scenario():
        fake = RecordingFake(auto_execute=True)
        async with running_fake_comfyui(fake=fake):
            done = [fake.submit(number=n) for n in (2.5, "7", 4)] + [fake.submit()]
            await settled(fake, len(done))
            fake.auto_execute = False
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake)) as (follower,):
                    await asyncio.wait_for(follower.synced.wait(), WAIT)
                    oracle = Oracle()
                    live = [fake.submit(number=-0.5), fake.submit(number=1e16), fake.submit(front=True)]
                    assert await parity(session, api, fake, oracle) == []
                    fake.finish(fake.start_next())
                    assert await parity(session, api, fake, oracle) == []
                    _, body = await get_json(session, f"{api}/api/jobs")
                    listed = {job["id"]: json.dumps(job["priority"]) for job in body["jobs"]}
                    assert [listed[i] for i in done + live] == ["2.5", "7.0", "4.0", "0", "-0.5", "1e+16", "-1"]
                    assert follower.stats.rejected == 0

    run(scenario())


def test_forward_scan_survives_entries_evicted_under_it(db_url):
    """While the history is read forward in pages, ComfyUI evicts its oldest entries
    (indices shift down): overlapping pages detect it and step back, nothing is skipped."""

    async def scenario():
        fake = RecordingFake(auto_execute=True)
        async with running_fake_comfyui(fake=fake):
            ids = [fake.submit() for _ in range(100)]
            await settled(fake, 100)

            def evict_oldest_three():
                for prompt_id in list(fake.prompt_queue.history)[:3]:
                    fake.evict(prompt_id)

            fake.after_history_page = evict_oldest_three
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake), page_size=10):
                    assert await eventually(lambda: _eq(total(session, api), 100), WAIT)
                    fake.after_history_page = None
                    _, body = await get_json(session, f"{api}/api/jobs")
                    assert sorted(job["id"] for job in body["jobs"]) == sorted(ids)

    run(scenario())


def test_forward_scan_under_steady_eviction_reads_every_entry_past_twenty_pages(db_url):
    """ComfyUI at its cap evicts 2-3 entries between every two requests of a scan of
    more than 20 pages: every entry is read (the scan steps back as often as needed),
    and the watermark never passes an entry it did not read."""

    async def scenario():
        fake = RecordingFake(auto_execute=True)
        async with running_fake_comfyui(fake=fake):
            ids = [fake.submit() for _ in range(400)]
            await settled(fake, 400)
            evicted = []
            turn = [0]

            def evict_oldest_two_or_three():
                turn[0] += 1
                for prompt_id in list(fake.prompt_queue.history)[: 2 + turn[0] % 2]:
                    fake.evict(prompt_id)
                    evicted.append(prompt_id)

            fake.after_history_page = evict_oldest_two_or_three
            with JobsIndex.open(db_url) as index:
                follower = Follower(index, target(fake), page_size=10)
                await follower.sync_once()
                fake.after_history_page = None
                stored = await in_thread(index.finished_ids, ids)
                assert sorted(set(ids) - stored) == []  # every entry, evicted later or not
                assert len(fake.history_requests()) > 40 and len(evicted) > 60  # > 20 pages, many shifts
                assert follower.watermark == ids[-1]

    run(scenario())


# -- live ----------------------------------------------------------------------


def test_live_jobs_reach_the_index_within_a_second_as_comfyui_answers(db_url):
    async def scenario():
        async with running_fake_comfyui() as fake:
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake)) as (follower,):
                    await asyncio.wait_for(follower.synced.wait(), WAIT)
                    oracle = Oracle()
                    ids = [fake.submit(client_id="browser", workflow_id="wf") for _ in range(3)]
                    ids.append(fake.submit(front=True))  # no client: only status events reach anyone
                    assert await parity(session, api, fake, oracle) == []
                    latencies = []
                    for outcome in ("success", "error", "interrupted", "success"):
                        started = fake.start_next()
                        assert await eventually(lambda started=started: _is(session, api, started, "in_progress"), WAIT)
                        finished_at = time.monotonic()
                        fake.finish(started, status=outcome)
                        want = {"success": "completed", "error": "failed", "interrupted": "cancelled"}[outcome]
                        assert await eventually(
                            lambda started=started, want=want: _is(session, api, started, want), WAIT
                        )
                        latencies.append(time.monotonic() - finished_at)
                    # Within a second (on PostgreSQL, 3 s: see WAIT about its shared writer lock).
                    assert max(latencies) < (1.0 if db_url.startswith("sqlite") else 3.0), latencies
                    assert await parity(session, api, fake, oracle) == []
                    # A job cancelled while pending vanishes, as in ComfyUI.
                    doomed = fake.submit()
                    assert await eventually(lambda: _is(session, api, doomed, "pending"), WAIT)
                    assert fake.cancel_job(doomed) is True
                    assert await eventually(lambda: _is(session, api, doomed, None), WAIT)
                    assert await parity(session, api, fake, oracle) == []
                    assert await in_thread(index.counts_consistent)

    run(scenario())


async def _is(session, api, job_id, status) -> bool:
    return await job_status(session, api, job_id) == status


# -- faults --------------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy the test can cut (connections aborted, new ones refused)
    and heal: a network partition between the follower and ComfyUI."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.blocked = False
        self._transports: set = set()
        self._server = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader, writer) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.transport.abort()
            return
        self._transports.update({writer.transport, up_writer.transport})

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._transports.difference_update({writer.transport, up_writer.transport})

    def cut(self) -> None:
        self.blocked = True
        for transport in list(self._transports):
            transport.abort()

    def heal(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()


def test_partition_eviction_and_restart_lose_nothing_and_duplicate_nothing(db_url):
    """A network partition while jobs finish, jobs evicted by ComfyUI's cap once the
    follower is back, then a ComfyUI restart with a job running: every finished job is
    in the index once; the job that was running at the restart is gone, as in ComfyUI.

    (A job that finishes *and* is evicted while the follower is cut off is lost to any
    HTTP client: ComfyUI no longer has it. The custom node sees every job.)"""

    async def scenario():
        fake = FakeComfyUI(max_history_size=4)  # holds at most 5 entries
        async with running_fake_comfyui(fake=fake):
            proxy = Proxy(fake.port)
            url = await proxy.start()
            with JobsIndex.open(db_url) as index:
                async with (
                    serving(index) as (session, api),
                    following(index, Target(url, "gpu"), page_size=3) as (follower,),
                ):
                    oracle = Oracle()
                    first = [fake.submit() for _ in range(3)]
                    fake.start_next()
                    fake.finish()
                    running = fake.start_next()
                    assert await parity(session, api, fake, oracle, extra={"source": "gpu"}) == []

                    proxy.cut()  # partition: the running job fails, two more run, one is queued
                    fake.finish(running, status="error")
                    fake.finish(fake.start_next())
                    fake.submit()
                    fake.finish(fake.start_next())
                    late = fake.submit()
                    oracle.observe(fake.history_dict())
                    connects = follower.stats.connects
                    assert await eventually(lambda: _true(not follower.connected), WAIT)
                    await asyncio.sleep(0.2)  # reconnect attempts fail meanwhile
                    assert not follower.connected
                    proxy.heal()
                    assert await eventually(lambda: _true(follower.stats.connects > connects), WAIT)
                    assert await parity(session, api, fake, oracle, extra={"source": "gpu"}) == []
                    assert await job_status(session, api, running) == "failed"
                    assert await job_status(session, api, late) == "pending"

                    for n in range(6):  # jobs that take a while: ComfyUI evicts, the index keeps
                        job = fake.start_next() if n == 0 else (fake.submit(), fake.start_next())[1]
                        fake.finish(job)
                        oracle.observe(fake.history_dict())
                        assert await eventually(lambda job=job: _is(session, api, job, "completed"), WAIT)
                    assert await parity(session, api, fake, oracle, extra={"source": "gpu"}) == []
                    finished_before_restart = len(oracle.history)
                    assert finished_before_restart == 10 and len(fake.history_dict()) == 5
                    assert set(first) <= set(oracle.history)

                    crashed = fake.submit()
                    fake.start_next()
                    queued = fake.submit()
                    assert await eventually(lambda: _is(session, api, crashed, "in_progress"), WAIT)
                    assert await eventually(lambda: _is(session, api, queued, "pending"), WAIT)
                    fake.restart()  # connections cut; queue, running job and history gone
                    assert await eventually(lambda: _is(session, api, crashed, None), WAIT)
                    assert await job_status(session, api, queued) is None
                    after = fake.submit()
                    fake.start_next()
                    fake.finish()
                    assert await eventually(lambda: _is(session, api, after, "completed"), WAIT)
                    assert await parity(session, api, fake, oracle, extra={"source": "gpu"}) == []
                    assert await total(session, api) == finished_before_restart + 1
                    assert await in_thread(index.counts_consistent)
            await proxy.close()

    run(scenario())


async def _true(value):
    return value


def test_dropped_websocket_mid_run_resyncs(db_url, caplog):
    """The websocket is cut (TCP abort) while a job runs and the job finishes before the
    follower is back: the reconnect's resync writes it, and the log says it is back."""
    caplog.set_level(logging.INFO, logger="jobs_index.follow")

    async def scenario():
        async with running_fake_comfyui() as fake:
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake)) as (follower,):
                    oracle = Oracle()
                    job = fake.submit(client_id="browser")
                    fake.start_next()
                    assert await eventually(lambda: _is(session, api, job, "in_progress"), WAIT)
                    for _ in range(3):
                        fake.drop_connections()
                        fake.pause_ws()  # and no event reaches anyone for a while
                    fake.finish(job)
                    fake.resume_ws()
                    assert await eventually(lambda: _is(session, api, job, "completed"), WAIT)
                    assert await eventually(lambda: _true(follower.stats.connects >= 2), WAIT)
                    assert await parity(session, api, fake, oracle) == []

    run(scenario())
    messages = [r.getMessage() for r in caplog.records if r.name == "jobs_index.follow"]
    assert sum("connected to" in m and "reconnected" not in m for m in messages) == 1, messages
    back = [m for m in messages if "reconnected to" in m]
    assert back and back[0].endswith("s; resyncing"), messages


def test_explicit_deletions_in_comfyui_are_not_propagated(db_url):
    async def scenario():
        async with running_fake_comfyui(auto_execute=True) as fake:
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(fake)):
                    ids = [fake.submit() for _ in range(4)]
                    assert await eventually(lambda: _eq(total(session, api), 4), WAIT)
                    async with session.post(fake.url + "/history", json={"delete": [ids[0]]}) as response:
                        assert response.status == 200
                    async with session.post(fake.url + "/history", json={"clear": True}) as response:
                        assert response.status == 200
                    later = fake.submit()  # events, syncs
                    assert await eventually(lambda: _is(session, api, later, "completed"), WAIT)
                    assert await total(session, api) == 5
                    assert fake.history_dict().keys() == {later}

    run(scenario())


async def _eq(awaitable, value) -> bool:
    return await awaitable == value


# -- sources and restarts of the follower --------------------------------------


def test_several_servers_feed_one_index_as_sources(db_url):
    async def scenario():
        async with running_fake_comfyui(auto_execute=True) as one, running_fake_comfyui() as two:
            for _ in range(3):
                one.submit(workflow_id="shared")
            two.seed(*_history_and_queue())
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api), following(index, target(one), target(two)):
                    for fake in (one, two):
                        oracle = Oracle()
                        assert (
                            await parity(session, api, fake, oracle, extra={"source": default_source(fake.url)}) == []
                        )
                    one.submit(workflow_id="shared")
                    assert await eventually(
                        lambda: _eq(total(session, api, f"&source={default_source(one.url)}"), 4), WAIT
                    )
                    everything = await total(session, api)
                    assert everything == 4 + len(two.history_dict()) + 3
                    assert await total(session, api, "&workflow_id=shared") == 4
                    assert await total(session, api, "&source=nobody:1") == 0
                    assert await in_thread(index.counts_consistent)

    run(scenario())


def test_two_followers_of_one_source_name_never_write_it_at_once(db_url):
    """Two machines each following their own ``localhost:8188`` would both be source
    ``localhost:8188``: the second follower waits for the first's lease (saying who
    holds it) instead of removing the first one's live jobs; once the first stops, the
    second takes the source over."""

    async def scenario():
        async with running_fake_comfyui() as one, running_fake_comfyui() as two:
            running, pending = one.submit(), one.submit()
            one.start_next()
            two.submit()
            with JobsIndex.open(db_url) as index:
                async with following(index, Target(one.url, "localhost:8188")) as (first,):
                    assert await eventually(lambda: _true(first.stats.syncs > 0), WAIT)
                    second = Follower(index, Target(two.url, "localhost:8188"))
                    with pytest.raises(SourceBusy, match=first.holder):
                        await second.sync_once()
                    assert await in_thread(index.finished_ids, []) == set()
                    assert (await in_thread(index.get_job, running))["status"] == "in_progress"
                    assert (await in_thread(index.get_job, pending))["status"] == "pending"
                assert await in_thread(index.lease_of, "localhost:8188") is None  # released on stop
                await second.sync_once()
                with pytest.raises(JobNotFound):
                    await in_thread(index.get_job, running)  # one's live rows: the source is two's now

    run(scenario())


def _history_and_queue():
    from .fixtures_util import capture_queue, snapshot_history

    running, pending = capture_queue()
    return snapshot_history(), running, pending


def test_a_restarted_follower_reads_only_the_tail(db_url):
    """The watermark is stored: a new follower on the same database asks for the last
    few history entries, not the whole history."""

    async def scenario():
        fake = RecordingFake(auto_execute=True)
        async with running_fake_comfyui(fake=fake):
            for _ in range(60):
                fake.submit()
            await settled(fake, 60)
            with JobsIndex.open(db_url) as index:
                async with serving(index) as (session, api):
                    async with following(index, target(fake), page_size=25) as (follower,):
                        await asyncio.wait_for(follower.synced.wait(), WAIT)
                        assert await total(session, api) == 60
                    assert (await in_thread(index.follow_state, default_source(fake.url)))[1] == list(
                        fake.history_dict()
                    )[-1]
                    for _ in range(3):
                        fake.submit()
                    fake.requests.clear()
                    async with following(index, target(fake), page_size=25) as (follower,):
                        assert await eventually(lambda: _eq(total(session, api), 63), WAIT)
                    assert fake.history_requests() and all(
                        "offset" not in q and q["max_items"] == "8" for q in fake.history_requests()
                    )

    run(scenario())


# -- the command ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_follow_serve_in_one_process(db_url):
    """``jobs-index follow URL --source NAME --serve --port P`` as a real process:
    backfills, serves, stays current, exits cleanly on SIGTERM."""
    with FakeComfyUIThread(fake=FakeComfyUI.from_capture(history_at_queue_snapshot=True)) as fake:
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs_index.cli",
                "--db",
                db_url,
                "follow",
                fake.url,
                "--source",
                "gpu1",
                "--serve",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:

            async def check():
                async with aiohttp.ClientSession() as session:
                    oracle = Oracle()

                    async def answers():
                        try:
                            oracle.observe(fake.history_dict())
                            return not await mismatches(
                                session,
                                f"http://127.0.0.1:{port}",
                                oracle.reference(fake.queue_running(), fake.queue_pending()),
                                extra={"source": "gpu1"},
                            )
                        except aiohttp.ClientError:
                            return False

                    assert await eventually(answers, 30)
                    running = fake.running_prompt_id
                    fake.finish(running)
                    assert await eventually(answers, WAIT)

            run(check())
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err.decode()
        assert b"following" in err and b"gpu1" in err


def test_cli_follow_once_backfills_and_exits(tmp_path):
    with FakeComfyUIThread(fake=FakeComfyUI.from_capture(history_at_queue_snapshot=True)) as fake:
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        result = CliRunner().invoke(cli, ["--db", url, "follow", fake.url, "--once"])
        assert result.exit_code == 0, result.output
        with JobsIndex.open(url) as index:
            assert index.total() == len(fake.history_dict()) + 3
        result = CliRunner().invoke(cli, ["--db", url, "follow", fake.url, "http://x:1", "--source", "a"])
        assert result.exit_code == 1 and "--source names one server" in result.output


def test_targets_and_backoff():
    assert normalize_url("127.0.0.1:8188/") == "http://127.0.0.1:8188"
    assert default_source("http://gpu1:8188") == "gpu1:8188"
    assert default_source("https://comfy.example.org/") == "comfy.example.org:443"
    assert [t.source for t in make_targets(["a:1", "b:2"])] == ["a:1", "b:2"]
    assert make_targets(["http://a:1"], "mine") == [Target("http://a:1", "mine")]
    for bad in (
        lambda: make_targets(["a:1", "http://a:1/"]),
        lambda: make_targets(["ftp://a"]),
        lambda: make_targets(["a:1", "b:2"], "x"),
        lambda: make_targets([]),
    ):
        with pytest.raises(ConfigError):
            bad()
    backoff = Backoff(base=0.5, cap=30)
    assert [backoff.delay(n, rand=lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(3, rand=lambda: 0.0) == 2.0  # jitter: between half and all of the step
    assert backoff.delay(10_000) <= 30
