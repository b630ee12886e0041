"""A stand-in for ComfyUI's own database start-up (``app/database/db.py``: ``init_db``).

ComfyUI's ``main.start_comfyui`` imports the custom nodes first and only then calls
``setup_database()``, which, on the main thread, upgrades ``user/comfyui.db`` with its
own Alembic script directory (``alembic_db/``) and the default version table
``alembic_version``. This module does the same with a tiny script directory of its
own (``comfy_alembic/``: two revisions, several tables and indexes, a batch
alteration as ComfyUI's ``render_as_batch=True`` env does), so a test can run it while
the jobs-index node starts and check that neither touches the other's database.

Written after ComfyUI's behaviour (read, not copied: ComfyUI is GPL-3.0).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy import Column, DateTime, ForeignKey, Integer, MetaData, String, Table, create_engine, event

SCRIPT_LOCATION = Path(__file__).with_name("comfy_alembic")
HEAD = "0002_stand_tags"

# The tables the two revisions create (ComfyUI keeps its own registry: app.database.models.Base).
metadata = MetaData()
Table(
    "assets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hash", String(256)),
    Column("size_bytes", Integer, nullable=False),
    Column("mime_type", String(255)),
    Column("created_at", DateTime(timezone=False), nullable=False),
)
Table(
    "assets_info",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("asset_id", String(36), ForeignKey("assets.id", ondelete="RESTRICT"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("owner_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)
Table("tags", metadata, Column("name", String(512), primary_key=True), Column("tag_type", String(32), nullable=False))
Table(
    "asset_info_tags",
    metadata,
    Column("asset_info_id", String(36), ForeignKey("assets_info.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_name", String(512), ForeignKey("tags.name", ondelete="RESTRICT"), primary_key=True),
)
TABLES = frozenset(metadata.tables) | {"alembic_version"}


def alembic_config(db_url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", db_url)
    config.attributes["target_metadata"] = metadata
    return config


def init_db(db_url: str) -> str | None:
    """ComfyUI's ``_init_file_db``: compare the file's revision with the head and run
    ``alembic.command.upgrade`` if they differ (backup first; restored on failure).
    Returns the revision the file was at."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    db_path = db_url.split("///", 1)[1]
    existed = os.path.exists(db_path)
    config = alembic_config(db_url)
    engine = create_engine(db_url)

    @event.listens_for(engine, "connect")
    def set_sqlite_pragma(dbapi_connection, connection_record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        target = ScriptDirectory.from_config(config).get_current_head()
        if current != target:
            backup = db_path + ".bkp" if existed else None
            if backup:
                shutil.copy(db_path, backup)
            try:
                command.upgrade(config, target)
            except Exception:
                if backup:
                    shutil.copy(backup, db_path)
                    os.remove(backup)
                raise
        return current
    finally:
        engine.dispose()
