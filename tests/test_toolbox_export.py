"""``jobs-index export`` / ``import`` of JSONL: a lossless move between engines."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from jobs_index import JobsIndex, parse_list_query
from jobs_index.ingest import EXPORT, HISTORY, detect, import_dump, read_dump
from jobs_index.queries import jobs
from jobs_index.toolbox import export_lines
from jobs_index.toolbox_queries import ExportFilter
from jobs_index.units import now_ms

from .fixtures_util import capture_history, capture_queue
from .toolbox_util import build_recent, run_cli, side_rows

LISTINGS = [
    {},
    {"limit": "10"},
    {"limit": "25", "offset": "40"},
    {"status": "failed,cancelled"},
    {"sort_by": "execution_duration", "sort_order": "asc", "limit": "30"},
    {"status": "pending,in_progress"},
    {"sort_order": "asc", "limit": "7"},
]


def fill(index) -> None:
    """History and live jobs from the captures, a recent sample, and a source name."""
    import_dump(index, detect("h", capture_history()), source="studio-1")
    running, pending = capture_queue()
    import_dump(index, detect("q", {"queue_running": running, "queue_pending": pending}))
    build_recent(index, 250)


def digests(index) -> dict[str, tuple]:
    with index.engine.connect() as conn:
        return {
            r.id: (r.raw_digest, r.raw_kind, r.stage, r.source)
            for r in conn.execute(select(jobs.c.id, jobs.c.raw_digest, jobs.c.raw_kind, jobs.c.stage, jobs.c.source))
        }


def answers(index) -> list:
    pages = [index.list_jobs(parse_list_query(p)).body(parse_list_query(p)) for p in LISTINGS]
    page = index.list_jobs(parse_list_query({"limit": "10"}))
    follow = {"limit": "10", "after": page.next_cursor}
    pages.append(index.list_jobs(parse_list_query(follow)).body(parse_list_query(follow)))
    return pages


def details(index) -> dict[str, dict]:
    return {job_id: index.get_job(job_id) for job_id in sorted(digests(index))}


def test_sqlite_to_jsonl_to_postgresql_to_jsonl(sqlite_url, pg_url, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with JobsIndex.open(sqlite_url) as source:
        fill(source)
        assert run_cli("export", "-o", str(first), db=sqlite_url).exit_code == 0
        source_state = (details(source), digests(source), answers(source), side_rows(source))
    imported = run_cli("import", str(first), db=pg_url)
    assert imported.exit_code == 0, imported.stderr
    n = len(source_state[1])
    assert imported.stdout.strip() == f"1 file(s): {n} inserted, 0 updated, 0 unchanged, 0 rejected"
    exported = run_cli("export", "-o", str(second), db=pg_url)
    assert exported.exit_code == 0 and exported.stderr.strip() == f"exported {n} job(s) to {second}"
    assert first.read_bytes() == second.read_bytes()
    with JobsIndex.open(pg_url) as target:
        assert details(target) == source_state[0]
        assert digests(target) == source_state[1]
        assert answers(target) == source_state[2]
        assert side_rows(target) == source_state[3]
        assert target.counts_consistent()
    again = run_cli("import", str(second), db=pg_url)  # idempotent
    assert f"0 inserted, 0 updated, {n} unchanged" in again.stdout


def test_lines_carry_the_detail_and_the_raw_item(index, db_url):
    fill(index)
    lines = [json.loads(line) for line in export_lines(index, ExportFilter(), chunk=7)]
    assert len(lines) == len(digests(index))
    keys = [(line["job"].get("create_time", 0), line["job"]["id"]) for line in lines]
    assert keys == sorted(keys)  # oldest first, ties by id, across chunk boundaries
    for line in lines:
        assert set(line) == {"job", "raw_kind", "raw", "source"}
        assert line["job"] == index.get_job(line["job"]["id"])
    kinds = {(line["raw_kind"], line["job"]["status"]) for line in lines}
    assert {("queue", "pending"), ("queue", "in_progress"), ("history", "completed")} <= kinds
    assert {line["source"] for line in lines} == {"studio-1", None}


def test_filters(index, db_url):
    fill(index)
    failed = [json.loads(x) for x in export_lines(index, ExportFilter(statuses=("failed",)))]
    assert failed and all(x["job"]["status"] == "failed" for x in failed)
    some = failed[0]["job"]["workflow_id"]
    by_workflow = run_cli("export", "--workflow-id", some, "--status", "failed,completed", db=db_url)
    rows = [json.loads(x) for x in by_workflow.stdout.splitlines()]
    assert rows and all(x["job"]["workflow_id"] == some and x["job"]["status"] in ("failed", "completed") for x in rows)
    # The sample spans 6h to ~5h ago: a 330-minute window cuts through it.
    cutoff = now_ms() - 330 * 60_000
    recent = [json.loads(x) for x in run_cli("export", "--since", "330m", db=db_url).stdout.splitlines()]
    everything = run_cli("export", db=db_url).stdout.splitlines()
    assert 0 < len(recent) < len(everything)
    assert all(x["job"]["create_time"] >= cutoff for x in recent)
    bad = run_cli("export", "--since", "1 hour", db=db_url)
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: --since: invalid duration")


def test_a_workflows_export_merges_one_seek_per_status_across_chunks(index):
    """A workflow's jobs are read one seek per status, merged (revision 0015 drops
    ``(workflow_id, create_time, id)``): every chunk boundary keeps the order, every
    status of the workflow is there, and a status filter takes its statuses only."""
    from jobs_index.normalize import from_history, from_queue
    from jobs_index.sample import synthetic_history

    records = [from_history(k, v) for k, v in synthetic_history(120, seed=31, workflows=3)]
    workflow = records[0].workflow_id
    live = [
        [
            900 + n,
            f"live-{n}",
            {},
            {"create_time": records[n * 7].create_time, "extra_pnginfo": {"workflow": {"id": workflow}}},
            [],
        ]
        for n in range(4)
    ]
    records += [from_queue(item, "pending" if n % 2 else "in_progress") for n, item in enumerate(live)]
    index.ingest(records)
    for statuses in (None, ("pending", "failed"), ("completed",)):
        expected = sorted(
            (r.create_time, r.id)
            for r in records
            if r.workflow_id == workflow and (statuses is None or r.status in statuses)
        )
        assert len({r.status for r in records if r.workflow_id == workflow}) >= 4
        for chunk in (1, 4, 500):
            lines = [
                json.loads(x)
                for x in export_lines(index, ExportFilter(statuses=statuses, workflow_id=workflow), chunk=chunk)
            ]
            assert [(x["job"]["create_time"], x["job"]["id"]) for x in lines] == expected, (statuses, chunk)


def test_bad_lines_are_rejected_one_by_one(index, db_url, tmp_path):
    build_recent(index, 5)
    lines = list(export_lines(index, ExportFilter()))
    broken = json.loads(lines[1])
    broken["raw_kind"] = "queue"
    broken["job"]["status"] = "completed"
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([lines[0], "{not json", json.dumps(broken), '{"job": {}, "raw": 1}', *lines[2:]]) + "\n")
    with JobsIndex.open(f"sqlite:///{tmp_path}/new.sqlite3") as fresh:
        result = run_cli("import", str(path), db=f"sqlite:///{tmp_path}/new.sqlite3")
        assert result.exit_code == 0
        assert "rejected line 2: not valid JSON" in result.stderr
        assert "pending or in_progress" in result.stderr
        assert "rejected line 4: not an export line" in result.stderr
        assert f"{len(lines) - 1} inserted" in result.stdout and "3 rejected" in result.stdout
        assert fresh.counts_consistent()


def test_import_source_overrides_the_recorded_one(index, tmp_path):
    import_dump(index, detect("h", capture_history()), source="studio-1")
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(export_lines(index, ExportFilter())) + "\n")
    other_url = f"sqlite:///{tmp_path}/other.sqlite3"
    with JobsIndex.open(other_url) as other:
        run_cli("import", "--source", "archive", str(path), db=other_url)
        assert {v[3] for v in digests(other).values()} == {"archive"}


def test_detection_of_jsonl_and_one_line_history():
    history = capture_history()
    one_line = json.dumps(history).encode()
    dump = read_dump("h", io.BytesIO(one_line + b"\n"))
    assert dump.kind == HISTORY and len(dump) == len(history)
    pretty = json.dumps(history, indent=2).encode()
    assert read_dump("h", io.BytesIO(pretty)).kind == HISTORY
    job_id, item = next(iter(history.items()))
    line = json.dumps({"job": {"id": job_id}, "raw_kind": "history", "raw": item, "source": None}).encode()
    dump = read_dump("x", io.BytesIO(line + b"\n" + line + b"\n"))
    assert dump.kind == EXPORT and len(dump) == 2  # line count, for progress
    assert [key for key, _, _ in dump.items] == ["line 1", "line 2"]


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_input_is_still_an_error(sqlite_url, tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    result = run_cli("import", str(path), db=sqlite_url)
    assert result.exit_code == 1 and "not valid JSON" in result.stderr


def test_a_reader_that_leaves_early_is_not_an_error_trace(index, db_url):
    build_recent(index, 120)  # several hundred KB: more than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs_index.cli", "--db", db_url, "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.read(1000)
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"Traceback" not in err and b"Exception ignored" not in err
