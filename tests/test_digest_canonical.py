"""One job, one digest (issue 18 item 6): the custom node normalises a history entry
as ComfyUI holds it in memory (tuples: the prompt, each status message, a text
output), ``follow``/``import`` normalise the same entry read from ``/history`` (JSON:
lists, and floats written by whichever encoder served them). Both must store the
same ``raw`` text and digest, so the second sight of a job is "unchanged", not a
replacement."""

from __future__ import annotations

import copy
import json

import orjson

from jobs_index.normalize import from_history, json_bytes, loads_exact
from jobs_index.rawcodec import decode as raw_json
from tests.fixtures_util import load_capture

TINY = 1e-05  # json.dumps writes "1e-05", orjson "0.00001"
TINIER = 2.5e-07  # "2.5e-07" vs "2.5e-7"


def _captured_entry() -> tuple[str, dict]:
    body = load_capture("history_item_success.json")["body"]
    ((job_id, entry),) = body.items()
    return job_id, entry


def in_memory_entry() -> tuple[str, dict]:
    """A captured history entry with the Python types ComfyUI's memory holds: the
    prompt and each status message are tuples, a text output is a tuple, and the
    prompt carries small floats (a sampler's denoise, a learning rate)."""
    job_id, entry = _captured_entry()
    entry = copy.deepcopy(entry)
    number, prompt_id, graph, extra, to_execute = entry["prompt"]
    graph["1"]["inputs"]["denoise"] = TINY
    graph["1"]["inputs"]["eta"] = TINIER
    entry["outputs"]["3"] = {"text": [("a caption",)]}
    entry["status"]["messages"] = [tuple(message) for message in entry["status"]["messages"]]
    entry["prompt"] = (number, prompt_id, graph, extra, to_execute, {"api_key": "secret"})
    return job_id, entry


def as_history_json(entry: dict, encoder: str) -> bytes:
    """``/history``'s body for the entry: ComfyUI's aiohttp answers with json.dumps;
    a dump may also have been re-written by another encoder (orjson)."""
    served = {**entry, "prompt": entry["prompt"][:5]}  # ComfyUI strips the sensitive element
    if encoder == "json":
        return json.dumps(served).encode()
    return orjson.dumps(served)


def test_node_and_dump_paths_give_one_digest_and_one_text():
    job_id, entry = in_memory_entry()
    node = from_history(job_id, entry)  # the custom node's writer: exact=False, tuples
    for encoder in ("json", "orjson"):
        parsed, exact = loads_exact(as_history_json(entry, encoder))
        dump = from_history(job_id, parsed, exact)
        assert dump.raw_digest == node.raw_digest, encoder
        assert raw_json(dump.raw) == raw_json(node.raw)
        assert dump == node  # every column, side row and the compressed raw alike
    assert json.loads(raw_json(node.raw))["prompt"][2]["1"]["inputs"]["denoise"] == TINY


def test_canonical_text_is_the_text_of_the_json_value():
    """Types that JSON cannot tell apart give one text: a tuple and its list, an int
    key and its string, a str subclass and its str."""

    class Tagged(str):
        pass

    memory = {"a": (1, TINY, ("x", TINIER)), 7: Tagged("t"), "n": [float("nan")]}
    plain = json.loads(json.dumps(memory))
    assert json_bytes(memory) == json_bytes(plain)
    # Without NaN (which only the standard library writes), that text is orjson's.
    memory.pop("n")
    plain.pop("n")
    assert json_bytes(memory) == orjson.dumps(plain)


def test_the_second_sight_of_a_job_is_unchanged(index):
    """On each backend: the node writes the job, then ``follow`` reads it from
    ``/history``: nothing is replaced."""
    job_id, entry = in_memory_entry()
    first = index.ingest([from_history(job_id, entry)], source="comfyui")
    assert first.inserted == 1
    parsed, exact = loads_exact(as_history_json(entry, "json"))
    second = index.ingest([from_history(job_id, parsed, exact)], source="comfyui")
    assert (second.updated, second.unchanged) == (0, 1)
