"""The raw codec (``rawcodec``, revision 0010): ``jobs.raw`` compressed with a trained
zstd dictionary, zlib rows read forever, on both engines.

* byte-exact JSON round trip of every captured fixture and of hypothesis' JSON
  values, through zlib and through a dictionary; deterministic bytes and ids;
* a bulk import (SQLite bulk load, PostgreSQL COPY) trains a dictionary first and
  writes every row with it; a live index trains one once it has enough jobs;
* details, export, search and ``check --repair`` answer the same from an index of
  mixed zlib and zstd rows as from a zlib-only one; ``compact`` re-encodes, resumes
  after a kill and goes back to zlib;
* a row whose dictionary row is gone is a named error (``RawDictionaryMissing``),
  in ``get_job``, ``check`` and ``jobs-index sql``'s ``raw_json``;
* the migration: upgrade keeps zlib rows, downgrade is refused while rows need a
  dictionary and works after ``compact --zlib``.
"""

from __future__ import annotations

import json
import sqlite3
from functools import cache
from pathlib import Path

import pytest
import zstandard
from alembic import command
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from sqlalchemy import text

from jobs_index import JobsIndex, parse_list_query, rawcodec
from jobs_index.check import check
from jobs_index.cli import cli
from jobs_index.compact import compact
from jobs_index.database import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    migration_transaction,
)
from jobs_index.errors import RawDictionaryMissing
from jobs_index.ingest import detect, import_dump
from jobs_index.normalize import from_history, json_bytes
from jobs_index.sample import realistic_history, synthetic_history
from jobs_index.toolbox import export_lines
from jobs_index.toolbox_queries import ExportFilter
from tests.fixtures_util import FIXTURES, capture_history

from .test_raw_encoding import json_values, same


@cache
def dictionary() -> rawcodec.Dictionary:
    texts = [json_bytes(item) for _, item in realistic_history(1500, seed=16)]
    trained = rawcodec.train(texts)
    assert trained is not None
    return trained


def encoders() -> list[rawcodec.Encoder]:
    return [rawcodec.ZLIB, rawcodec.Encoder(dictionary())]


# -- pure --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.json")), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_captured_fixture_round_trips_byte_exact(path: Path):
    value = json.loads(path.read_text(encoding="utf-8"))
    data = json_bytes(value)
    for encoder in encoders():
        blob = encoder.encode(data)
        assert rawcodec.decode(blob, encoder.dict_id) == data
        assert blob[:4] == rawcodec.ZSTD_MAGIC if encoder.dict_id else blob[:1] == b"\x78"


def test_captured_history_items_give_the_same_record_and_detail_with_a_dictionary():
    from jobs_index.normalize import detail_dict

    encoder = rawcodec.Encoder(dictionary())
    for job_id, item in capture_history().items():
        plain, packed = from_history(job_id, item), from_history(job_id, item, encoder=encoder)
        assert packed.raw_dict_id == dictionary().id and plain.raw_dict_id is None
        assert packed.raw_digest == plain.raw_digest
        assert rawcodec.decode(packed.raw, packed.raw_dict_id) == rawcodec.decode(plain.raw)
        assert zstandard.get_frame_parameters(packed.raw).dict_id == dictionary().id  # also in the frame
        assert json.dumps(detail_dict(packed)) == json.dumps(detail_dict(plain))
        assert len(packed.raw) < len(plain.raw)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(json_values)
def test_any_json_value_round_trips_through_a_dictionary(value):
    data = json_bytes(value)
    encoder = rawcodec.Encoder(dictionary())
    blob = encoder.encode(data)
    assert rawcodec.decode(blob, encoder.dict_id) == data
    assert same(rawcodec.decode_item(blob, encoder.dict_id), json.loads(data))
    assert encoder.encode(data) == blob  # deterministic


def test_training_is_deterministic_and_the_id_is_the_dictionarys_hash():
    texts = [json_bytes(item) for _, item in synthetic_history(1200, seed=3)]
    first, second = rawcodec.train(texts), rawcodec.train(list(texts))
    assert first is not None and second is not None
    assert first.id == second.id and first.data == second.data
    assert 32768 <= first.id < 2**31
    assert zstandard.ZstdCompressionDict(first.data).dict_id() == first.id
    assert len(first.data) <= rawcodec.DICT_SIZE
    assert rawcodec.train(texts[: rawcodec.TRAIN_MIN_ITEMS - 1]) is None  # too few: zlib


def test_an_unknown_dictionary_is_a_named_error():
    blob = rawcodec.Encoder(dictionary()).encode(b'{"a":1}')
    with pytest.raises(RawDictionaryMissing, match="raw dictionary 12345 of job 'x'"):
        rawcodec.decode(blob, 12345, lambda _id: (_ for _ in ()).throw(RawDictionaryMissing(_id)), job_id="x")


# -- on both engines -------------------------------------------------------------------


def history(n: int, seed: int) -> dict:
    return dict(synthetic_history(n, seed=seed))


def stored(index: JobsIndex) -> list[tuple]:
    with index.engine.connect() as conn:
        return conn.execute(text("SELECT id, raw_dict_id, raw FROM jobs ORDER BY id")).all()


def dictionaries(index: JobsIndex) -> list[tuple]:
    with index.engine.connect() as conn:
        return conn.execute(text("SELECT id, level, samples, sample_bytes FROM raw_dictionaries")).all()


def answers(index: JobsIndex) -> tuple[list, list, list]:
    """Every detail, every export line, a search: what readers of raw answer."""
    page = index.list_jobs(parse_list_query({}))
    details = [index.get_job(job["id"]) for job in page.jobs]
    lines = sorted(export_lines(index, ExportFilter()))
    found = [(hit.id, hit.text) for hit in index.search(parse_list_query({"q": "ksampler", "limit": "20"}))]
    return details, lines, found


def test_bulk_import_trains_first_and_writes_every_row_with_it(db_url, tmp_path):
    items = history(2100, seed=21)  # 2,000+: normalised by a worker process (ingest.PARALLEL_MIN_ITEMS)
    with JobsIndex.open(db_url) as index:
        import_dump(index, detect("h", items), bulk=True, workers=1)
        (dict_id, level, samples, sample_bytes), *more = dictionaries(index)
        assert not more and level == rawcodec.LEVEL and samples == 2100 and sample_bytes > 2100 * 2000
        rows = stored(index)
        assert {row.raw_dict_id for row in rows} == {dict_id}
        assert all(zstandard.get_frame_parameters(bytes(row.raw)).dict_id == dict_id for row in rows)
        assert check(index).clean
    # the same dump written batch by batch (zlib until the index has 1,000 jobs) answers the same
    other = tmp_path / "batches.sqlite3"
    with JobsIndex.open(f"sqlite:///{other}") as plain:
        plain.ingest(from_history(k, v) for k, v in items.items())
        plain_rows = stored(plain)
        assert {row.raw_dict_id for row in plain_rows} - {None}  # trained on the way
        with JobsIndex.open(db_url) as index:
            assert answers(index) == answers(plain)
            assert [rawcodec.decode(r.raw, r.raw_dict_id) for r in plain_rows] == [
                rawcodec.decode(bytes(r.raw), r.raw_dict_id, rawcodec._known) for r in stored(index)
            ]


def test_the_same_dump_gives_the_same_bytes(tmp_path):
    items = history(1100, seed=5)
    blobs = []
    for name in ("a", "b"):
        with JobsIndex.open(f"sqlite:///{tmp_path / name}.sqlite3") as index:
            import_dump(index, detect("h", items), bulk=True)
            blobs.append(stored(index))
    assert blobs[0] == blobs[1]


def test_mixed_rows_read_the_same_and_check_repair_stays_lossless(db_url, backend, tmp_path):
    first, second = history(1000, seed=31), history(300, seed=32)
    with JobsIndex.open(db_url) as index:
        index.ingest([from_history(k, v) for k, v in first.items()][:400])  # zlib: too few to train
        assert {r.raw_dict_id for r in stored(index)} == {None} and not dictionaries(index)
        index.ingest([from_history(k, v) for k, v in first.items()][400:])  # 1,000 jobs: a live index trains
        (dict_id, *_), *_ = dictionaries(index)
        index.ingest(from_history(k, v) for k, v in second.items())  # written with it (conformed)
        kinds = {r.raw_dict_id for r in stored(index)}
        assert kinds == {None, dict_id}
        # a newer version of a zstd row and of a zlib row (SQLite's search forget reads the old raw)
        changed = []
        for job_id in (next(iter(first)), next(iter(second))):
            item = json.loads(json.dumps({**first, **second}[job_id]))
            item["status"]["status_str"] = "error"
            changed.append(from_history(job_id, item))
        index.ingest(changed)
        with JobsIndex.open(f"sqlite:///{tmp_path / 'plain.sqlite3'}") as plain:
            plain.ingest(from_history(k, v) for k, v in {**first, **second}.items())
            plain.ingest(changed)
            plain_answers = answers(plain)
        assert answers(index) == plain_answers
        assert check(index).clean
        with index.engine.begin() as conn:  # drift a derived column by hand
            conn.execute(text("UPDATE jobs SET outputs_count = 99"))
        repaired = check(index, repair=True)
        assert repaired.derived.count == 1300 and not repaired.unreadable.count
        assert check(index).clean
        assert answers(index) == plain_answers


def test_compact_reencodes_resumes_after_a_kill_and_goes_back_to_zlib(db_url):
    with JobsIndex.open(db_url) as index:
        records = [from_history(k, v) for k, v in history(1300, seed=41).items()]
        index.ingest(records[:900])  # zlib: too few jobs to train
        index.ingest(records[900:1200])  # 1,200 jobs: a dictionary is trained on them once they are written
        (dict_id, *_), *_ = dictionaries(index)
        assert {r.raw_dict_id for r in stored(index)} == {None}
        before = answers(index)
        texts = {r.id: rawcodec.decode(bytes(r.raw), r.raw_dict_id) for r in stored(index)}

        class Killed(Exception):
            pass

        def kill_after_two(_n, calls=[0]):  # noqa: B006 - a counter across calls
            calls[0] += 1
            if calls[0] == 2:
                raise Killed

        with pytest.raises(Killed):
            compact(index, batch_size=200, progress=kill_after_two)
        zlib_left = sum(r.raw_dict_id is None for r in stored(index))
        assert zlib_left == 800  # two batches committed
        report = compact(index, batch_size=200)  # the same newest jobs: the same dictionary, carries on
        assert report.dictionary == dict_id and not report.trained and report.rewritten == zlib_left
        assert report.jobs == 1200 and report.bytes_after < report.bytes_before / 3
        assert {r.raw_dict_id for r in stored(index)} == {dict_id}
        assert {r.id: rawcodec.decode(bytes(r.raw), r.raw_dict_id) for r in stored(index)} == texts
        assert answers(index) == before
        assert compact(index, train=False).rewritten == 0  # nothing left
        assert compact(index, to_zlib=True).rewritten == 1200
        assert {r.raw_dict_id for r in stored(index)} == {None}
        assert answers(index) == before
        index.ingest(records[1200:])  # new rows: still the current dictionary
        assert {r.raw_dict_id for r in stored(index)} == {None, dict_id}
        assert check(index).clean


def drop_dictionaries(index: JobsIndex) -> None:
    """DELETE FROM raw_dictionaries as other SQL could, foreign keys unchecked."""
    if index.engine.dialect.name == "sqlite":
        shell = sqlite3.connect(index.engine.url.database)  # the sqlite3 module: foreign keys off
        with shell:
            shell.execute("DELETE FROM raw_dictionaries")
        shell.close()
    else:
        with index.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))  # foreign-key triggers off
            conn.execute(text("DELETE FROM raw_dictionaries"))


def test_a_missing_dictionary_is_a_named_error_not_a_crash(db_url, backend):
    with JobsIndex.open(db_url) as index:
        import_dump(index, detect("h", history(1100, seed=51)), bulk=True)
        job_id = stored(index)[0].id
        (dict_id, *_), *_ = dictionaries(index)
        drop_dictionaries(index)
    with JobsIndex.open(db_url) as index:  # as another process would see it
        with pytest.raises(RawDictionaryMissing, match=f"raw dictionary {dict_id} of job '{job_id}' is missing"):
            index.get_job(job_id)
        report = check(index)
        assert report.unreadable.count == 1100 and not report.derived.count
        assert "RawDictionaryMissing" in report.unreadable.examples[0]
        assert len(index.list_jobs(parse_list_query({"limit": "10"})).jobs) == 10  # listings do not read raw


def test_sql_reads_raw_with_raw_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    items = history(1100, seed=61)
    with JobsIndex.open(url) as index:
        import_dump(index, detect("h", items), bulk=True)
    runner = CliRunner()
    out = runner.invoke(
        cli,
        ["--db", url, "sql", "--json", "SELECT id, raw_json(raw, raw_dict_id) AS item FROM jobs ORDER BY id LIMIT 5"],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert len(rows) == 5
    for row in rows:
        assert row["item"] == json_bytes(items[row["id"]]).decode()
    with JobsIndex.open(url) as index:
        drop_dictionaries(index)
    out = runner.invoke(cli, ["--db", url, "sql", "SELECT raw_json(raw, raw_dict_id) FROM jobs"])
    assert out.exit_code != 0 and "raw_json: raw dictionary" in out.output and "is missing" in out.output


def test_migration_keeps_zlib_rows_and_refuses_a_downgrade_that_would_lose_them(db_url):
    items = history(1100, seed=71)
    engine = make_engine(db_url)
    try:
        migrate(engine, "0009_search_narrow")
        migrate(engine)
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
        index = JobsIndex(engine)
        import_dump(index, detect("h", items), bulk=True)
        with pytest.raises(RuntimeError, match="compact --zlib"):
            with migration_transaction(engine) as conn:
                command.downgrade(alembic_config(conn), "0009_search_narrow")
        compact(index, to_zlib=True)
        with migration_transaction(engine) as conn:
            command.downgrade(alembic_config(conn), "0009_search_narrow")
        with engine.connect() as conn:
            columns = [r[0] for r in conn.execute(text("SELECT * FROM jobs LIMIT 0")).cursor.description]
            assert "raw_dict_id" not in columns
            raws = conn.execute(text("SELECT raw FROM jobs")).scalars().all()
        assert len(raws) == 1100 and all(bytes(r)[:1] == b"\x78" for r in raws)
        migrate(engine)  # and up again: the zlib rows read as before
        index = JobsIndex(engine)
        assert check(index).clean
        assert len(index.list_jobs(parse_list_query({"limit": "2000"})).jobs) == 1100
    finally:
        engine.dispose()
