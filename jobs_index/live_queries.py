"""SQL for live ingestion (``follow`` and the ComfyUI custom node). Like ``queries``:
connection first, never commits; transactions belong to ``services``."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Row, select
from sqlalchemy.dialects import postgresql, sqlite

from . import schema, search_queries
from .normalize import STAGE_HISTORY
from .queries import _chunks

jobs = schema.Job.__table__
followed = schema.FollowedSource.__table__


def get_followed(conn: Connection, source: str) -> Row | None:
    return conn.execute(select(followed).where(followed.c.source == source)).first()


def save_followed(conn: Connection, source: str, url: str, watermark: str | None, synced_at: int) -> None:
    """Insert or update one followed source."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(followed)
    values = {"source": source, "url": url, "history_watermark": watermark, "synced_at": synced_at}
    conn.execute(insert.values(values).on_conflict_do_update(
        index_elements=[followed.c.source],
        set_={"url": url, "history_watermark": watermark, "synced_at": synced_at}))


def finished_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    """The ids among ``ids`` whose row is a finished (history) job."""
    found: set[str] = set()
    for chunk in _chunks(list(ids)):
        stmt = select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.stage == STAGE_HISTORY)
        found.update(conn.execute(stmt).scalars())
    return found


def delete_finished(conn: Connection, source: str | None) -> int:
    """Delete every finished (history) row of one source (None = rows with no source)."""
    condition = (jobs.c.stage == STAGE_HISTORY, jobs.c.source.is_not_distinct_from(source))
    search_queries.store(conn).forget(conn, list(conn.execute(select(jobs.c.id).where(*condition)).scalars()))
    return conn.execute(jobs.delete().where(*condition)).rowcount


def followed_urls(conn: Connection) -> dict[str, str]:
    """``{source: url}`` of every followed ComfyUI server."""
    return {source: url for source, url in conn.execute(select(followed.c.source, followed.c.url))}
