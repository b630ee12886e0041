"""Full-text search (``GET /api/jobs?q=``, ``jobs-index search``); ``job_nodes`` goes.

Creates the search structures (``jobs_index/search_queries.py`` describes them) and
fills them from every job's ``raw`` item, in batches of ``BATCH`` jobs with a
progress line on a terminal. The whole upgrade is one transaction (the migration
runs under the writers' lock): a killed upgrade leaves the index as it was, and the
next open runs it again. ``jobs`` itself is not rebuilt.

* SQLite: ``job_search`` (docid INTEGER PRIMARY KEY AUTOINCREMENT, job_id unique)
  and the contentless FTS5 table ``job_search_fts`` (tokenizer ``ascii``: the words
  arrive already folded and split by ``jobs_index.search``). The jobs delete
  trigger now removes ``job_outputs`` and ``job_search`` rows.
* PostgreSQL: ``job_search`` (job_id primary key, ``doc tsvector``) with a GIN index.
* Both: ``job_search`` copies its job's listing columns (create_time,
  execution_duration, status, workflow_id, source), so a search filters and sorts
  its matches without reading the wide ``jobs`` rows; a trigger carries other
  UPDATEs of them over (``trg_jobs_update_search``).

``job_nodes`` (7 rows and two B-trees per job: 29 % of a SQLite file) is dropped:
``job_search.node_types`` (a JSON array) answers its questions (docs/queries.md,
CHANGELOG.md). The downgrade rebuilds it from ``raw``.

The words of a document come from the live ``jobs_index.search.document``, not a
frozen copy: SQLite's contentless FTS5 table removes a document by being told its
words again, so the backfill must derive them exactly as the writer will. A change
to how words are derived must come with a migration that rebuilds the search rows.

Revision ID: 0008_search
Revises: 0005_filter_timeline_indexes
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

from alembic import op

revision = "0008_search"
down_revision = "0007_source_leases"
branch_labels = None
depends_on = None

BATCH = 2000

SQLITE_TABLES = [
    """CREATE TABLE job_search (
    docid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    create_time BIGINT NOT NULL,
    execution_duration BIGINT NOT NULL,
    status TEXT NOT NULL,
    workflow_id TEXT,
    source TEXT,
    node_types TEXT NOT NULL,
    models TEXT NOT NULL,
    loras TEXT NOT NULL
)""",
    "CREATE UNIQUE INDEX ix_job_search_job_id ON job_search (job_id)",
    "CREATE VIRTUAL TABLE job_search_fts USING fts5(doc, content='', tokenize='ascii', columnsize=0)",
]
PG_TABLES = [
    """CREATE TABLE job_search (
    job_id TEXT COLLATE "C" PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    create_time BIGINT NOT NULL,
    execution_duration BIGINT NOT NULL,
    status TEXT NOT NULL,
    workflow_id TEXT,
    source TEXT,
    doc TSVECTOR NOT NULL,
    node_types TEXT NOT NULL,
    models TEXT NOT NULL,
    loras TEXT NOT NULL
)""",
    "CREATE INDEX ix_job_search_doc ON job_search USING gin (doc)",
]

# job_search copies the listing columns of its job (so a search filters and sorts
# without reading the wide jobs rows); these triggers carry any other UPDATE of them
# over. jobs-index's own writer rewrites the search rows of every row it writes (on
# SQLite the trigger stands aside while jobs_index_writer has its row).
FOLLOWED = ("create_time", "execution_duration", "status", "workflow_id", "source")
_SET = ", ".join(f"{c} = NEW.{c}" for c in FOLLOWED)
SQLITE_FOLLOW = f"""CREATE TRIGGER trg_jobs_update_search AFTER UPDATE OF {", ".join(FOLLOWED)} ON jobs
WHEN NOT EXISTS (SELECT 1 FROM jobs_index_writer)
BEGIN
    UPDATE job_search SET {_SET} WHERE job_id = NEW.id;
END"""
PG_FOLLOW = [
    f"""CREATE FUNCTION jobs_index_search_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE job_search SET {_SET} WHERE job_id = NEW.id;
    RETURN NULL;
END $$""",
    f"""CREATE TRIGGER trg_jobs_update_search AFTER UPDATE OF {", ".join(FOLLOWED)} ON jobs FOR EACH ROW
WHEN ({" OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in FOLLOWED)})
EXECUTE FUNCTION jobs_index_search_follow()""",
]


def _sqlite_trigger(side_tables: tuple[str, ...]) -> list[str]:
    body = "".join(f"\n    DELETE FROM {t} WHERE job_id = OLD.id;" for t in side_tables)
    return [
        "DROP TRIGGER IF EXISTS trg_jobs_delete_side_rows",
        f"CREATE TRIGGER trg_jobs_delete_side_rows AFTER DELETE ON jobs BEGIN{body}\nEND",
    ]


def _json_list(values) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


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


def _batches(bind, what: str, columns: str = ""):
    """(id, raw_kind, item, *columns) of every job, in batches of BATCH, by id."""
    total = bind.exec_driver_sql("SELECT count(*) FROM jobs").scalar()
    progress = _Progress(what, total)
    mark = "%s" if bind.dialect.name == "postgresql" else "?"
    last = None
    while True:
        select = f"SELECT id, raw_kind, raw{columns} FROM jobs"
        if last is None:
            rows = bind.exec_driver_sql(f"{select} ORDER BY id LIMIT {BATCH}").all()
        else:
            rows = bind.exec_driver_sql(f"{select} WHERE id > {mark} ORDER BY id LIMIT {BATCH}", (last,)).all()
        if not rows:
            progress.close()
            return
        yield [(row[0], row[1], json.loads(zlib.decompress(row[2])), *row[3:]) for row in rows]
        progress.add(len(rows))
        last = rows[-1][0]


def _backfill(bind) -> None:
    from jobs_index.search import document

    pg = bind.dialect.name == "postgresql"
    docid = 0
    names = "job_id, create_time, execution_duration, status, workflow_id, source, node_types, models, loras"
    for batch in _batches(bind, "building the search index", "".join(f", {c}" for c in FOLLOWED)):
        rows, fts = [], []
        for job_id, raw_kind, item, *listed in batch:
            doc = document(raw_kind, item)
            values = (job_id, *listed, _json_list(doc.node_types), _json_list(doc.models), _json_list(doc.loras))
            if pg:
                rows.append((*values, doc.tsvector_text(with_grams=False)))  # grams: 0012
            else:
                docid += 1
                rows.append((docid, *values))
                if doc.words:
                    fts.append((docid, doc.fts_text(with_grams=False)))
        if pg:
            bind.exec_driver_sql(
                f"INSERT INTO job_search ({names}, doc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::tsvector)", rows
            )
        else:
            bind.exec_driver_sql(f"INSERT INTO job_search (docid, {names}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if fts:
                bind.exec_driver_sql("INSERT INTO job_search_fts (rowid, doc) VALUES (?, ?)", fts)


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    for sql in SQLITE_TABLES if sqlite else PG_TABLES:
        op.execute(sql)
    _backfill(bind)
    if sqlite:
        for sql in [*_sqlite_trigger(("job_outputs", "job_search")), SQLITE_FOLLOW]:
            op.execute(sql)
    else:
        for sql in PG_FOLLOW:
            op.execute(sql)
    op.drop_index("ix_job_nodes_class_type_job_id", table_name="job_nodes")
    op.drop_table("job_nodes")


# -- downgrade: job_nodes again, from raw (as revision 0002 derived it) ------------


def _node_rows(raw_kind: str, item: Any) -> list[tuple[str, str]]:
    prompt = item.get("prompt") if raw_kind == "history" else item
    graph = prompt[2] if isinstance(prompt, list) and len(prompt) > 2 else None
    rows = []
    for node_id, node in (graph if isinstance(graph, dict) else {}).items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if isinstance(class_type, str) and "\x00" not in class_type and "\x00" not in str(node_id):
            rows.append((str(node_id), class_type))
    return rows


def downgrade() -> None:
    import sqlalchemy as sa

    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    id_type = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table(
        "job_nodes",
        sa.Column("job_id", id_type, nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("class_type", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_nodes_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "node_id", name=op.f("pk_job_nodes")),
        sqlite_with_rowid=False,
    )
    mark = "?" if sqlite else "%s"
    for batch in _batches(bind, "rebuilding job_nodes"):
        rows = [
            (job_id, node_id, class_type)
            for job_id, raw_kind, item, *_ in batch
            for node_id, class_type in _node_rows(raw_kind, item)
        ]
        if rows:
            bind.exec_driver_sql(
                f"INSERT INTO job_nodes (job_id, node_id, class_type) VALUES ({mark}, {mark}, {mark})", rows
            )
    op.create_index("ix_job_nodes_class_type_job_id", "job_nodes", ["class_type", "job_id"])
    if sqlite:
        for sql in _sqlite_trigger(("job_outputs", "job_nodes")):
            op.execute(sql)
        op.execute("DROP TRIGGER trg_jobs_update_search")
        op.execute("DROP TABLE job_search_fts")
    else:
        op.execute("DROP TRIGGER trg_jobs_update_search ON jobs")
        op.execute("DROP FUNCTION jobs_index_search_follow()")
    op.execute("DROP TABLE job_search")
