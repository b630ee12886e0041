"""The codec of ``jobs.raw``: how a job's ComfyUI item (its JSON) is stored and read.

``raw`` is the only long-term record of a job, so every reader and writer of it goes
through here. Two formats, told apart by their first bytes and ``jobs.raw_dict_id``:

* **zlib** (a stream starting ``0x78``, ``raw_dict_id`` NULL): rows written before
  revision ``0010_raw_dictionaries``, and rows of an index that has no dictionary yet
  (written by ISA-L at level 1; any zlib reads them). Readable forever.
* **zstd with a trained dictionary** (a frame starting ``28 B5 2F FD``): the items of
  one install repeat the same graphs and keys, so a dictionary trained on a few
  thousand of them shrinks each item several times more than zlib can alone. The
  dictionary is a row of ``raw_dictionaries``; its id is ``jobs.raw_dict_id`` and is
  also written in the frame's header. Frames carry their content size and checksum.

Readers: ``Reader(conn)`` decodes stored rows, loading the dictionaries they name
from the database (cached per engine: a dictionary row never changes); ``decode`` is
the pure form for records encoded in this process (their dictionary is known here).
Writers encode with an ``Encoder``: ``ZLIB``, or the index's current dictionary
(``current``; a new one by ``train`` + ``store``); ``conform`` re-encodes records that
another encoder wrote (e.g. zlib records from a path that did not know the dictionary).

**Dictionary ids** are derived from the dictionary's own bytes (a hash, patched into
the dictionary's header, in zstd's range for private ids), so the same samples give
the same dictionary, id and compressed bytes (zstd is deterministic, unlike the
earlier ISA-L path), and an id names one dictionary in any database and any process.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import zstandard
from sqlalchemy import Connection, Engine, text

from .errors import RawDictionaryMissing, RawUnreadable

_zlib_compress: Callable[[bytes, int], bytes]  # (data, level) -> zlib-format bytes, from ISA-L or zlib
try:  # ISA-L writes the same zlib format (any zlib reads it) 3-4x faster than zlib itself
    from isal.isal_zlib import compress as _zlib_compress

    _ZLIB_LEVEL = 1  # ISA-L level 1: about zlib-6's size
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps the format
    _zlib_compress, _ZLIB_LEVEL = zlib.compress, 6

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZLIB_FIRST_BYTE = 0x78
_DICT_MAGIC = b"\x37\xa4\x30\xec"  # a zstd dictionary's first bytes (0xEC30A437, little-endian)

LEVEL = 3  # zstd level: with a dictionary, 3 is as small as 6-12 and 4-15x faster (benchmarks/raw_codec.py)
DICT_SIZE = 112_640  # zstd's default dictionary size (110 KiB)
TRAIN_ITEMS = 4000  # a dictionary is trained on at most this many items ...
TRAIN_BYTES = 32 << 20  # ... and this many bytes of their JSON
TRAIN_MIN_ITEMS = 1000  # fewer items than this: no dictionary (zlib) until there are more
# zstd leaves ids below 32768 and from 2**31 up to a registry; ours are private ones.
_ID_MIN, _ID_SPAN = 32768, 2**31 - 32768


class Dictionary:
    """A trained zstd dictionary: its id, bytes and the level rows are compressed at.
    One object per id in a process (``dictionary_of``); its (de)compressors are made
    per thread (zstandard's are not thread-safe)."""

    __slots__ = ("id", "data", "level", "_zstd", "_local")

    def __init__(self, data: bytes, level: int = LEVEL) -> None:
        if data[:4] != _DICT_MAGIC or len(data) < 8:
            raise RawUnreadable("not a zstd dictionary (its bytes do not start with the dictionary magic number)")
        self.id = int.from_bytes(data[4:8], "little")
        self.data, self.level = bytes(data), level
        self._zstd = zstandard.ZstdCompressionDict(self.data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        self._zstd.precompute_compress(level=level)
        self._local = threading.local()

    def compressor(self) -> zstandard.ZstdCompressor:
        found = getattr(self._local, "compressor", None)
        if found is None:
            found = self._local.compressor = zstandard.ZstdCompressor(
                dict_data=self._zstd, write_checksum=True, write_content_size=True, write_dict_id=True
            )
        return found

    def decompressor(self) -> zstandard.ZstdDecompressor:
        found = getattr(self._local, "decompressor", None)
        if found is None:
            found = self._local.decompressor = zstandard.ZstdDecompressor(dict_data=self._zstd)
        return found

    def __repr__(self) -> str:
        return f"Dictionary(id={self.id}, {len(self.data)} bytes, level {self.level})"


_KNOWN: dict[int, Dictionary] = {}  # every dictionary this process has seen, by id
_KNOWN_LOCK = threading.Lock()


def dictionary_of(data: bytes, level: int = LEVEL) -> Dictionary:
    """The ``Dictionary`` of these bytes (one object per id in this process)."""
    dict_id = int.from_bytes(data[4:8], "little") if data[:4] == _DICT_MAGIC else None
    with _KNOWN_LOCK:
        known = _KNOWN.get(dict_id) if dict_id is not None else None
        if known is not None and known.data == data and known.level == level:
            return known
    made = Dictionary(data, level)
    with _KNOWN_LOCK:
        _KNOWN.setdefault(made.id, made)
    return made


def _known(dict_id: int) -> Dictionary:
    with _KNOWN_LOCK:
        found = _KNOWN.get(dict_id)
    if found is None:
        raise RawDictionaryMissing(dict_id)
    return found


class Encoder:
    """Writes ``raw``: zlib (``dictionary`` None) or zstd with ``dictionary``.
    Pickled as its dictionary's bytes (import workers are other processes)."""

    __slots__ = ("dictionary",)

    def __init__(self, dictionary: Dictionary | None = None) -> None:
        self.dictionary = dictionary

    @property
    def dict_id(self) -> int | None:
        """The ``jobs.raw_dict_id`` of what it writes."""
        return None if self.dictionary is None else self.dictionary.id

    def encode(self, data: bytes) -> bytes:
        """The ``raw`` of this JSON text."""
        if self.dictionary is None:
            return _zlib_compress(data, _ZLIB_LEVEL)
        return self.dictionary.compressor().compress(data)

    def __reduce__(self):
        if self.dictionary is None:
            return _encoder, ()
        return _encoder, (self.dictionary.data, self.dictionary.level)

    def __repr__(self) -> str:
        return f"Encoder({self.dictionary!r})"


def _encoder(data: bytes | None = None, level: int = LEVEL) -> Encoder:
    return ZLIB if data is None else Encoder(dictionary_of(data, level))


ZLIB = Encoder()


class EncoderCell:
    """The encoder normalising code should use, set by the writer once it knows the
    index's current dictionary (``JobsIndex.ingest``): import workers encode with it,
    so the writer seldom has to re-encode (``conform``)."""

    def __init__(self, encoder: Encoder = ZLIB) -> None:
        self.encoder = encoder
        # Set by a bulk load: the workers send each chunk as the rows it writes, made
        # by this function of the chunk's records and ``source`` (the jobs' source):
        # SQLite's ``write_queries.prepare``, PostgreSQL's ``prepare_copy``.
        self.prepare: Callable | None = None
        self.source: str | None = None


# -- reading -------------------------------------------------------------------------


def decode(
    blob: bytes, dict_id: int | None = None, lookup: Callable[[int], Dictionary] = _known, job_id: str | None = None
) -> bytes:
    """The JSON text (UTF-8) a ``raw`` holds. ``dict_id``: the row's ``raw_dict_id``;
    ``lookup`` finds a dictionary by id (default: those this process has seen).
    Raises ``RawDictionaryMissing`` / ``RawUnreadable``, never a codec's own error."""
    blob = bytes(blob)  # PostgreSQL's bytea may arrive as a memoryview
    try:
        if blob[:4] == ZSTD_MAGIC:
            if dict_id is None:  # a plain frame (never written here; read anyway)
                return zstandard.ZstdDecompressor().decompress(blob)
            try:
                dictionary = lookup(dict_id)
            except RawDictionaryMissing:
                raise RawDictionaryMissing(dict_id, job_id) from None
            return dictionary.decompressor().decompress(blob)
        return zlib.decompress(blob)
    except (zlib.error, zstandard.ZstdError) as exc:
        of = f" of job {job_id!r}" if job_id is not None else ""
        raise RawUnreadable(f"raw{of} cannot be decompressed: {exc}") from exc


def decode_item(blob: bytes, dict_id: int | None = None, lookup: Callable[[int], Dictionary] = _known) -> Any:
    """The ComfyUI item a ``raw`` holds (``json.loads`` of ``decode``)."""
    return json.loads(decode(blob, dict_id, lookup))


_BY_ENGINE: WeakKeyDictionary[Engine, dict[int, Dictionary]] = WeakKeyDictionary()


def _engine_cache(engine: Engine) -> dict[int, Dictionary]:
    with _KNOWN_LOCK:
        return _BY_ENGINE.setdefault(engine, {})


class Reader:
    """Decodes the ``raw`` of stored rows on an open connection: a dictionary a row
    names is read from ``raw_dictionaries`` once per database (engine) and kept."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cache = _engine_cache(conn.engine)

    def dictionary(self, dict_id: int) -> Dictionary:
        found = self._cache.get(dict_id)
        if found is None:
            row = self._conn.execute(
                text("SELECT data, level FROM raw_dictionaries WHERE id = :id"), {"id": dict_id}
            ).first()
            if row is None:
                raise RawDictionaryMissing(dict_id)
            found = dictionary_of(bytes(row[0]), row[1])
            if found.id != dict_id:
                raise RawUnreadable(f"raw dictionary {dict_id} is damaged: its bytes say id {found.id}")
            self._cache[dict_id] = found  # ids name one dictionary (see the module's docstring)
        return found

    def json(self, blob: bytes, dict_id: int | None, job_id: str | None = None) -> bytes:
        """The JSON text of a row's ``raw`` (its ``raw_dict_id``)."""
        return decode(blob, dict_id, self.dictionary, job_id)

    def item(self, blob: bytes, dict_id: int | None, job_id: str | None = None) -> Any:
        """The ComfyUI item of a row's ``raw``."""
        return json.loads(self.json(blob, dict_id, job_id))

    def row_item(self, row: Any) -> Any:
        """The item of a row with ``raw`` and ``raw_dict_id`` (and ``id``) attributes."""
        return self.item(row.raw, row.raw_dict_id, getattr(row, "id", None))


def sqlite_raw_json(conn: sqlite3.Connection, errors: list[str]) -> None:
    """Register the SQL function ``raw_json(raw, raw_dict_id)`` on a driver connection
    to an index (``jobs-index sql``): the JSON text a ``raw`` holds, NULL for NULL.
    The dictionaries are read once, now. A ``raw`` it cannot decode fails the query;
    why is appended to ``errors`` (SQLite passes on no message of its own)."""
    try:
        stored = conn.execute("SELECT data, level FROM raw_dictionaries").fetchall()
    except sqlite3.OperationalError:  # an index older than revision 0010: zlib only
        stored = []
    dictionaries = {d.id: d for d in (dictionary_of(bytes(data), level) for data, level in stored)}

    def lookup(dict_id: int) -> Dictionary:
        found = dictionaries.get(dict_id)
        if found is None:
            raise RawDictionaryMissing(dict_id)
        return found

    def raw_json(blob: bytes | None, dict_id: int | None) -> str | None:
        if blob is None:
            return None
        try:
            return decode(blob, dict_id, lookup).decode("utf-8")
        except RawUnreadable as exc:
            errors.append(exc.message)
            raise

    conn.create_function("raw_json", 2, raw_json, deterministic=True)


# -- dictionaries in the database -------------------------------------------------------


def current(conn: Connection) -> Dictionary | None:
    """The dictionary new rows are written with: the newest of ``raw_dictionaries``."""
    row = conn.exec_driver_sql(
        "SELECT id FROM raw_dictionaries ORDER BY created_at DESC, id DESC LIMIT 1"
    ).scalar_one_or_none()
    return None if row is None else Reader(conn).dictionary(row)


def current_encoder(conn: Connection) -> Encoder:
    found = current(conn)
    return ZLIB if found is None else Encoder(found)


def train(samples: Sequence[bytes], level: int = LEVEL, size: int = DICT_SIZE) -> Dictionary | None:
    """A dictionary trained on ``samples`` (JSON texts of items), or None when there are
    fewer than ``TRAIN_MIN_ITEMS`` or zstd cannot train on them. Deterministic: the
    same samples give the same bytes and id."""
    if len(samples) < TRAIN_MIN_ITEMS:
        return None
    try:
        trained = zstandard.train_dictionary(size, list(samples), dict_id=_ID_MIN, level=level).as_bytes()
    except zstandard.ZstdError:
        return None
    body = trained[8:]
    dict_id = _ID_MIN + int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "little") % _ID_SPAN
    return dictionary_of(trained[:4] + dict_id.to_bytes(4, "little") + body, level)


def store(conn: Connection, dictionary: Dictionary, samples: int, sample_bytes: int) -> None:
    """Add ``dictionary`` to ``raw_dictionaries`` (inside the caller's write
    transaction); it becomes ``current``. Its id is a hash of its bytes: a row with the
    same id must hold the same bytes (else refused, never overwritten)."""
    stored = conn.execute(
        text("SELECT data FROM raw_dictionaries WHERE id = :id"), {"id": dictionary.id}
    ).scalar_one_or_none()
    if stored is not None:
        if bytes(stored) != dictionary.data:
            raise RawUnreadable(f"raw dictionary {dictionary.id} exists with other bytes; not stored")
        return
    values = {
        "id": dictionary.id,
        "data": dictionary.data,
        "level": dictionary.level,
        "samples": samples,
        "sample_bytes": sample_bytes,
        "created_at": int(time.time() * 1000),
        "zstd_version": ".".join(map(str, zstandard.ZSTD_VERSION)),
    }
    columns = ", ".join(values)
    conn.execute(
        text(f"INSERT INTO raw_dictionaries ({columns}) VALUES ({', '.join(f':{c}' for c in values)})"), values
    )
    _engine_cache(conn.engine)[dictionary.id] = dictionary


def newest_texts(conn: Connection, items: int = TRAIN_ITEMS, max_bytes: int = TRAIN_BYTES) -> list[bytes]:
    """The JSON of the newest jobs (by ``create_time``): a live index's training sample."""
    rows = conn.exec_driver_sql(
        f"SELECT raw, raw_dict_id, id FROM jobs ORDER BY create_time DESC, id DESC LIMIT {int(items)}"
    )
    reader = Reader(conn)
    return sample_texts((reader.json(raw, dict_id, job_id) for raw, dict_id, job_id in rows), items, max_bytes)


def sample_texts(texts: Iterable[bytes], items: int = TRAIN_ITEMS, max_bytes: int = TRAIN_BYTES) -> list[bytes]:
    """The first ``items`` texts, up to ``max_bytes`` in all: a training sample."""
    out: list[bytes] = []
    total = 0
    for sample in texts:
        if len(out) >= items or total + len(sample) > max_bytes:
            break
        out.append(sample)
        total += len(sample)
    return out


def conform(records: Iterable[Any], encoder: Encoder, lookup: Callable[[int], Dictionary] = _known) -> int:
    """Re-encode the records (``raw``, ``raw_dict_id``) that ``encoder`` did not write;
    returns how many. ``lookup`` finds the dictionary of a record written with another
    one (a writer passes ``Reader(conn).dictionary``: a record replayed from the custom
    node's outbox may carry a dictionary this process has not seen)."""
    changed = 0
    want = encoder.dict_id
    for record in records:
        if record.raw_dict_id != want:
            record.raw = encoder.encode(decode(record.raw, record.raw_dict_id, lookup))
            record.raw_dict_id = want
            changed += 1
    return changed
