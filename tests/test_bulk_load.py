"""Bulk load: a first import into an empty index in one transaction, with the
secondary indexes dropped while it writes and built again at the end
(``JobsIndex.bulk_load``, ``write_queries.indexes_deferred``; ``import`` does it by
default, ``--no-bulk`` does not).

* the loaded file holds exactly what batch-by-batch ingest writes (rows, side
  tables, counters), with every index back as it was and ``integrity_check`` ok;
* a non-empty index is never bulk-loaded: ``bulk_load`` reads no record and
  ``ingest(bulk=True)`` commits batch by batch as usual;
* PostgreSQL (issue 16): rows by ``COPY``, secondary indexes and foreign keys
  dropped and built again, then ``VACUUM (ANALYZE)``: the same rows, side tables,
  search rows, counters, indexes and constraints as batch by batch; a row the
  database refuses is rejected alone; a failure leaves the schema as it was;
* a failure part-way rolls everything back (the index stays empty, its indexes
  intact) and leaves the pooled connection's settings as they were;
* a real ``jobs-index import`` killed with SIGKILL during a bulk load leaves an
  empty, consistent file, and running it again loads everything;
* the rows the import workers prepare (``write_queries.Prepared``, the fast path of
  an SQLite bulk load) load exactly what batches of records write, with repeated
  ids (within a batch, across batches), chunks cut by batch boundaries and a
  ``--source``; a streamed dump bulk-imported by the CLI gives the same file with
  and without workers.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace

import pytest

from jobs_index import JobsIndex, write_queries
from jobs_index.database import make_engine
from jobs_index.errors import StorageError
from jobs_index.normalize import from_history
from jobs_index.rawcodec import decode as raw_json
from jobs_index.rawcodec import dictionary_of
from jobs_index.sample import synthetic_history
from jobs_index.search import FILLER

from .fixtures_util import capture_history, load_capture
from .reliability_support import JOBS_INDEX, check_sqlite_file, session_dir, write_history_dump

CONTENT = {
    "jobs": "SELECT * FROM jobs ORDER BY id",
    "job_outputs": "SELECT * FROM job_outputs ORDER BY job_id, ordinal",
    # each job's search row with its lists (their row's id depends on which write stored them first)
    "job_search": "SELECT s.docid, s.job_id, s.create_time, s.execution_duration, s.status, s.workflow_id, "
    "s.source, f.node_types, f.models, f.loras FROM job_search AS s JOIN job_search_facets AS f "
    "ON f.id = s.facets_id ORDER BY s.job_id",
    "job_search_facets": "SELECT hash, node_types, models, loras FROM job_search_facets ORDER BY 1, 2, 3, 4",
    # every (word, docid, position) of the FTS5 index (read through a temp fts5vocab table)
    "job_search_fts": 'SELECT term, doc, col, "offset" FROM temp.fts_words ORDER BY 1, 2, 4',
    "job_counts": "SELECT * FROM job_counts WHERE n <> 0 ORDER BY source, workflow_id, status",
}


def records(n: int, seed: int = 1) -> list:
    return [from_history(k, v) for k, v in synthetic_history(n, seed=seed)]


def schema_and_content(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        out = {"schema": conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()}
        conn.execute("CREATE VIRTUAL TABLE temp.fts_words USING fts5vocab(main, job_search_fts, instance)")
        for table, sql in CONTENT.items():
            rows = conn.execute(sql).fetchall()
            if table == "jobs":  # indexed_at is the time of writing
                names = [d[0] for d in conn.execute("SELECT * FROM jobs LIMIT 0").description]
                at = names.index("indexed_at")
                rows = [row[:at] + row[at + 1 :] for row in rows]
            out[table] = rows
        return out
    finally:
        conn.close()


def test_bulk_load_writes_what_batches_write(tmp_path):
    jobs = records(600)
    again = records(40)[:40]  # the same ids again, inside the same load (across batches)
    with JobsIndex.open(f"sqlite:///{tmp_path / 'batches.sqlite3'}") as index:
        batched = index.ingest(jobs + again, batch_size=64)
    with JobsIndex.open(f"sqlite:///{tmp_path / 'bulk.sqlite3'}") as index:
        bulk = index.bulk_load(jobs + again, batch_size=64)
        assert bulk is not None and index.counts_consistent() and index.total() == 600
    assert (bulk.inserted, bulk.updated, bulk.unchanged) == (batched.inserted, batched.updated, batched.unchanged)
    assert (bulk.inserted, bulk.unchanged) == (600, 40)
    expected, loaded = schema_and_content(tmp_path / "batches.sqlite3"), schema_and_content(tmp_path / "bulk.sqlite3")
    assert sum(1 for kind, *_ in loaded["schema"] if kind == "index") >= 10
    assert loaded == expected


@pytest.mark.parametrize("source", [None, "gpu-1"])
def test_bulk_load_of_prepared_rows_writes_what_batches_write(tmp_path, source):
    def stream() -> list:
        jobs = records(600)
        pending = [replace(r, stage=0, status="pending", raw_digest="p" + r.raw_digest) for r in jobs[200:203]]
        # jobs[70] twice in one batch of 64 (positions 70 and 100); records(40): ids of
        # the first batch again, unchanged, in a later one; three jobs pending, then
        # their history rows in the same batch
        return jobs[:100] + [jobs[70]] + jobs[100:200] + pending + jobs[200:] + records(40)

    with JobsIndex.open(f"sqlite:///{tmp_path / 'batches.sqlite3'}") as index:
        batched = index.ingest(stream(), batch_size=64, source=source)
    records_ = stream()
    chunks = [write_queries.prepare(records_[i : i + 25], source) for i in range(0, len(records_), 25)]
    assert sum(map(len, chunks)) == len(records_) and not any(chunk.dict_id for chunk in chunks)  # zlib
    written = []
    original = write_queries.write_prepared

    def spy(conn, parts, now):
        done = original(conn, parts, now)
        written.append((sum(map(len, parts)), done))
        return done

    write_queries.write_prepared = spy
    try:
        with JobsIndex.open(f"sqlite:///{tmp_path / 'bulk.sqlite3'}") as index:
            bulk = index.bulk_load(
                chunks[:3] + [r for c in chunks[3:5] for r in c.records()] + chunks[5:], batch_size=64
            )
            assert bulk is not None and index.counts_consistent() and index.total() == 600
    finally:
        write_queries.write_prepared = original
    assert (bulk.inserted, bulk.updated, bulk.unchanged) == (batched.inserted, batched.updated, batched.unchanged)
    assert (True in {done for _, done in written}) and (64, False) in written  # rows, and a batch that went as records
    assert schema_and_content(tmp_path / "bulk.sqlite3") == schema_and_content(tmp_path / "batches.sqlite3")


def test_prepared_rows_give_back_their_records():
    jobs = records(60)
    prepared = write_queries.prepare(records(60))
    assert prepared.records() == jobs
    first, rest = prepared.split(25)
    assert first.records() + rest.records() == jobs
    assert first.count_deltas() + rest.count_deltas() == prepared.count_deltas()


def test_a_non_empty_index_is_not_bulk_loaded(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    with JobsIndex.open(url) as index:
        index.ingest(records(5, seed=2))
        consumed = []

        def watched():
            for record in records(30):
                consumed.append(record.id)
                yield record

        assert index.bulk_load(watched()) is None and consumed == []
        seen_during = []
        original = index._write_batch

        def spy(batch):  # each batch is committed (visible to a new connection) as usual
            seen_during.append(index.total())
            return original(batch)

        index._write_batch = spy
        result = index.ingest(watched(), batch_size=10, bulk=True)
        assert result.inserted == 30 and seen_during == [5, 15, 25]
        assert index.counts_consistent() and index.total() == 35


# -- PostgreSQL: COPY into an empty schema, indexes and foreign keys built at the end ----

PG_CONTENT = {
    "jobs": "SELECT * FROM jobs ORDER BY id",
    "job_outputs": "SELECT * FROM job_outputs ORDER BY job_id, ordinal",
    "job_search": "SELECT job_id, create_time, execution_duration, status, workflow_id, source, doc::text, "
    "node_types, models, loras FROM job_search ORDER BY job_id",
    "job_counts": "SELECT * FROM job_counts WHERE n <> 0 ORDER BY source, workflow_id, status",
}
PG_OBJECTS = {
    "indexes": "SELECT tablename, indexname, replace(indexdef, current_schema() || '.', '') FROM pg_indexes "
    "WHERE schemaname = current_schema() ORDER BY 2",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated "
    "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace ORDER BY 2",
    "triggers": "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal "
    "AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace) ORDER BY 2",
    # (``copy_prepared`` sets a default on jobs.indexed_at while it loads)
    "defaults": "SELECT table_name, column_name, column_default FROM information_schema.columns "
    "WHERE table_schema = current_schema() ORDER BY 1, 2",
}


def pg_schema_and_content(url: str) -> dict:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            out = {name: conn.exec_driver_sql(sql).all() for name, sql in {**PG_OBJECTS, **PG_CONTENT}.items()}
            columns = list(conn.exec_driver_sql("SELECT * FROM jobs LIMIT 0").keys())
            at, raw, dict_id = columns.index("indexed_at"), columns.index("raw"), columns.index("raw_dict_id")
            for (data,) in conn.exec_driver_sql("SELECT data FROM raw_dictionaries"):
                dictionary_of(bytes(data))  # known to ``raw_json`` (a zstd dictionary trained by an import)
            # ``raw`` as the JSON it holds: ISA-L's deflate does not promise the same bytes
            # for the same input in another order of calls (seen in CI); the text is exact.
            out["jobs"] = [
                tuple(raw_json(v, row[dict_id]) if i == raw else v for i, v in enumerate(row) if i != at)
                for row in out["jobs"]
            ]
            return out
    finally:
        engine.dispose()


def mixed_records() -> list:
    """600 jobs, 30 of them first seen pending (replaced by their history row in a
    later batch: the upsert path inside the load), and 40 repeated unchanged."""
    jobs = records(600)
    pending = [replace(r, stage=0, status="pending", raw_digest="p" + r.raw_digest) for r in jobs[300:330]]
    return pending + jobs + records(40)


def test_postgresql_bulk_load_writes_what_batches_write(pg_url, pg_url_other):
    with JobsIndex.open(pg_url_other) as index:
        batched = index.ingest(mixed_records(), batch_size=64)
    with JobsIndex.open(pg_url) as index:
        bulk = index.bulk_load(mixed_records(), batch_size=64)
        assert bulk is not None and index.counts_consistent() and index.total() == 600
        with index.engine.connect() as conn:  # VACUUM (ANALYZE) ran: every heap page all-visible, stats known
            visible, pages, analysed = conn.exec_driver_sql(
                "SELECT c.relallvisible, c.relpages, s.last_vacuum IS NOT NULL FROM pg_class AS c "
                "JOIN pg_stat_user_tables AS s ON s.relid = c.oid "
                "WHERE c.relname = 'jobs' AND c.relnamespace = current_schema()::regnamespace"
            ).one()
        assert pages > 0 and visible == pages and analysed
    assert (bulk.inserted, bulk.updated, bulk.unchanged) == (batched.inserted, batched.updated, batched.unchanged)
    assert (bulk.inserted, bulk.updated, bulk.unchanged) == (600, 30, 40)
    expected, loaded = pg_schema_and_content(pg_url_other), pg_schema_and_content(pg_url)
    assert len(loaded["indexes"]) >= 13 and any(c[2].startswith("FOREIGN KEY") for c in loaded["constraints"])
    assert loaded == expected
    job = records(600)[123]
    with JobsIndex.open(pg_url) as index, JobsIndex.open(pg_url_other) as other:  # raw is lossless
        assert index.get_job(job.id) == other.get_job(job.id)


def copy_chunks(stream: list, size: int, source: str | None = None) -> list:
    """``stream`` as the import workers send it to a PostgreSQL bulk load: chunks of
    ``size`` records as ``CopyRows`` (a chunk that repeats an id: its records)."""
    out = []
    for i in range(0, len(stream), size):
        chunk = stream[i : i + size]
        made = write_queries.prepare_copy(pickle.loads(pickle.dumps(chunk)), source)
        if isinstance(made, write_queries.CopyRows):
            made = pickle.loads(pickle.dumps(made))  # as a worker sends it
            made.redo = lambda chunk=chunk: [  # as ``ingest`` sets it: the records again, with the source
                replace(r, source=source or r.source) for r in pickle.loads(pickle.dumps(chunk))
            ]
            out.append(made)
        else:
            out.extend(made)
    return out


@pytest.mark.parametrize("source", [None, "gpu-1"])
def test_postgresql_bulk_load_of_copy_rows_writes_what_batches_write(pg_url, pg_url_other, source):
    """The workers' COPY data (``write_queries.CopyRows``), mixed with records, an id
    repeated inside a chunk, ids of earlier chunks again (unchanged, and pending jobs
    then their history rows: the upsert), a record written after the indexes (a long
    workflow id) and a row the database refuses (an id too long for its index
    entry): the same index, counts and rejections as batch by batch."""

    def stream() -> list:
        jobs = records(700)
        jobs[150].workflow_id = "".join(chr(0x4E00 + (i * 104729) % 20000) for i in range(3000))  # late
        jobs[400].id = "x" * 4000 + "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000))  # refused
        pending = [replace(r, stage=0, status="pending", raw_digest="p" + r.raw_digest) for r in jobs[300:330]]
        return pending + jobs[:100] + [jobs[70]] + jobs[100:] + records(40) + [jobs[150]]

    with JobsIndex.open(pg_url_other) as index:
        batched = index.ingest(stream(), batch_size=64, source=source)
    written = []
    original = write_queries.copy_prepared

    def spy(conn, parts, now):
        original(conn, parts, now)
        written.append(sum(map(len, parts)))

    chunks = copy_chunks(stream(), 25, source)
    assert sum(isinstance(c, write_queries.CopyRows) for c in chunks) >= 25
    write_queries.copy_prepared = spy
    try:
        with JobsIndex.open(pg_url) as index:
            bulk = index.bulk_load(
                chunks[:8] + [r for c in chunks[8:10] for r in c.all_records()] + chunks[10:], batch_size=64
            )
            assert bulk is not None and index.counts_consistent()
    finally:
        write_queries.copy_prepared = original
    assert sum(written) >= 450  # most rows went as the workers' COPY data
    assert (bulk.inserted, bulk.updated, bulk.unchanged) == (batched.inserted, batched.updated, batched.unchanged)
    assert {i for i, _ in bulk.rejected} == {i for i, _ in batched.rejected} and len({i for i, _ in bulk.rejected}) == 2
    assert pg_schema_and_content(pg_url) == pg_schema_and_content(pg_url_other)


def test_without_psycopgs_row_formatter_the_workers_send_records(pg_url, monkeypatch):
    """The workers' COPY data is made by a formatter from a private psycopg module
    (3.2 and later): where it is missing, the load does not ask for COPY data and
    loads records, as before."""
    monkeypatch.setattr(write_queries, "_row_formatter", lambda: None)
    with JobsIndex.open(pg_url) as index:
        with index.engine.connect() as conn:
            assert not write_queries.takes_copy_rows(conn)
        bulk = index.bulk_load(records(120), batch_size=50)
        assert bulk is not None and bulk.inserted == 120 and index.counts_consistent()


def test_copy_rows_are_the_rows_copy_new_sends():
    """``prepare_copy``'s bytes are those psycopg's ``Copy.write_row`` makes of the rows
    ``copy_new`` writes (its formatter, with the same types)."""
    jobs = records(30)
    made = write_queries.prepare_copy(jobs)
    assert isinstance(made, write_queries.CopyRows) and made.ids == sorted(r.id for r in jobs) and not made.late
    ordered = sorted(jobs, key=lambda r: r.id)
    rows = [row[:-1] for row in write_queries.job_rows(ordered, 0, pg=True)]
    assert made.jobs == write_queries._copy_data("jobs", write_queries.COPIED_JOB_COLUMNS, rows)
    assert made.jobs.count(b"\x00\x18") >= 0 and len(made.outputs) > 0 and len(made.search) > 0
    assert isinstance(write_queries.prepare_copy(jobs + jobs[:1]), list)  # a repeated id: records


def test_postgresql_non_empty_index_is_not_bulk_loaded(pg_url):
    with JobsIndex.open(pg_url) as index:
        index.ingest(records(5, seed=2))
        assert index.bulk_load(iter(records(3))) is None
        assert index.ingest(records(20), batch_size=7, bulk=True).inserted == 20
        assert index.counts_consistent() and index.total() == 25


def test_postgresql_failed_bulk_load_leaves_the_schema_empty_and_whole(pg_url):
    with JobsIndex.open(pg_url) as index:
        before = pg_schema_and_content(pg_url)

        def failing():
            yield from records(250)
            raise RuntimeError("the dump reader broke")

        with pytest.raises(RuntimeError, match="reader broke"):
            index.bulk_load(failing(), batch_size=100)
        assert pg_schema_and_content(pg_url) == before  # no row; every index and foreign key back
        assert index.bulk_load(records(250), batch_size=100).inserted == 250
        assert index.counts_consistent() and index.total() == 250


def test_postgresql_failed_copy_stops_the_load_and_leaves_the_schema_empty_and_whole(pg_url):
    """A refusal that is not one row's value (a CHECK constraint) fails the COPY of a
    middle batch, written on the load's own thread while later batches are read: the
    load stops there, raises as a storage error, and leaves the schema as it was."""
    with JobsIndex.open(pg_url) as index:
        before = pg_schema_and_content(pg_url)
        read = []

        def watched():
            for record in bad:
                read.append(record.id)
                yield record

        bad = records(4600)  # the first 4,000 are read at once: a raw dictionary is trained on them
        bad[4130].status = "no-such-status"
        with pytest.raises(StorageError, match="rejected by the database"):
            index.bulk_load(watched(), batch_size=50)
        assert len(read) < 4600  # stopped at the failure, not at the end of the input
        assert pg_schema_and_content(pg_url) == before
        assert index.bulk_load(records(250), batch_size=100).inserted == 250
        assert index.counts_consistent() and index.total() == 250


def test_postgresql_bulk_load_rejects_only_the_refused_rows(pg_url, pg_url_other):
    """A row the database refuses (an id too large for its primary-key entry) is
    rejected alone, as batch by batch; a long workflow id, which would only fail when
    the deferred index is built, is written after the indexes are back."""
    jobs = records(300)
    jobs[10].id = "x" * 4000 + "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000))
    jobs[20].workflow_id = "".join(chr(0x4E00 + (i * 104729) % 20000) for i in range(3000))  # not compressible
    jobs[30].output_files = [{**f, "filename": "y" * 700} for f in jobs[30].output_files]
    with JobsIndex.open(pg_url_other) as index:
        batched = index.ingest(jobs, batch_size=64)
    with JobsIndex.open(pg_url) as index:
        bulk = index.bulk_load(jobs, batch_size=64)
        assert bulk is not None and index.counts_consistent()
    assert sorted(i for i, _ in bulk.rejected) == sorted(i for i, _ in batched.rejected)  # reasons: which index
    assert {job_id for job_id, _ in bulk.rejected} == {jobs[10].id, jobs[20].id}
    assert bulk.inserted == batched.inserted == 300 - len(bulk.rejected)
    assert pg_schema_and_content(pg_url) == pg_schema_and_content(pg_url_other)


def test_postgresql_bulk_load_writes_search_documents_as_batches_do(pg_url, pg_url_other):
    """The bulk load sends each search document in the tsvector's binary form
    (``Document.tsvector_binary``), batches send its literal: the server holds the same
    tsvector (words in another script, a word at several positions, a prefix of
    another word, held positions, a word of the longest length, positions past 1,024). A document whose
    lexemes exceed a tsvector's bytes is rejected alone, as batch by batch."""
    jobs = records(120)
    words = ["café", "日本語", "ǆemo", "z", "zz", "a", "ab", "abc", FILLER, "a", "x" * 200, "ab", "ß", "ǆemo"]
    for i, job in enumerate(jobs[:40]):
        jobs[i] = replace(job, search=replace(job.search, words=tuple(words[i % 7 :] + words[: i % 7])))
    long = [f"k{i % 1500}" for i in range(2000)]  # single positions past 1,024, and repeated words
    jobs[45] = replace(jobs[45], search=replace(jobs[45].search, words=tuple(long)))
    huge = [f"w{i:05d}" + "y" * 194 for i in range(6000)]  # 1.2 MB of lexemes: more than a tsvector holds
    jobs[50] = replace(jobs[50], search=replace(jobs[50].search, words=tuple(huge)))
    with JobsIndex.open(pg_url_other) as index:
        batched = index.ingest(jobs, batch_size=32)
    with JobsIndex.open(pg_url) as index:
        bulk = index.bulk_load(jobs, batch_size=32)
        assert bulk is not None and index.counts_consistent()
    assert [job_id for job_id, _ in bulk.rejected] == [job_id for job_id, _ in batched.rejected] == [jobs[50].id]
    assert "too long for tsvector" in bulk.rejected[0][1]
    assert bulk.inserted == batched.inserted == 119
    assert pg_schema_and_content(pg_url) == pg_schema_and_content(pg_url_other)


def test_postgresql_cli_import_with_and_without_bulk_gives_the_same_index(tmp_path, pg_url, pg_url_other):
    history, queue = tmp_path / "history.json", tmp_path / "queue.json"
    history.write_text(json.dumps(capture_history()))
    queue.write_text(json.dumps(load_capture("queue_running_pending.json")["body"]))
    lines = {}
    for url, options in ((pg_url, []), (pg_url_other, ["--no-bulk"])):
        done = subprocess.run(
            [*JOBS_INDEX, "--db", url, "import", *options, str(history), str(queue)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        lines[url] = done.stdout.strip()
    assert lines[pg_url] == lines[pg_url_other] == "2 file(s): 8 inserted, 0 updated, 2 unchanged, 0 rejected"
    assert pg_schema_and_content(pg_url) == pg_schema_and_content(pg_url_other)


def test_a_failed_bulk_load_leaves_the_index_empty_and_whole(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    url = f"sqlite:///{path}"
    with JobsIndex.open(url) as index:
        before = schema_and_content(path)

        def failing():
            yield from records(250)
            raise RuntimeError("the dump reader broke")

        with pytest.raises(RuntimeError, match="reader broke"):
            index.bulk_load(failing(), batch_size=100)
        assert schema_and_content(path) == before  # no row, every index still there
        with index.engine.connect() as conn:  # the pooled connection got its settings back
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -65536
            assert conn.exec_driver_sql("PRAGMA threads").scalar() == 0
    with JobsIndex.open(url) as index:
        assert index.bulk_load(records(250), batch_size=100).inserted == 250
        assert index.counts_consistent() and index.total() == 250


def test_a_constraint_failure_is_a_storage_error_and_rolls_back(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    with JobsIndex.open(f"sqlite:///{path}") as index:
        bad = records(120)
        bad[110].status = "no-such-status"  # the CHECK constraint refuses it
        with pytest.raises(StorageError, match="rejected by the database"):
            index.bulk_load(bad, batch_size=50)
        assert index.total() == 0 and index.counts_consistent()
    assert check_sqlite_file(path) == set()


@pytest.fixture(scope="session")
def bulk_dump(tmp_path_factory):
    return write_history_dump(session_dir(tmp_path_factory) / "history-20000.json", 20_000)


@pytest.mark.slow
@pytest.mark.timeout(900)
def explicit_indexes(tmp_path) -> int:
    """How many explicit indexes a new SQLite index has (migrated to head)."""
    path = tmp_path / "fresh-indexes.sqlite3"
    JobsIndex.open(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchone()[0]
    finally:
        conn.close()


def test_sigkill_during_a_bulk_import_then_rerun(tmp_path, bulk_dump):
    path = tmp_path / "jobs.sqlite3"
    url = f"sqlite:///{path}"
    command = [*JOBS_INDEX, "--db", url, "import", "--batch-size", "1000", str(bulk_dump)]
    subprocess.run([*JOBS_INDEX, "--db", url, "migrate"], check=True, capture_output=True)
    started = time.monotonic()
    full = subprocess.run(command, capture_output=True, text=True, timeout=600)
    duration = time.monotonic() - started
    assert full.returncode == 0 and "20000 inserted" in full.stdout, full.stderr
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    subprocess.run([*JOBS_INDEX, "--db", url, "migrate"], check=True, capture_output=True)
    for fraction in (0.3, 0.5, 0.7, 0.8, 0.87, 0.93):  # early writes ... index builds and COMMIT
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(duration * fraction)
        killed = proc.poll() is None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(60)
        ids = check_sqlite_file(path)  # integrity, no duplicate, counters == rows
        assert len(ids) in (0, 20_000), (fraction, len(ids))  # all or nothing
        conn = sqlite3.connect(path)
        try:
            indexes = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchone()[0]
        finally:
            conn.close()
        assert indexes == explicit_indexes(tmp_path), (fraction, indexes)  # every one there, none left dropped
        print(f"killed at {fraction:.0%} of {duration:.1f}s (running: {killed}): {len(ids)} jobs")
        if ids:
            return  # finished before the kill: nothing left to show
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "20000 inserted" in done.stdout, done.stderr
    assert len(check_sqlite_file(path)) == 20_000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_streamed_bulk_import_with_and_without_workers_gives_the_same_index(tmp_path, bulk_dump):
    """A dump large enough to be streamed to the workers, whose rows they prepare for
    the bulk load (``write_queries.Prepared``), with a --source: the same file as
    the records normalised by the writer itself (the same raw dictionary: both
    train it on the first items)."""
    lines = {
        name: cli_import(tmp_path / f"{name}.sqlite3", ["--source", "gpu-2", *options, str(bulk_dump)], 600)
        for name, options in (("workers", ["--workers", "1"]), ("alone", ["--workers", "0"]))
    }
    assert lines["workers"] == lines["alone"] == "1 file(s): 20000 inserted, 0 updated, 0 unchanged, 0 rejected"
    assert schema_and_content(tmp_path / "workers.sqlite3") == schema_and_content(tmp_path / "alone.sqlite3")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_postgresql_cli_streamed_bulk_import_with_and_without_workers_gives_the_same_index(
    bulk_dump, pg_url, pg_url_other
):
    """A dump large enough to be streamed to the workers, who send the bulk load its
    COPY data (``write_queries.CopyRows``), with a --source: the same schema and
    content as the records normalised by the writer itself."""
    lines = {}
    for url, workers in ((pg_url, "1"), (pg_url_other, "0")):
        done = subprocess.run(
            [*JOBS_INDEX, "-v", "--db", url, "import", "--source", "gpu-2", "--workers", workers, str(bulk_dump)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        lines[url] = done.stdout.strip()
        as_data = int(re.search(r"(\d+) rows came as COPY data", done.stderr).group(1))
        assert as_data >= 15_000 if workers == "1" else as_data == 0  # all but the training's first items
    assert lines[pg_url] == lines[pg_url_other] == "1 file(s): 20000 inserted, 0 updated, 0 unchanged, 0 rejected"
    assert pg_schema_and_content(pg_url) == pg_schema_and_content(pg_url_other)


def cli_import(path, arguments: list[str], timeout: float) -> str:
    """``jobs-index --db sqlite:///path import ARGUMENTS`` in its own process: its last line."""
    done = subprocess.run(
        [*JOBS_INDEX, "--db", f"sqlite:///{path}", "import", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cli_import_with_and_without_bulk_gives_the_same_index(tmp_path):
    """The captured ComfyUI history and queue, imported into a new file by default (a
    bulk load for the history, then the queue batch by batch) and with --no-bulk."""
    history, queue = tmp_path / "history.json", tmp_path / "queue.json"
    history.write_text(json.dumps(capture_history()))
    queue.write_text(json.dumps(load_capture("queue_running_pending.json")["body"]))
    lines = {
        name: cli_import(tmp_path / f"{name}.sqlite3", [*options, str(history), str(queue)], 120)
        for name, options in (("bulk", []), ("batches", ["--no-bulk"]))
    }
    assert lines["bulk"] == lines["batches"] == "2 file(s): 8 inserted, 0 updated, 2 unchanged, 0 rejected"
    assert schema_and_content(tmp_path / "bulk.sqlite3") == schema_and_content(tmp_path / "batches.sqlite3")
    help_text = subprocess.run([*JOBS_INDEX, "import", "--help"], capture_output=True, text=True).stdout
    assert "--bulk / --no-bulk" in help_text
