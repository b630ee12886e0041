"""Source leases: at most one writer acts for a source at a time.

A ComfyUI custom node (and, later, any live writer) records its jobs under one
``jobs.source``; it removes that source's stale pending/running rows and follows
"clear history" for it. Two processes doing that for the same source would erase
each other's rows, so a writer first takes the source's lease: one row here naming
the holder (``host/pid/token``) and when the lease expires (epoch ms, the holder's
clock). The holder renews it well before then and deletes it on a clean stop; a
holder that dies stops renewing, so the lease expires and the next writer takes over
(at once on the same host, when the holder's process is gone). Destructive writes
(reconcile, clear, delete) check the lease inside their own transaction.

Revision ID: 0007_source_leases
Revises: 0005_filter_timeline_indexes
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_source_leases"
down_revision = "0006_priority_as_stored"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_leases",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_source_leases")),
    )


def downgrade() -> None:
    op.drop_table("source_leases")
