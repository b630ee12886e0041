"""The SQL surface for people: job_outputs / job_search filled with their job, and
the jobs_v view, on each backend."""

from __future__ import annotations

import copy
import random
import sqlite3

from sqlalchemy import text

from jobs_index.ingest import detect, import_dump
from jobs_index.normalize import from_history, from_queue, output_files
from jobs_index.search import document
from jobs_index.units import iso_ms

from .fixtures_util import capture_history, capture_queue
from .toolbox_util import build_recent, side_rows

# -- the pure derivations ------------------------------------------------------


def test_output_files_lists_file_items_in_order():
    outputs = {
        "9": {
            "images": [
                {"filename": "a.png", "subfolder": "x", "type": "output"},
                {"filename": "b.png", "subfolder": "", "type": "temp"},
            ],
            "animated": [False],
        },
        "12": {"text": ["hello"], "3d": ["mesh.GLB", None], "gifs": [{"filename": "c.webp", "format": "image/webp"}]},
        "13": {"images": [{"no": "filename"}, {"filename": 42}, {"filename": "nul\x00.png"}], "meta": "not a list"},
        "14": "not a dict",
    }
    assert output_files(outputs) == [
        {"ordinal": 0, "node_id": "9", "media_type": "images", "filename": "a.png", "subfolder": "x", "type": "output"},
        {"ordinal": 1, "node_id": "9", "media_type": "images", "filename": "b.png", "subfolder": "", "type": "temp"},
        {"ordinal": 2, "node_id": "12", "media_type": "3d", "filename": "mesh.GLB", "subfolder": "", "type": "output"},
        {"ordinal": 3, "node_id": "12", "media_type": "gifs", "filename": "c.webp", "subfolder": None, "type": None},
    ]
    assert output_files(None) == [] and output_files([1, 2]) == []


def node_types(graph) -> list[str]:
    return document("queue", [0, "x", graph, {}, []]).node_types


def test_node_types_of_a_prompt_graph():
    graph = {
        "3": {"class_type": "KSampler", "inputs": {}},
        "4": {"inputs": {}},
        "5": "junk",
        "6": {"class_type": 7},
        "7:1": {"class_type": "SaveImage"},
        "8": {"class_type": "KSampler"},
    }
    assert node_types(graph) == ("KSampler", "SaveImage")  # distinct, sorted
    assert node_types(None) == ()


def test_records_carry_side_rows_but_as_row_is_the_jobs_row():
    job_id, item = next(iter(capture_history().items()))
    record = from_history(job_id, item)
    row = record.as_row()
    assert "output_files" not in row and "search" not in row
    assert record.search.node_types and record.search.words
    running, _ = capture_queue()
    queued = from_queue(running[0], "in_progress")
    assert queued.output_files == [] and queued.search.node_types


# -- written with the job ------------------------------------------------------


def test_side_tables_follow_ingest_update_and_delete(index):
    history = capture_history()
    running, pending = capture_queue()
    import_dump(index, detect("q", {"queue_running": running, "queue_pending": pending}))
    job_id = pending[0][1]
    outputs, nodes = side_rows(index, job_id)
    assert outputs == []  # a pending job has written nothing yet
    assert [n["node_types"] for n in nodes] == [list(node_types(pending[0][2]))]

    import_dump(index, detect("h", history))  # the job finishes: its rows are replaced
    for hid, item in history.items():
        expected = from_history(hid, item)
        outputs, nodes = side_rows(index, hid)
        assert [{k: v for k, v in o.items() if k != "job_id"} for o in outputs] == expected.output_files
        assert [n["node_types"] for n in nodes] == [list(expected.search.node_types)]

    # A new version with different outputs replaces the rows, leaving none behind.
    hid = next(h for h in history if history[h].get("outputs"))
    changed = copy.deepcopy(history[hid])
    changed["outputs"] = {"99": {"images": [{"filename": "only.png", "subfolder": "", "type": "output"}]}}
    assert import_dump(index, detect("h", {hid: changed})).updated == 1
    assert [o["filename"] for o in side_rows(index, hid)[0]] == ["only.png"]

    index.delete_jobs([hid])
    assert side_rows(index, hid) == ([], [])
    assert index.counts_consistent()


def test_unchanged_reimport_keeps_side_rows(index):
    import_dump(index, detect("h", capture_history()))
    before = side_rows(index)
    assert import_dump(index, detect("h", capture_history())).unchanged == 7
    assert side_rows(index) == before


def test_a_delete_by_hand_removes_side_rows(index, backend):
    """Even from a connection that did not turn foreign keys on (sqlite3 shell)."""
    records = build_recent(index, 20)
    victim = records[0].id
    if backend == "sqlite":
        shell = sqlite3.connect(index.engine.url.database)  # foreign keys off by default
        assert shell.execute("PRAGMA foreign_keys").fetchone() == (0,)
        with shell:
            shell.execute("DELETE FROM jobs WHERE id = ?", (victim,))
        shell.close()
    else:
        with index.engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": victim})
    assert side_rows(index, victim) == ([], [])
    assert side_rows(index)[1]  # the others keep theirs
    assert index.counts_consistent()


def test_which_job_made_this_file_is_one_index_seek(index, backend):
    records = build_recent(index, 60)
    target = next(r for r in records if r.output_files)
    filename = target.output_files[0]["filename"]
    with index.engine.connect() as conn:
        found = conn.execute(text("SELECT job_id FROM job_outputs WHERE filename = :f"), {"f": filename}).all()
        assert [r.job_id for r in found] == [target.id]
        if backend == "sqlite":
            plan = " ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT job_id FROM job_outputs WHERE filename = 'x.png'"
                )
            )
            assert (
                "USING INDEX ix_job_outputs_filename" in plan or "USING COVERING INDEX ix_job_outputs_filename" in plan
            )
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(
                r[0] for r in conn.exec_driver_sql("EXPLAIN SELECT job_id FROM job_outputs WHERE filename = 'x.png'")
            )
            assert "ix_job_outputs_filename" in plan


# -- the view --------------------------------------------------------------------


def test_jobs_v_has_readable_times_on_both_engines(index):
    records = build_recent(index, 40)
    # Awkward millisecond values: the ISO strings must be exact.
    rng = random.Random(3)
    with index.engine.begin() as conn:
        for record in records[:10]:
            start = rng.randrange(0, 4_102_444_800_000)
            conn.execute(
                text("UPDATE jobs SET execution_start_time = :s, execution_end_time = :e WHERE id = :id"),
                {"s": start, "e": start + rng.randrange(1, 10**7), "id": record.id},
            )
    with index.engine.connect() as conn:
        rows = conn.execute(text("SELECT v.*, j.create_time_missing FROM jobs_v v JOIN jobs j ON j.id = v.id")).all()
    assert len(rows) == len(records)
    for row in rows:
        assert row.created_at == (None if row.create_time_missing else iso_ms(row.create_time))
        assert row.started_at == iso_ms(row.execution_start_time)
        assert row.ended_at == iso_ms(row.execution_end_time)
        if row.execution_start_time and row.execution_end_time:
            assert float(row.duration_s) == (row.execution_end_time - row.execution_start_time) / 1000
        else:
            assert row.duration_s is None


def test_jobs_v_error_fields_and_missing_create_time(index):
    history = capture_history()
    job_id, item = next((k, v) for k, v in history.items() if v["status"]["status_str"] == "error")
    item = copy.deepcopy(item)
    del item["prompt"][3]["create_time"]
    import_dump(index, detect("h", {job_id: item}))
    with index.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs_v WHERE id = :id"), {"id": job_id}).one()
    record = from_history(job_id, item)
    assert row.created_at is None and row.create_time == 0
    assert (row.error_type, row.error_message, row.error_node_id, row.error_node_type) == (
        record.error_type,
        record.error_message,
        record.error_node_id,
        record.error_node_type,
    )
    assert row.status == record.status and row.workflow_id == record.workflow_id
