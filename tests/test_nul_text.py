"""A NUL where ComfyUI allows any string (issue 18 item 7): in a prompt id, a
workflow id, output filenames and subfolders, node ids and class types, error
fields. PostgreSQL text cannot hold NUL; SQLite's can. Both engines store the same
thing (``normalize.column_text``: a NUL is "\\x01\\x01" in ``jobs.id`` and
``jobs.workflow_id``) and answer exactly what ComfyUI answers for those jobs:
listings in every order, filters, cursors, details, deletions."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from jobs_index.comfyui.writer import FINISHED, Op, State, Writer, _record
from jobs_index.normalize import IN_PROGRESS, PENDING, answer_text, column_text, from_history, from_queue
from jobs_index.params import parse_list_query

from .reference import Reference

T = 1_790_000_000_000
# Ids that differ only around NUL and the escape character "\x01", all created at the
# same time: their order is the id's code point order, as ComfyUI sorts them.
IDS = ["a", "a\x00", "a\x00\x00", "a\x00b", "a\x01", "a\x01\x00", "a\x01\x02", "a\x02", "ab", "\x00", "\x01"]


def history_item(job_id: str, number: int, workflow: str | None) -> dict:
    start = T + 10 + number
    extra = {"create_time": T}
    if workflow is not None:
        extra["extra_pnginfo"] = {"workflow": {"id": workflow}}
    return {
        "prompt": [
            number,
            job_id,
            {"n\x001": {"class_type": "Save\x00Image", "inputs": {"x": "\x00"}}},
            extra,
            ["n\x001"],
        ],
        "outputs": {
            "n\x001": {
                "images": [{"filename": f"out\x00{number}.png", "subfolder": "s\x00", "type": "output"}],
                "text": ["t\x00ext"],
            }
        },
        "status": {
            "status_str": "error" if number % 2 else "success",
            "completed": not number % 2,
            "messages": [
                ["execution_start", {"prompt_id": job_id, "timestamp": start}],
                [
                    "execution_error" if number % 2 else "execution_success",
                    {
                        "prompt_id": job_id,
                        "timestamp": start + number * 7,
                        "node_id": "n\x001",
                        "node_type": "Save\x00Image",
                        "exception_type": "E\x00",
                        "exception_message": "m\x00",
                    },
                ],
            ],
        },
    }


def queue_item(job_id: str, number: int, workflow: str) -> list:
    return [number, job_id, {}, {"create_time": T, "extra_pnginfo": {"workflow": {"id": workflow}}}, []]


WORKFLOWS = ["wf\x00x", "wf", "wf\x01", None]


def comfyui_state() -> tuple[dict, list, list]:
    history = {job_id: history_item(job_id, i, WORKFLOWS[i % 4]) for i, job_id in enumerate(IDS)}
    running = [queue_item("run\x00ning", 100, "wf\x00x")]
    pending = [queue_item("pend\x00ing", 101, "wf\x00x"), queue_item("pend\x01ing", 102, "wf\x01")]
    return history, running, pending


def load(index) -> Reference:
    history, running, pending = comfyui_state()
    result = index.ingest(
        [from_history(k, v) for k, v in history.items()]
        + [from_queue(item, IN_PROGRESS) for item in running]
        + [from_queue(item, PENDING) for item in pending],
        source="comfyui",
    )
    assert result.rejected == [] and result.inserted == len(IDS) + 3
    return Reference(json.loads(json.dumps(history)), running, pending)


PARAMS = [
    {},
    {"sort_order": "asc"},
    {"sort_by": "execution_duration"},
    {"sort_by": "execution_duration", "sort_order": "asc"},
    {"workflow_id": "wf\x00x"},
    {"workflow_id": "wf\x01"},
    {"workflow_id": "wf"},
    {"workflow_id": "\x00"},
    {"workflow_id": "wf\x00x", "status": "pending,completed"},
    {"status": "failed", "sort_order": "asc"},
    {"limit": "3", "offset": "2"},
    {"limit": "4", "workflow_id": "wf\x00x"},
]


def test_jobs_with_nul_are_stored_and_answered_as_comfyui_answers(index):
    reference = load(index)
    for params in PARAMS:
        query = parse_list_query(params)
        assert index.list_jobs(query).body(query) == reference.list_jobs(params)[1], params
    for job_id in IDS + ["run\x00ning", "pend\x00ing", "pend\x01ing"]:
        assert index.get_job(job_id) == reference.get_job(job_id)[1], repr(job_id)
    assert index.counts_consistent()


def test_cursor_pages_through_ids_with_nul_in_comfyuis_order(index):
    reference = load(index)
    for order in ("desc", "asc"):
        seen, params = [], {"limit": "2", "sort_order": order}
        while True:
            query = parse_list_query(params)
            body = index.list_jobs(query).body(query)
            assert body == reference.list_jobs(params)[1]
            seen += [job["id"] for job in body["jobs"]]
            cursor = body["pagination"].get("next_cursor")
            if not cursor:
                break
            params = {"limit": "2", "sort_order": order, "after": cursor}
        everything = sorted(
            IDS + ["run\x00ning", "pend\x00ing", "pend\x01ing"], key=lambda i: (T, i), reverse=order == "desc"
        )
        assert seen == everything


def test_ids_with_nul_can_be_deleted_found_and_reconciled(index):
    load(index)
    assert index.finished_ids(["a\x00", "a\x01", "pend\x00ing", "zz"]) == {"a\x00", "a\x01"}
    assert index.reconcile_live(["pend\x00ing"], source="comfyui") == 2  # run\x00ning, pend\x01ing
    assert index.delete_jobs(["a\x00b", "\x01", "nope"]) == 2
    query = parse_list_query({})
    ids = [job["id"] for job in index.list_jobs(query).jobs]
    assert "a\x00b" not in ids and "\x01" not in ids and "pend\x00ing" in ids and "run\x00ning" not in ids
    assert index.counts_consistent()


def test_both_engines_store_the_same_columns(index):
    """What a SQL user sees: no NUL in any text column, the same values on each engine."""
    load(index)
    with index.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, workflow_id, error_type, error_message, error_node_id, error_node_type FROM jobs ORDER BY id"
        ).all()
        files = conn.exec_driver_sql("SELECT count(*) FROM job_outputs").scalar()
        search = conn.exec_driver_sql("SELECT job_id, workflow_id FROM job_search ORDER BY job_id").all()
    assert [tuple(r) for r in rows] == sorted(
        [(column_text(i), column_text(WORKFLOWS[n % 4]), None, None, None, None) for n, i in enumerate(IDS)]
        + [
            (column_text("run\x00ning"), column_text("wf\x00x"), None, None, None, None),
            (column_text("pend\x00ing"), column_text("wf\x00x"), None, None, None, None),
            (column_text("pend\x01ing"), column_text("wf\x01"), None, None, None, None),
        ]
    )
    assert files == 0  # a name with NUL names no file (defensive, both engines)
    # job_search (which replaced job_nodes) copies the id and workflow id in the same column form.
    assert [tuple(r) for r in search] == [(r[0], r[1]) for r in rows]


def test_the_column_form_round_trips_and_keeps_code_point_order():
    texts = IDS + ["", "\x01\x01", "\x01\x02", "x\x02\x01\x00", "\U0010ffff\x00"]
    for text in texts:
        stored = column_text(text)
        assert "\x00" not in stored and answer_text(stored) == text
    assert sorted(texts, key=column_text) == sorted(texts)
    assert column_text("plain") == "plain" and column_text(None) is None


def test_the_custom_nodes_writer_records_them_and_logs_what_it_cannot(index, db_url, caplog):
    """The node's writer path (items as ComfyUI holds them in memory) stores NUL jobs
    on every engine; a job the database still refuses is logged, never dropped
    without a word (here: a source name PostgreSQL text cannot hold; SQLite holds it)."""
    history, _, _ = comfyui_state()
    for source, prefix in (("comfyui", ""), ("bad\x00source", "other-")):
        writer = Writer(
            open_index=lambda: index, read_state=lambda: State({}, [], []), mutex=threading.RLock(), source=source
        )
        writer.source = source  # named by the writer thread at its start; this test calls _write directly
        records = [
            _record(Op(n, FINISHED, (prefix + job_id, in_memory(prefix + job_id, entry))))
            for n, (job_id, entry) in enumerate(history.items())
        ]
        assert None not in records
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jobs_index.comfyui"):
            writer._write(index, records)
        refused = len(IDS) if db_url.startswith("postgresql") and source != "comfyui" else 0
        assert writer.stats["rejected"] == refused
        assert writer.stats["written"] == len(IDS) - refused
        logged = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
        assert len(logged) == refused
    assert index.get_job("a\x00b")["status"] == "failed"
    assert index.get_job("a")["workflow_id"] == "wf\x00x"


def in_memory(job_id: str, entry: dict) -> dict:
    """A history entry as ComfyUI's memory holds it: tuples for the prompt and messages."""
    prompt = list(entry["prompt"])
    prompt[1] = job_id
    status = {**entry["status"], "messages": [tuple(m) for m in entry["status"]["messages"]]}
    return {**entry, "prompt": tuple(prompt), "status": status}


@pytest.mark.parametrize("value", ["wf\x00x", "\x00", "wf\x01"])
def test_a_workflow_filter_with_nul_counts_like_it_lists(index, value):
    reference = load(index)
    query = parse_list_query({"workflow_id": value, "limit": "1"})
    page = index.list_jobs(query)
    assert page.total == reference.list_jobs({"workflow_id": value, "limit": "1"})[1]["pagination"]["total"]
