"""Property tests: the SQL path answers exactly like the in-memory reference written
from the contract (tests/reference.py), on random histories full of ties, missing
times, odd shapes and client-chosen queue numbers (floats, NaN, huge), on each
backend; cursor chains are walked to the end. Answers are compared type-exact
(``exact``: 4.0 is not 4, NaN equals NaN)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index import JobsIndex, parse_list_query
from jobs_index.errors import BadRequest
from jobs_index.ingest import detect, import_dump
from jobs_index.normalize import answer_text

from .reference import Reference
from .strategies import query_params, states

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def reset(index: JobsIndex, history: dict, running: list, pending: list) -> None:
    """Empty the index (exercising deletes and counters) and load one state."""
    with index.engine.connect() as conn:
        ids = [answer_text(row[0]) for row in conn.exec_driver_sql("SELECT id FROM jobs")]
    index.delete_jobs(ids)
    result = import_dump(index, detect("history", history))
    result.add(import_dump(index, detect("queue", {"queue_running": running, "queue_pending": pending})))
    assert result.rejected == []
    assert index.counts_consistent()


def exact(answer) -> str:
    """An answer as JSON text: tells 4 from 4.0, and spells NaN as NaN on both sides."""
    return json.dumps(answer, sort_keys=True)


def sql_answer(index: JobsIndex, params: dict[str, str]) -> tuple[int, dict]:
    try:
        query = parse_list_query(params)
    except BadRequest as exc:
        return exc.status, exc.body()
    return 200, index.list_jobs(query).body(query)


@SETTINGS
@given(state=states(), data=st.data())
def test_listing_matches_reference(index, state, data):
    assert_listing_matches_reference(index, state, data)


def assert_listing_matches_reference(index, state, data) -> None:
    """Five listings drawn by ``data`` answer as the reference does over ``state``."""
    history, running, pending = state
    reset(index, history, running, pending)
    reference = Reference(history, running, pending)
    ids = list(history) + [item[1] for item in running + pending]
    for _ in range(5):
        params = data.draw(query_params(ids))
        assert exact(sql_answer(index, params)) == exact(reference.list_jobs(params)), params


@SETTINGS
@given(state=states(), data=st.data())
def test_detail_matches_reference(index, state, data):
    history, running, pending = state
    reset(index, history, running, pending)
    reference = Reference(history, running, pending)
    for job_id in list(history) + [item[1] for item in running + pending] + ["unknown"]:
        status, body = reference.get_job(job_id)
        if status == 200:
            assert exact(index.get_job(job_id)) == exact(body)
        else:
            assert job_id not in history


@SETTINGS
@given(
    state=states(),
    order=st.sampled_from(["asc", "desc"]),
    limit=st.integers(1, 3),
    status=st.sampled_from([None, "completed", "pending,in_progress", "failed,cancelled,completed"]),
    workflow_id=st.sampled_from([None, "wf-1", "WF-1"]),
)
def test_cursor_walk_sees_every_job_once(index, state, order, limit, status, workflow_id):
    history, running, pending = state
    reset(index, history, running, pending)
    base = {"sort_order": order}
    if status:
        base["status"] = status
    if workflow_id:
        base["workflow_id"] = workflow_id
    _, everything = Reference(history, running, pending).list_jobs(base)
    expected = [job["id"] for job in everything["jobs"]]

    seen, params = [], {**base, "limit": str(limit)}
    for _ in range(len(expected) + 2):
        status_code, body = sql_answer(index, params)
        assert status_code == 200
        assert body["pagination"]["total"] == len(expected)
        seen += [job["id"] for job in body["jobs"]]
        if "next_cursor" not in body["pagination"]:
            if not body["pagination"]["has_more"]:
                break
            # The page ended on an id no cursor can carry (empty, over 128 characters):
            # the client goes on by offset, as it could from ComfyUI's offset pages.
            params = {**base, "limit": str(limit), "offset": str(len(seen))}
            continue
        params = {**base, "limit": str(limit), "after": body["pagination"]["next_cursor"]}
    assert seen == expected  # each job exactly once, none skipped, in order


def test_limits_and_offsets_beyond_bigint(index):
    """Python accepts any integer; SQL does not. Such pages still answer like ComfyUI."""
    history = {f"job-{i}": {"prompt": [i, f"job-{i}", {}, {"create_time": i}, []], "outputs": {}} for i in range(5)}
    reset(index, history, [], [])
    reference = Reference(history, [], [])
    huge = "99999999999999999999"
    for params in (
        {"limit": huge},
        {"limit": huge, "offset": huge},
        {"limit": "2", "offset": huge},
        {"limit": "2", "offset": "3"},
        {"limit": huge, "sort_by": "execution_duration"},
    ):
        assert exact(sql_answer(index, params)) == exact(reference.list_jobs(params)), params


def test_ids_comfyui_cannot_end_a_cursor_on(index):
    """An empty id and one of 129 characters are jobs ComfyUI lists; a page that ends
    on one has no next_cursor (ComfyUI answers 400 there), and offset paging reaches
    every job, each once."""
    ids = ["", "é" * 129, "a", "b"]
    history = {
        job_id: {"prompt": [float(i) + 0.5, job_id, {}, {"create_time": 10 - i}, []], "outputs": {}}
        for i, job_id in enumerate(ids)
    }
    reset(index, history, [], [])
    reference = Reference(history, [], [])
    assert Reference(history, [], [], comfyui_mint_errors=True).list_jobs({"limit": "1"})[0] == 400
    seen = []
    for offset in range(len(ids)):
        params = {"limit": "1", "offset": str(offset)}
        answer = sql_answer(index, params)
        assert exact(answer) == exact(reference.list_jobs(params)), params
        seen += [job["id"] for job in answer[1]["jobs"]]
        has_cursor = "next_cursor" in answer[1]["pagination"]
        assert has_cursor == (offset < len(ids) - 1 and 0 < len(seen[-1]) <= 128)
    assert seen == ids
