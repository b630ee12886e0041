"""Shared fixtures. Every database test runs against each backend (Dagster-style):

* ``sqlite``: a fresh SQLite file in the test's tmp dir;
* ``postgresql``: a fresh schema in the database named by ``JOBS_INDEX_TEST_PG``
  (``.ci/run`` sets it). Without that variable these cases are skipped, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from jobs_index import JobsIndex

PG_ENV = "JOBS_INDEX_TEST_PG"
PG_SKIP = (
    f"PostgreSQL backend not configured: set {PG_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test "
    "(.ci/run does) to run this case against PostgreSQL"
)
BACKENDS = ("sqlite", "postgresql")


def pg_base_url() -> str | None:
    return os.environ.get(PG_ENV) or None


class PgSchema:
    """A throwaway PostgreSQL schema; its URL puts it first on the search_path."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with self._admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        sep = "&" if "?" in base_url else "?"
        self.url = f"{base_url}{sep}options={quote(f'-csearch_path={self.name}')}"

    def drop(self) -> None:
        with self._admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._admin.dispose()


def make_db_url(backend: str, tmp_path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        return
    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP)
    schema = PgSchema(base)
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend, tmp_path) -> Iterator[str]:
    """A URL of an empty database on the current backend."""
    yield from make_db_url(backend, tmp_path)


@pytest.fixture
def index(db_url) -> Iterator[JobsIndex]:
    """An open, migrated, empty index on the current backend."""
    with JobsIndex.open(db_url) as opened:
        yield opened


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


@pytest.fixture
def pg_url(tmp_path) -> Iterator[str]:
    yield from make_db_url("postgresql", tmp_path)


@pytest.fixture
def pg_url_other(tmp_path) -> Iterator[str]:
    """A second throwaway PostgreSQL schema (in the same database as ``pg_url``'s)."""
    yield from make_db_url("postgresql", tmp_path)
