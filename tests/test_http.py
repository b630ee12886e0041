"""The HTTP layer: streamed listings equal one-piece answers, every error is JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from jobs_index import parse_list_query
from jobs_index.sample import build_sample

from .live_server import live_server


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    from jobs_index import JobsIndex

    path = tmp_path_factory.mktemp("http") / "jobs.sqlite3"
    with JobsIndex.open(f"sqlite:///{path}") as index:
        build_sample(index, 2500)
        yield index


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?limit=2400",
        "?limit=1500&offset=700",
        "?sort_order=asc&limit=1001",
        "?sort_by=execution_duration",
        "?sort_by=execution_duration&limit=1200&sort_order=asc",
        "?status=completed,failed",
        "?limit=5000&status=completed",
    ],
)
def test_streamed_listing_equals_the_page_built_in_memory(sample_index, query):
    params = dict(p.split("=") for p in query.lstrip("?").split("&") if p)
    expected = sample_index.list_jobs(parse_list_query(params)).body(parse_list_query(params))
    with live_server(sample_index) as client:
        reply = client.get(f"/api/jobs{query}")
    assert reply.status == 200
    assert reply.content_type == "application/json; charset=utf-8"
    assert reply.body == expected
    assert len({job["id"] for job in reply.body["jobs"]}) == len(reply.body["jobs"])


def test_streamed_listing_continues_with_the_cursor(sample_index):
    with live_server(sample_index) as client:
        first = client.get("/api/jobs?limit=1500")
        rest = client.get(f"/api/jobs?limit=5000&after={first.body['pagination']['next_cursor']}")
        everything = client.get("/api/jobs")
    assert first.body["pagination"]["has_more"] is True
    assert rest.body["pagination"]["has_more"] is False
    ids = [job["id"] for job in first.body["jobs"] + rest.body["jobs"]]
    assert ids == [job["id"] for job in everything.body["jobs"]]
    assert len(ids) == everything.body["pagination"]["total"] == 2503


def test_unknown_paths_and_methods_answer_json(sample_index):
    with live_server(sample_index) as client:
        assert client.get("/nope").status == 404
        assert client.get("/nope").body == {"error": "Not Found"}
        request = urllib.request.Request(client.base_url + "/api/jobs", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 405
        assert json.loads(err.value.read()) == {"error": "Method Not Allowed"}
