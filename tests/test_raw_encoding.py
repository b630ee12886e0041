"""The raw item encoding (``normalize.encode_raw``): lossless for every value
``json.load`` can produce, whichever writer (orjson or the standard library) writes
it; the digest depends only on the value; old zlib rows still read; and the fast
parse (``loads_exact``) gives exactly ``json.loads``'s values."""

from __future__ import annotations

import copy
import datetime
import enum
import json
import math
import uuid
import zlib
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs_index.normalize import encode_raw, from_history, json_bytes, loads_exact, orjson_exact
from jobs_index.rawcodec import decode as raw_json
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import synthetic_history

SURROGATES = ["\ud800", "\udfff", "a\udc80b"]
FLOATS = [1e16, 1e-7, 1e22, 1.5e-7, 5e-324, -0.0, 0.1, 1.7976931348623157e308, 123456789012345680.0, 1e300]
INTS = [2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**18, 10**19, 2**100, -(2**100)]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**100), 2**100),
    st.sampled_from(INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(FLOATS),
    st.text(st.characters(codec="utf-8") | st.sampled_from(["\x00", "\x1f", "\x7f", "\u2028", '"', "\\"])),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=30,
)
with_surrogates = st.recursive(
    st.one_of(scalars, st.sampled_from(SURROGATES)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=10,
)


def same(a, b) -> bool:
    """Equal and of the same types all the way down (1 is not 1.0 nor True; NaN is
    NaN; -0.0 is not 0.0; key order counts)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


settings_ = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


@settings_
@given(value=json_values)
def test_in_process_values_round_trip(value):
    blob, digest = encode_raw(value)
    assert blob[:1] == b"\x78"  # a zlib stream
    assert same(decode_raw(blob), value)
    assert same(json.loads(raw_json(blob)), value)
    # The digest is of the text, and the text depends only on the value.
    assert digest == encode_raw(copy.deepcopy(value))[1]


@settings_
@given(value=json_values, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_parsed_values_are_exactly_json_loads_and_round_trip(value, indent, ascii_only):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode("utf-8")
    parsed, exact = loads_exact(text)
    expected = json.loads(text)
    assert same(parsed, expected)
    if exact:
        assert orjson_exact(text)
    blob, digest = encode_raw(parsed, exact)
    assert same(decode_raw(blob), expected)
    # The fast (exact) and the checked route write the same text for the same value.
    assert digest == encode_raw(expected)[1]
    assert json_bytes(parsed, exact) == json_bytes(expected)


@settings_
@given(value=with_surrogates)
def test_lone_surrogates_are_refused_as_before(value):
    """UTF-8 (and so the JSON text columns and PostgreSQL) cannot hold a lone
    surrogate: such an item is refused with a ValueError (the importer rejects it
    with a reason), as the standard-library encoder always did; anything else round-trips."""
    text = json.dumps(value).encode()
    parsed, exact = loads_exact(text)
    try:
        expected_blob = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        expected_blob = None
    for candidate, is_exact in ((value, False), (parsed, exact)):
        if expected_blob is None:
            with pytest.raises(ValueError):
                encode_raw(candidate, is_exact)
        else:
            assert same(decode_raw(encode_raw(candidate, is_exact)[0]), json.loads(text))


@pytest.mark.parametrize(
    "literal",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "9" * 19,
        "-" + "9" * 30,
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        '"\\ud800"',
        "1E16",
        "1e-7",
        "-0",
        "-0.0",
        "0.30000000000000004",
    ],
)
def test_literals_orjson_reads_differently_take_the_exact_route(literal):
    text = f'{{"a":[{literal}]}}'.encode()
    parsed, exact = loads_exact(text)
    assert same(parsed, json.loads(text)) or json.dumps(parsed) == json.dumps(json.loads(text))
    if literal not in ('"\\ud800"',):
        assert json.dumps(decode_raw(encode_raw(parsed, exact)[0])) == json.dumps(json.loads(text))


def test_deep_nesting_beyond_orjson_limits_round_trips():
    value: object = 1.5
    for depth in range(400):
        value = [value] if depth % 2 else {"k": value}
    text = json.dumps(value).encode()
    parsed, exact = loads_exact(text)
    assert parsed == value  # orjson reads 400 levels but writes only 255: json.dumps writes it
    assert decode_raw(encode_raw(parsed, exact)[0]) == value
    assert decode_raw(encode_raw(value)[0]) == value


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Tagged(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2026, 1, 2),
        uuid.UUID(int=5),
        Colour.RED,
        Level.HIGH,
        Tagged("x"),
        (1, 2, "three"),
        OrderedDict(a=1),
        {1: "int key"},
        {"t": (1, [2, (3,)])},
        {None: 1, True: 2, 1.5: 3},
    ],
)
def test_other_python_values_get_the_standard_library_verdict(value):
    """orjson writes some values json.dumps refuses (a datetime, a UUID, an Enum) or
    writes differently: the stored text is json.dumps's (for these values, which hold
    no float orjson writes in another form), or refused as before."""
    try:
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except TypeError:
        with pytest.raises(TypeError):
            encode_raw(value)
        return
    blob, _ = encode_raw(value)
    assert raw_json(blob) == expected


def test_stored_text_of_real_shaped_items_is_what_json_dumps_writes():
    """For ComfyUI-shaped items both writers agree byte for byte, so digests of rows
    written before this encoder did not change."""
    for job_id, item in synthetic_history(300, seed=3):
        raw_item = {**item, "prompt": item["prompt"][:5]}
        old = json.dumps(raw_item, separators=(",", ":"), ensure_ascii=False).encode()
        parsed, exact = loads_exact(json.dumps(item).encode())
        assert exact
        record = from_history(job_id, parsed, exact)
        assert raw_json(record.raw) == old
        assert record == from_history(job_id, item)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_rows_written_by_older_versions_still_decode(value):
    old_blob = zlib.compress(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), 6)
    assert same(decode_raw(old_blob), value)
