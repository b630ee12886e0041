"""SQLite: ``job_search`` keeps only what a search reads; the node types, models
and LoRAs of a job are stored once per distinct combination, in ``job_search_facets``;
the portable view ``job_facets``.

``job_search`` (0008) held, per job, the listing columns a search filters and sorts
on *and* three JSON lists (``node_types``, ``models``, ``loras``) that no search reads:
they are there for SQL users. The lists made the row wide (257 B per synthetic job,
~660 B per realistic one), so 0009 added ``ix_job_search_narrow``, a second copy of the
narrow columns (108 B per job), for counting and sorting matches.

This revision splits the row instead of copying half of it:

* ``job_search(docid, job_id, create_time, execution_duration, status, workflow_id,
  source, facets_id)``: the narrow row, keyed by ``docid`` as before. A match is read
  from it by rowid, as densely as from the narrow index, which goes.
* ``job_search_facets(id, hash, node_types, models, loras)``: each distinct
  combination of the three lists once (the jobs of one install repeat a few
  workflows), found by ``hash`` (``search_queries.facets_hash``, 64 bits of
  BLAKE2b; the lists are compared too). A combination no job uses any more is
  harmless and stays.

Bytes per job at 100k synthetic jobs: job_search 257 + narrow index 108 → 107 B
(benchmarks/results/bytes-100000.md). Docids, their ``sqlite_sequence`` high-water mark
(docids are never reused: the words of an orphan stay indexed under theirs) and
``job_search_orphans`` are kept as they are, so ``job_search_fts`` is untouched.

``job_facets(job_id, node_types, models, loras)``, a view on both engines, is how SQL
reads a job's lists the same way on both (PostgreSQL keeps them in ``job_search``).

The copy is one transaction (the migration runs under the writers' lock): a killed
upgrade leaves the index as it was. The downgrade makes the wide table and the
narrow index again.

Revision ID: 0014_search_facets
Revises: 0013_time_buckets
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0014_search_facets"
down_revision = "0013_time_buckets"
branch_labels = None
depends_on = None

BATCH = 2000
LISTED = "create_time, execution_duration, status, workflow_id, source"
FACETS = "node_types, models, loras"
_LISTED_TYPES = """create_time BIGINT NOT NULL,
    execution_duration BIGINT NOT NULL,
    status TEXT NOT NULL,
    workflow_id TEXT,
    source TEXT"""
_FACET_TYPES = """node_types TEXT NOT NULL,
    models TEXT NOT NULL,
    loras TEXT NOT NULL"""

NARROW_TABLE = f"""CREATE TABLE job_search_new (
    docid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    {_LISTED_TYPES},
    facets_id INTEGER NOT NULL
)"""
WIDE_TABLE = f"""CREATE TABLE job_search_new (
    docid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    {_LISTED_TYPES},
    {_FACET_TYPES}
)"""
FACETS_TABLE = f"""CREATE TABLE job_search_facets (
    id INTEGER PRIMARY KEY,
    hash INTEGER NOT NULL,
    {_FACET_TYPES}
)"""
FACETS_HASH_INDEX = "CREATE INDEX ix_job_search_facets_hash ON job_search_facets (hash)"
# For this revision's own join of the old rows to their combinations (dropped after).
FACETS_LISTS_INDEX = f"CREATE UNIQUE INDEX ix_job_search_facets_lists ON job_search_facets ({FACETS})"
JOB_ID_INDEX = "CREATE UNIQUE INDEX ix_job_search_job_id ON job_search (job_id)"
TIMELINE_INDEX = "CREATE INDEX ix_job_search_timeline ON job_search (create_time, job_id, status)"
NARROW_INDEX = (
    "CREATE INDEX ix_job_search_narrow ON job_search "
    "(docid, status, create_time, execution_duration, source, workflow_id, job_id)"
)
ORPHAN_TRIGGER = """CREATE TRIGGER trg_job_search_orphan AFTER DELETE ON job_search
BEGIN
    INSERT OR IGNORE INTO job_search_orphans (docid) VALUES (OLD.docid);
END"""
FACETS_OR_EMPTY = ", ".join(f"coalesce(f.{c}, '[]')" for c in FACETS.split(", "))  # a row without facets stays

SQLITE_VIEW = (
    f"CREATE VIEW job_facets AS SELECT s.job_id, {', '.join(f'f.{c}' for c in FACETS.split(', '))} "
    "FROM job_search AS s JOIN job_search_facets AS f ON f.id = s.facets_id"
)
PG_VIEW = f"CREATE VIEW job_facets AS SELECT job_id, {FACETS} FROM job_search"


def _swap(new_table: str, copy: str, indexes: tuple[str, ...]) -> None:
    """Replace job_search by ``new_table`` filled by ``copy``, docids and their
    high-water mark kept, with ``indexes`` and the triggers made again. The triggers
    on ``jobs`` that name job_search (0008_search) are dropped while the table is
    swapped (a rename checks every trigger's tables) and made again from their SQL."""
    bind = op.get_bind()
    seq = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'job_search'").scalar()
    on_jobs = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs' "
        "AND sql LIKE '%job_search%' ORDER BY name"
    ).all()
    for name, _ in on_jobs:
        op.execute(f"DROP TRIGGER {name}")
    op.execute("DROP TRIGGER IF EXISTS trg_job_search_orphan")
    op.execute(new_table)
    op.execute(copy)
    op.execute("DROP TABLE job_search")
    op.execute("ALTER TABLE job_search_new RENAME TO job_search")
    if seq is not None:  # DROP TABLE took job_search's row; the new one's is the highest docid copied
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'job_search'")
        bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('job_search', ?)", (seq,))
    for sql in (*indexes, ORPHAN_TRIGGER, *(sql for _, sql in on_jobs)):
        op.execute(sql)


def upgrade() -> None:
    from jobs_index.search_queries import facets_hash

    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.execute(PG_VIEW)
        return
    op.execute(FACETS_TABLE)
    driver = bind.connection.driver_connection  # the sqlite3 connection: a cursor read in batches
    combinations = driver.execute(f"SELECT DISTINCT {FACETS} FROM job_search")
    while batch := combinations.fetchmany(BATCH):
        driver.executemany(
            f"INSERT INTO job_search_facets (hash, {FACETS}) VALUES (?, ?, ?, ?)",
            [(facets_hash(tuple(lists)), *lists) for lists in batch],
        )
    op.execute(FACETS_LISTS_INDEX)
    _swap(
        NARROW_TABLE,
        f"INSERT INTO job_search_new (docid, job_id, {LISTED}, facets_id) "
        f"SELECT s.docid, s.job_id, {', '.join(f's.{c}' for c in LISTED.split(', '))}, f.id "
        "FROM job_search AS s JOIN job_search_facets AS f "
        "ON f.node_types = s.node_types AND f.models = s.models AND f.loras = s.loras",
        (JOB_ID_INDEX, TIMELINE_INDEX),
    )
    op.execute("DROP INDEX ix_job_search_facets_lists")
    op.execute(FACETS_HASH_INDEX)
    op.execute(SQLITE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW job_facets")
    if op.get_bind().dialect.name != "sqlite":
        return
    _swap(
        WIDE_TABLE,
        f"INSERT INTO job_search_new (docid, job_id, {LISTED}, {FACETS}) "
        f"SELECT s.docid, s.job_id, {', '.join(f's.{c}' for c in LISTED.split(', '))}, "
        f"{FACETS_OR_EMPTY} "
        "FROM job_search AS s LEFT JOIN job_search_facets AS f ON f.id = s.facets_id",
        (JOB_ID_INDEX, NARROW_INDEX, TIMELINE_INDEX),
    )
    op.execute("DROP TABLE job_search_facets")
