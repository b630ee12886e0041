"""``jobs-index stats`` on each backend, checked against a computation in Python."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pytest

from jobs_index.toolbox import stats
from jobs_index.units import day_iso, now_ms, parse_duration

from .toolbox_util import DAY_MS, HOUR_MS, recent_records, run_cli


def nearest_rank(values: list[int], percent: int) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(percent * len(ordered) / 100) - 1]


def expected(records, since_ms: int | None) -> dict:
    inside = [r for r in records if since_ms is None or r.create_time >= since_ms]
    counts = Counter(r.status for r in inside)
    timed = [r for r in inside if r.status == "completed" and r.execution_start_time and r.execution_end_time]
    per_day = defaultdict(Counter)
    for r in inside:
        per_day[day_iso(r.create_time // DAY_MS)][r.status] += 1
    workflows = defaultdict(list)
    for r in inside:
        workflows[r.workflow_id].append(r)
    return {
        "counts": counts,
        "durations": [r.execution_duration for r in timed],
        "per_day": per_day,
        "workflows": workflows,
    }


@pytest.fixture
def spread(index):
    """Jobs over the last ~3 days (plus live ones), ingested."""
    records = recent_records(600, start_ms=now_ms() - 3 * DAY_MS, seed=5, workflows=8)
    # Spread them: synthetic jobs are seconds apart; stretch time so days differ.
    start = records[0].create_time
    for r in records:
        offset = (r.create_time - start) * 20
        for name in ("create_time", "execution_start_time", "execution_end_time"):
            if getattr(r, name) is not None:
                setattr(r, name, getattr(r, name) - r.create_time + start + offset)
    assert max(r.create_time for r in records) < now_ms()
    index.ingest(records)
    return records


@pytest.mark.parametrize("window", [None, "24h", "2d", "30m"])
def test_stats_match_python(index, spread, window):
    now = now_ms()
    since = None if window is None else now - parse_duration(window)
    report = stats(index, since, until_ms=now, top_workflows=None)
    want = expected(spread, since)
    assert report.counts == {
        s: want["counts"].get(s, 0) for s in ("pending", "in_progress", "completed", "failed", "cancelled")
    }
    assert report.total == sum(want["counts"].values())
    finished = sum(want["counts"][s] for s in ("completed", "failed", "cancelled"))
    assert report.failure_rate == (round(want["counts"]["failed"] / finished, 4) if finished else None)
    d = report.duration
    assert (d["n"], d["p50"], d["p95"]) == (
        len(want["durations"]),
        nearest_rank(want["durations"], 50),
        nearest_rank(want["durations"], 95),
    )
    assert [day["day"] for day in report.per_day] == sorted(want["per_day"])
    for day in report.per_day:
        assert day["total"] == sum(want["per_day"][day["day"]].values())
        assert day["failed"] == want["per_day"][day["day"]]["failed"]
    assert report.workflows_total == len(want["workflows"])
    for row in report.workflows:
        jobs = want["workflows"][row["workflow_id"]]
        durations = [
            r.execution_duration
            for r in jobs
            if r.status == "completed" and r.execution_start_time and r.execution_end_time
        ]
        assert row["total"] == len(jobs)
        assert row["failed"] == sum(r.status == "failed" for r in jobs)
        assert row["duration_ms"]["p50"] == nearest_rank(durations, 50)
        assert row["duration_ms"]["p95"] == nearest_rank(durations, 95)
        assert row["duration_ms"]["n"] == len(durations)
    totals = [row["total"] for row in report.workflows]
    assert totals == sorted(totals, reverse=True)


def test_window_really_cuts(index, spread):
    now = now_ms()
    day = stats(index, now - 24 * HOUR_MS, until_ms=now)
    everything = stats(index, None, until_ms=now)
    assert 0 < day.total < everything.total == len(spread)
    assert stats(index, now - 1, until_ms=now).total == 0


def test_empty_index(index):
    report = stats(index, None)
    assert report.total == 0 and report.failure_rate is None
    assert report.duration == {"n": 0, "p50": None, "p95": None, "mean": None}
    assert report.per_day == [] and report.workflows == []


def test_cli_table_and_json(index, spread, db_url):
    as_json = run_cli("stats", "--since", "2d", "--json", "--workflows", "3", db=db_url)
    assert as_json.exit_code == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert set(body) >= {"window", "total", "counts", "failure_rate", "duration_ms", "per_day", "workflows"}
    assert len(body["workflows"]) == 3 and body["workflows_total"] == 9  # 8 + the live jobs' workflow
    assert body["window"]["since"].endswith("Z")
    table = run_cli("stats", "--since", "24h", db=db_url)
    assert table.exit_code == 0, table.stderr
    out = table.stdout
    assert "failure rate:" in out and "p50" in out and "p95" in out and "day (UTC)" in out
    assert "completed" in out and "workflow_id" in out


@pytest.mark.parametrize("bad", ["7x", "d", "-1d", "1.5h", ""])
def test_bad_window_is_one_line(sqlite_url, bad):
    result = run_cli("stats", "--since", bad, db=sqlite_url)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --since: invalid duration"), result.stderr


def test_missing_index_is_not_created(tmp_path):
    result = run_cli("stats", db=f"sqlite:///{tmp_path}/nothing.sqlite3")
    assert result.exit_code == 2 and "no index at" in result.stderr
    assert not (tmp_path / "nothing.sqlite3").exists()
