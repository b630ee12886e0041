"""The job JSON a listing row carries is rendered by the database (``queries.page_columns``).
It must say exactly what ``normalize.list_dict`` says of the same row, key for key
and in the same key order, on each backend, including for strings JSON must escape
(quotes, backslashes, control characters, non-ASCII), for stored JSON that only
Python's lenient JSON has (NaN), and for every queue number ComfyUI can hold
(``float(number)`` of a client's number: 4.0, 2.5, NaN, infinities; huge ints)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index import normalize, parse_list_query, queries
from jobs_index.database import read_transaction, write_transaction
from jobs_index.services import JobsIndex

ODD_TEXT = st.text(alphabet=st.sampled_from('a"\\/\n\t\x01\x1f\x7fé中😀 <>&\u2028'), min_size=1, max_size=8)


def item(
    job_id: str,
    workflow_id: str | None,
    *,
    error_message: str = "boom",
    create_time=1_700_000_000_000,
    status: str = "error",
    preview_name: str = "a.png",
    number=7,
) -> dict:
    extra = {"extra_pnginfo": {"workflow": {"id": workflow_id}}} if workflow_id is not None else {}
    if create_time is not None:
        extra["create_time"] = create_time
    messages = [["execution_start", {"timestamp": 10}]]
    if status == "error":
        messages.append(
            [
                "execution_error",
                {"timestamp": 20, "exception_message": error_message, "node_id": "3", "ratio": float("nan")},
            ]
        )
    else:
        messages.append(["execution_success", {"timestamp": 20}])
    return {
        "prompt": [number, job_id, {"3": {"class_type": "KSampler"}}, extra, ["3"]],
        "outputs": {"9": {"images": [{"filename": preview_name, "subfolder": "", "type": "output"}]}},
        "status": {"status_str": status, "completed": status != "error", "messages": messages},
    }


def listed_vs_list_dict(index: JobsIndex) -> list[tuple[dict, dict]]:
    page = index.list_jobs(parse_list_query({}))
    pairs = []
    with read_transaction(index.engine) as conn:
        for text in page.job_texts:
            listed = json.loads(text)
            pairs.append((listed, normalize.list_dict(queries.get_job(conn, listed["id"]))))
    return pairs


def assert_same(pairs: list[tuple[dict, dict]]) -> None:
    for listed, expected in pairs:
        assert list(listed) == list(expected)  # ComfyUI's key order
        # json.dumps spells NaN the same on both sides (NaN != NaN as a float)
        assert json.dumps(listed, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_every_optional_key_and_odd_strings(index):
    records = [
        normalize.from_history('q"uo\\te\n\x01é中😀', item('q"uo\\te\n\x01é中😀', 'w"f\\\n中')),
        normalize.from_history("plain", item("plain", None, status="success", create_time=None)),
        normalize.from_history("pending-ish", item("pending-ish", "wf", status="success", preview_name="ü\u2028.png")),
    ]
    index.ingest(records)
    pairs = listed_vs_list_dict(index)
    assert len(pairs) == 3
    assert_same(pairs)
    by_id = {listed["id"]: listed for listed, _ in pairs}
    assert "create_time" not in by_id["plain"] and "workflow_id" not in by_id["plain"]
    assert by_id['q"uo\\te\n\x01é中😀']["workflow_id"] == 'w"f\\\n中'


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(ODD_TEXT, min_size=1, max_size=4, unique=True), workflow=st.none() | ODD_TEXT, message=ODD_TEXT)
def test_rendered_json_matches_list_dict(index, ids, workflow, message):
    with write_transaction(index.engine) as conn:  # one index for every example: start empty
        conn.exec_driver_sql("DELETE FROM jobs")
    index.ingest([normalize.from_history(i, item(i, workflow, error_message=message)) for i in ids])
    pairs = listed_vs_list_dict(index)
    assert sorted(listed["id"] for listed, _ in pairs) == sorted(ids)
    assert_same(pairs)


NUMBERS = [
    2,
    -3,
    0,
    4.0,
    7.0,
    -1.0,
    2.5,
    -0.0,
    0.1 + 0.2,
    1e16,
    1e-07,
    -1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    10**30,
]


def test_every_queue_number_renders_as_comfyui_dumps_it(index):
    """The page (JSON rendered by the database) and the detail say each number as
    ComfyUI's json.dumps does: 4.0 stays 4.0, NaN is NaN, 10**30 all its digits."""
    ids = [f"n{i:02d}" for i in range(len(NUMBERS))]
    index.ingest(
        [
            normalize.from_history(i, item(i, "wf", number=n, status="success"))
            for i, n in zip(ids, NUMBERS, strict=True)
        ]
    )
    pairs = listed_vs_list_dict(index)
    assert_same(pairs)
    texts = {json.loads(text)["id"]: text for text in index.list_jobs(parse_list_query({})).job_texts}
    for job_id, number in zip(ids, NUMBERS, strict=True):
        assert f'"priority": {json.dumps(number)},' in texts[job_id]
        assert json.dumps(index.get_job(job_id)["priority"]) == json.dumps(number)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numbers=st.lists(st.one_of(st.integers(), st.floats()), min_size=1, max_size=4))
def test_any_number_renders_exactly(index, numbers):
    with write_transaction(index.engine) as conn:
        conn.exec_driver_sql("DELETE FROM jobs")
    ids = [f"n{i}" for i in range(len(numbers))]
    index.ingest(
        [normalize.from_queue([n, i, {}, {"create_time": 1}, []], "pending") for i, n in zip(ids, numbers, strict=True)]
    )
    texts = {json.loads(text)["id"]: text for text in index.list_jobs(parse_list_query({})).job_texts}
    for job_id, number in zip(ids, numbers, strict=True):
        assert f'"priority": {json.dumps(number)},' in texts[job_id]
