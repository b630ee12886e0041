"""The database schema: SQLAlchemy 2 models. ``docs/schema.md`` documents it for SQL users.

Times are epoch milliseconds (as ComfyUI records them). Migrations under
``migrations/`` create exactly this; ``alembic check`` keeps the two in step.
Counters in ``job_counts`` are maintained by database triggers (created by the
migrations), so every write path, including ad-hoc SQL, keeps them exact; on
SQLite jobs-index's own writer switches them off inside its transaction and
applies the batch's deltas itself (``JobsIndexWriter``, migration ``0004``).

The search tables (``job_search``, SQLite's FTS5 ``job_search_fts``; migration
``0008_search``) differ between the engines and are not models here: their SQL is
in ``search_queries``, and ``alembic check`` leaves them aside (``DERIVED_TABLES``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job ids are ordered by code point (ComfyUI's Python string order): SQLite's
# default BINARY collation does that; PostgreSQL needs the "C" collation.
IdText = Text().with_variant(Text(collation="C"), "postgresql")

# ComfyUI's queue number: an int, or a float when a client chose it (``POST /prompt``
# stores ``float(number)``). PostgreSQL: numeric holds every value exactly (4.0 keeps
# its scale, NaN, Infinity, integers beyond 64 bits). SQLite keeps the 0001 column
# (ints as integers, other floats as reals; 4.0 reads back as 4, NaN as NULL): the
# exact spelling of every value that is not a 64-bit int is in ``priority_json``.
PriorityNumber = BigInteger().with_variant(Numeric(), "postgresql")

STATUS_VALUES = ("pending", "in_progress", "completed", "failed", "cancelled")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table(model: type[Base]) -> Table:
    """A model's ``Table``, typed as one (SQLAlchemy types ``__table__`` as a ``FromClause``)."""
    found = model.__table__
    assert isinstance(found, Table)
    return found


class Job(Base):
    """One ComfyUI job: its newest known version (pending → running → history)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(IdText, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    stage: Mapped[int] = mapped_column(SmallInteger)  # 0 pending, 1 running, 2 history
    priority: Mapped[int | float] = mapped_column(PriorityNumber)  # see PriorityNumber
    create_time: Mapped[int] = mapped_column(BigInteger)  # 0 when ComfyUI recorded none
    create_time_missing: Mapped[bool] = mapped_column(Boolean, default=False)
    execution_start_time: Mapped[int | None] = mapped_column(BigInteger)
    execution_end_time: Mapped[int | None] = mapped_column(BigInteger)
    execution_duration: Mapped[int] = mapped_column(BigInteger, default=0)
    outputs_count: Mapped[int] = mapped_column(Integer, default=0)
    preview_output: Mapped[str | None] = mapped_column(Text)  # JSON
    execution_error: Mapped[str | None] = mapped_column(Text)  # JSON of the event
    error_type: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_node_id: Mapped[str | None] = mapped_column(Text)
    error_node_type: Mapped[str | None] = mapped_column(Text)
    workflow_id: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    raw_kind: Mapped[str] = mapped_column(Text)  # 'history' or 'queue'
    raw: Mapped[bytes] = mapped_column(LargeBinary)  # JSON of the ComfyUI item, compressed (``rawcodec``)
    # The zstd dictionary ``raw`` is compressed with; NULL: zlib (migration 0010).
    raw_dict_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("raw_dictionaries.id"))
    raw_digest: Mapped[str] = mapped_column(Text)  # blake2b-128 hex of that JSON
    # The queue number as ComfyUI's json.dumps writes it ("4.0", "2.5", "NaN"), when it is
    # not a 64-bit int; NULL when ``priority`` holds it as an integer (migration 0006).
    priority_json: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[int] = mapped_column(BigInteger)  # when this version was written

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')",
            name="status",
        ),
        CheckConstraint("stage IN (0, 1, 2)", name="stage"),
        CheckConstraint("raw_kind IN ('history', 'queue')", name="raw_kind"),
        Index(None, "create_time", "id"),
        Index(None, "status", "create_time", "id"),
        Index(None, "workflow_id", "status", "create_time", "id"),
        Index(None, "source", "status", "create_time", "id"),
        Index(None, "status", "execution_duration", "id"),
        # Listings of every status filtered by workflow or source, or sorted by
        # duration, merge one seek per status on these (migration 0015 dropped the
        # status-less twins: bytes per job, issue 16).
    )


class RawDictionary(Base):
    """A trained zstd dictionary ``jobs.raw`` is compressed with (``rawcodec``,
    migration ``0010``). Never changed or deleted while a job names it; a newer one
    (``created_at``) is what new rows are written with."""

    __tablename__ = "raw_dictionaries"

    # A hash of the dictionary's bytes, in zstd's range of private ids (also in the
    # dictionary's header and in every frame written with it).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the dictionary, as zstd reads it
    level: Mapped[int] = mapped_column(Integer)  # the zstd level rows are compressed at
    samples: Mapped[int] = mapped_column(Integer)  # items it was trained on ...
    sample_bytes: Mapped[int] = mapped_column(BigInteger)  # ... and their JSON's bytes
    created_at: Mapped[int] = mapped_column(BigInteger)  # epoch ms
    zstd_version: Mapped[str] = mapped_column(Text)  # of the library that trained it


class JobCount(Base):
    """Exact job counts per (source, workflow_id, status); '' in a key means "all".

    Maintained by triggers on ``jobs``; ``total`` is a sum over at most five rows.
    """

    __tablename__ = "job_counts"

    source: Mapped[str] = mapped_column(Text, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


# ``job_time_buckets`` counts jobs per ``create_time >> bits`` at two widths: 2**22 ms
# (~70 minutes) and 2**28 ms (~3.1 days, 64 of the fine ones). An arithmetic shift
# (floor division) on both engines, negative times too. Frozen: migration 0012.
FINE_BUCKET_BITS = 22
COARSE_BUCKET_BITS = 28
BUCKET_BITS = (FINE_BUCKET_BITS, COARSE_BUCKET_BITS)


class JobTimeBucket(Base):
    """Exact job counts per (bits, status, create_time >> bits); status '' means
    "all". Lets an ``offset`` page skip whole buckets (``queries``: a deep offset
    costs a sum over coarse buckets, then over the 64 fine ones of one coarse bucket,
    not a walk over the skipped jobs). Kept exactly like ``job_counts``: triggers on
    ``jobs``, standing aside for jobs-index's SQLite writer (``JobsIndexWriter``),
    which adds its deltas set-wise (migration ``0012``)."""

    __tablename__ = "job_time_buckets"

    bits: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # one of BUCKET_BITS
    status: Mapped[str] = mapped_column(Text, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # create_time >> bits
    n: Mapped[int] = mapped_column(BigInteger)


class JobsIndexWriter(Base):
    """A row exists here only inside jobs-index's own SQLite write transaction (it is
    inserted after ``BEGIN IMMEDIATE`` and deleted before ``COMMIT``, so no other
    connection ever sees it): while it does, the count triggers on ``jobs`` stand
    aside and the writer updates ``job_counts`` and ``job_time_buckets`` set-wise (``write_queries``).
    Unused on PostgreSQL, whose statement-level triggers are cheap (migration 0004)."""

    __tablename__ = "jobs_index_writer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class JobOutput(Base):
    """One file a job wrote (from its history ``outputs``), for "which job made X?".

    Derived from ``jobs.raw`` at ingest (``normalize.output_files``), replaced with
    each new version of the job, deleted with it (cascade). ``docs/schema.md``.
    """

    __tablename__ = "job_outputs"

    job_id: Mapped[str] = mapped_column(IdText, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)  # position in the job's outputs
    node_id: Mapped[str] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(Text)  # the outputs key: images, gifs, audio, 3d, ...
    filename: Mapped[str] = mapped_column(IdText)  # "C" collation on PostgreSQL: LIKE 'prefix%' can seek
    subfolder: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str | None] = mapped_column(Text)  # output, temp, input

    # SQLite: rows live in the primary-key b-tree (no rowid b-tree): smaller, faster.
    __table_args__ = (Index(None, "filename"), {"sqlite_with_rowid": False})


class FollowedSource(Base):
    """A ComfyUI server followed live (``jobs-index follow``): where, and how far its
    ``/history`` was read (migration ``0003``)."""

    __tablename__ = "followed_sources"

    source: Mapped[str] = mapped_column(Text, primary_key=True)  # the ``jobs.source`` of its rows
    url: Mapped[str] = mapped_column(Text)
    # Newest /history id read with every entry before it (None: read from the start).
    history_watermark: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms of the last sync


class SourceLease(Base):
    """Which writer acts for a source now (migration ``0007``): at most one process
    records, reconciles and clears a source's rows at a time (``docs/schema.md``)."""

    __tablename__ = "source_leases"

    source: Mapped[str] = mapped_column(Text, primary_key=True)  # the ``jobs.source`` it writes
    holder: Mapped[str] = mapped_column(Text)  # "host/pid/token" of the writing process
    acquired_at: Mapped[int] = mapped_column(BigInteger)  # epoch ms
    expires_at: Mapped[int] = mapped_column(BigInteger)  # epoch ms (holder's clock); renewed while alive


# Tables derived from ``jobs.raw`` whose SQL lives outside these models (SQLite's FTS5
# shadow tables start with the same name): ``alembic check`` does not compare them.
DERIVED_TABLES = ("job_search",)


# Index names, used to pin query plans (SQLite ``INDEXED BY``).
IX_CREATE_TIME = "ix_jobs_create_time_id"
IX_STATUS_CREATE_TIME = "ix_jobs_status_create_time_id"
IX_WORKFLOW_STATUS = "ix_jobs_workflow_id_status_create_time_id"
IX_SOURCE_STATUS = "ix_jobs_source_status_create_time_id"
IX_STATUS_DURATION = "ix_jobs_status_execution_duration_id"
IX_OUTPUTS_FILENAME = "ix_job_outputs_filename"
