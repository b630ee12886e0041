"""Followed sources: one row per ComfyUI server that ``jobs-index follow`` reads.

``history_watermark`` is the id of the newest ComfyUI ``/history`` entry read with
every entry before it, so a restarted ``follow`` reads only what is newer (the tail
of ``/history``) instead of the whole history again. ``synced_at`` (epoch ms) is
when the source was last synced: "when did we last hear from machine X".

Revision ID: 0003_followed_sources
Revises: 0002_sql_views_and_outputs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_followed_sources"
down_revision = "0002_sql_views_and_outputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "followed_sources",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("history_watermark", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_followed_sources")),
    )


def downgrade() -> None:
    op.drop_table("followed_sources")
