"""Hypothesis strategies for raw ComfyUI data full of ties, missing times and odd shapes.

* `history_items(prompt_id)` one history item; `histories()` `{prompt_id: item}`.
* `queue_items(exclude)` a running or pending list (unique ids, none in `exclude`).
* `priorities` queue numbers: ints, integral and non-integral floats, NaN, infinities,
  integers beyond 64 bits.
* `states(allow_overlap=False)` `(history, running, pending)`, ids unique across all
  three unless `allow_overlap`.
* `query_params(ids)` raw GET /api/jobs query dicts, valid and invalid, whose cursors
  often point at `ids`.

Ids come from a tiny alphabet mixing digits, case and non-ASCII ('0' < 'A' < 'B' <
'a' < 'é' < '中' in code points), and times from a few values, so ties and the id
tiebreak are the norm. Most draws are well-formed; about one in five of each part is
odd (missing, null, wrong type).
"""

from __future__ import annotations

import base64
import json

from hypothesis import strategies as st

from .reference import STATUSES, encode_cursor

MISSING = object()  # marker: leave the key out


def _mostly(common, odd, one_in=5):
    """`common`, and about one draw in `one_in` from `odd` (shrinks towards `common`)."""
    return st.integers(1, one_in).flatmap(lambda n: odd if n == one_in else common)


def _dict(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not MISSING}


# --------------------------------------------------------------------------- ids

ID_ALPHABET = "0aABé中"
LONG_ID = "é" * 128  # the longest id a cursor carries: 128 characters, 256 UTF-8 bytes
# Ids ComfyUI lists but cannot end a cursor on (``str(json["prompt_id"])`` takes any
# string): one character too long, and the empty id.
LONGER_ID = "é" * 129
ODD_IDS = (LONG_ID, LONGER_ID, "")
job_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=3)


@st.composite
def unique_ids(draw, max_size=6, exclude=frozenset()):
    """Distinct job ids not in `exclude`, sometimes including one of ODD_IDS."""
    ids = draw(st.lists(job_ids, unique=True, max_size=max_size))
    if draw(st.integers(0, 9)) == 0:
        ids.append(draw(st.sampled_from(ODD_IDS)))
    return list(dict.fromkeys(i for i in ids if i not in exclude))


# ------------------------------------------------------------------- queue numbers

# ComfyUI's queue number: its own counter (an int, negated by ``front``), or
# ``float(number)`` of a client's ``"number"``: integral and non-integral floats,
# negatives, huge values, and what float() makes of "nan", "inf", "1e400".
ODD_PRIORITIES = st.one_of(
    st.integers(-3, 5).map(float),
    st.sampled_from(
        [
            2.5,
            -0.5,
            -0.0,
            0.1 + 0.2,
            1e16,
            -1e300,
            1e-07,
            float("nan"),
            float("inf"),
            float("-inf"),
            2**63,
            -(2**63) - 1,
            10**30,
            2**63 - 1,
            float(2**63),
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.floats(),
)
priorities = _mostly(st.integers(-3, 5), ODD_PRIORITIES, one_in=3)


# ------------------------------------------------------------------ times, extra

TIMES = st.one_of(st.sampled_from([0, 5, 1795869114841]), st.integers(-2, 9))
# Not ints: the contract treats these as missing (an integral float counts as the int).
ODD_TIMES = st.sampled_from([MISSING, None, 3.0, 2.5, True, "5", [1]])
times = _mostly(TIMES, ODD_TIMES, one_in=4)
WORKFLOW_IDS = ["wf-1", "wf-2", "WF-1", "wé", ""]


@st.composite
def extra_data(draw):
    workflow = draw(
        _mostly(
            st.builds(
                lambda wid: _dict(id=wid, nodes=[]),
                _mostly(st.sampled_from(WORKFLOW_IDS), st.sampled_from([MISSING, None])),
            ),
            st.sampled_from([MISSING, None, {}, "not-a-dict"]),
        )
    )
    pnginfo = draw(_mostly(st.just(_dict(workflow=workflow)), st.sampled_from([MISSING, None, {}])))
    data = _dict(create_time=draw(times), extra_pnginfo=pnginfo, client_id="c")
    return draw(_mostly(st.just(data), st.sampled_from([None, {}]), one_in=10))


# ----------------------------------------------------------------------- outputs

FILENAMES = ["a.png", "b.mp4", "Model.GLB", "scene.gltf", "x.usdz", "noext", "tri.obj.txt"]

file_items = st.builds(
    lambda filename, subfolder, type_, extra: _dict(filename=filename, subfolder=subfolder, type=type_, **extra),
    _mostly(st.sampled_from(FILENAMES), st.sampled_from([MISSING, None, 7])),
    st.sampled_from(["", "sub"]),
    _mostly(st.sampled_from(["output", "temp"]), st.sampled_from([MISSING, "input"])),
    _mostly(
        st.just({}),
        st.one_of(
            st.fixed_dictionaries({"format": st.sampled_from(["video/mp4", "audio/wav", "image/png", "", None, 3])}),
            st.sampled_from([{"mediaType": "custom"}, {"nodeId": "stale"}]),
        ),
        one_in=3,
    ),
)
text_values = st.one_of(
    st.sampled_from(["", "hello", "é中", "x" * 1024, "y" * 1025]),
    st.text(max_size=8),
)
text_items = st.one_of(
    text_values,
    st.lists(text_values, max_size=2),  # JSON form of ComfyUI's in-memory (value,) tuple
    st.sampled_from([None, 5, True, [7]]),
)
output_items = _mostly(
    file_items,
    st.one_of(
        text_items,
        st.sampled_from(["Mesh.FBX", "model.glb", "plain.txt"]),  # bare 3D / non-3D strings
    ),
    one_in=3,
)
MEDIA_TYPES = ["images", "video", "audio", "3d", "text", "gifs", "latents", "meshes", "animated"]
ODD_LISTS = st.sampled_from([[], [True], [False, None], "str", 5, None, {}])  # odd or not lists


@st.composite
def _node_outputs(draw):
    node = {}
    for media_type in draw(st.lists(st.sampled_from(MEDIA_TYPES), unique=True, min_size=1, max_size=2)):
        items = _mostly(text_items, output_items) if media_type == "text" else output_items
        node[media_type] = draw(_mostly(st.lists(items, min_size=1, max_size=2), ODD_LISTS, 8))
    return node


# A node output that is not a dict, or empty, now and then.
node_outputs = _mostly(_node_outputs(), st.sampled_from([None, [], "junk", {}]), one_in=8)
outputs = _mostly(
    st.dictionaries(st.sampled_from(["1", "2", "10", "9"]), node_outputs, min_size=1, max_size=2), st.just({}), one_in=8
)


# ------------------------------------------------------------------------ status


def _event(name):
    def build(timestamp, message):
        data = _dict(prompt_id="p", timestamp=timestamp)
        if name == "execution_error":
            data["exception_message"] = message
        return [name, data]

    return st.builds(build, times, st.sampled_from(["boom", ""]))


END_EVENTS = {"success": "execution_success", "error": "execution_error", "interrupted": "execution_interrupted"}
any_event = st.sampled_from(["execution_start", "execution_cached", *END_EVENTS.values()]).flatmap(_event)
ODD_ENTRIES = st.sampled_from(
    [
        ["execution_start"],
        ["execution_start", "nope"],
        [],
        "junk",
        5,
        ["execution_error", {}],
        ["execution_success", None],
    ]
)


@st.composite
def typical_status(draw):
    """start, maybe cached, one end event; status_str matching the outcome."""
    outcome = draw(st.sampled_from(sorted(END_EVENTS)))
    messages = [draw(_event("execution_start"))]
    if draw(st.booleans()):
        messages.append(draw(_event("execution_cached")))
    messages.append(draw(_event(END_EVENTS[outcome])))
    status_str = "success" if outcome == "success" else "error"
    return {"status_str": status_str, "completed": outcome == "success", "messages": messages}


odd_status = st.builds(
    lambda status_str, completed, messages: _dict(status_str=status_str, completed=completed, messages=messages),
    st.sampled_from(["success", "error", "weird", None, MISSING]),
    st.booleans(),
    _mostly(
        st.lists(st.one_of(any_event, ODD_ENTRIES), max_size=5), st.sampled_from([MISSING, None, "junk", {"a": 1}])
    ),  # messages not a list
)
status_info = _mostly(typical_status(), st.one_of(odd_status, st.sampled_from([None, MISSING])), one_in=3)


# ------------------------------------------------------------------------- items


def history_items(prompt_id: str | None = None):
    """One history item (its prompt id drawn unless given)."""

    @st.composite
    def build(draw):
        pid = prompt_id if prompt_id is not None else draw(job_ids)
        prompt = [draw(priorities), pid, {"1": {"class_type": "X"}}, draw(extra_data()), ["1"]]
        return _dict(
            prompt=prompt,
            outputs=draw(_mostly(outputs, st.sampled_from([None, MISSING]), one_in=10)),
            status=draw(status_info),
            meta={},
        )

    return build()


@st.composite
def histories(draw, max_size=6, exclude=frozenset()):
    return {k: draw(history_items(k)) for k in draw(unique_ids(max_size, exclude))}


@st.composite
def queue_items(draw, exclude=frozenset(), max_size=3):
    return [
        [draw(priorities), i, {"1": {"class_type": "X"}}, draw(extra_data()), ["1"]]
        for i in draw(unique_ids(max_size, exclude))
    ]


@st.composite
def states(draw, allow_overlap=False):
    """(history, running, pending); ids unique across all three unless allow_overlap."""
    history = draw(histories())
    taken = frozenset() if allow_overlap else frozenset(history)
    running = draw(queue_items(taken, max_size=2))
    taken = taken if allow_overlap else taken | {item[1] for item in running}
    pending = draw(queue_items(taken))
    return history, running, pending


# ----------------------------------------------------------------------- queries


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@st.composite
def cursors(draw, ids=(), order="desc"):
    """Cursors for `order`: mostly canonical and pointing at `ids`; else odd or garbage."""
    job_id = draw(_mostly(st.sampled_from(list(ids)), job_ids) if ids else job_ids)
    value = draw(_mostly(TIMES.map(str), st.sampled_from([" 5", "+2", "1_0", "٥", "5.0", "x"])))
    order = draw(_mostly(st.just(order), st.sampled_from(["asc", "desc", "ASC", "up"])))
    canonical = encode_cursor(value, job_id, order)
    payload = {"o": order, "id": job_id, "v": value, "s": "created_at", "extra": 1}
    odd = st.sampled_from(
        [
            canonical + "==",  # excess padding: Python's lenient decoder ignores it
            _b64(json.dumps(payload).encode()),  # other key order, extra key, \u escapes: accepted
            _b64(json.dumps({**payload, "v": 5}).encode()),
            _b64(json.dumps({**payload, "s": "updated_at"}).encode()),
            _b64(json.dumps({**payload, "id": ""}).encode()),
            _b64(json.dumps([payload]).encode()),
            "",
            "garbage!!",
            "é",
            "e30",
            "bnVsbA",
            "x" * 8193,
        ]
    )
    return draw(_mostly(st.just(canonical), odd, one_in=3))


status_tokens = _mostly(st.sampled_from(STATUSES), st.sampled_from([" Completed ", "FAILED", "", " ", "bogus", "Nope"]))
PARAMS = {
    "status": st.lists(status_tokens, min_size=1, max_size=3).map(",".join),
    "sort_by": _mostly(
        st.sampled_from(["created_at", "execution_duration"]), st.sampled_from(["CREATED_AT", "name", ""])
    ),
    "sort_order": _mostly(st.sampled_from(["asc", "desc"]), st.sampled_from(["ASC", "Desc", "up", ""])),
    "limit": _mostly(
        st.integers(1, 4).map(str),
        st.sampled_from(["0", "-1", "abc", "1.5", "", " 2", "+2", "1_0", "٣", "99999999999999999999"]),
    ),
    "offset": _mostly(
        st.integers(0, 4).map(str), st.sampled_from(["-3", "abc", "", "100", " 1", "1_0", "99999999999999999999"])
    ),
    "workflow_id": st.sampled_from(WORKFLOW_IDS + ["missing"]),
}


@st.composite
def query_params(draw, ids=()):
    """A raw query dict (all values strings); each parameter present about half the time."""
    params = {k: draw(v) for k, v in PARAMS.items() if draw(st.booleans())}
    if draw(st.booleans()):
        params["after"] = draw(cursors(ids, params.get("sort_order", "desc").lower()))
    return params
