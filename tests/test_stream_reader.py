"""The streamed /history reader's fast route (``ObjectItems``: an item's end guessed
from ComfyUI's layout, its bytes parsed by orjson where exact) gives exactly
``json.load``'s values, also when the guess is wrong (an inner ``"prompt"`` object),
when orjson cannot read an item exactly (NaN, huge integers, lone surrogates), and
across any chunking; and a large dump imported with worker processes stores what
one process stores."""

from __future__ import annotations

import io
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index.ingest import ObjectItems, import_dump, read_dump, records
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import synthetic_history

from .test_reliability_limits import Trickle

TRAPS = [
    {"x": {}, "y": {"prompt": [1]}},  # an inner '}, "y": {"prompt":' : a wrong guess
    {"a": {}, "b": {"prompt": '}, "k": {"prompt": 1'}},  # the pattern inside a string
    [{"prompt": 1}, {"prompt": 2}],
]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "}", '"', "\\"]), max_size=8),
    st.sampled_from(['"prompt"', '}, "k": {"prompt": ']),
    st.sampled_from(TRAPS),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["prompt", "a", "b", "9"]), inner, max_size=3)
    ),
    max_leaves=12,
)
history_like = st.fixed_dictionaries(
    {"prompt": st.lists(values, max_size=5)}, optional={"outputs": values, "status": values, "meta": values}
)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    items=st.lists(st.one_of(history_like, values), max_size=6),
    keys=st.lists(st.text(max_size=5), min_size=6, max_size=6),
    separators=st.sampled_from([(", ", ": "), (",", ":"), (",\n  ", ": ")]),
    chunk=st.sampled_from([1, 7, 64, 1 << 20]),
    damage=st.integers(-3, 10**6),
)
def test_fast_route_gives_exactly_json_load(items, keys, separators, chunk, damage):
    comma, colon = separators
    data = (
        "{"
        + comma.join(
            json.dumps(k) + colon + json.dumps(v, separators=separators)
            for k, v in zip(keys, items, strict=False)  # keys outnumber items
        )
        + "}"
    ).encode("utf-8", "surrogatepass")
    if damage >= 0:
        cut = damage % (len(data) + 1)
        data = data[:cut] + (b"" if damage % 2 else b"#") + data[cut + (damage % 3) :]
    ObjectItems.CHUNK, default = chunk, ObjectItems.CHUNK
    try:
        reader = ObjectItems("dump", Trickle(data, chunk))
        got = list(reader.spans())
    finally:
        ObjectItems.CHUNK = default
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError):
        assert reader.exception is not None
        return
    if not isinstance(expected, dict):
        assert reader.exception is not None
        return
    assert reader.exception is None
    assert dict((k, v) for k, v, _, _ in got).keys() == expected.keys()
    for _key, value, text, exact in got:
        if text is not None:  # read by orjson: its bytes are the value's, exactly
            assert same(json.loads(text), value) or not exact
    assert same(dict((k, v) for k, v, _, _ in got), expected)


def test_synthetic_dump_takes_the_fast_route_and_workers_store_the_same(tmp_path, monkeypatch):
    """Every item of a ComfyUI-shaped dump is read by orjson (exactly); importing it
    with a worker process stores the same rows as in one process."""
    from jobs_index import ingest
    from jobs_index.services import JobsIndex

    history = dict(synthetic_history(2500, seed=11))
    history[next(iter(history))]["outputs"] = {"9": {"text": [float("nan"), 2**80]}}  # the stdlib's route
    data = json.dumps(history).encode()
    reader = ObjectItems("dump", io.BytesIO(data))
    got = list(reader.spans())
    assert reader.exception is None and len(got) == len(history)
    assert sum(text is not None and exact for _, _, text, exact in got) >= len(history) - 2
    assert json.dumps({k: v for k, v, _, _ in got}) == json.dumps(history)

    monkeypatch.setattr(ingest, "STREAM_THRESHOLD", 1 << 16)  # stream it
    rows = {}
    for workers in (0, 1):
        dump = read_dump("h", io.BytesIO(data))
        assert len(dump) == 0  # streamed
        rejected: list = []
        rows[workers] = {r.id: r for r in records(dump, rejected, workers=workers)}
        assert not rejected
    assert rows[0] == rows[1] and len(rows[0]) == len(history)
    for job_id, record in rows[1].items():
        assert json.dumps(decode_raw(record.raw)) == json.dumps(
            {**history[job_id], "prompt": history[job_id]["prompt"][:5]}
        )
    with JobsIndex.open(f"sqlite:///{tmp_path / 'x.sqlite3'}") as index:
        result = import_dump(index, read_dump("h", io.BytesIO(data)), workers=1)
        assert result.inserted == len(history) and index.counts_consistent()


class Pipe(io.RawIOBase):
    """A stream that cannot seek (stdin from a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_workers_parse_unchecked_items_and_the_file_is_read_again_where_the_guess_was_wrong(monkeypatch):
    """With workers, the items of a streamed dump from a file are cut by the guess and
    parsed by the workers only. Where the guess was wrong (an inner
    '}, "k": {"prompt":' object) the file is read again from that item, every item
    checked from there; a damaged item stops the import after the same items as in
    one process. From a pipe (no going back) every item is checked here as before."""
    from jobs_index import ingest

    history = dict(synthetic_history(1200, seed=5))
    ids = list(history)
    history[ids[300]]["outputs"] = {"x": {}, "y": {"prompt": [1]}}  # a wrong guess
    history[ids[301]]["meta"] = {"a": {}, "b": {"prompt": '}, "k": {"prompt": 1'}}  # the pattern in a string
    history[ids[900]]["outputs"] = {"x": {}, "y": {"prompt": [2]}}  # after the first one: checked already
    data = json.dumps(history).encode()
    monkeypatch.setattr(ingest, "STREAM_THRESHOLD", 1 << 16)  # stream it
    monkeypatch.setattr(ingest, "CHUNK_ITEMS", 40)
    resumed = []
    resume = ingest._StreamedHistory.resume
    monkeypatch.setattr(ingest._StreamedHistory, "resume", lambda self, *a: resumed.append(a) or resume(self, *a))

    def imported(stream, workers):
        dump = read_dump("h", stream)
        rejected: list = []
        out = {r.id: r for r in records(dump, rejected, workers=workers)}
        return out, rejected, dump.error

    one, rejected, error = imported(io.BytesIO(data), 0)
    assert not rejected and error is None and len(one) == len(history)
    for job_id, record in one.items():
        assert json.dumps(decode_raw(record.raw)) == json.dumps(
            {**history[job_id], "prompt": history[job_id]["prompt"][:5]}
        )
    assert not resumed
    assert imported(io.BytesIO(data), 1) == (one, [], None)
    assert [(key, index) for _, key, index in resumed] == [(ids[300], 300)]
    resumed.clear()
    assert imported(io.BufferedReader(Pipe(data)), 1) == (one, [], None)
    assert not resumed  # a pipe: checked as it is read

    at = data.index(b'"status": ', data.index(json.dumps(ids[700]).encode()))
    damaged = data[:at] + b"#" + data[at:]
    one, rejected, error = imported(io.BytesIO(damaged), 0)
    assert len(one) == 700 and error is not None and "after 700 item(s)" in error
    assert imported(io.BytesIO(damaged), 1) == (one, rejected, error)
    assert imported(io.BufferedReader(Pipe(damaged)), 1) == (one, rejected, error)
