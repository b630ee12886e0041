"""The served API matches ``openapi.yaml`` (issue #6, item 6).

schemathesis generates requests from the OpenAPI description (valid and invalid
parameters) and sends them to a live server on loopback over a sample index
(``build_sample(index, 300)``); every answer must be a non-5xx, a documented status,
the documented content type, and a body that validates against the documented
schema. The documented examples and real ids of every kind (finished, failed,
running, pending) are checked the same way, and the file itself is checked against
CONTRACT.md's shapes (the 400 bodies are ComfyUI's exact strings).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema_rs
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs_index import JobsIndex
from jobs_index.http import create_app
from jobs_index.sample import build_sample

from .reference import STATUSES
from .reliability_support import RawClient, served

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CASES: Counter = Counter()


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory):
    """(base URL, index) of a live server over 300 sample jobs + 1 running + 2 pending."""
    path = tmp_path_factory.mktemp("openapi") / "jobs.sqlite3"
    with JobsIndex.open(f"sqlite:///{path}") as index:
        build_sample(index, 300)
        with served(create_app(index=index)) as port:
            yield f"http://127.0.0.1:{port}", index


@SCHEMA.parametrize()
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_openapi(case, sample_server):
    base_url, _ = sample_server
    response = case.call_and_validate(base_url=base_url, checks=CHECKS)
    CASES[f"{case.operation.label} {response.status_code}"] += 1


def test_real_jobs_of_every_kind_conform(sample_server):
    """Detail and list answers for real ids (schemathesis draws random ids)."""
    base_url, index = sample_server
    client = RawClient(int(base_url.rsplit(":", 1)[1]))
    spec = yaml.safe_load(SPEC_PATH.read_text())
    detail = validator(spec, "JobDetail")
    listing = validator(spec, "JobList")
    seen = Counter()
    for status in STATUSES:
        reply = client.get(f"/api/jobs?status={status}&limit=3")
        listing.validate(reply.json())
        for job in reply.json()["jobs"]:
            answer = client.get(f"/api/jobs/{job['id']}")
            assert answer.status == 200
            detail.validate(answer.json())
            seen[status] += 1
    assert set(seen) == set(STATUSES), seen  # the sample holds every status
    # The whole listing, streamed (no limit) and a huge page, validate too.
    for target in ("/api/jobs", "/api/jobs?limit=100000&sort_by=execution_duration&sort_order=asc"):
        body = client.get(target).json()
        listing.validate(body)
        assert len(body["jobs"]) == 303
    client.close()


def validator(spec: dict, name: str):
    """A JSON Schema validator for ``components.schemas[name]`` (refs resolved in the spec)."""
    document = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema_rs.validator_for(document)


def test_documented_error_bodies_are_comfyuis(sample_server):
    """Every 400 example in the file is what the server answers for that mistake."""
    base_url, _ = sample_server
    client = RawClient(int(base_url.rsplit(":", 1)[1]))
    spec = yaml.safe_load(SPEC_PATH.read_text())
    examples = spec["paths"]["/api/jobs"]["get"]["responses"]["400"]["content"]["application/json"]["examples"]
    requests = {
        "status": "status=done",
        "sort_by": "sort_by=name",
        "sort_order": "sort_order=up",
        "limit": "limit=0",
        "offset": "offset=x",
        "cursor": "after=junk",
        "q": "q=%22red%20fox",
    }
    assert set(requests) == set(examples)
    for name, query in requests.items():
        reply = client.get(f"/api/jobs?{query}")
        assert (reply.status, reply.json()) == (400, examples[name]["value"]), name
    reply = client.get("/api/jobs/no-such-job")
    assert (reply.status, reply.json()) == (404, {"error": "Job not found"})
    validator(spec, "NotFound").validate(reply.json())
    client.close()


def test_spec_documents_every_parameter_and_both_paths():
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs-index/counts",
        "/api/jobs-index/sources",
    }  # the last two: the page's
    params = {p["name"] for p in spec["paths"]["/api/jobs"]["get"]["parameters"]}
    assert params == {
        "status",
        "sort_by",
        "sort_order",
        "limit",
        "offset",
        "workflow_id",
        "after",
        "source",
        "q",
        "since",
        "until",
        "include",
    }
    for name in ("source", "q", "since", "until", "include"):
        extension = next(p for p in spec["paths"]["/api/jobs"]["get"]["parameters"] if p["name"] == name)
        assert extension["x-jobs-index-extension"] is True, name
    job_keys = list(spec["components"]["schemas"]["Job"]["properties"])
    assert job_keys == [
        "id",
        "status",
        "priority",
        "create_time",
        "execution_start_time",
        "execution_end_time",
        "execution_error",
        "outputs_count",
        "preview_output",
        "workflow_id",
    ]  # CONTRACT.md's key order


def test_zz_report_schemathesis_cases(capsys):
    with capsys.disabled():
        print(
            "\nschemathesis cases (operation status: count):",
            json.dumps(dict(sorted(CASES.items())), indent=1),
            "total",
            sum(CASES.values()),
        )
