"""Helpers for the toolbox tests: a recent sample index and CLI invocation."""

from __future__ import annotations

import json
import random
import uuid

from click.testing import CliRunner
from sqlalchemy import select

from jobs_index.cli import cli
from jobs_index.normalize import IN_PROGRESS, PENDING, from_history, from_queue
from jobs_index.sample import queue_item, synthetic_history
from jobs_index.schema import Job, JobCount, JobOutput
from jobs_index.units import now_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def recent_records(count: int, *, start_ms: int, seed: int = 7, workflows: int = 6) -> list:
    """``count`` history records from ``start_ms`` on, plus one running and two pending."""
    history = [
        from_history(job_id, item)
        for job_id, item in synthetic_history(count, seed=seed, start_ms=start_ms, workflows=workflows)
    ]
    rng = random.Random(seed + 1)
    last = history[-1].create_time
    live = [
        from_queue(
            queue_item(
                rng,
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                count + i,
                last + 1000 * (i + 1),
                "sample-workflow",
            ),
            status,
        )
        for i, status in enumerate((IN_PROGRESS, PENDING, PENDING))
    ]
    return history + live


def build_recent(index, count: int = 300, *, hours_ago: float = 6, seed: int = 7) -> list:
    """Fill ``index`` with jobs created over the last few hours; returns the records."""
    records = recent_records(count, start_ms=now_ms() - int(hours_ago * HOUR_MS), seed=seed)
    index.ingest(records)
    return records


def run_cli(*args: str, db: str, input: str | None = None):
    """``jobs-index --db DB ARGS`` in-process; result has exit_code, stdout, stderr."""
    return CliRunner().invoke(cli, ["--db", db, *args], input=input, catch_exceptions=False)


SEARCH_ROWS = "SELECT job_id, node_types, models, loras FROM job_facets ORDER BY job_id"


def snapshot(index) -> dict:
    """Everything a write could change: every row of every table (raw as digest)."""
    with index.engine.connect() as conn:
        jobs = Job.__table__
        return {
            "jobs": sorted(tuple(r) for r in conn.execute(select(*[c for c in jobs.columns if c.name != "raw"]))),
            "counts": sorted(tuple(r) for r in conn.execute(select(JobCount.__table__))),
            "outputs": sorted(tuple(r) for r in conn.execute(select(JobOutput.__table__))),
            "search": sorted(tuple(r) for r in conn.exec_driver_sql(SEARCH_ROWS)),
        }


def side_rows(index, job_id: str | None = None) -> tuple[list, list]:
    """(job_outputs rows, job_search rows) as dicts, ordered; one job or all. Search
    rows are ``job_id`` and the decoded ``node_types``/``models``/``loras`` lists."""
    outputs = JobOutput.__table__
    with index.engine.connect() as conn:
        o = select(outputs).order_by(outputs.c.job_id, outputs.c.ordinal)
        if job_id is not None:
            o = o.where(outputs.c.job_id == job_id)
        search = [
            {"job_id": r[0], "node_types": json.loads(r[1]), "models": json.loads(r[2]), "loras": json.loads(r[3])}
            for r in conn.exec_driver_sql(SEARCH_ROWS)
            if job_id is None or r[0] == job_id
        ]
        return [dict(r._mapping) for r in conn.execute(o)], search
