"""Operating endpoints (issue #17): ``/metrics``, ``/healthz``, ``/readyz``.

A real jobs-index server on loopback over a real index (both backends). The
exposition is parsed with prometheus-client's own text parser and every number is
compared with SQL over ``jobs`` after imports, status changes, deletes and prunes.
Followers run against the ComfyUI stand-in, which goes away and comes back.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from jobs_index import JobsIndex
from jobs_index.database import VERSION_TABLE, make_engine
from jobs_index.follow import Backoff, Follower, Target, default_source
from jobs_index.http import ServerConfig, create_app
from jobs_index.metrics import DURATION_BUCKETS
from jobs_index.normalize import from_history, from_queue
from jobs_index.sample import history_item, queue_item, synthetic_history
from jobs_index.toolbox import prune, prune_filter

from .live_server import served
from .live_util import eventually
from .standins.fake_comfyui import FakeComfyUI

HISTOGRAM = "jobs_index_job_execution_seconds"


def fetch(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(exposition: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` as prometheus-client's parser reads them."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, content_type, body = fetch(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return samples(body)


def by_labels(metrics: dict, name: str, *keys: str) -> dict[tuple, float]:
    return {
        tuple(dict(labels)[k] for k in keys): value
        for (sample, labels), value in metrics.items()
        if sample == name and value
    }


def sql(index: JobsIndex, statement: str) -> list[tuple]:
    with index.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(statement))]


def sql_counts(index: JobsIndex) -> dict[tuple, float]:
    return {
        (source, status): n
        for source, status, n in sql(
            index, "SELECT COALESCE(source, ''), status, count(*) FROM jobs GROUP BY COALESCE(source, ''), status"
        )
    }


def jobs(count: int, seed: int) -> list:
    return [from_history(job_id, item) for job_id, item in synthetic_history(count, seed=seed)]


def assert_counts_match(index: JobsIndex, port: int) -> dict:
    metrics = scrape(port)
    assert by_labels(metrics, "jobs_index_jobs", "source", "status") == sql_counts(index)
    totals = {status: n for status, n in sql(index, "SELECT status, count(*) FROM jobs GROUP BY status")}
    assert by_labels(metrics, "jobs_index_jobs_all", "status") == {(s,): n for s, n in totals.items()}
    assert metrics[("jobs_index_database_up", frozenset())] == 1
    return metrics


def test_metrics_equal_sql_after_imports_status_changes_deletes_and_prunes(index):
    rng = random.Random(7)
    with served(create_app(ServerConfig(pool_size=2), index=index)) as port:
        empty = assert_counts_match(index, port)
        assert by_labels(empty, "jobs_index_jobs", "source", "status") == {}

        # Imports: two named sources and jobs without a source; live jobs too.
        index.ingest(jobs(120, seed=1), source="gpu1:8188")
        index.ingest(jobs(80, seed=2), source="gpu2:8188")
        index.ingest(jobs(30, seed=3))
        live_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5)]
        live = [
            from_queue(
                queue_item(rng, job_id, 1000 + n, 1_800_000_000_000 + n, "wf"), "in_progress" if n == 0 else "pending"
            )
            for n, job_id in enumerate(live_ids)
        ]
        index.ingest(live, source="gpu1:8188")
        metrics = assert_counts_match(index, port)
        assert metrics[("jobs_index_jobs", frozenset({("source", "gpu1:8188"), ("status", "pending")}))] == 4

        # Every finished job with execution times was observed once, in its bucket.
        finished_sql = """SELECT COALESCE(source, ''), status, count(*),
                                 sum(execution_end_time - execution_start_time) FROM jobs
                          WHERE stage = 2 AND execution_start_time IS NOT NULL
                            AND execution_end_time IS NOT NULL GROUP BY COALESCE(source, ''), status"""
        finished = {(s, st): (n, float(total) / 1000) for s, st, n, total in sql(index, finished_sql)}
        assert len(finished) >= 6
        assert by_labels(metrics, HISTOGRAM + "_count", "source", "status") == {
            key: n for key, (n, _) in finished.items()
        }
        for key, (_, total) in finished.items():
            labels = frozenset({("source", key[0]), ("status", key[1])})
            assert metrics[(HISTOGRAM + "_sum", labels)] == pytest.approx(total)
        for bound in DURATION_BUCKETS:
            expected = {
                (s, st): n
                for s, st, n in sql(
                    index,
                    f"""
                SELECT COALESCE(source, ''), status, count(*) FROM jobs WHERE stage = 2
                  AND execution_end_time - execution_start_time <= {int(bound * 1000)}
                GROUP BY COALESCE(source, ''), status""",
                )
            }
            assert (
                by_labels(
                    {k: v for k, v in metrics.items() if dict(k[1]).get("le") == repr(bound)},
                    HISTOGRAM + "_bucket",
                    "source",
                    "status",
                )
                == expected
            ), bound
        failures = {
            (s, t): n
            for s, t, n in sql(
                index,
                """SELECT COALESCE(source, ''), COALESCE(error_type, 'unknown'),
            count(*) FROM jobs WHERE status = 'failed'
            GROUP BY COALESCE(source, ''), COALESCE(error_type, 'unknown')""",
            )
        }
        assert failures and by_labels(metrics, "jobs_index_job_failures_total", "source", "error_type") == failures

        # Importing the same history again finishes nothing: the histograms stay.
        index.ingest(jobs(120, seed=1), source="gpu1:8188")
        again = assert_counts_match(index, port)
        assert by_labels(again, HISTOGRAM + "_count", "source", "status") == {
            key: n for key, (n, _) in finished.items()
        }

        # Status change: the running job finishes (its history row replaces the live one).
        done = history_item(rng, live_ids[0], 1000, 1_800_000_000_000, "wf")
        index.ingest([from_history(live_ids[0], done)], source="gpu1:8188")
        changed = assert_counts_match(index, port)
        status = sql(index, f"SELECT status FROM jobs WHERE id = '{live_ids[0]}'")[0][0]
        key = frozenset({("source", "gpu1:8188"), ("status", status)})
        assert changed[(HISTOGRAM + "_count", key)] == again.get((HISTOGRAM + "_count", key), 0) + 1
        assert ("jobs_index_jobs", frozenset({("source", "gpu1:8188"), ("status", "in_progress")})) not in {
            k for k, v in changed.items() if v
        }

        # Deletes and prunes: the gauges follow; the histograms are counters and keep.
        index.delete_jobs(
            live_ids[1:3] + [row[0] for row in sql(index, "SELECT id FROM jobs WHERE source = 'gpu2:8188' LIMIT 10")]
        )
        assert_counts_match(index, port)
        prune(index, prune_filter(index, keep=50))
        pruned = assert_counts_match(index, port)
        assert sum(by_labels(pruned, "jobs_index_jobs_all", "status").values()) < 240
        assert by_labels(pruned, HISTOGRAM + "_count", "source", "status") == by_labels(
            changed, HISTOGRAM + "_count", "source", "status"
        )


def test_healthz_and_readyz_on_a_migrated_database(index):
    with served(create_app(ServerConfig(pool_size=2), index=index)) as port:
        status, content_type, body = fetch(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"}) and content_type.startswith("application/json")
        status, _, body = fetch(port, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        assert json.loads(body)["database"] == "ok"

        # Not migrated: the schema is behind this code.
        with index.engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0004_writer_counts'"))
        status, content_type, body = fetch(port, "/readyz")
        assert status == 503 and content_type.startswith("application/json")
        assert json.loads(body)["database"].startswith("not migrated: schema revision 0004_writer_counts")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_readyz_is_503_json_when_the_database_is_unreachable(backend, tmp_path):
    url = (
        f"sqlite:///{tmp_path}"
        if backend == "sqlite"
        else "postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    )
    index = JobsIndex(make_engine(url, pool_size=1))
    try:
        with served(create_app(ServerConfig(pool_size=1), index=index)) as port:
            assert fetch(port, "/healthz")[0] == 200
            status, content_type, body = fetch(port, "/readyz")
            assert status == 503 and content_type.startswith("application/json")
            assert json.loads(body)["database"].startswith("unreachable: ")
            metrics = scrape(port)  # the scrape still answers, and says so
            assert metrics[("jobs_index_database_up", frozenset())] == 0
    finally:
        index.close()


# -- followers -----------------------------------------------------------------


async def exposition(session: aiohttp.ClientSession, api: str) -> str:
    async with session.get(api + "/metrics") as response:
        return await response.text()


def exposed_names(text_: str) -> set[str]:
    """Every series name a PromQL query can use on this exposition."""
    names = set()
    for family in text_string_to_metric_families(text_):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def dashboard_metrics() -> set[str]:
    """The jobs-index series the Grafana dashboard in docs/ queries."""
    path = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
    exprs = [target["expr"] for panel in json.loads(path.read_text())["panels"] for target in panel["targets"]]
    names = {name for expr in exprs for name in re.findall(r"\bjobs_index_[a-z_]+", expr)}
    assert len(names) >= 10
    return names


def _value(metrics: dict, name: str, source: str) -> float:
    return metrics.get((name, frozenset({("source", source)})), 0.0)


def test_follower_metrics_follow_comfyui_going_away_and_coming_back(index):
    async def main() -> None:
        fake = FakeComfyUI()
        await fake.start()
        port = fake.port
        target = Target(fake.url, default_source(fake.url))
        source = target.source
        executor = ThreadPoolExecutor(2)
        follower = Follower(
            index, target, executor=executor, backoff=Backoff(base=0.05, cap=0.2), heartbeat=2.0, poll_interval=5.0
        )
        runner = web.AppRunner(create_app(ServerConfig(pool_size=2), index=index, followers=[follower]))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        api = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        task = asyncio.create_task(follower.run())
        async with aiohttp.ClientSession() as session:

            async def metrics() -> dict:
                async with session.get(api + "/metrics") as response:
                    return samples(await response.text())

            async def ready() -> tuple[int, dict]:
                async with session.get(api + "/readyz") as response:
                    return response.status, await response.json()

            try:

                async def up(expected: int, syncs_above: float = -1):
                    m = await metrics()
                    return (
                        m
                        if (
                            _value(m, "jobs_index_follow_up", source) == expected
                            and _value(m, "jobs_index_follow_syncs_total", source) > syncs_above
                        )
                        else None
                    )

                first = await eventually(lambda: up(1, 0), timeout=30)
                assert _value(first, "jobs_index_follow_syncs_total", source) >= 1
                assert _value(first, "jobs_index_follow_reconnects_total", source) == 0
                assert _value(first, "jobs_index_follow_watermark_lag_seconds", source) < 5
                assert _value(first, "jobs_index_follow_last_sync_seconds", source) > 0
                status, body = await ready()
                assert status == 200 and body["followers"] == {source: "connected"} and body["status"] == "ready"

                job = fake.submit()
                fake.start_next()
                fake.finish(job)

                async def counted():
                    m = await metrics()
                    key = (HISTOGRAM + "_count", frozenset({("source", source), ("status", "completed")}))
                    return m if m.get(key) == 1 else None

                await eventually(counted, timeout=30)
                assert dashboard_metrics() <= exposed_names(await exposition(session, api))

                await fake.stop()  # ComfyUI goes away
                down = await eventually(lambda: up(0), timeout=30)
                assert _value(down, "jobs_index_follow_reconnects_total", source) >= 1
                status, body = await ready()
                assert status == 503 and body["followers"] == {source: "disconnected"}
                await asyncio.sleep(1.2)
                later = await metrics()
                assert _value(later, "jobs_index_follow_watermark_lag_seconds", source) >= 1.0
                assert _value(later, "jobs_index_follow_seconds_since_last_event", source) >= 1.0

                back = FakeComfyUI()  # ComfyUI restarted on the same port
                await back.start(port=port)
                try:
                    again = await eventually(
                        lambda: up(1, _value(down, "jobs_index_follow_syncs_total", source)), timeout=30
                    )
                    assert _value(again, "jobs_index_follow_watermark_lag_seconds", source) < _value(
                        later, "jobs_index_follow_watermark_lag_seconds", source
                    )
                    assert _value(again, "jobs_index_follow_syncs_total", source) > _value(
                        first, "jobs_index_follow_syncs_total", source
                    )
                    assert (await ready())[0] == 200
                finally:
                    await back.stop()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await runner.cleanup()
                executor.shutdown(wait=True)
                await fake.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


# -- the custom node -----------------------------------------------------------


def test_the_custom_node_serves_metrics_and_health_under_comfyuis_routes(db_url):
    from .test_custom_node import comfyui, run

    async def scenario():
        async with comfyui(db_url) as comfy:
            jobs_ = [await comfy.submit() for _ in range(3)]
            assert await eventually(lambda: _true(all(job in comfy.queue.history for job in jobs_)), 30)
            source = comfy.node.writer.source  # the source the node records its jobs under
            index = comfy.node.writer.index

            async def scraped():
                async with comfy.session.get(comfy.url + "/jobs-index/metrics") as response:
                    assert response.status == 200 and response.content_type == "text/plain"
                    m = samples(await response.text())
                key = (HISTOGRAM + "_count", frozenset({("source", source), ("status", "completed")}))
                return m if m.get(key) == 3 else None

            assert await eventually(scraped, 30), "the node's writes were observed"
            metrics = await scraped()  # the counts are read before the histograms: scrape again
            counts = await asyncio.get_running_loop().run_in_executor(None, sql_counts, index)
            assert by_labels(metrics, "jobs_index_jobs", "source", "status") == counts == {(source, "completed"): 3}
            for path, expected in (("/jobs-index/healthz", {"status": "ok"}), ("/jobs-index/readyz", None)):
                async with comfy.session.get(comfy.url + path) as response:
                    assert response.status == 200, path
                    body = await response.json()
                    assert expected is None or body == expected
            assert body["status"] == "ready" and body["database"] == "ok"

    run(scenario(), timeout=120)


async def _true(value):
    return value


def test_error_type_labels_are_bounded_and_durations_land_in_their_bucket():
    from jobs_index.metrics import MAX_ERROR_TYPES, FinishedJobs

    finished = FinishedJobs()
    finished.observe([("gpu1", "failed", None, f"Error{n}") for n in range(MAX_ERROR_TYPES + 10)])
    finished.observe(
        [
            ("gpu1", "failed", 3.0, "Error0"),
            ("gpu1", "failed", 0.2, None),
            ("gpu1", "completed", 1.0, None),
            (None, "completed", 7200.0, None),
        ]
    )
    durations, failures = finished.snapshot()
    assert len({error_type for _, error_type in failures}) == MAX_ERROR_TYPES + 1  # the cap, then "other"
    assert failures[("gpu1", "other")] == 11 and failures[("gpu1", "Error0")] == 2  # "unknown" went to other
    assert sum(failures.values()) == MAX_ERROR_TYPES + 12
    buckets, count, total = durations[("gpu1", "failed")]
    assert count == 2 and total == pytest.approx(3.2)
    assert buckets[0] == 1 and buckets[DURATION_BUCKETS.index(5.0)] == 1  # le=1 and le=5 (3 s)
    assert durations[("gpu1", "completed")][0][0] == 1  # exactly 1.0 s is in le="1.0"
    assert durations[("", "completed")][0][-1] == 1  # over the last bound: +Inf only
