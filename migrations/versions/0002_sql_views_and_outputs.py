"""SQL for humans: the ``jobs_v`` view and the ``job_outputs`` / ``job_nodes`` tables.

* ``job_outputs`` — one row per file a job wrote (history ``outputs``), indexed by
  filename, so "which job made ComfyUI_00042_.png?" is one index seek;
* ``job_nodes`` — one row per node of a job's prompt graph (``class_type``), for
  "failures per node type";
* ``jobs_v`` — ``jobs`` with ISO-8601 UTC times, duration in seconds, error fields.

Both tables are filled at ingest in the job's own transaction and lose their rows
with the job (``ON DELETE CASCADE``; on SQLite also a trigger, so a delete from a
connection without ``PRAGMA foreign_keys=ON`` cascades too). This revision
backfills them from every existing row's ``raw`` item: the "re-derive in a
migration" promise of docs/architecture.md. See docs/schema.md.

Revision ID: 0002_sql_views_and_outputs
Revises: 0001_create_jobs
Create Date: 2026-11-28
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002_sql_views_and_outputs"
down_revision = "0001_create_jobs"
branch_labels = None
depends_on = None

ID_TYPE = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
BACKFILL_CHUNK = 1000
THREE_D_EXTENSIONS = (".obj", ".fbx", ".gltf", ".glb", ".usdz")


# -- the view ------------------------------------------------------------------


def _iso_sqlite(ms: str) -> str:
    # Exact to the millisecond for every epoch-ms value (checked against Python).
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')"


def _iso_postgresql(ms: str) -> str:
    # Interval arithmetic on a timestamp without time zone: independent of TimeZone.
    return (
        f"to_char(TIMESTAMP '1970-01-01 00:00:00' + {ms} * INTERVAL '1 millisecond', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
    )


def _view_sql(dialect: str) -> str:
    iso = _iso_postgresql if dialect == "postgresql" else _iso_sqlite
    duration = "(execution_end_time - execution_start_time) / 1000.0"
    if dialect == "postgresql":
        duration = f"round({duration}, 3)"
    return f"""CREATE VIEW jobs_v AS
SELECT
    id,
    status,
    priority,
    CASE WHEN create_time_missing THEN NULL ELSE {iso("create_time")} END AS created_at,
    {iso("execution_start_time")} AS started_at,
    {iso("execution_end_time")} AS ended_at,
    CASE WHEN execution_start_time <> 0 AND execution_end_time <> 0
         THEN {duration} END AS duration_s,
    outputs_count,
    error_type,
    error_message,
    error_node_id,
    error_node_type,
    workflow_id,
    source,
    create_time,
    execution_start_time,
    execution_end_time
FROM jobs"""


SQLITE_CASCADE_TRIGGER = """CREATE TRIGGER trg_jobs_delete_side_rows AFTER DELETE ON jobs BEGIN
    DELETE FROM job_outputs WHERE job_id = OLD.id;
    DELETE FROM job_nodes WHERE job_id = OLD.id;
END"""


# -- backfill (frozen copy of normalize.output_files / node_types at this revision) --


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and "\x00" not in value else None


def output_files(outputs: Any) -> list[dict]:
    files: list[dict] = []
    for node_id, node_outputs in (outputs if isinstance(outputs, dict) else {}).items():
        if not isinstance(node_outputs, dict) or _text(str(node_id)) is None:
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list) or _text(media_type) is None:
                continue
            for item in items:
                if isinstance(item, str) and item.lower().endswith(THREE_D_EXTENSIONS):
                    item = {"filename": item, "type": "output", "subfolder": ""}
                if not isinstance(item, dict) or _text(item.get("filename")) is None:
                    continue
                files.append(
                    {
                        "ordinal": len(files),
                        "node_id": str(node_id),
                        "media_type": media_type,
                        "filename": item["filename"],
                        "subfolder": _text(item.get("subfolder")),
                        "type": _text(item.get("type")),
                    }
                )
    return files


def node_types(prompt_graph: Any) -> list[dict]:
    return [
        {"node_id": str(node_id), "class_type": node["class_type"]}
        for node_id, node in (prompt_graph if isinstance(prompt_graph, dict) else {}).items()
        if isinstance(node, dict) and _text(node.get("class_type")) is not None and _text(str(node_id)) is not None
    ]


def side_rows(raw_kind: str, raw: bytes) -> tuple[list[dict], list[dict]]:
    """(job_outputs rows, job_nodes rows) of one stored raw item (without job_id)."""
    item = json.loads(zlib.decompress(raw))
    prompt = item.get("prompt") if raw_kind == "history" else item
    graph = prompt[2] if isinstance(prompt, list) and len(prompt) > 2 else None
    outputs = output_files(item.get("outputs", {})) if raw_kind == "history" else []
    return outputs, node_types(graph)


def _backfill(bind, outputs_table: sa.Table, nodes_table: sa.Table) -> None:
    jobs = sa.table("jobs", sa.column("id", ID_TYPE), sa.column("raw_kind", sa.Text), sa.column("raw", sa.LargeBinary))
    last = None
    while True:
        stmt = sa.select(jobs.c.id, jobs.c.raw_kind, jobs.c.raw).order_by(jobs.c.id).limit(BACKFILL_CHUNK)
        if last is not None:
            stmt = stmt.where(jobs.c.id > last)
        rows = bind.execute(stmt).all()
        if not rows:
            return
        outputs, nodes = [], []
        for job_id, raw_kind, raw in rows:
            files, graph_nodes = side_rows(raw_kind, raw)
            outputs.extend({**row, "job_id": job_id} for row in files)
            nodes.extend({**row, "job_id": job_id} for row in graph_nodes)
        if outputs:
            bind.execute(outputs_table.insert(), outputs)
        if nodes:
            bind.execute(nodes_table.insert(), nodes)
        last = rows[-1].id


def upgrade() -> None:
    outputs_table = op.create_table(
        "job_outputs",
        sa.Column("job_id", ID_TYPE, nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("media_type", sa.Text(), nullable=False),
        sa.Column("filename", ID_TYPE, nullable=False),
        sa.Column("subfolder", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_outputs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "ordinal", name=op.f("pk_job_outputs")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_job_outputs_filename", "job_outputs", ["filename"])
    nodes_table = op.create_table(
        "job_nodes",
        sa.Column("job_id", ID_TYPE, nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("class_type", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_nodes_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "node_id", name=op.f("pk_job_nodes")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_job_nodes_class_type_job_id", "job_nodes", ["class_type", "job_id"])
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "sqlite":
        op.execute(SQLITE_CASCADE_TRIGGER)
    op.execute(_view_sql(dialect))
    _backfill(bind, outputs_table, nodes_table)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS jobs_v")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS trg_jobs_delete_side_rows")
    op.drop_index("ix_job_nodes_class_type_job_id", table_name="job_nodes")
    op.drop_table("job_nodes")
    op.drop_index("ix_job_outputs_filename", table_name="job_outputs")
    op.drop_table("job_outputs")
