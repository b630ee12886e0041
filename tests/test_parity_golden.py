"""Golden parity: the index, served over real HTTP, answers every captured ComfyUI
request with ComfyUI's status, content type and body, on each backend. Bodies are
compared type-exact (re-encoded by ``json.dumps``: ``4.0`` is not ``4``, as in
ComfyUI's answer), not only equal after parsing."""

from __future__ import annotations

import json

import pytest

from jobs_index import JobsIndex
from jobs_index.ingest import detect, import_dump

from .fixtures_util import (
    capture_history,
    capture_queue,
    cursor_branch_history,
    load_capture,
    request_job_id,
    snapshot_history,
)
from .live_server import live_server
from .test_reference import as_seed

HISTORY_STATE = [
    "jobs_all.json",
    "jobs_page1.json",
    "jobs_page2_offset.json",
    "jobs_asc.json",
    "jobs_by_duration.json",
    "jobs_status_failed.json",
    "jobs_status_cancelled.json",
    "jobs_status_completed.json",
    "jobs_workflow_filter.json",
    "jobs_offset_past_end.json",
    "jobs_negative_offset.json",
    "jobs_legacy_double_api_prefix.json",
    "job_detail.json",
    "job_detail_failed.json",
    "job_detail_cancelled.json",
    "job_detail_cached.json",
    "job_detail_not_found.json",
]
QUEUE_STATE = [
    "jobs_with_running_pending.json",
    "jobs_status_pending_inprogress.json",
    "job_detail_running.json",
    "job_detail_pending.json",
]
CURSOR_BRANCH = [
    "jobs_all.json",
    "jobs_page1.json",
    "jobs_page2_after.json",
    "jobs_page3_after.json",
    "jobs_page4_after.json",
    "jobs_asc_page1.json",
    "jobs_asc_page2_after.json",
    "jobs_offset_mode_cursor_minted.json",
    "jobs_bad_cursor.json",
    "jobs_bad_cursor_empty_set.json",
    "jobs_cursor_order_mismatch.json",
    "jobs_cursor_with_duration_sort_ignored.json",
]


def exact(body) -> str:
    """JSON text that tells an int from a float (``4`` vs ``4.0``), key order aside."""
    return json.dumps(body, sort_keys=True)


def load(index: JobsIndex, history: dict, running=(), pending=()) -> None:
    import_dump(index, detect("history", history))
    if running or pending:
        import_dump(index, detect("queue", {"queue_running": list(running), "queue_pending": list(pending)}))


def assert_answers(client, capture: dict) -> None:
    """Top-level captures are ComfyUI v0.26.0; ``as_seed`` adds what the contract's
    commit changed (next_cursor, id tiebreak) and is a no-op elsewhere."""
    capture = as_seed(capture)
    reply = client.get(capture["request"]["path"])
    assert reply.status == capture["status"]
    assert reply.body == capture["body"]
    assert exact(reply.body) == exact(capture["body"])  # 4.0 stays 4.0
    if "content_type" in capture:
        assert reply.content_type == capture["content_type"]


@pytest.fixture
def history_server(index):
    load(index, capture_history())
    with live_server(index) as client:
        yield client


@pytest.mark.parametrize("name", HISTORY_STATE)
def test_history_state_captures(history_server, name):
    assert_answers(history_server, load_capture(name))


def test_every_validation_error(history_server):
    for case, capture in load_capture("jobs_validation_errors.json").items():
        assert_answers(history_server, capture), case


def test_queue_state_captures(index):
    running, pending = capture_queue()
    load(index, snapshot_history(), running, pending)
    with live_server(index) as client:
        for name in QUEUE_STATE:
            assert_answers(client, load_capture(name))


def test_cursor_branch_captures(index):
    load(index, cursor_branch_history())
    with live_server(index) as client:
        for name in CURSOR_BRANCH:
            assert_answers(client, load_capture(f"cursor_branch/{name}"))


def test_next_cursor_is_byte_identical(index):
    load(index, cursor_branch_history())
    expected = load_capture("cursor_branch/decoded_next_cursor.json")
    with live_server(index) as client:
        reply = client.get("/api/jobs?limit=1")
    assert reply.body["pagination"]["next_cursor"] == expected["cursor"]


def test_empty_index(index):
    with live_server(index) as client:
        assert_answers(client, load_capture("jobs_empty.json"))


def test_explicit_deletes_match_comfyui(index):
    """POST /history {delete: [id]} and {clear: true} in ComfyUI; delete_jobs here."""
    load(index, capture_history())
    deleted = load_capture("post_history_delete.json")["request"]["body"]["delete"]
    index.delete_jobs(deleted)
    with live_server(index) as client:
        assert_answers(client, load_capture("jobs_after_history_delete.json"))
        index.delete_jobs(capture_history())
        assert_answers(client, load_capture("jobs_after_history_clear.json"))


def test_detail_of_queue_job_has_no_sensitive_element(index):
    running, pending = capture_queue()
    secret = {"api_key_comfy_org": "sk-never-stored"}
    load(index, {}, [item + [secret] for item in running], [item + [secret] for item in pending])
    job_id = request_job_id(load_capture("job_detail_running.json"))
    with live_server(index) as client:
        assert client.get(f"/api/jobs/{job_id}").body == load_capture("job_detail_running.json")["body"]


# -- client-chosen queue numbers: floats (queue_numbers/, ComfyUI at the seed's commit) --

QUEUE_NUMBERS = "queue_numbers/"
WALK = [f"{QUEUE_NUMBERS}walk_{i}.json" for i in range(6)]


def queue_numbers_history() -> dict:
    return load_capture(f"{QUEUE_NUMBERS}history.json")["body"]


def test_queue_numbers_while_running(index):
    """`/queue` while the slow job ran: pending jobs numbered 2.5, 7.0, 4.0 (floats),
    -1 (front) and 2, listed with their priorities exactly as ComfyUI holds them."""
    queue = load_capture(f"{QUEUE_NUMBERS}queue_while_running.json")["body"]
    result = import_dump(index, detect("queue", queue))
    assert (result.inserted, result.rejected) == (6, [])
    with live_server(index) as client:
        assert_answers(client, load_capture(f"{QUEUE_NUMBERS}jobs_while_running.json"))


@pytest.mark.parametrize(
    "name", ["jobs_all.json", "jobs_asc.json", "jobs_by_duration.json", "job_detail_number_float.json"]
)
def test_queue_numbers_history(index, name):
    """The queue drained into history: every listing, and the detail of the 2.5 job."""
    queue = load_capture(f"{QUEUE_NUMBERS}queue_while_running.json")["body"]
    import_dump(index, detect("queue", queue))
    result = import_dump(index, detect("history", queue_numbers_history()))
    assert (result.updated, result.rejected) == (6, [])
    with live_server(index) as client:
        assert_answers(client, load_capture(QUEUE_NUMBERS + name))


def test_queue_numbers_cursor_walk(index):
    """ComfyUI's `limit=1` walk, request by request: each page and its next_cursor,
    byte-identical, over jobs with float priorities."""
    load(index, queue_numbers_history())
    with live_server(index) as client:
        for name in WALK:
            capture = load_capture(name)
            assert_answers(client, capture)
            raw = client.get(capture["request"]["path"])
            cursor = raw.body["pagination"].get("next_cursor")
            assert cursor == capture["body"]["pagination"].get("next_cursor")


def test_queue_numbers_export_import_round_trip(index, tmp_path):
    """export → import into a fresh index of the other engine's kind keeps 4.0 and 2.5."""
    from jobs_index import parse_list_query
    from jobs_index.ingest import import_paths
    from jobs_index.toolbox import export_lines
    from jobs_index.toolbox_queries import ExportFilter

    load(index, queue_numbers_history())
    out = tmp_path / "export.jsonl"
    out.write_text("".join(line + "\n" for line in export_lines(index, ExportFilter())), encoding="utf-8")
    with JobsIndex.open(f"sqlite:///{tmp_path / 'copy.sqlite3'}") as copy:
        result, errors = import_paths(copy, [str(out)])
        assert (result.inserted, result.rejected, errors) == (6, [], [])
        query = parse_list_query({})
        assert copy.list_jobs(query).body_text(query) == index.list_jobs(query).body_text(query)
    with live_server(index) as client:
        assert_answers(client, load_capture(f"{QUEUE_NUMBERS}jobs_all.json"))
