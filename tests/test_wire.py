"""The job JSON a listing row carries is rendered by the database (``queries.page_columns``).
It must say exactly what ``normalize.list_dict`` says of the same row, key for key
and in the same key order, on each backend, including for strings JSON must escape
(quotes, backslashes, control characters, non-ASCII) and for stored JSON that only
Python's lenient JSON has (NaN)."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index import normalize, parse_list_query, queries
from jobs_index.database import read_transaction, write_transaction
from jobs_index.services import JobsIndex

ODD_TEXT = st.text(alphabet=st.sampled_from('a"\\/\n\t\x01\x1f\x7fé中😀 <>&\u2028'), min_size=1, max_size=8)


def item(job_id: str, workflow_id: str | None, *, error_message: str = "boom", create_time=1_700_000_000_000,
         status: str = "error", preview_name: str = "a.png") -> dict:
    extra = {"extra_pnginfo": {"workflow": {"id": workflow_id}}} if workflow_id is not None else {}
    if create_time is not None:
        extra["create_time"] = create_time
    messages = [["execution_start", {"timestamp": 10}]]
    if status == "error":
        messages.append(["execution_error", {"timestamp": 20, "exception_message": error_message,
                                             "node_id": "3", "ratio": float("nan")}])
    else:
        messages.append(["execution_success", {"timestamp": 20}])
    return {
        "prompt": [7, job_id, {"3": {"class_type": "KSampler"}}, extra, ["3"]],
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
        normalize.from_history("pending-ish", item("pending-ish", "wf", status="success",
                                                   preview_name="ü\u2028.png")),
    ]
    index.ingest(records)
    pairs = listed_vs_list_dict(index)
    assert len(pairs) == 3
    assert_same(pairs)
    by_id = {listed["id"]: listed for listed, _ in pairs}
    assert "create_time" not in by_id["plain"] and "workflow_id" not in by_id["plain"]
    assert by_id['q"uo\\te\n\x01é中😀']["workflow_id"] == 'w"f\\\n中'


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(ODD_TEXT, min_size=1, max_size=4, unique=True), workflow=st.none() | ODD_TEXT,
       message=ODD_TEXT)
def test_rendered_json_matches_list_dict(index, ids, workflow, message):
    with write_transaction(index.engine) as conn:  # one index for every example: start empty
        conn.exec_driver_sql("DELETE FROM jobs")
    index.ingest([normalize.from_history(i, item(i, workflow, error_message=message)) for i in ids])
    pairs = listed_vs_list_dict(index)
    assert sorted(listed["id"] for listed, _ in pairs) == sorted(ids)
    assert_same(pairs)
