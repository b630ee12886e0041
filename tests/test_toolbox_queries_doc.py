"""Every SQL example in docs/queries.md runs, read-only, on each backend and answers
something on a realistic recent sample. Blocks starting with ``-- SQLite`` or
``-- PostgreSQL`` run on that engine only; the others on both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs_index.adhoc import readonly_query
from jobs_index.normalize import from_history
from jobs_index.sample import realistic_history
from jobs_index.units import now_ms

from .toolbox_util import build_recent, run_cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "queries.md"
ENGINES = {"-- sqlite": "sqlite", "-- postgresql": "postgresql"}


def examples() -> list[tuple[str, str | None, str]]:
    """(section title, engine or None for both, sql) for every ```sql block."""
    found = []
    section = None
    in_block, lines, engine = False, [], None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not in_block and line.startswith("## "):
            section = line[3:].strip()
        elif not in_block and line.strip() == "```sql":
            in_block, lines = True, []
        elif in_block and line.strip() == "```":
            in_block = False
            engine = ENGINES.get(lines[0].strip().lower()) if lines else None
            found.append((section, engine, "\n".join(lines)))
        elif in_block:
            lines.append(line)
    return found


EXAMPLES = examples()


def test_the_document_has_ten_questions_each_answered_on_both_engines():
    sections: dict[str, set] = {}
    for section, engine, _ in EXAMPLES:
        sections.setdefault(section, set()).add(engine)
    numbered = [s for s in sections if re.match(r"\d+\. ", s)]
    assert len(numbered) >= 10
    for section, engines in sections.items():
        assert None in engines or {"sqlite", "postgresql"} <= engines, section


@pytest.fixture(scope="module")
def recent_indexes(tmp_path_factory):
    """One sample per backend for the whole module (the examples only read)."""
    from jobs_index import JobsIndex

    from .conftest import make_db_url

    made = {}
    generators = []
    for backend in ("sqlite", "postgresql"):
        generator = make_db_url(backend, tmp_path_factory.mktemp(backend))
        try:
            url = next(generator)
        except pytest.skip.Exception:
            continue
        generators.append(generator)
        with JobsIndex.open(url) as index:
            build_recent(index, 400, hours_ago=20)
            # prompt graphs with LoRAs and many node types (the job_search examples)
            start = now_ms() - 19 * 3_600_000
            index.ingest([from_history(k, v) for k, v in realistic_history(150, seed=3, start_ms=start)])
        made[backend] = url
    yield made
    for generator in generators:
        next(generator, None)


@pytest.mark.parametrize(
    "section, engine, sql", EXAMPLES, ids=[f"{s.split('.')[0]}-{e or 'both'}" for s, e, _ in EXAMPLES]
)
def test_example_runs_and_answers(recent_indexes, backend, section, engine, sql):
    if backend not in recent_indexes:
        pytest.skip(f"{backend} not configured")
    if engine not in (None, backend):
        return  # the other engine's variant
    with readonly_query(recent_indexes[backend], sql) as result:
        rows = list(result.rows)
    assert result.columns and rows, section


def test_which_job_made_a_file_through_the_cli(recent_indexes, backend):
    if backend not in recent_indexes:
        pytest.skip(f"{backend} not configured")
    section, _, sql = EXAMPLES[0]
    assert section.startswith("1. ")
    result = run_cli("sql", "--json", sql, db=recent_indexes[backend])
    assert result.exit_code == 0, result.stderr
    assert '"status": "completed"' in result.stdout
