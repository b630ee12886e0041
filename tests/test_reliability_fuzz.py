"""Bad input, fuzzed (issue #6, item 3).

A real aiohttp server (``create_app`` on a loopback port, see ``reliability_support``)
is driven with raw request targets built by hypothesis, on SQLite and PostgreSQL:

* query strings for ``GET /api/jobs``: every parameter (``source`` included), unicode,
  huge values, repeated keys, percent-encoding junk; the answer must equal the
  in-memory oracle's (``tests/reference.py``) exactly, 400 bodies included, for the
  parameters as aiohttp decodes them (first value of a repeated key);
* cursors: random bytes, base64 of valid-looking JSON with wrong types, huge numbers,
  other orders, NaN/Infinity literals, deep nesting, NUL and lone surrogates, UTF-16
  and BOM-prefixed JSON;
* job ids in paths: unicode, ``%2F``, dot segments, NUL, long ids;

with zero 500s and every answer a JSON body. History and queue items of every wrong
shape are fed to ``ingest.detect``/``import_dump``: every valid item is stored, every
invalid one is reported in ``result.rejected`` with a reason, nothing raises.

Case counts are printed (``pytest -s``) and summed in ``test_zz_report_case_counts``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yarl import URL

from jobs_index import JobsIndex
from jobs_index.errors import InvalidDump
from jobs_index.http import create_app
from jobs_index.ingest import detect, import_dump
from jobs_index.normalize import answer_text

from .conftest import make_db_url
from .fixtures_util import capture_queue, cursor_branch_history, snapshot_history
from .reference import Reference
from .reliability_support import RawClient, served
from .strategies import PARAMS, cursors, history_items, queue_items

CASES: Counter = Counter()
SOURCE = "m1"  # every fuzzed job is imported with this source

HISTORY = {**snapshot_history(), **cursor_branch_history()}
RUNNING, PENDING = capture_queue()
ORACLE = Reference(HISTORY, RUNNING, PENDING)
EMPTY_ORACLE = Reference({}, [], [])
IDS = list(HISTORY) + [item[1] for item in RUNNING + PENDING]
MAX_TARGET = 8000  # aiohttp refuses request lines over 8190 bytes before any route runs
PARAM_NAMES = ("status", "sort_by", "sort_order", "limit", "offset", "workflow_id", "after", "source")


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def examples(backend: str, sqlite: int, postgresql: int) -> int:
    return sqlite if backend == "sqlite" else postgresql


# -- the server under test ---------------------------------------------------------


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def fuzz_server(request, tmp_path_factory):
    """(backend, RawClient) of a live server over an index holding the oracle's jobs."""
    urls = make_db_url(request.param, tmp_path_factory.mktemp("fuzz"))
    url = next(urls)
    index = JobsIndex.open(url)
    result = import_dump(index, detect("history", HISTORY), source=SOURCE)
    result.add(import_dump(index, detect("queue", {"queue_running": RUNNING, "queue_pending": PENDING}), source=SOURCE))
    assert result.rejected == [] and result.inserted == len(IDS)
    try:
        with served(create_app(index=index)) as port:
            client = RawClient(port)
            yield request.param, client
            client.close()
    finally:
        index.close()
        urls.close()


def expected_listing(params: dict[str, str]) -> tuple[int, dict]:
    """The oracle's answer; ``source`` (our extension) selects all jobs or none."""
    source = params.get("source")
    oracle = ORACLE if not source or source == SOURCE else EMPTY_ORACLE
    return oracle.list_jobs(params)


def decoded_params(target: str) -> dict[str, str]:
    """The parameters as aiohttp decodes the request target (first value wins)."""
    params: dict[str, str] = {}
    for key, value in URL(target, encoded=True).query.items():
        params.setdefault(key, value)
    return params


def assert_json_answer(reply, target) -> object:
    assert reply.status != 500 and reply.status < 500, (target, reply.status, reply.raw[:300])
    assert reply.content_type.startswith("application/json"), (target, reply.status, reply.raw[:300])
    return reply.json()


def check_listing(client: RawClient, target: str, kind: str) -> None:
    reply = client.get(target)
    body = assert_json_answer(reply, target)
    status, expected = expected_listing(decoded_params(target))
    assert (reply.status, body) == (status, expected), target
    CASES[kind] += 1
    CASES[f"{kind}:{status}"] += 1


# -- strategies ------------------------------------------------------------------

# Characters the HTTP parser accepts verbatim in a query (no percent-encoding needed).
RAW_SAFE = "abcXYZ019-._~!$'()*,;:@/?"
JUNK_ESCAPES = [
    "%",
    "%Z",
    "%ZZ",
    "%%",
    "%2",
    "%C3",
    "%C3%28",
    "%ED%A0%80",
    "%FF%FE",
    "%00",
    "+",
    "%2B",
    "%20",
    "%26",
    "%3D",
    "%23",
    "%0A",
    "%E2%80%AE",
    "%EF%BB%BF",
]
HUGE = [
    "9" * 19,
    "9" * 20,
    str(2**63),
    str(-(2**63) - 1),
    "9" * 4300,
    "9" * 4301,
    "-" + "9" * 5000,
    "1" + "0" * 100,
    "1e9",
    "0x10",
    "0b1",
    "1_000",
    "٣",
    "１２",
    " 7 ",
    "\t3\n",
    "+0",
    "-0",
    "00",
    "inf",
    "nan",
    "Infinity",
    "NaN",
    "1.0",
    "10**9",
    str(10**9),
    str(10**12),
]
unicode_text = st.text(st.characters(codec="utf-8"), max_size=12)
encoded_text = unicode_text.map(lambda s: quote(s, safe=""))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _cursor_json(order: str, **override) -> str:
    payload = {"s": "created_at", "v": "1795869114841", "id": IDS[0], "o": order}
    payload.update(override)
    return json.dumps({k: v for k, v in payload.items() if v is not ...}, ensure_ascii=False)


@st.composite
def junk_cursors(draw, order: str = "desc"):
    """Cursor texts meant to break the decoder or the SQL behind it."""
    wrong_values = st.one_of(
        st.integers(),
        st.floats(),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.just({}),
        st.just(...),
    )
    id_values = st.one_of(
        st.sampled_from(IDS),
        unicode_text,
        st.sampled_from(
            [
                "\x00",
                "a\x00b",
                IDS[0] + "\x00",
                "\ud800",
                "a\udfffz",
                IDS[1][:5] + "\ud800",
                "é" * 128,
                "é" * 129,
                "",
                " ",
                "\U0010ffff",
                "\ue000",
                "\ud7ff",
            ]
        ),
    )
    v_values = st.one_of(
        st.sampled_from(HUGE),
        st.integers().map(str),
        st.sampled_from(["0", "-1", "1795869114841", "1795869114842", "x" * 513, "9" * 512, "-" + "9" * 511]),
    )
    kind = draw(st.integers(0, 9))
    if kind == 0:  # random bytes, base64url with or without padding and junk
        text = _b64(draw(st.binary(max_size=64)))
        return text + draw(st.sampled_from(["", "=", "==", "===", "!", "*", "-_"]))
    if kind == 1:  # wrong types
        key = draw(st.sampled_from(["s", "v", "id", "o"]))
        return _b64(_cursor_json(order, **{key: draw(wrong_values)}).encode())
    if kind == 2:  # NaN / Infinity literals, huge number literals
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 400, "-0.0"]))
        key = draw(st.sampled_from(["v", "id", "o", "s"]))
        text = _cursor_json(order).replace(json.dumps(json.loads(_cursor_json(order))[key]), literal, 1)
        return _b64(text.encode())
    if kind == 3:  # nesting
        depth = draw(st.sampled_from([10, 500, 999, 1000, 3000, 6000]))
        inner = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if inner == "[" else "}"
        return _b64((inner * depth + "1" + closer * depth).encode())[:8192]
    if kind == 4:  # other orders / sort fields
        return _b64(
            _cursor_json(
                draw(st.sampled_from(["asc", "desc", "ASC", "", "up", None, ...])),
                s=draw(st.sampled_from(["created_at", "execution_duration", "CREATED_AT"])),
            ).encode()
        )
    if kind == 5:  # strange ids (NUL, lone surrogates, long, astral) and values
        text = json.dumps({"s": "created_at", "v": draw(v_values), "id": draw(id_values), "o": order})
        return _b64(text.encode())
    if kind == 6:  # other encodings of the JSON: BOM, UTF-16/32, other key orders, duplicate keys
        text = _cursor_json(order)
        variant = draw(st.integers(0, 4))
        if variant == 0:
            return _b64(b"\xef\xbb\xbf" + text.encode())
        if variant == 1:
            return _b64(text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"]))))
        if variant == 2:
            return _b64(json.dumps(dict(reversed(json.loads(text).items()))).encode())
        if variant == 3:
            return _b64(text.replace('"o"', '"o":"asc","o"', 1).encode())
        return _b64((" \n" + text + " \t").encode())
    if kind == 7:  # lengths around the limits
        return draw(st.sampled_from(["", "a" * 8192, "a" * 8193, _b64(b"{}") * 2000]))
    if kind == 8:  # not base64 at all
        return draw(unicode_text)
    return draw(cursors(IDS, order))


@st.composite
def query_targets(draw):
    """A raw ``/api/jobs?...`` request target (bytes the HTTP parser accepts)."""
    parts = []
    for _ in range(draw(st.integers(0, 9))):
        key = draw(
            st.one_of(
                st.sampled_from(PARAM_NAMES),
                st.sampled_from(PARAM_NAMES).map(
                    lambda k: "".join(f"%{ord(c):02X}" if i == 0 else c for i, c in enumerate(k))
                ),
                st.sampled_from(["LIMIT", "Status", "foo", "", "after[]", "limit%20", "%", "%00", "limit+"]),
            )
        )
        name = URL(f"/?{key}=x", encoded=True).query.keys()
        name = next(iter(name), key)
        order = draw(st.sampled_from(["asc", "desc"]))
        value_strategies = [
            encoded_text,
            st.sampled_from(JUNK_ESCAPES),
            st.sampled_from(HUGE).map(lambda s: quote(s, safe="")),
            st.text(RAW_SAFE, max_size=10),
        ]
        if name in PARAMS:
            value_strategies.append(PARAMS[name].map(lambda s: quote(s, safe="")))
        if name in ("after", "status", "source"):
            value_strategies.append(junk_cursors(order).map(lambda s: quote(s, safe="")))
            value_strategies.append(st.sampled_from([SOURCE, "m2", "", "M1"]))
        value = draw(st.one_of(*value_strategies))
        shape = draw(st.integers(0, 9))
        parts.append(key if shape == 0 else f"{key}={value}" if shape > 1 else f"{key}={value}={value}")
        if name == "after" and draw(st.booleans()):
            parts.append(f"sort_order={order}")
    separator = draw(st.sampled_from(["&", "&", "&", "&&", ";"]))
    target = (
        "/api/jobs" + draw(st.sampled_from(["", "?", "?&"]))
        if not parts
        else draw(st.sampled_from(["/api/jobs?", "/api/api/jobs?", "/api/jobs?&"])) + separator.join(parts)
    )
    if draw(st.integers(0, 19)) == 0:
        target += "#" + draw(st.text(RAW_SAFE, max_size=5))
    return target


# -- query strings ---------------------------------------------------------------


def test_fuzzed_query_strings_answer_like_the_oracle(fuzz_server):
    backend, client = fuzz_server

    @fuzz_settings(examples(backend, 400, 120))
    @given(target=query_targets())
    def run(target):
        assume(len(target) < MAX_TARGET)  # longer request lines: test_reliability_limits.py
        check_listing(client, target, f"query[{backend}]")

    run()


def test_fuzzed_cursors_answer_like_the_oracle(fuzz_server):
    backend, client = fuzz_server

    @fuzz_settings(examples(backend, 300, 120))
    @given(
        order=st.sampled_from(["asc", "desc"]),
        cursor=st.data(),
        limit=st.sampled_from([None, "1", "2", "1000", "5000"]),
        extra=st.sampled_from(
            [
                "",
                "&status=completed",
                "&status=pending,completed",
                "&workflow_id=wf-1",
                "&sort_by=execution_duration",
                "&source=m1",
                "&offset=2",
                "&source=m2",
            ]
        ),
    )
    def run(order, cursor, limit, extra):
        text = cursor.draw(junk_cursors(order))
        target = f"/api/jobs?sort_order={order}&after={quote(text, safe='')}{extra}"
        if limit:
            target += f"&limit={limit}"
        assume(len(target) < MAX_TARGET)
        check_listing(client, target, f"cursor[{backend}]")

    run()


def test_cursor_chains_with_odd_ids_end(fuzz_server):
    """Cursor walks from every stored job id, pinned: each keeps strictly after its key."""
    backend, client = fuzz_server
    for order in ("asc", "desc"):
        for job_id in IDS + ["\x00", "\ud800", "a\x00", "\U0010ffff" * 128]:
            for value in ("0", "1795869114841", "-" + "9" * 30, "9" * 30):
                cursor = _b64(json.dumps({"s": "created_at", "v": value, "id": job_id, "o": order}).encode())
                check_listing(
                    client, f"/api/jobs?sort_order={order}&limit=2&after={cursor}", f"cursor-pinned[{backend}]"
                )


# -- job ids in paths ------------------------------------------------------------

path_ids = st.one_of(
    st.sampled_from(IDS),
    unicode_text.filter(bool),
    st.sampled_from(
        [
            "a/b",
            "/",
            "..",
            ".",
            "%",
            "%2F",
            "a\x00b",
            "\x00",
            " ",
            "+",
            "?",
            "#",
            "{x}",
            "é" * 128,
            "x" * 129,
            "x" * 2000,
            "中" * 600,
            "\U0001f600",
            IDS[0].upper(),
            IDS[0] + " ",
            IDS[0][:-1],
        ]
    ),
)


def test_fuzzed_job_ids_in_paths(fuzz_server):
    backend, client = fuzz_server

    @fuzz_settings(examples(backend, 250, 80))
    @given(job_id=path_ids, prefix=st.sampled_from(["/api/jobs/", "/api/api/jobs/"]))
    def run(job_id, prefix):
        target = prefix + quote(job_id, safe="")
        reply = client.get(target)
        body = assert_json_answer(reply, target)
        status, expected = ORACLE.get_job(job_id)
        if job_id in (".", ".."):  # dot segments are removed by URL normalisation
            assert reply.status == 404
        else:
            assert (reply.status, body) == (status, expected), target
        CASES[f"path[{backend}]"] += 1
        CASES[f"path[{backend}]:{reply.status}"] += 1

    run()


# -- history and queue items of every wrong shape ----------------------------------

INT64 = 2**63
odd_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), unicode_text
)
odd_values = st.recursive(
    odd_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(unicode_text, inner, max_size=3)),
    max_leaves=8,
)
odd_ids = st.one_of(
    unicode_text, st.sampled_from(["", "x" * 128, "x" * 129, "é" * 200, "\x00", "a\ud800"]), odd_scalars
)
numbers = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.sampled_from([True, False, None, "3", [1], 3.0, -0.0, 2.0**63, float(INT64 - 1024)]),
)


def valid_number(number) -> bool:
    """ComfyUI holds an int or a float (``float(number)``, NaN and infinities too)."""
    return isinstance(number, (int, float)) and not isinstance(number, bool)


def valid_id(job_id) -> bool:
    """Any string (``str(json["prompt_id"])``): empty, and over 128 characters, too."""
    return isinstance(job_id, str)


def storable(value) -> bool:
    """JSON that can be stored as UTF-8 (no lone surrogates)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return False
    return True


@st.composite
def prompt_tuples(draw, job_id):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.one_of(odd_values, st.lists(odd_values, max_size=4)))
    prompt = [draw(numbers), job_id, draw(odd_values), draw(odd_values), draw(odd_values)]
    if draw(st.booleans()):
        prompt.append({"api_key_comfy_org": "sk-PLANTED-SECRET-123"})
    return prompt


@st.composite
def odd_history_items(draw, job_id):
    shape = draw(st.integers(0, 5))
    if shape == 0:
        return draw(odd_values)
    if shape == 1:
        return draw(history_items(job_id))  # well-formed (by tests/strategies.py)
    item = {"prompt": draw(prompt_tuples(job_id))}
    for key in ("outputs", "status", "meta"):
        if draw(st.booleans()):
            item[key] = draw(odd_values)
    return item


def expect_history_valid(key, item) -> bool:
    if not (valid_id(key) and isinstance(item, dict)):
        return False
    prompt = item.get("prompt")
    if not (isinstance(prompt, list) and len(prompt) >= 5 and valid_number(prompt[0])):
        return False
    return storable({**item, "prompt": prompt[:5]})


def expect_queue_valid(item) -> bool:
    if not (isinstance(item, list) and len(item) >= 5 and valid_id(item[1]) and valid_number(item[0])):
        return False
    return storable(item[:5])


def storable_on(backend: str, job_id: str, item) -> bool:
    """Every engine stores every valid job: a NUL in the id or the workflow id (which
    PostgreSQL text cannot hold) is kept in the columns' own form
    (``normalize.column_text``), and in JSON everywhere else."""
    return True


def check_import(index: JobsIndex, dump_data, valid: dict[str, bool], kind: str, rejections: int | None = None) -> None:
    """Import; exactly the valid ids are stored, the rest rejected with a reason."""
    dump = detect(kind, dump_data)
    result = import_dump(index, dump, source="fuzz")
    with index.engine.connect() as conn:
        stored = {answer_text(row[0]) for row in conn.exec_driver_sql("SELECT id FROM jobs WHERE source = 'fuzz'")}
    valid_ids = {job_id for job_id, ok in valid.items() if ok}
    assert stored == valid_ids, stored ^ valid_ids
    invalid = len([1 for _, ok in valid.items() if not ok])
    if rejections is not None:
        assert len(result.rejected) == rejections, (result.rejected, valid)
    assert len(result.rejected) >= invalid, (result.rejected, valid)
    assert all(isinstance(reason, str) and reason for _, reason in result.rejected)
    assert index.counts_consistent()
    for job_id in stored:  # what was stored is served
        assert index.get_job(job_id)["id"] == job_id


@pytest.fixture
def item_index(db_url):
    with JobsIndex.open(db_url) as index:
        yield index


def _clear(index: JobsIndex) -> None:
    with index.engine.connect() as conn:
        ids = [answer_text(row[0]) for row in conn.exec_driver_sql("SELECT id FROM jobs")]
    index.delete_jobs(ids)


def test_history_items_of_every_wrong_shape(item_index, backend):
    @fuzz_settings(examples(backend, 120, 40))
    @given(data=st.data())
    def run(data):
        keys = data.draw(
            st.lists(
                st.one_of(
                    unicode_text,
                    st.sampled_from(["", "x" * 128, "x" * 129, "é" * 200, "a\x00b", "\x00", "a\ud800", "id-1"]),
                ),
                max_size=6,
                unique=True,
            )
        )
        dump = {key: data.draw(odd_history_items(key)) for key in keys}
        _clear(item_index)
        valid = {k: expect_history_valid(k, v) and storable_on(backend, k, v) for k, v in dump.items()}
        check_import(item_index, dump, valid, "history", rejections=list(valid.values()).count(False))
        CASES[f"history-items[{backend}]"] += len(dump)

    run()


def test_queue_items_of_every_wrong_shape(item_index, backend):
    queue_item = st.one_of(
        queue_items(max_size=1).map(lambda items: items[0] if items else [1, "q", {}, {}, []]),
        odd_values,
        st.builds(
            lambda n, i, rest, six: [n, i, *rest, *six],
            numbers,
            odd_ids,
            st.lists(odd_values, max_size=3),
            st.sampled_from([[], [{"api_key_comfy_org": "sk-PLANTED-SECRET-123"}]]),
        ),
    )

    @fuzz_settings(examples(backend, 120, 40))
    @given(
        running=st.one_of(st.lists(queue_item, max_size=4), odd_values),
        pending=st.one_of(st.lists(queue_item, max_size=4), odd_values),
        keys=st.sampled_from([("queue_running", "queue_pending"), ("queue_running",), ("queue_pending",)]),
    )
    def run(running, pending, keys):
        data = {
            key: value
            for key, value in zip(("queue_running", "queue_pending"), (running, pending), strict=True)
            if key in keys
        }
        valid: dict[str, bool] = {}
        for items in data.values():
            if isinstance(items, list):
                for item in items:  # the last copy of an id wins, as in the importer
                    if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str):
                        valid[item[1]] = valid.get(item[1], False) or (
                            expect_queue_valid(item) and storable_on(backend, item[1], item)
                        )
        _clear(item_index)
        check_import(item_index, data, valid, "queue")
        CASES[f"queue-items[{backend}]"] += sum(len(v) for v in data.values() if isinstance(v, list))

    run()


def test_nul_in_text_fields(item_index, backend):
    """NUL in an exception message, node type, filename, workflow id or job id: the
    import never fails and every engine stores every job (PostgreSQL text cannot
    hold NUL: an id or workflow id keeps it in the columns' own form,
    ``normalize.column_text``); it is answered losslessly."""

    def item(job_id, workflow="wf", message="boom"):
        return {
            "prompt": [
                1,
                job_id,
                {"1": {"class_type": "X\x00Y"}},
                {"create_time": 5, "extra_pnginfo": {"workflow": {"id": workflow}}},
                ["1"],
            ],
            "outputs": {"1": {"images": [{"filename": "a\x00.png", "type": "output"}]}},
            "status": {
                "status_str": "error",
                "messages": [
                    [
                        "execution_error",
                        {
                            "exception_message": message,
                            "exception_type": "E\x00",
                            "node_id": "1\x00",
                            "node_type": "X\x00Y",
                            "timestamp": 9,
                        },
                    ]
                ],
            },
        }

    dump = {
        "message": item("message", message="bad\x00byte"),
        "clean": item("clean"),
        "work": item("work", workflow="w\x00f"),
        "a\x00b": item("a\x00b"),
    }
    result = import_dump(item_index, detect("history", dump))
    assert result.inserted == len(dump) and result.rejected == []
    assert item_index.get_job("a\x00b")["id"] == "a\x00b"
    assert item_index.get_job("work")["workflow_id"] == "w\x00f"
    detail = item_index.get_job("message")
    assert detail["execution_error"]["exception_message"] == "bad\x00byte"
    assert detail["preview_output"]["filename"] == "a\x00.png"
    assert item_index.counts_consistent()
    CASES[f"nul[{backend}]"] += len(dump)


@pytest.mark.parametrize("data", [[], "text", 5, None, True, [{"a": 1}]])
def test_dumps_that_are_not_objects_are_rejected_whole(data):
    with pytest.raises(InvalidDump):
        detect("dump", data)
    CASES["whole-dumps"] += 1


def test_zz_report_case_counts(capsys):
    with capsys.disabled():
        print("\nreliability fuzz cases:", json.dumps(dict(sorted(CASES.items())), indent=1))
    logging.getLogger(__name__).info("fuzz cases %s", dict(CASES))
