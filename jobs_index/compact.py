"""``jobs-index compact``: train a raw dictionary and re-encode old rows with it.

New rows are written with the index's current dictionary (``rawcodec``); rows
written before it (zlib, or an older dictionary) keep their encoding until this
re-encodes them: batch by batch in id order, each batch one writer's transaction,
so a kill loses at most the batch under way and a second run carries on (rows
already written with the target dictionary are skipped; training is
deterministic, so the same sample gives the same dictionary again). Only ``raw``
and ``raw_dict_id`` change: the JSON each row holds, its digest and every derived
column stay as they are (no trigger fires: the counters and search rows follow
other columns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from . import rawcodec
from .database import read_statement, read_transaction, write_transaction
from .params import ListQuery
from .queries import count_total
from .services import JobsIndex

BATCH_SIZE = 1000


@dataclass
class CompactReport:
    dictionary: int | None = None  # the target's id (None: zlib)
    trained: bool = False  # a new dictionary was trained and stored
    jobs: int = 0  # rows looked at
    rewritten: int = 0  # rows re-encoded
    bytes_before: int = 0  # of the rewritten rows' raw
    bytes_after: int = 0


def target_encoder(index: JobsIndex, *, train: bool, to_zlib: bool) -> tuple[rawcodec.Encoder, bool]:
    """The encoder rows are re-encoded with, and whether it was newly trained (and
    stored: it is the index's current one from then on, for every writer)."""
    if to_zlib:
        return rawcodec.ZLIB, False
    with read_transaction(index.engine) as conn:
        current = rawcodec.current(conn)
        texts = rawcodec.newest_texts(conn) if train or current is None else []
    trained = rawcodec.train(texts) if texts else None
    if trained is None or (current is not None and trained.id == current.id):
        return rawcodec.Encoder(current), False
    with write_transaction(index.engine) as conn:
        rawcodec.store(conn, trained, len(texts), sum(map(len, texts)))
    encoder = rawcodec.Encoder(trained)
    index.use_raw_encoder(encoder)  # this process's writes use it at once
    return encoder, True


def _batch(conn: Connection, after: str | None, size: int, encoder: rawcodec.Encoder, report: CompactReport):
    """Re-encode the rows of one batch after ``after`` (by id); returns the last id, None at the end."""
    pg = conn.dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    where = f"WHERE id > {mark} " if after is not None else ""
    lock = " FOR UPDATE" if pg else ""
    rows = conn.exec_driver_sql(
        f"SELECT id, raw, raw_dict_id FROM jobs {where}ORDER BY id LIMIT {int(size)}{lock}",
        (after,) if after is not None else (),
    ).all()
    if not rows:
        return None
    reader = rawcodec.Reader(conn)
    want = encoder.dict_id
    changed = []
    for job_id, raw, dict_id in rows:
        report.jobs += 1
        if dict_id == want and (want is not None or bytes(raw[:1]) != rawcodec.ZSTD_MAGIC[:1]):
            continue
        new = encoder.encode(reader.json(raw, dict_id, job_id))
        report.rewritten += 1
        report.bytes_before += len(raw)
        report.bytes_after += len(new)
        changed.append((new, want, job_id))
    if changed:
        if pg:
            conn.exec_driver_sql(
                "UPDATE jobs SET raw = c.raw, raw_dict_id = c.raw_dict_id "
                "FROM unnest(%s::bytea[], %s::integer[], %s::text[]) AS c (raw, raw_dict_id, id) WHERE jobs.id = c.id",
                tuple(list(column) for column in zip(*changed, strict=True)),
            )
        else:
            conn.exec_driver_sql("UPDATE jobs SET raw = ?, raw_dict_id = ? WHERE id = ?", changed)
    return rows[-1][0]


def compact(
    index: JobsIndex,
    *,
    train: bool = True,
    to_zlib: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    started: Callable[[CompactReport, int], None] | None = None,
) -> CompactReport:
    """Re-encode every row whose ``raw`` is not written with the target: a newly
    trained dictionary (``train``; kept as is when the sample gives the current one
    again), the current one (``train=False``), or zlib (``to_zlib``: before a
    downgrade past revision 0010). ``started(report, jobs)`` is called once the
    target is known; ``progress(n)`` after each batch."""
    encoder, trained = target_encoder(index, train=train, to_zlib=to_zlib)
    report = CompactReport(dictionary=encoder.dict_id, trained=trained)
    if started is not None:
        with read_statement(index.engine) as conn:
            started(report, count_total(conn, ListQuery()))
    after: str | None = None
    while True:
        before = report.jobs
        with write_transaction(index.engine) as conn:
            last = _batch(conn, after, batch_size, encoder, report)
        if progress is not None:
            progress(report.jobs - before)
        if last is None:
            return report
        after = last


def vacuum(index: JobsIndex) -> None:
    """Give the space the re-encoded rows freed back: SQLite ``VACUUM`` (rewrites the
    file; needs as much free disk again and holds the database meanwhile);
    PostgreSQL ``VACUUM (ANALYZE) jobs`` (the space is reused, not returned)."""
    with read_statement(index.engine) as conn:  # autocommit: VACUUM cannot run in a transaction
        conn.exec_driver_sql("VACUUM" if conn.dialect.name == "sqlite" else "VACUUM (ANALYZE) jobs")
