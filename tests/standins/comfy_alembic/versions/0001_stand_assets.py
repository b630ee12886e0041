"""Stand-in ComfyUI revision 1: assets and their infos.

Revision ID: 0001_stand_assets
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_stand_assets"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("hash", sa.String(256)),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_index("uq_assets_hash", "assets", ["hash"], unique=True)
    op.create_index("ix_assets_created_at", "assets", ["created_at"])
    op.create_table(
        "assets_info",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("asset_id", sa.String(36), sa.ForeignKey("assets.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("owner_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    for column in ("asset_id", "name", "owner_id", "created_at"):
        op.create_index(f"ix_assets_info_{column}", "assets_info", [column])


def downgrade() -> None:
    op.drop_table("assets_info")
    op.drop_table("assets")
