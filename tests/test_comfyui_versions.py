"""The node's answers against ComfyUI's own ``comfy_execution/jobs.py`` of several
versions (``tests.comfyui_versions``: v0.26.0, the seed's commit 33109e0a, the newest
master fetched, v0.16.0, v0.14.0 and an unreleased branch with an ``ids`` filter),
each loaded unmodified from a ComfyUI git repository (``JOBS_INDEX_COMFYUI_GIT``;
versions not found are skipped).

* ``compat.detect`` classifies each as expected (offset, cursor or unknown).
* For each recognised version, random histories and queries (hypothesis) go through
  ComfyUI's handler over that module and through the index; the answers are equal,
  except where README ("Which ComfyUI versions") says the node differs: on the offset
  versions the index breaks create_time ties by id (ComfyUI keeps memory order, so
  there the pages are compared by their sort keys) and adds ``next_cursor``; requests
  the node passes to ComfyUI (``after`` on an offset version) are not compared.
* Details are equal for every job, every recognised version.

The real v0.26.0 captures (tests/fixtures/comfyui/, ties included) are reproduced by
v0.26.0's module behind ``comfy_list``/``comfy_detail``, the cursor_branch/ captures
by the seed's module: the handler side is checked against the real servers too. The
oracle (tests/reference.py) answers as the seed's module does, but for one forged
cursor case (``unchecked_cursor_value``).

The histories are well formed (as ComfyUI builds them in memory: integer times, text
outputs as strings or 1-tuples); odd shapes are the subject of test_parity_properties.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index.comfyui import compat
from jobs_index.errors import JobNotFound

from . import comfyui_versions as versions
from . import test_reference
from .fixtures_util import load_capture, request_job_id, request_params
from .reference import Reference
from .strategies import query_params
from .test_parity_properties import reset, sql_answer

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def module_of(version: str):
    module = versions.load(version)
    if module is None:
        pytest.skip(versions.skip_reason(version))
    return module


RECOGNISED = [v for v, (_, kind) in versions.VERSIONS.items() if kind != compat.UNKNOWN]


@pytest.mark.parametrize("version", sorted(versions.VERSIONS))
def test_each_version_is_classified(version):
    module = module_of(version)
    api = compat.detect(module)
    assert api.kind == versions.VERSIONS[version][1], api.reason
    assert api.params == (compat.CURSOR_PARAMS if api.kind != compat.OFFSET else compat.OFFSET_PARAMS)


# -- well-formed ComfyUI states ---------------------------------------------------

ids = st.text(alphabet="0aAé", min_size=1, max_size=3)
TIMES = [1000, 1001, 1002, 2000]
FILENAMES = ["a.png", "b.mp4", "Model.GLB", "x.usdz", "noext", "notes.txt"]
file_items = st.builds(
    lambda filename, type_, fmt: {"filename": filename, "subfolder": "", "type": type_, **fmt},
    st.sampled_from(FILENAMES),
    st.sampled_from(["output", "temp"]),
    st.sampled_from([{}, {"format": "video/mp4"}, {"format": "image/png"}]),
)
text_items = st.one_of(st.sampled_from(["", "hi", "é中", "y" * 1025]), st.tuples(st.sampled_from(["t", "z" * 1100])))
items = st.one_of(file_items, st.sampled_from(["model.glb", "plain.txt", None]))
node_outputs = st.dictionaries(
    st.sampled_from(["images", "video", "audio", "3d", "text", "gifs", "files"]),
    st.lists(items, min_size=1, max_size=2),
    max_size=2,
).flatmap(
    lambda node: st.one_of(
        st.just(node),
        st.lists(text_items, min_size=1, max_size=2).map(lambda texts: {**node, "text": texts}),
        st.just({**node, "animated": [True]}),
    )
)
outputs = st.dictionaries(st.sampled_from(["1", "2", "10"]), node_outputs, max_size=2)
times = st.sampled_from(TIMES)


@st.composite
def status_info(draw):
    outcome = draw(st.sampled_from(["success", "error", "interrupted", "none"]))
    if outcome == "none":
        return draw(st.sampled_from([{}, {"status_str": "success", "completed": True, "messages": []}]))
    start = draw(times)
    messages = [["execution_start", {"prompt_id": "p", "timestamp": start}]]
    if draw(st.booleans()):
        messages.append(["execution_cached", {"nodes": [], "prompt_id": "p", "timestamp": start}])
    end = {"prompt_id": "p", "timestamp": start + draw(st.sampled_from([0, 5, 12]))}
    if outcome == "error":
        end.update(node_id="1", node_type="X", exception_message="boom", exception_type="E", traceback=[])
    event = {"success": "execution_success", "error": "execution_error", "interrupted": "execution_interrupted"}
    messages.append([event[outcome], end])
    return {"status_str": "success" if outcome == "success" else "error", "completed": outcome == "success",
            "messages": messages}  # fmt: skip


@st.composite
def extra_data(draw):
    extra = {"create_time": draw(times), "client_id": "c"}
    workflow = draw(st.sampled_from([None, "wf-1", "wf-2"]))
    extra["extra_pnginfo"] = {"workflow": {"id": workflow, "nodes": []}} if workflow else {}
    return extra


def prompt(draw, job_id: str) -> tuple:
    return (draw(st.integers(-3, 50)), job_id, {"1": {"class_type": "X"}}, draw(extra_data()), ["1"])


@st.composite
def states(draw):
    """(history, running, pending) as ComfyUI hands them to comfy_execution.jobs."""
    all_ids = draw(st.lists(ids, unique=True, max_size=8))
    cut_a, cut_b = sorted(draw(st.lists(st.integers(0, len(all_ids)), min_size=2, max_size=2)))
    history = {
        job_id: {"prompt": prompt(draw, job_id), "outputs": draw(outputs), "status": draw(status_info()), "meta": {}}
        for job_id in all_ids[:cut_a]
    }
    running = [prompt(draw, job_id) for job_id in all_ids[cut_a:cut_b][:1]]
    pending = [prompt(draw, job_id) for job_id in all_ids[cut_a:cut_b][1:] + all_ids[cut_b:]]
    return history, running, pending


# -- comparing ----------------------------------------------------------------------


def exact(answer) -> str:
    return json.dumps(answer, sort_keys=True)


def sort_key(job: dict, sort_by: str) -> int:
    if sort_by == "execution_duration":
        start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
        return end - start if end and start else 0
    return job.get("create_time", 0)


def keys_of(body: dict, sort_by: str) -> list:
    return [sort_key(job, sort_by) for job in body["jobs"]]


def ids_of(body: dict) -> list:
    return [job["id"] for job in body["jobs"]]


def has_ties(module, state, params: dict, sort_by: str) -> bool:
    everything = {k: v for k, v in params.items() if k in ("status", "workflow_id", "sort_by", "sort_order")}
    status, body = versions.comfy_list(module, *state, everything)
    keys = keys_of(body, sort_by) if status == 200 else []
    return len(set(keys)) != len(keys)


def unchecked_cursor_value(params: dict, ours: tuple, theirs: tuple) -> bool:
    """The one known difference from the seed (README, "Which ComfyUI versions"): it
    checks that a cursor's value is an integer only when there are jobs to page, so
    on an empty selection a forged cursor such as ``"v": "5.0"`` gets 200 and no jobs
    there, 400 INVALID_CURSOR from the index (and the oracle), as on any other."""
    return (
        "after" in params
        and theirs[0] == 200
        and theirs[1]["pagination"]["total"] == 0
        and ours[0] == 400
        and ours[1].get("code") == "INVALID_CURSOR"
    )


def comfyui_answer(module, state, params: dict) -> tuple | None:
    """ComfyUI's answer, None where it would answer 500 (a cursor of deeply nested
    JSON: RecursionError, which its handler does not catch)."""
    try:
        return versions.comfy_list(module, *state, params)
    except RecursionError:
        return None


def check_listing(index, module, api, state, params: dict) -> None:
    if not api.answers(params, detail=False):
        assert api.kind == compat.OFFSET and "after" in params  # the node passes it to ComfyUI
        return
    expected = comfyui_answer(module, state, params)
    status, body = sql_answer(index, params)
    if expected is None or unchecked_cursor_value(params, (status, body), expected):
        return
    assert status == expected[0], (params, body, expected[1])
    if status != 200 or api.kind == compat.CURSOR:
        assert exact(body) == exact(expected[1]), params
        return
    # offset versions: no next_cursor there, and ties in memory order
    body["pagination"].pop("next_cursor", None)
    assert body["pagination"] == expected[1]["pagination"], params
    sort_by = params.get("sort_by", "created_at").lower()
    if has_ties(module, state, params, sort_by):
        assert keys_of(body, sort_by) == keys_of(expected[1], sort_by), params
        if "limit" not in params and "offset" not in params:
            assert sorted(map(exact, body["jobs"])) == sorted(map(exact, expected[1]["jobs"])), params
    else:
        assert exact(body) == exact(expected[1]), params


@pytest.mark.parametrize("version", RECOGNISED)
@SETTINGS
@given(state=states(), data=st.data())
def test_listing_matches_comfyui(index, version, state, data):
    module = module_of(version)
    api = compat.detect(module)
    reset(index, *state)
    job_ids = list(state[0]) + [item[1] for item in state[1] + state[2]]
    for _ in range(4):
        check_listing(index, module, api, state, data.draw(query_params(job_ids)))


@pytest.mark.parametrize("version", RECOGNISED)
@SETTINGS
@given(state=states(), order=st.sampled_from(["asc", "desc"]), limit=st.integers(1, 3))
def test_paging_through_matches_comfyui(index, version, state, order, limit):
    """Every page by offset, as the frontend pages, then (cursor version) by next_cursor."""
    module = module_of(version)
    api = compat.detect(module)
    reset(index, *state)
    total = len(state[0]) + len(state[1]) + len(state[2])
    for offset in range(0, total + 1, limit):
        check_listing(index, module, api, state, {"sort_order": order, "limit": str(limit), "offset": str(offset)})
    if api.kind == compat.CURSOR:
        params = {"sort_order": order, "limit": str(limit)}
        for _ in range(total + 1):
            check_listing(index, module, api, state, params)
            cursor = sql_answer(index, params)[1]["pagination"].get("next_cursor")
            if cursor is None:
                break
            params = {"sort_order": order, "limit": str(limit), "after": cursor}


@pytest.mark.parametrize("version", RECOGNISED)
@SETTINGS
@given(state=states())
def test_details_match_comfyui(index, version, state):
    module = module_of(version)
    reset(index, *state)
    history, running, pending = state
    for job_id in list(history) + [item[1] for item in running + pending] + ["unknown"]:
        status, expected = versions.comfy_detail(module, history, running, pending, job_id)
        if status == 404:
            with pytest.raises(JobNotFound):
                index.get_job(job_id)
        else:
            assert exact(index.get_job(job_id)) == exact(expected), job_id


def test_detail_fields_cover_what_comfyui_answers():
    """The detail of a finished job has every key ComfyUI's has (each version found)."""
    found = [v for v in RECOGNISED if versions.load(v) is not None]
    if not found:
        pytest.skip(versions.skip_reason(RECOGNISED[0]))
    for version in found:
        module = versions.load(version)
        history = compat._probe_history()
        for job_id, item in history.items():
            theirs = module.get_job(job_id, [], [], history)
            ours = compat._ours({job_id: item}, [], [], detail=True)[job_id]
            assert list(ours) == list(theirs), (version, job_id)


@SETTINGS
@given(state=states(), data=st.data())
def test_the_reference_oracle_is_the_seeds_module(state, data):
    """tests/reference.py (the oracle written from CONTRACT.md) answers as the seed's
    own module does, on well-formed data (the oracle gets the JSON form, as stored)."""
    module = module_of("seed-33109e0a")
    history, running, pending = json.loads(json.dumps(state))
    reference = Reference(history, running, pending, comfyui_mint_errors=True)
    job_ids = list(history) + [item[1] for item in running + pending]
    for _ in range(4):
        params = data.draw(query_params(job_ids))
        ours, theirs = reference.list_jobs(params), comfyui_answer(module, state, params)
        if theirs is not None and not unchecked_cursor_value(params, ours, theirs):
            assert exact(ours) == exact(theirs), params
    for job_id in [*job_ids, "unknown"]:
        assert exact(reference.get_job(job_id)) == exact(versions.comfy_detail(module, *state, job_id)), job_id


@pytest.mark.parametrize("name", sorted(test_reference.LIST_CAPTURES))
def test_v0_26_handler_reproduces_the_real_captures(name):
    """The captures in tests/fixtures/comfyui/ are real v0.26.0 answers: the loaded module
    behind comfy_list reproduces them (this checks comfy_list's server.py side)."""
    module = module_of("v0.26.0")
    capture = load_capture(name)
    state = test_reference.LIST_CAPTURES[name]()
    status, body = versions.comfy_list(module, state.history, state.running, state.pending, request_params(capture))
    assert (status, body) == (capture["status"], capture["body"])


@pytest.mark.parametrize("case", sorted(load_capture("jobs_validation_errors.json")))
def test_v0_26_handler_reproduces_the_validation_captures(case):
    module = module_of("v0.26.0")
    capture = load_capture("jobs_validation_errors.json")[case]
    state = test_reference.final_state()
    status, body = versions.comfy_list(module, state.history, [], [], request_params(capture))
    assert (status, body) == (capture["status"], capture["body"])


@pytest.mark.parametrize("name", sorted(test_reference.DETAIL_CAPTURES))
def test_v0_26_module_reproduces_the_detail_captures(name):
    module = module_of("v0.26.0")
    capture = load_capture(name)
    state = test_reference.DETAIL_CAPTURES[name]()
    answer = versions.comfy_detail(module, state.history, state.running, state.pending, request_job_id(capture))
    assert answer == (capture["status"], capture["body"])


@pytest.mark.parametrize("name", test_reference.CURSOR_CAPTURES)
def test_seed_module_reproduces_the_cursor_branch_captures(name):
    """The captures in tests/fixtures/comfyui/cursor_branch/ were taken at the seed's
    commit: its module behind comfy_list answers them byte for byte."""
    module = module_of("seed-33109e0a")
    capture = load_capture(f"cursor_branch/{name}")
    state = test_reference.cursor_state()
    status, body = versions.comfy_list(module, state.history, state.running, state.pending, request_params(capture))
    assert json.dumps(body) == json.dumps(capture["body"]) and status == capture["status"]
