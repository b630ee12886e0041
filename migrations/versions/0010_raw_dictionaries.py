"""Trained zstd dictionaries for ``jobs.raw`` (issue 16, "half the bytes").

``raw`` was zlib per item (~970 B of a ~2.7 KB item at 1M synthetic jobs). The items
of one install repeat the same graphs and keys, so a zstd dictionary trained on a
few thousand of them compresses each item several times smaller. This revision adds
where they live:

* ``raw_dictionaries`` (id, the dictionary's bytes, the zstd level rows are written
  at, how many items and bytes it was trained on, when, which zstd trained it);
* ``jobs.raw_dict_id``, nullable, a foreign key to it: the dictionary a row's ``raw``
  is compressed with; NULL for zlib, which every existing row stays (they are
  re-encoded only by ``jobs-index compact``).

No row is rewritten: on SQLite the column is added by ``ALTER TABLE ADD COLUMN``
(with its foreign key inline, which SQLite allows for a column whose default is
NULL), never by rebuilding ``jobs``. The foreign key has no index on ``jobs``: it is
checked when a job is written (a primary-key lookup in a table of a few rows); only
deleting a dictionary would scan ``jobs``, and nothing does.

Revision ID: 0010_raw_dictionaries
Revises: 0009_search_narrow
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs_index.migrations.rebuild import rebuilding_jobs

revision = "0010_raw_dictionaries"
down_revision = "0009_search_narrow"
branch_labels = None
depends_on = None

FK_NAME = "fk_jobs_raw_dict_id_raw_dictionaries"


def upgrade() -> None:
    op.create_table(
        "raw_dictionaries",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("sample_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("zstd_version", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_dictionaries")),
    )
    if op.get_bind().dialect.name == "sqlite":
        # ADD COLUMN with the foreign key inline: no table rebuild (SQLite cannot add
        # a constraint to an existing table any other way).
        op.execute(
            f"ALTER TABLE jobs ADD COLUMN raw_dict_id INTEGER CONSTRAINT {FK_NAME} REFERENCES raw_dictionaries (id)"
        )
    else:
        op.add_column("jobs", sa.Column("raw_dict_id", sa.Integer(), nullable=True))
        op.create_foreign_key(FK_NAME, "jobs", "raw_dictionaries", ["raw_dict_id"], ["id"])


def downgrade() -> None:
    """Back to zlib only: refused while any row is compressed with a dictionary (the
    older jobs-index could not read it); ``jobs-index compact --zlib`` re-encodes them."""
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM jobs WHERE raw_dict_id IS NOT NULL)").scalar():
        raise RuntimeError(
            "jobs are compressed with a raw dictionary; run `jobs-index compact --zlib` before downgrading"
        )
    if bind.dialect.name == "sqlite":
        # SQLite cannot drop a column a foreign key uses: this direction rebuilds jobs.
        with rebuilding_jobs(op), op.batch_alter_table("jobs") as batch:
            batch.drop_column("raw_dict_id")
    else:
        op.drop_constraint(FK_NAME, "jobs", type_="foreignkey")
        op.drop_column("jobs", "raw_dict_id")
    op.drop_table("raw_dictionaries")
