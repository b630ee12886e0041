"""SQL for live ingestion (``follow`` and the ComfyUI custom node). Like ``queries``:
connection first, never commits; transactions belong to ``services``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Row, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from . import schema, search_queries
from .normalize import STAGE_HISTORY, answer_text, column_text
from .queries import _chunks, merged_by_status

jobs = schema.table(schema.Job)
followed = schema.table(schema.FollowedSource)
leases = schema.table(schema.SourceLease)


def get_followed(conn: Connection, source: str) -> Row | None:
    return conn.execute(select(followed).where(followed.c.source == source)).first()


def save_followed(conn: Connection, source: str, url: str, watermark: str | None, synced_at: int) -> None:
    """Insert or update one followed source."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(followed)
    values = {"source": source, "url": url, "history_watermark": watermark, "synced_at": synced_at}
    conn.execute(
        insert.values(values).on_conflict_do_update(
            index_elements=[followed.c.source],
            set_={"url": url, "history_watermark": watermark, "synced_at": synced_at},
        )
    )


def finished_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    """The ids among ``ids`` whose row is a finished (history) job."""
    found: set[str] = set()
    for chunk in _chunks([column_text(job_id) for job_id in ids]):
        stmt = select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.stage == STAGE_HISTORY)
        found.update(answer_text(job_id) for job_id in conn.execute(stmt).scalars())
    return found


def finished_batch(conn: Connection, source: str | None, limit: int) -> list[str]:
    """Up to ``limit`` ids (ComfyUI's) of finished (history) rows of one source (None = rows with
    no source), oldest first. SQLite: one seek per status on ``(source, status,
    create_time, id)``, merged (``queries.merged_by_status``); PostgreSQL cannot seek
    ``IS NOT DISTINCT FROM`` and walks ``(create_time, id)`` in order instead."""
    if conn.dialect.name == "sqlite":

        def arm(status: str):
            return select(jobs.c.id, jobs.c.create_time).where(
                jobs.c.source.is_not_distinct_from(source), jobs.c.status == status, jobs.c.stage == STAGE_HISTORY
            )

        return [answer_text(row.id) for row in merged_by_status(conn, arm, schema.STATUS_VALUES, limit)]
    stmt = (
        select(jobs.c.id)
        .where(jobs.c.source.is_not_distinct_from(source), jobs.c.stage == STAGE_HISTORY)
        .order_by(jobs.c.create_time, jobs.c.id)
        .limit(limit)
    )
    return [answer_text(job_id) for job_id in conn.execute(stmt).scalars()]


def delete_of_source(conn: Connection, ids: Sequence[str], source: str | None) -> int:
    """Delete the rows among ``ids`` that belong to ``source``; others stay."""
    deleted = 0
    search = search_queries.store(conn)
    for chunk in _chunks([column_text(job_id) for job_id in ids]):
        owned = select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.source.is_not_distinct_from(source))
        search.forget(conn, list(conn.execute(owned).scalars()))  # before the rows go (SQLite's FTS5)
        stmt = jobs.delete().where(jobs.c.id.in_(chunk), jobs.c.source.is_not_distinct_from(source))
        deleted += conn.execute(stmt).rowcount
    return deleted


# -- source leases (migration 0007) ------------------------------------------


def get_lease(conn: Connection, source: str) -> Row | None:
    return conn.execute(select(leases).where(leases.c.source == source)).first()


def insert_lease(conn: Connection, source: str, holder: str, now: int, expires_at: int) -> bool:
    """Take a free lease; False if a row appeared meanwhile."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(leases)
    stmt = insert.values(source=source, holder=holder, acquired_at=now, expires_at=expires_at)
    return conn.execute(stmt.on_conflict_do_nothing(index_elements=[leases.c.source])).rowcount == 1


def replace_lease(conn: Connection, source: str, old_holder: str, holder: str, now: int, expires_at: int) -> bool:
    """Take over ``old_holder``'s lease (compare and set); False if it changed meanwhile."""
    stmt = (
        update(leases)
        .where(leases.c.source == source, leases.c.holder == old_holder)
        .values(holder=holder, acquired_at=now, expires_at=expires_at)
    )
    return conn.execute(stmt).rowcount == 1


def renew_lease(conn: Connection, source: str, holder: str, expires_at: int) -> bool:
    stmt = update(leases).where(leases.c.source == source, leases.c.holder == holder).values(expires_at=expires_at)
    return conn.execute(stmt).rowcount == 1


def release_lease(conn: Connection, source: str, holder: str) -> bool:
    stmt = delete(leases).where(leases.c.source == source, leases.c.holder == holder)
    return conn.execute(stmt).rowcount == 1


def followed_urls(conn: Connection) -> dict[str, str]:
    """``{source: url}`` of every followed ComfyUI server."""
    return {source: url for source, url in conn.execute(select(followed.c.source, followed.c.url))}
