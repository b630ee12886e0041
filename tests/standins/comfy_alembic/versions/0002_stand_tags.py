"""Stand-in ComfyUI revision 2: tags, and a batch alteration of assets.

Revision ID: 0002_stand_tags
Revises: 0001_stand_assets
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_stand_tags"
down_revision = "0001_stand_assets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("tag_type", sa.String(32), nullable=False),
    )
    op.create_index("ix_tags_tag_type", "tags", ["tag_type"])
    op.create_table(
        "asset_info_tags",
        sa.Column(
            "asset_info_id", sa.String(36), sa.ForeignKey("assets_info.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("tag_name", sa.String(512), sa.ForeignKey("tags.name", ondelete="RESTRICT"), primary_key=True),
    )
    op.create_index("ix_asset_info_tags_tag_name", "asset_info_tags", ["tag_name"])
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("mime_type", sa.String(255)))
        batch.create_index("ix_assets_mime_type", ["mime_type"])


def downgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.drop_index("ix_assets_mime_type")
        batch.drop_column("mime_type")
    op.drop_table("asset_info_tags")
    op.drop_table("tags")
