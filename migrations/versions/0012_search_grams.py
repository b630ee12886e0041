"""Common grams: every search document also indexes its adjacent pairs of common
words as one token each, so a phrase of common words is found from one short list
of jobs (``jobs_index/search.py``, "Common grams").

``"best quality"`` took ~60 ms at 1M realistic jobs: 133,273 jobs hold both words,
3,315 the phrase, and FTS5 (or PostgreSQL's recheck) reads the positions of all of
them. With grams the phrase is the gram ``‧best‧quality`` (``search.GRAM_JOINER``), a
list of 3,315 jobs (benchmarks/results/search-notes.md, search-grams-*.md).

This revision rewrites every job's search document with the grams of the live
``jobs_index.search`` (its ``COMMON_WORDS``, version ``GRAMS_VERSION``), in batches of
``BATCH`` jobs with a progress line on a terminal, and records that version in
``job_search_grams`` (one row: version, joiner, the words), which search reads before
asking for grams: until this revision has run, phrases keep their plain form. The
whole upgrade is one transaction (the migration runs under the writers' lock): a
killed upgrade leaves the index as it was, and the next open runs it again.

* SQLite: ``job_search_fts`` is dropped and made again (same definition), then filled
  from ``raw`` under each row's ``docid``: nothing of the old documents needs to be
  known (a contentless FTS5 table forgets a document only when told its words), and
  the words of jobs deleted by other SQL go with the old table, so
  ``job_search_orphans`` is emptied.
* PostgreSQL: ``job_search.doc`` is rewritten (grams are lexemes without positions)
  with the GIN index dropped meanwhile and built again after.

Like ``0008_search``, the words come from the live ``jobs_index.search.document`` (the
writer's own derivation, which a contentless FTS5 table needs), and the grams from the
live list: a later list is a new revision that rewrites the documents again (from
an index recording another version; one upgraded straight past both gets the newest
list here and that revision finds it already there). ``raw`` is decoded by a copy
of ``rawcodec``'s decoding (zlib, or zstd with a ``raw_dictionaries`` dictionary).
The downgrade writes the documents without grams and drops ``job_search_grams``.

Revision ID: 0012_search_grams
Revises: 0011_search_timeline
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from alembic import op

revision = "0012_search_grams"
down_revision = "0011_search_timeline"
branch_labels = None
depends_on = None

BATCH = 2000

SQLITE_FTS = "CREATE VIRTUAL TABLE job_search_fts USING fts5(doc, content='', tokenize='ascii', columnsize=0)"
PG_GIN = "CREATE INDEX ix_job_search_doc ON job_search USING gin (doc)"
GRAMS_TABLE = "CREATE TABLE job_search_grams (version INTEGER PRIMARY KEY, joiner TEXT NOT NULL, words TEXT NOT NULL)"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Progress:
    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.done += n
        if self.tty and self.total:
            sys.stderr.write(f"\r{self.what}: {self.done:,}/{self.total:,} jobs ({100 * self.done // self.total}%)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.total:
            sys.stderr.write("\n")


def _decoder(bind) -> Callable[[Any, int | None], Any]:
    """The item of a ``raw`` (zlib, or a zstd frame with its row's dictionary)."""
    mark = "%s" if bind.dialect.name == "postgresql" else "?"
    decompressors: dict[int | None, Any] = {}

    def item(raw: Any, dict_id: int | None) -> Any:
        blob = bytes(raw)
        if blob[:4] != ZSTD_MAGIC:
            return json.loads(zlib.decompress(blob))
        found = decompressors.get(dict_id)
        if found is None:
            import zstandard

            if dict_id is None:
                found = zstandard.ZstdDecompressor()
            else:
                data = bind.exec_driver_sql(f"SELECT data FROM raw_dictionaries WHERE id = {mark}", (dict_id,))
                found = zstandard.ZstdDecompressor(
                    dict_data=zstandard.ZstdCompressionDict(
                        bytes(data.scalar_one()), dict_type=zstandard.DICT_TYPE_FULLDICT
                    )
                )
            decompressors[dict_id] = found
        return json.loads(found.decompress(blob))

    return item


def _documents(bind, what: str) -> Iterator[list[tuple[Any, Any]]]:
    """(key, search.Document) of every job_search row, in batches of BATCH: the key is
    the docid (SQLite) or the job id (PostgreSQL)."""
    from jobs_index.search import document

    pg = bind.dialect.name == "postgresql"
    key = "s.job_id" if pg else "s.docid"
    mark = "%s" if pg else "?"
    total = bind.exec_driver_sql("SELECT count(*) FROM job_search").scalar()
    progress = _Progress(what, total)
    item = _decoder(bind)
    select = f"SELECT {key}, j.raw_kind, j.raw, j.raw_dict_id FROM job_search AS s JOIN jobs AS j ON j.id = s.job_id"
    last = None
    while True:
        if last is None:
            rows = bind.exec_driver_sql(f"{select} ORDER BY {key} LIMIT {BATCH}").all()
        else:
            rows = bind.exec_driver_sql(f"{select} WHERE {key} > {mark} ORDER BY {key} LIMIT {BATCH}", (last,)).all()
        if not rows:
            progress.close()
            return
        yield [(row[0], document(row[1], item(row[2], row[3]))) for row in rows]
        progress.add(len(rows))
        last = rows[-1][0]


def _rewrite(with_grams: bool) -> None:
    bind = op.get_bind()
    what = "indexing common grams" if with_grams else "removing common grams"
    if bind.dialect.name == "sqlite":
        op.execute("DROP TABLE job_search_fts")
        op.execute(SQLITE_FTS)
        op.execute("DELETE FROM job_search_orphans")  # their words went with the old table
        for batch in _documents(bind, what):
            docs = [(docid, doc.fts_text(with_grams)) for docid, doc in batch if doc.words]
            if docs:
                bind.exec_driver_sql("INSERT INTO job_search_fts (rowid, doc) VALUES (?, ?)", docs)
        return
    op.execute("DROP INDEX ix_job_search_doc")
    for batch in _documents(bind, what):
        bind.exec_driver_sql(
            "UPDATE job_search AS s SET doc = u.doc::tsvector FROM unnest(%s::text[], %s::text[]) AS u(job_id, doc) "
            "WHERE s.job_id = u.job_id",
            ([job_id for job_id, _ in batch], [doc.tsvector_text(with_grams) for _, doc in batch]),
        )
    op.execute(PG_GIN)


def upgrade() -> None:
    from jobs_index.search import COMMON_WORDS, GRAM_JOINER, GRAMS_VERSION

    _rewrite(with_grams=True)
    op.execute(GRAMS_TABLE)
    mark = "%s" if op.get_bind().dialect.name == "postgresql" else "?"
    op.get_bind().exec_driver_sql(
        f"INSERT INTO job_search_grams (version, joiner, words) VALUES ({mark}, {mark}, {mark})",
        (GRAMS_VERSION, GRAM_JOINER, " ".join(sorted(COMMON_WORDS))),
    )


def downgrade() -> None:
    op.execute("DROP TABLE job_search_grams")
    _rewrite(with_grams=False)
