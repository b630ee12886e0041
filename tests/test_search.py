"""Full-text search (``q=``, issue 14) on both engines, against a brute-force reference.

The index holds the captured ComfyUI jobs (tests/fixtures/comfyui), realistic
generated ones (``sample.realistic_history``: Zipf-like prompt words, hundreds of
model and LoRA names, 5-60 nodes) and a few planted jobs for the issue's questions.
Every query's answer, walked page by page with cursors (and with offsets), must be
the reference's: ``search.matches`` over each job's words derived from its raw item,
in the listing's order; the issue's questions are also checked against the raw
graphs directly (no tokenizer involved).
"""

from __future__ import annotations

import copy
import json
import sqlite3
import sys

import pytest

from jobs_index import JobsIndex, parse_list_query
from jobs_index.errors import BadRequest
from jobs_index.normalize import from_history, from_queue
from jobs_index.rawcodec import decode_item as decode_raw
from jobs_index.sample import realistic_history
from jobs_index.search import (
    COMMON_WORDS,
    FILLER,
    GRAM_JOINER,
    SearchSyntaxError,
    document,
    expandable,
    fts5_match,
    fts_words,
    grams,
    highlight,
    matches,
    parse,
    tsquery,
    words,
)

from .conftest import make_db_url
from .fixtures_util import capture_history, capture_queue
from .live_server import live_server

# -- the syntax (pure) -----------------------------------------------------------


def test_words_fold_case_and_accents_and_split_names():
    assert words("juggernautXL_v9.safetensors") == ["juggernautxl", "v9", "safetensors"]
    assert words("<lora:detail_tweaker:0.7>") == ["lora", "detail", "tweaker", "0", "7"]
    assert words("Café CRÈME Straße") == ["cafe", "creme", "strasse"]
    assert words("red-fox, in the SNOW!") == ["red", "fox", "in", "the", "snow"]


@pytest.mark.parametrize(
    "text, fts, ts",
    [
        ("red fox", '"red" AND "fox"', "('red') & ('fox')"),
        ('"red fox"', '"red fox"', "('red' <-> 'fox')"),
        ("jugg*", '"jugg" *', "('jugg':*)"),
        ('"red fo*"', '"red fo" *', "('red' <-> 'fo':*)"),
        ("Fox -SNOW", '("fox") NOT "snow"', "('fox') & !('snow')"),
        ("juggernautXL_v9", '"juggernautxl v9"', "('juggernautxl' <-> 'v9')"),
        ("AND OR NOT", '"and" AND "or" AND "not"', "('and') & ('or') & ('not')"),  # plain words
    ],
)
def test_parse_renders_the_same_query_for_both_engines(text, fts, ts):
    query = parse(text)
    assert fts5_match(query) == fts and tsquery(query) == ts


@pytest.mark.parametrize(
    "text, says",
    [
        ('"red fox', "not closed"),
        ("fo*x", "'*' may only end a word"),
        ('fox"', "put a space before"),
        ("-fox", "every term is excluded"),
        ("-", "no letters or digits"),
        ("***", "'*' may only end a word"),
        ("!!!", "no letters or digits"),
        ('""', "no letters or digits"),
        ("x" * 1001, "longer than"),
        (" ".join(["w"] * 33), "more than 32 terms"),
    ],
)
def test_malformed_queries_say_what_is_wrong(text, says):
    with pytest.raises(SearchSyntaxError) as err:
        parse(text)
    assert says in err.value.message and err.value.status == 400
    assert err.value.body()["code"] == "INVALID_SEARCH"


def test_an_expanded_prefix_is_the_or_of_its_words():
    """SQLite's timeline probes write a prefix of one word as the OR of the indexed
    words it stands for (``search_queries.SqliteStore.expansions``); a prefix ending
    a phrase keeps its form (FTS5 has no OR inside a phrase)."""
    query = parse('jugg* "red fo*" -bl* cat')
    jugg, red_fo, bl, _ = query.terms
    assert [expandable(t) for t in query.terms] == [True, False, True, False]
    expanded = {jugg: ("juggernaut", "juggernautxl"), bl: ("blurry",)}
    assert fts5_match(query, expanded) == '(("juggernaut" OR "juggernautxl") AND "red fo" * AND "cat") NOT ("blurry")'
    assert fts5_match(query, {}) == fts5_match(query) == '("jugg" * AND "red fo" * AND "cat") NOT "bl" *'


@pytest.mark.parametrize(
    "text, fts, ts",
    [
        ('"best quality"', '"‧best‧quality"', "'‧best‧quality'"),
        ("juggernautXL_v9", '"‧juggernautxl‧v9"', "'‧juggernautxl‧v9'"),
        ('fox -"low quality"', '("fox") NOT "‧low‧quality"', "('fox') & !'‧low‧quality'"),
        (
            '"masterpiece best quality"',
            '("‧masterpiece‧best" AND "‧best‧quality" AND "masterpiece best quality")',
            "('‧masterpiece‧best' & '‧best‧quality' & ('masterpiece' <-> 'best' <-> 'quality'))",
        ),
        ('"the fox the fox"', '("‧the‧fox" AND "‧fox‧the" AND "the fox the fox")', None),
        ('"best qual*"', '"best qual" *', "('best' <-> 'qual':*)"),  # a prefix is no gram's word
        ('"a best qu*"', '("‧a‧best" AND "a best qu" *)', "('‧a‧best' & ('a' <-> 'best' <-> 'qu':*))"),
        ('"red sendorgal"', '"red sendorgal"', "('red' <-> 'sendorgal')"),  # one word not common
        ("best", '"best"', "('best')"),
    ],
)
def test_phrases_of_common_words_ask_for_their_grams(text, fts, ts):
    query = parse(text)
    assert fts5_match(query, grams=True) == fts
    if ts is not None:
        assert tsquery(query, grams=True) == ts
    assert "‧" not in fts5_match(query) + tsquery(query)  # an index without grams: the plain form


def test_grams_follow_the_words_and_move_none():
    doc = document(
        "queue",
        [0, "id", {"1": {"class_type": "Note", "inputs": {"text": "Best quality, best quality of a fox"}}}, {}, []],
    )
    assert doc.words == ("note", "best", "quality", "best", "quality", "of", "a", "fox")
    assert grams(doc.words) == ["‧best‧quality", "‧quality‧best", "‧quality‧of", "‧of‧a", "‧a‧fox"]
    assert doc.fts_text() == " ".join(doc.words) + " " + " ".join(grams(doc.words))
    assert doc.fts_text(with_grams=False) == " ".join(doc.words)
    assert fts_words(doc.fts_text()) == fts_words(doc.fts_text(with_grams=False)) == doc.words and fts_words("") == ()
    assert doc.tsvector_text().endswith("'fox':8 '‧best‧quality' '‧quality‧best' '‧quality‧of' '‧of‧a' '‧a‧fox'")
    assert {"best", "quality", "of", "a", "fox"} <= COMMON_WORDS and "note" not in COMMON_WORDS
    assert not any(GRAM_JOINER in w for w in words("‧best‧quality " + "".join(map(chr, range(0x2000, 0x2100)))))
    # a word past MAX_OCCURRENCES is a filler: it forms no gram
    capped = document("queue", [0, "id", {"1": {"class_type": "Note", "inputs": {"text": "a " * 300 + "fox"}}}, {}, []])
    assert capped.words[-2] == FILLER and "‧a‧fox" not in grams(capped.words) and "‧a‧a" in grams(capped.words)
    assert not matches(parse('"a fox"'), capped.words)


def test_matching_is_positional():
    doc = tuple(words("a red fox in the snow, juggernautXL_v9.safetensors"))
    assert matches(parse("fox red"), doc) and matches(parse('"red fox"'), doc)
    assert not matches(parse('"fox red"'), doc)
    assert matches(parse("jugg*"), doc) and matches(parse('"juggernautxl v*"'), doc)
    assert not matches(parse("fox -snow"), doc) and matches(parse('fox -"snow red"'), doc)
    assert highlight("A red Fox", parse("fox")) == "A red [Fox]"
    assert highlight("nothing", parse("fox")) is None


def test_document_covers_inputs_titles_outputs_and_errors():
    history = capture_history()
    job_id, item = next(
        (k, v)
        for k, v in history.items()
        if v["status"]["status_str"] == "error" and any(m[0] == "execution_error" for m in v["status"]["messages"])
    )
    doc = document("history", item)
    error = next(m[1] for m in item["status"]["messages"] if m[0] == "execution_error")
    assert set(words(error["exception_type"])) <= set(doc.words)
    graph = item["prompt"][2]
    for node in graph.values():
        assert set(words(node["class_type"])) <= set(doc.words)
        for value in node["inputs"].values():
            if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                assert set(words(str(value))) <= set(doc.words)
    done = next(v for v in history.values() if v.get("outputs"))
    names = [f["filename"] for out in done["outputs"].values() for f in out.get("images", [])]
    assert names and all(set(words(n)) <= set(document("history", done).words) for n in names)


def test_document_caps_positions_and_occurrences_alike():
    graph = {"1": {"class_type": "Note", "inputs": {"text": "x " * 300 + "y " + "z" * 300}}}
    doc = document("queue", [0, "id", graph, {}, []])
    assert doc.words.count("x") == 256 and "y" in doc.words and "z" * 300 not in doc.words
    assert len(doc.words) == 1 + 300 + 1 + 1  # "note", x * 300 (44 as fillers), y, the long word's place
    assert matches(parse('"x y"'), doc.words) is False  # the x before y is a filler: both engines agree
    assert doc.tsvector_text().count("'x':") == 1


def test_document_words_are_each_texts_words_in_turn():
    """The document folds and splits its texts in one pass (joined by a newline):
    the words are those of each text in turn, never one running across two texts,
    whatever the texts' case, accents, combining marks and scripts."""
    texts = ["Café\u0301", "\u0301ÉCOLE Straße", "ﬁne İstanbul ΣΑΣ", "x", "", "٣ Ⅻ snake_case", "\u00e9t\u00e9"]
    graph = {str(i): {"class_type": "Note", "inputs": {"text": t}} for i, t in enumerate(texts)}
    doc = document("queue", [0, "id", graph, {}, []])
    assert doc.words == tuple(w for t in texts for w in ["note", *words(t)])
    many = {"1": {"class_type": "Note", "inputs": {"text": " ".join(f"w{i}" for i in range(20_000))}}}
    assert len(document("queue", [0, "id", many, {}, []]).words) == 16_383  # MAX_POSITIONS


# -- an index on each engine -----------------------------------------------------

FOX = "a red fox in the snow, golden hour, Café crème"


def planted() -> list[tuple[str, dict]]:
    """Jobs for the issue's questions, made from captured items."""
    history = capture_history()
    base_id, base = next((k, v) for k, v in history.items() if v.get("outputs"))
    jobs = []
    for n, (text, seed, extra) in enumerate(
        [
            (FOX, 8675309, {}),
            ("portrait, <lora:detail_tweaker:0.7>", 1, {}),
            ("a cat", 2, {"90": {"class_type": "IPAdapterAdvanced", "inputs": {"weight": 0.8, "model": ["4", 0]}}}),
            (
                "red snow fox",
                3,
                {
                    "91": {
                        "class_type": "LoraLoader",
                        "inputs": {"lora_name": "detail_tweaker.safetensors", "model": ["4", 0]},
                    }
                },
            ),
        ]
    ):
        item = copy.deepcopy(base)
        job_id = f"planted-{n}"
        item["prompt"][1] = job_id
        graph = item["prompt"][2]
        graph.update(
            {
                "80": {
                    "class_type": "CheckpointLoaderSimple",
                    "inputs": {"ckpt_name": "SDXL/juggernautXL_v9.safetensors" if n == 0 else "other.ckpt"},
                },
                "81": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["80", 1]}},
                "82": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "model": ["80", 0]}},
            }
        )
        graph.update(extra)
        item["prompt"][3]["create_time"] = 1_764_000_000_000 + n
        jobs.append((job_id, item))
    return jobs


def all_records() -> list:
    records = [from_history(k, v) for k, v in capture_history().items()]
    records += [from_history(k, v) for k, v in planted()]
    records += [from_history(k, v) for k, v in realistic_history(500, seed=5)]
    running, pending = capture_queue()
    records += [from_queue(running[0], "in_progress"), from_queue(pending[-1], "pending")]
    return list({r.id: r for r in records}.values())


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    made, generators = {}, []
    records = all_records()
    for backend in ("sqlite", "postgresql"):
        generator = make_db_url(backend, tmp_path_factory.mktemp(backend))
        try:
            url = next(generator)
        except pytest.skip.Exception:
            continue
        generators.append(generator)
        index = JobsIndex.open(url)
        index.ingest(records, batch_size=97)
        made[backend] = index
    yield made, records
    for index in made.values():
        index.close()
    for generator in generators:
        next(generator, None)


@pytest.fixture
def searched(indexes, backend):
    made, records = indexes
    if backend not in made:
        pytest.skip(f"{backend} not configured")
    return made[backend], records


def reference(
    records, text: str, statuses=None, workflow=None, source=None, sort_by="created_at", descending=True
) -> list[str]:
    query = parse(text)
    chosen = [
        r
        for r in records
        if matches(query, document(r.raw_kind, decode_raw(r.raw)).words)
        and (statuses is None or r.status in statuses)
        and (workflow is None or r.workflow_id == workflow)
        and (source is None or r.source == source)
    ]
    key = (lambda r: (r.create_time, r.id)) if sort_by == "created_at" else (lambda r: (r.execution_duration, r.id))
    return [r.id for r in sorted(chosen, key=key, reverse=descending)]


def walk(index, params: dict, limit: int = 7) -> tuple[list[str], int]:
    """Every id of a search listing, page by page with cursors; and the total."""
    ids, after, totals = [], None, set()
    while True:
        query = parse_list_query({**params, "limit": str(limit), **({"after": after} if after else {})})
        page = index.list_jobs(query)
        ids += [job["id"] for job in page.jobs]
        totals.add(page.total)
        if not page.has_more:
            break
        after = page.next_cursor
    assert len(totals) == 1
    return ids, totals.pop()


QUERIES = [
    "fox",
    "red fox",
    '"red fox"',
    '"fox red"',
    "snow -fox",
    "jugg*",
    "juggernautXL_v9.safetensors",
    "juggernautXL_v9",
    "detail_tweaker",
    "<lora:detail_tweaker:0.7>",
    "8675309",
    "IPAdapterAdvanced",
    "KSampler",
    "ksampler -ipadapteradvanced",
    "CAFE",
    "crème",
    "ZeroDivisionError",
    "division by zero",
    "ComfyUI*",
    "png",
    "ka*",
    "masterpiece best quality",
    '"best quality" -portrait',
    "s*",
    "nothingmatchesthis",
    "LoraLoader lora*",
    "euler normal",
    "0",
    "v1 5",
]


@pytest.mark.parametrize("text", QUERIES)
def test_cursor_walk_equals_the_reference(searched, text):
    index, records = searched
    expected = reference(records, text)
    ids, total = walk(index, {"q": text})
    assert ids == expected and total == len(expected)


@pytest.mark.parametrize(
    "params",
    [
        {"q": "fox", "status": "completed"},
        {"q": "red fox", "status": "failed,cancelled"},
        {"q": "ksampler", "status": "pending,in_progress"},
        {"q": "ka*", "sort_order": "asc"},
        {"q": "masterpiece", "sort_by": "execution_duration"},
        {"q": "a", "sort_by": "execution_duration", "sort_order": "asc", "status": "completed"},
    ],
)
def test_filters_and_orders_combine(searched, params):
    index, records = searched
    statuses = params["status"].split(",") if "status" in params else None
    expected = reference(
        records,
        params["q"],
        statuses=statuses,
        sort_by=params.get("sort_by", "created_at"),
        descending=params.get("sort_order", "desc") == "desc",
    )
    if params.get("sort_by") == "execution_duration":  # no cursors: offsets
        ids, offset = [], 0
        while True:
            page = index.list_jobs(parse_list_query({**params, "limit": "9", "offset": str(offset)}))
            ids += [job["id"] for job in page.jobs]
            offset += 9
            if not page.has_more:
                break
        assert page.total == len(expected)
    else:
        ids, total = walk(index, params)
        assert total == len(expected)
    assert ids == expected


def test_workflow_and_source_filters(searched):
    index, records = searched
    workflow = next(r.workflow_id for r in records if r.workflow_id and r.id.count("-") == 4)
    expected = reference(records, "a", workflow=workflow)
    assert expected
    assert walk(index, {"q": "a", "workflow_id": workflow}) == (expected, len(expected))
    assert walk(index, {"q": "a", "source": "nowhere"}) == ([], 0)


def test_both_plans_answer_the_same(searched):
    from jobs_index import search_queries
    from jobs_index.database import read_transaction

    index, records = searched
    for text in ("fox", "a", "ka*", '"best quality" -portrait', "ksampler"):
        for params in ({}, {"status": "completed,failed"}, {"sort_by": "execution_duration"}):
            query = parse_list_query({**params, "q": text})
            with read_transaction(index.engine) as conn:
                answers = [
                    [row[0] for row in search_queries.select_page(conn, query, plan=plan, limit=None)]
                    for plan in ("matches", "timeline")
                ]
            assert answers[0] == answers[1]
            statuses = params["status"].split(",") if "status" in params else None
            assert answers[0] == reference(
                records, text, statuses=statuses, sort_by=params.get("sort_by", "created_at")
            )


@pytest.mark.parametrize("batch, gap", [(64, 512), (2, 1), (3, 40)])
def test_batched_timeline_pages_are_the_matches_pages(searched, monkeypatch, batch, gap):
    """SQLite walks the timeline in batches tested by FTS5 queries over docid ranges:
    every page (limits, offsets, cursors, filters) is the matches plan's, whatever the
    batch size and however the docids are split into ranges."""
    from jobs_index import search_queries
    from jobs_index.database import read_transaction
    from jobs_index.queries import Position

    monkeypatch.setattr(search_queries, "TIMELINE_BATCH_MIN", batch)
    monkeypatch.setattr(search_queries, "TIMELINE_GAP", gap)
    index, records = searched
    for text in ("a", "fox", "ka*", "masterpiece best", '"best quality" -portrait', "nothingmatchesthis"):
        for params in ({}, {"status": "completed"}, {"status": "completed,failed"}, {"sort_order": "asc"}):
            query = parse_list_query({**params, "q": text})
            with read_transaction(index.engine) as conn:
                every = [r[0] for r in search_queries.select_page(conn, query, plan="matches", limit=None)]
                statuses = params["status"].split(",") if "status" in params else None
                descending = params.get("sort_order", "desc") == "desc"
                expected = reference(records, text, statuses=statuses)
                assert every == (expected if descending else expected[::-1])
                for limit, offset in ((1, 0), (5, 0), (50, 0), (7, 3), (50, 130), (3, len(every))):
                    page = search_queries.select_page(conn, query, plan="timeline", limit=limit, offset=offset)
                    assert [r[0] for r in page] == every[offset : offset + limit], (text, params, limit, offset)
                for cut in range(0, len(every), max(1, len(every) // 5)):  # after each of a few jobs
                    row = search_queries.select_page(conn, query, plan="matches", limit=1, offset=cut)[0]
                    after = Position(row[1], row[0])
                    page = search_queries.select_page(conn, query, plan="timeline", limit=9, after=after)
                    assert [r[0] for r in page] == every[cut + 1 : cut + 10], (text, params, cut)


@pytest.mark.parametrize("batch", [2, 64])
def test_merged_timelines_page_as_the_reference(index, monkeypatch, batch):
    """A workflow's or a source's jobs of several statuses (every one included) and
    the jobs by duration walk one seek per status, merged (revision 0015 dropped the
    status-less indexes; ``search_queries._merged``): every timeline page (limits,
    offsets, cursors, both orders, SQLite's batches) is the matches plan's and the
    reference's, and each arm's plan is a seek of its status's range."""
    from dataclasses import replace

    from jobs_index import search_queries
    from jobs_index.database import read_transaction
    from jobs_index.queries import ROW_CREATE_TIME, ROW_DURATION, Position

    monkeypatch.setattr(search_queries, "TIMELINE_BATCH_MIN", batch)
    records = all_records()
    for source, part in (("a", records[0::2]), ("b", records[1::2])):
        index.ingest(part, source=source)
    records = [replace(r, source="ab"[i % 2]) for i, r in enumerate(records)]
    workflow = next(r.workflow_id for r in records if r.workflow_id and r.status == "failed")
    merged = [
        {"source": "a"},
        {"source": "b", "status": "completed,failed", "sort_order": "asc"},
        {"workflow_id": workflow},
        {"workflow_id": workflow, "status": "failed,completed,pending", "sort_order": "asc"},
        {"sort_by": "execution_duration"},
        {"sort_by": "execution_duration", "sort_order": "asc", "status": "completed,cancelled"},
        {"sort_by": "execution_duration", "source": "b"},
    ]
    for params in merged:
        by_duration = params.get("sort_by") == "execution_duration"
        for text in ("a", "ksampler", "fox", "nothingmatchesthis"):
            query = parse_list_query({**params, "q": text})
            expected = reference(
                records,
                text,
                statuses=params["status"].split(",") if "status" in params else None,
                workflow=params.get("workflow_id"),
                source=params.get("source"),
                sort_by=params.get("sort_by", "created_at"),
                descending=params.get("sort_order", "desc") == "desc",
            )
            with read_transaction(index.engine) as conn:
                for plan in ("matches", "timeline"):
                    rows = search_queries.select_page(conn, query, plan=plan, limit=None)
                    assert [r[0] for r in rows] == expected, (params, text, plan)
                for limit, offset in ((1, 0), (5, 0), (7, 3), (50, 0), (4, 20), (3, max(0, len(expected) - 1))):
                    page = search_queries.select_page(conn, query, plan="timeline", limit=limit, offset=offset)
                    assert [r[0] for r in page] == expected[offset : offset + limit], (params, text, limit, offset)
                for cut in range(0, len(expected), max(1, len(expected) // 4)):
                    row = search_queries.select_page(conn, query, plan="matches", limit=1, offset=cut)[0]
                    after = Position(row[ROW_DURATION if by_duration else ROW_CREATE_TIME], row[0])
                    page = search_queries.select_page(conn, query, plan="timeline", limit=6, after=after)
                    assert [r[0] for r in page] == expected[cut + 1 : cut + 7], (params, text, cut)
        if index.engine.dialect.name == "sqlite":
            shape = search_queries._Shape(
                "sqlite",
                "timeline",
                params.get("sort_by", "created_at"),
                True,
                len(params["status"].split(",")) if "status" in params else 0,
                "workflow_id" in params,
                "source" in params,
                False,
                True,
                True,
            )
            assert search_queries._merged(shape), params
            arms = len(params["status"].split(",")) if "status" in params else 5
            for sql in [search_queries._page_sql(shape)] + ([] if by_duration else [search_queries._walk_sql(shape)]):
                values = {f"s{i}": "completed" for i in range(5)}
                values.update(m="fox", workflow=workflow, source="a", limit=5, offset=1, window=6)
                with index.engine.connect() as conn:
                    plan_lines = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, values)]
                seeks = [line for line in plan_lines if line.startswith(("SEARCH jobs", "SCAN jobs"))]
                index_name = search_queries._timeline_index(shape)
                assert seeks.count(next(x for x in seeks if index_name in x)) == arms, plan_lines
                assert all(line.startswith("SEARCH") for line in seeks), plan_lines
                assert plan_lines.count("MERGE (UNION ALL)") == arms - 1, plan_lines


PREFIX_QUERIES = [
    "jugg*",  # one word, common
    "ka*",  # many words: above a small cap
    "s*",  # one letter
    "lora*",
    "LoraLoader lora*",
    '"red fo*"',  # a prefix ending a phrase keeps its form
    "snow -fo*",  # an excluded prefix
    "ksampler -ka*",
    "zzqx*",  # no word starts with it
    "masterpiece -zzqx*",
    "jugg* detail* -qu*",
]


@pytest.mark.parametrize("cap, docs, shortest", [(64, 500, 2), (3, 0, 1), (10_000, 0, 1), (0, 0, 1)])
def test_expanded_prefixes_page_as_the_reference(searched, monkeypatch, cap, docs, shortest):
    """The timeline's probes with prefixes expanded into their words (below the cap,
    every prefix that has words; above it, the prefix form): every page, offset and
    cursor is the matches plan's and the reference's, on both engines."""
    from jobs_index import search_queries
    from jobs_index.database import read_transaction
    from jobs_index.queries import Position

    monkeypatch.setattr(search_queries, "PREFIX_EXPANSION_MAX", cap)
    monkeypatch.setattr(search_queries, "PREFIX_DOCS_PER_WORD", docs)
    monkeypatch.setattr(search_queries, "PREFIX_EXPANSION_MIN_LENGTH", shortest)
    monkeypatch.setattr(search_queries, "TIMELINE_BATCH_MIN", 5)
    index, records = searched
    dialect = index.engine.dialect.name
    for text in PREFIX_QUERIES:
        for params in ({}, {"status": "completed"}, {"sort_by": "execution_duration"}):
            query = parse_list_query({**params, "q": text})
            statuses = params["status"].split(",") if "status" in params else None
            expected = reference(records, text, statuses=statuses, sort_by=params.get("sort_by", "created_at"))
            with read_transaction(index.engine) as conn:
                expanded = search_queries.expansions(conn, query)
                if dialect == "sqlite" and cap >= 10_000:  # every prefix of one word that has words
                    for term in query.search.terms:
                        assert (term in expanded) == (
                            expandable(term) and any(w.startswith(term.words[0]) for r in records for w in words_of(r))
                        ), (text, term)
                for term, found in expanded.items():  # exactly the words starting with it
                    assert set(found) <= {w for r in records for w in words_of(r)} | {"·"}
                    assert all(w.startswith(term.words[0]) for w in found)
                for plan in ("matches", "timeline"):
                    rows = search_queries.select_page(conn, query, plan=plan, limit=None)
                    assert [r[0] for r in rows] == expected, (text, params, plan)
                if params.get("sort_by"):
                    continue
                for limit, offset in ((1, 0), (7, 3), (50, 20)):
                    page = search_queries.select_page(conn, query, plan="timeline", limit=limit, offset=offset)
                    assert [r[0] for r in page] == expected[offset : offset + limit], (text, params)
                for cut in range(0, len(expected), max(1, len(expected) // 4)):
                    row = search_queries.select_page(conn, query, plan="matches", limit=1, offset=cut)[0]
                    page = search_queries.select_page(
                        conn, query, plan="timeline", limit=9, after=Position(row[1], row[0])
                    )
                    assert [r[0] for r in page] == expected[cut + 1 : cut + 10], (text, params, cut)
        ids, total = walk(index, {"q": text})
        assert ids == reference(records, text) and total == len(ids)


def words_of(record) -> tuple[str, ...]:
    return document(record.raw_kind, decode_raw(record.raw)).words


def test_the_issues_questions_against_the_raw_graphs(searched):
    """No tokenizer in the reference: each answer checked on the raw items."""
    index, records = searched
    items = {r.id: decode_raw(r.raw) for r in records}

    def graph(item):
        return (item["prompt"] if "prompt" in item else item)[2] if isinstance(item, dict) else item[2]

    def inputs(item):
        return [v for node in graph(item).values() for v in node.get("inputs", {}).values()]

    def ids(text):
        return set(walk(index, {"q": text}, limit=50)[0])

    assert ids('"red fox in the snow"') == {"planted-0"}
    assert ids("juggernautXL_v9.safetensors") == {
        k
        for k, it in items.items()
        if any(isinstance(v, str) and "juggernautXL_v9.safetensors" in v for v in inputs(it))
    }
    assert "planted-0" in ids("juggernautXL_v9")
    tweaked = {k for k, it in items.items() if any(isinstance(v, str) and "detail_tweaker" in v for v in inputs(it))}
    assert {"planted-1", "planted-3"} <= tweaked and ids("detail_tweaker") == tweaked
    assert ids("8675309") == {k for k, it in items.items() if 8675309 in inputs(it)} == {"planted-0"}
    assert ids("IPAdapterAdvanced") == {
        k for k, it in items.items() if any(n.get("class_type") == "IPAdapterAdvanced" for n in graph(it).values())
    }
    assert ids("cafe") == ids("CAFÉ") == {"planted-0"}


def test_sql_users_see_node_types_models_and_loras(searched):
    index, _ = searched
    with index.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT node_types, models, loras FROM job_facets WHERE job_id = 'planted-0'").one()
        lora = conn.exec_driver_sql("SELECT loras FROM job_facets WHERE job_id = 'planted-3'").scalar_one()
    assert "KSampler" in json.loads(row[0])
    assert json.loads(row[1]) == ["SDXL/juggernautXL_v9.safetensors"] and json.loads(row[2]) == []
    assert json.loads(conn_free_loras(index, "planted-1")) == ["detail_tweaker"]  # from the <lora:...> tag
    assert json.loads(lora) == ["detail_tweaker.safetensors"]


def conn_free_loras(index, job_id):
    with index.engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT loras FROM job_facets WHERE job_id = '{job_id}'").scalar_one()


# -- HTTP and the write paths ---------------------------------------------------------


@pytest.mark.parametrize("q", ['"red fox', "fo*x", "-fox", "***", "x" * 1001])
def test_http_bad_query_is_a_json_400(searched, q):
    index, _ = searched
    from urllib.parse import quote

    with live_server(index) as client:
        reply = client.get(f"/api/jobs?q={quote(q)}&limit=5")
    assert reply.status == 400 and reply.body["code"] == "INVALID_SEARCH"
    assert reply.body["error"].startswith("Invalid search query: ")


def test_http_search_pages_and_comfyui_errors_first(searched):
    index, records = searched
    with live_server(index) as client:
        first = client.get("/api/jobs?q=red%20fox&limit=2")
        assert first.status == 200
        rest = client.get(f"/api/jobs?q=red%20fox&limit=100&after={first.body['pagination']['next_cursor']}")
        bad_status = client.get("/api/jobs?q=%22oops&status=nope")
        streamed = client.get("/api/jobs?q=red%20fox")
    expected = reference(records, "red fox")
    assert [j["id"] for j in first.body["jobs"] + rest.body["jobs"]] == expected
    assert [j["id"] for j in streamed.body["jobs"]] == expected
    assert first.body["pagination"]["total"] == len(expected)
    assert bad_status.status == 400 and bad_status.body["error"].startswith("Invalid status value")
    assert parse_list_query({"q": "  "}).search is None


def test_search_rows_follow_every_write_path(index, backend):
    history = capture_history()
    running, pending = capture_queue()
    job_id = pending[0][1]
    queued = copy.deepcopy(pending[0])
    queued[2]["81"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "queued zebra, best quality"}}
    index.ingest([from_queue(queued, "pending")])
    assert ids_of(index, "zebra") == [job_id] == ids_of(index, 'zebra "best quality"')  # a gram
    # it runs, then finishes with other words: the old words go
    finished = copy.deepcopy(next(iter(history.values())))
    finished["prompt"][1] = job_id
    finished["prompt"][2]["81"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "finished okapi of the"}}
    index.ingest([from_queue(queued, "in_progress")])
    assert ids_of(index, "zebra") == [job_id]
    index.ingest([from_history(job_id, finished)])
    assert ids_of(index, "zebra") == [] and ids_of(index, "okapi") == [job_id]
    assert ids_of(index, 'zebra "best quality"') == [] and ids_of(index, 'okapi "of the"') == [job_id]
    index.ingest([from_history(job_id, finished)])  # unchanged: nothing rewritten
    assert ids_of(index, "okapi") == [job_id]
    index.delete_jobs([job_id])
    assert ids_of(index, "okapi") == []
    # the same id again, new words: no leftovers of the old document
    index.ingest([from_history(job_id, finished)])
    assert ids_of(index, "okapi") == [job_id] and ids_of(index, "zebra") == []
    assert index.delete_finished(source=None) == 1 and ids_of(index, "okapi") == []
    # a queue snapshot that no longer has a pending job removes it and its words
    index.ingest([from_queue(queued, "pending")])
    assert index.reconcile_live([]) == 1 and ids_of(index, "zebra") == []
    check_fts_integrity(index, backend)


def test_a_job_deleted_by_hand_is_not_found(index, backend):
    records = [from_history(k, v) for k, v in planted()]
    index.ingest(records)
    if backend == "sqlite":  # the sqlite3 shell: no foreign keys, no jobs-index code
        shell = sqlite3.connect(index.engine.url.database)
        with shell:
            shell.execute("DELETE FROM jobs WHERE id = 'planted-0'")
        shell.close()
    else:
        with index.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM jobs WHERE id = 'planted-0'")
    assert ids_of(index, "fox") == ["planted-3"]
    assert index.list_jobs(parse_list_query({"q": "fox", "limit": "5"})).total == 1


def test_search_filters_follow_updates_made_by_other_sql(index, backend):
    """job_search keeps a copy of each job's listing columns; a trigger carries an
    UPDATE of jobs by hand over, and a re-import without a source keeps the stored one."""
    records = [from_history(k, v) for k, v in planted()]
    index.ingest(records, source="studio")
    assert ids_of(index, "fox", status="failed") == []
    with index.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE jobs SET status = 'failed', source = 'attic', workflow_id = 'w1' WHERE id = 'planted-0'"
        )
    assert ids_of(index, "fox", status="failed") == ["planted-0"]
    assert ids_of(index, "fox", source="attic", workflow_id="w1") == ["planted-0"]
    assert ids_of(index, "fox", source="studio") == ["planted-3"]
    changed = copy.deepcopy(dict(planted())["planted-3"])
    changed["outputs"] = {}
    assert index.ingest([from_history("planted-3", changed)]).updated == 1  # no source given: "studio" stays
    assert ids_of(index, "fox", source="studio") == ["planted-3"]
    for plan in ("matches", "timeline"):  # both plans see the same copies
        from jobs_index import search_queries
        from jobs_index.database import read_transaction

        with read_transaction(index.engine) as conn:
            rows = search_queries.select_page(
                conn, parse_list_query({"q": "fox", "source": "studio"}), plan=plan, limit=None
            )
        assert [r[0] for r in rows] == ["planted-3"]


def test_kept_totals_follow_every_write(index, backend, monkeypatch):
    """A total is kept under the data version of the snapshot it counted: a write by
    jobs-index, by other SQL on another connection, or an UPDATE of a status changes
    the version, and the next page counts again. Pages are asked on every pooled
    connection (several reads in a row) so that each one's kept total is tested."""
    from jobs_index import search_queries
    from jobs_index.database import read_transaction

    def totals(q: str, **filters) -> set[int]:
        return {index.list_jobs(parse_list_query({"q": q, "limit": "1", **filters})).total for _ in range(6)}

    def other_sql(sql: str) -> None:
        if backend == "sqlite":  # the sqlite3 shell: its own connection, no jobs-index code
            shell = sqlite3.connect(index.engine.url.database)
            with shell:
                shell.execute(sql)
            shell.close()
        else:
            with index.engine.begin() as conn:
                conn.exec_driver_sql(sql)

    index.ingest([from_history(k, v) for k, v in planted()])
    assert totals("fox") == {2} and totals("fox", status="failed") == {0}
    with read_transaction(index.engine) as conn:  # the count was kept: asked again, not recounted
        kept = search_queries.store(conn).totals(conn)
        assert kept is not None and len(kept._items) >= 1
    other_sql("DELETE FROM jobs WHERE id = 'planted-0'")
    assert totals("fox") == {1}
    index.ingest([from_history(k, v) for k, v in planted() if k == "planted-0"])
    assert totals("fox") == {2}
    other_sql("UPDATE jobs SET status = 'failed' WHERE id = 'planted-3'")
    assert totals("fox", status="failed") == {1} and totals("fox") == {2}
    index.delete_jobs(["planted-3"])
    assert totals("fox") == {1} and totals("fox", status="failed") == {0}
    # a walk by cursor keeps the total of its first page while nothing changes
    walked, total = walk(index, {"q": "KSampler"}, limit=1)
    assert total == len(walked) == len(set(walked)) == 3
    # the cache off: the same answers, nothing kept
    monkeypatch.setenv(search_queries.TOTALS_CACHE_ENV, "0")
    assert search_queries.totals_cache_size() == 0
    assert totals("fox") == {1}


def test_prefix_words_follow_committed_data(index, backend, monkeypatch):
    """A prefix's words are read in each request's snapshot (kept per connection
    under its data version): a word written, or deleted, by jobs-index or by other
    SQL between two requests is found, or no longer found, by the next one on every
    pooled connection, whichever plan pages it."""
    from jobs_index import search_queries
    from jobs_index.database import read_transaction

    monkeypatch.setattr(search_queries, "PREFIX_DOCS_PER_WORD", 0)
    history = dict(planted())

    def job(job_id: str, text: str, n: int) -> tuple[str, dict]:
        item = copy.deepcopy(history["planted-1"])
        item["prompt"][1] = job_id
        item["prompt"][2]["81"]["inputs"]["text"] = text
        item["prompt"][3]["create_time"] = 1_765_000_000_000 + n
        return job_id, item

    def found(q: str) -> set[tuple[str, ...]]:
        answers = set()
        for _ in range(6):  # several pooled connections, each keeping its own words
            answers.add(tuple(ids_of(index, q)))
            for plan in ("matches", "timeline"):
                with read_transaction(index.engine) as conn:
                    rows = search_queries.select_page(conn, parse_list_query({"q": q}), plan=plan, limit=None)
                answers.add(tuple(r[0] for r in rows))
        return answers

    index.ingest([from_history(*job("p-a", "okapiwalk one", 1))])
    assert found("okapi*") == {("p-a",)} and found("zebu*") == {()}
    index.ingest([from_history(*job("p-b", "okapirun zebucart", 2))])  # a new word of the prefix
    assert found("okapi*") == {("p-b", "p-a")} and found("zebu*") == {("p-b",)}
    with read_transaction(index.engine) as conn:
        expanded = search_queries.expansions(conn, parse_list_query({"q": "okapi*"}))
    if backend == "sqlite":
        assert sorted(next(iter(expanded.values()))) == ["okapirun", "okapiwalk"]
    else:
        assert expanded == {}  # PostgreSQL keeps ':*'
    index.delete_jobs(["p-a"])  # its word goes
    assert found("okapi*") == {("p-b",)} and found("okapiw*") == {()}
    if backend == "sqlite":  # by other SQL on another connection: a new word, and a job gone
        index.ingest([from_history(*job("p-c", "okapifly", 3))])
        shell = sqlite3.connect(index.engine.url.database)
        with shell:
            shell.execute("DELETE FROM jobs WHERE id = 'p-b'")
        shell.close()
        assert found("okapi*") == {("p-c",)} and found("zebu*") == {()}
        index.ingest([from_history(*job("p-d", "okapiswim", 4))])
        assert found("okapi*") == {("p-d", "p-c")} and found("-okapi* okapiswim") == {()}
        # a connection that may not create its temp vocabulary table: the prefix form
        fresh = JobsIndex.open(index.engine.url.render_as_string(hide_password=False))
        try:
            with read_transaction(fresh.engine) as conn:
                conn.exec_driver_sql("PRAGMA query_only=ON")
                query = parse_list_query({"q": "okapi*"})
                assert search_queries.expansions(conn, query) == {}
                rows = search_queries.select_page(conn, query, plan="timeline", limit=None)
                assert [r[0] for r in rows] == ["p-d", "p-c"]
                conn.exec_driver_sql("PRAGMA query_only=OFF")
        finally:
            fresh.close()


def ids_of(index, text: str, **filters) -> list[str]:
    return [job["id"] for job in index.list_jobs(parse_list_query({"q": text, **filters})).jobs]


def check_fts_integrity(index, backend):
    if backend == "sqlite":
        with index.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO job_search_fts (job_search_fts, rank) VALUES ('integrity-check', 0)")


def test_bad_query_is_a_bad_request_in_the_library():
    with pytest.raises(BadRequest):
        parse_list_query({"q": '"open'})


# -- the CLI ------------------------------------------------------------------------


def test_cli_search_lines_json_csv_and_errors(index, db_url):
    from .toolbox_util import run_cli

    records = [from_history(k, v) for k, v in planted()]
    index.ingest(records)
    table = run_cli("search", "red fox", "--status", "completed", "--max-width", "0", db=db_url)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split(" | ")[0].strip() == "created_at" and len(lines) == 2 + 2
    assert "planted-3" in lines[2] and "[red] snow [fox]" in lines[2]  # newest first, the match marked
    assert "planted-0" in lines[3] and "a [red] [fox] in the snow" in lines[3]
    as_json = json.loads(run_cli("search", "detail_tweaker", "--json", db=db_url).stdout)
    assert [(h["id"], h["match"]) for h in as_json] == [
        ("planted-3", "[detail]_[tweaker].safetensors"),
        ("planted-1", "portrait, <lora:[detail]_[tweaker]:0.7>"),
    ]
    assert as_json[0]["output"] and as_json[0]["create_time"] == records[3].create_time
    csv_out = run_cli("search", "8675309", "--csv", db=db_url).stdout.splitlines()
    assert csv_out[0] == "created_at,status,source,id,output,match" and "planted-0" in csv_out[1]
    assert run_cli("search", "fox", "--limit", "1", "--json", db=db_url).stdout.count('"id"') == 1
    assert json.loads(run_cli("search", "fox", "--since", "1d", "--json", db=db_url).stdout) == []  # 2025 jobs
    bad = run_cli("search", '"red fox', db=db_url)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: Invalid search query: a quoted phrase is not closed")


def test_a_phrase_across_two_inputs_is_found_as_before(index, backend):
    """A phrase whose words end one input and start the next (a job's words are one
    sequence) is found, with or without grams; one split by a node's class type is not."""

    def job(job_id: str, graph: dict) -> tuple[str, dict]:
        return job_id, {
            "prompt": [1, job_id, graph, {"create_time": 1_000}, []],
            "outputs": {},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }

    note = {"class_type": "Note"}
    records = [
        from_history(*job("across", {"1": {**note, "inputs": {"a": "a photo, best", "b": "Quality portrait"}}})),
        from_history(
            *job("split", {"1": {**note, "inputs": {"a": "best"}}, "2": {**note, "inputs": {"a": "quality"}}})
        ),
        from_history(*job("inside", {"1": {**note, "inputs": {"a": "best quality of the fox"}}})),
        from_history(*job("names", {"1": {**note, "inputs": {"a": "x_best", "b": "quality_of", "c": "the.png"}}})),
    ]
    index.ingest(records)
    from jobs_index import search_queries

    with index.engine.connect() as conn:
        assert search_queries.store(conn).grams(conn)  # the index carries grams: phrases ask for them
        assert GRAM_JOINER in search_queries.store(conn).match_value(conn, parse('"best quality"'))
    for text, expected in [
        ('"best quality"', ["names", "inside", "across"]),
        ('"photo best quality portrait"', ["across"]),
        ('"best quality of the"', ["names", "inside"]),
        ('"quality note"', []),
        ('"best note quality"', ["split"]),
        ('fox -"best quality"', []),
        ('note -"best quality"', ["split"]),
    ]:
        assert reference(records, text) == sorted(expected, reverse=True), text
        assert walk(index, {"q": text})[0] == reference(records, text), text


# -- random histories and random queries ------------------------------------------------

VOCABULARY = [
    "Fox",
    "fox",
    "FOX",
    "red",
    "Café",
    "CAFE",
    "snow",
    "Straße",
    "strasse",
    "naïve",
    "ǅemal",
    "juggernautXL_v9.safetensors",
    "<lora:detail_tweaker:0.7>",
    "8675309",
    "v9",
    "fo",
    "foxes",
    "中文",
    "x",
    "a-b_c",
    "KSampler",
    "1.5",
]


def random_item(rng, n: int) -> tuple[str, dict]:
    job_id = f"r{n:04d}"
    graph = {}
    for node in range(rng.randint(1, 4)):
        text = " ".join(rng.choice(VOCABULARY) + rng.choice(["", ",", "!", " ", "."]) for _ in range(rng.randint(0, 8)))
        graph[str(node)] = {
            "class_type": rng.choice(["KSampler", "CLIPTextEncode", "Note", "LoraLoader"]),
            "inputs": {"text": text, "seed": rng.choice([1, 7, 8675309, 42]), "link": ["0", 0]},
        }
    status = rng.choice(["success", "error"])
    item = {
        "prompt": [n, job_id, graph, {"create_time": 1_000 + rng.randrange(50)}, []],
        "outputs": {},
        "status": {"status_str": status, "completed": status == "success", "messages": []},
    }
    return job_id, item


def random_query(rng, longest: int = 2) -> str:
    terms = []
    for i in range(rng.randint(1, 3)):
        picked = " ".join(rng.choice(VOCABULARY) for _ in range(longest))
        words_ = [w for w in words(picked) if w][: rng.randint(1, longest)]
        body = " ".join(words_)
        if rng.random() < 0.3:
            body = body[: max(1, len(body) - 2)].rstrip() + "*"
            if not body[-2:-1].isalnum():
                body = words_[0] + "*"
        term = f'"{body}"' if " " in body or rng.random() < 0.2 else body
        terms.append(("-" if i and rng.random() < 0.3 else "") + term)
    return " ".join(terms)


# Common words (grams), one not common, a filler-maker, names that are phrases of them.
COMMON_VOCABULARY = [
    "best",
    "Quality",
    "best quality",
    "the",
    "a",
    "of",
    "red",
    "fox",
    "sd_xl_base_1.0",
    "juggernautXL_v9",
    "detail_tweaker",
    "v9",
    "1",
    "0",
    "sendorgal",
    "qualities",
]


@pytest.mark.parametrize("vocabulary", ["mixed", "common"])
def test_random_histories_and_queries_match_the_reference(index, monkeypatch, vocabulary):
    import random

    if vocabulary == "common":  # texts and phrases of common words: the queries ask for grams
        monkeypatch.setattr(sys.modules[__name__], "VOCABULARY", COMMON_VOCABULARY)
    rng = random.Random(14)
    records = [from_history(*random_item(rng, n)) for n in range(250)]
    index.ingest(records, batch_size=60)
    # every 7th job replaced by another item (its document forgotten, the new one added)
    replaced = {r.id: r for r in (from_history(*random_item(rng, n)) for n in range(0, 250, 7))}
    index.ingest(list(replaced.values()))
    records = [replaced.get(r.id, r) for r in records]
    check_fts_integrity(index, index.engine.dialect.name)
    asked = 0
    for _ in range(60):
        text = random_query(rng, 2 if vocabulary == "mixed" else 3)
        try:
            parse(text)
        except SearchSyntaxError:
            continue
        asked += 1
        expected = reference(records, text)
        assert walk(index, {"q": text}, limit=rng.choice([1, 3, 17])) == (expected, len(expected)), text
        status = rng.choice(["completed", "failed"])
        assert walk(index, {"q": text, "status": status}, limit=5)[0] == reference(records, text, statuses=[status])
    assert asked >= 40


def test_sqlite_plan_costs_follow_the_walk_each_listing_takes():
    """SQLite's timeline is cheap per job only when it walks ix_job_search_timeline
    (sorted by time, no workflow or source filter); sorted by duration it probes FTS5
    per job, so a 2 % word at 1M jobs sorts its matches there."""
    from jobs_index.search_queries import choose_plan

    def plan(total: int, **params) -> str:
        query = parse_list_query({"q": "podor", **params})
        return choose_plan(query, total, 51, 1_000_000, 1_000_000, 1_000_000, dialect="sqlite")

    assert plan(20_000) == "timeline"
    assert plan(20_000, sort_by="execution_duration") == "matches"
    assert plan(10_000) == "timeline" and plan(10_000, source="studio") == "matches"  # ~5k docid lookups


def test_sqlite_plan_costs_price_expanded_prefixes():
    """A prefix expanded into one word costs a word on SQLite's timeline, not a prefix
    (which FTS5 would merge again for each probe)."""
    from jobs_index.search_queries import choose_plan

    def plan(q: str, total: int, expanded=None) -> str:
        query = parse_list_query({"q": q})
        return choose_plan(query, total, 51, 1_000_000, 1_000_000, 1_000_000, dialect="sqlite", expanded=expanded)

    (jugg,) = parse("jugg*").terms
    assert plan("jugg*", 8_000) == "matches"
    assert plan("jugg*", 8_000, {jugg: ("juggernautxl",)}) == "timeline"
    assert plan("jugg*", 8_000, {jugg: tuple(f"jugg{i}" for i in range(50))}) == "matches"
