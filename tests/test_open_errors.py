"""Opening the index: every PostgreSQL URL spelling that means psycopg 3 works, and a
bad or unreachable database is one clear ``StorageError``/``ConfigError`` line (CLI:
``Error: ...`` on stderr, exit 1), never a driver traceback or a leaked password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs_index import JobsIndex, parse_list_query
from jobs_index.errors import ConfigError, StorageError
from jobs_index.normalize import from_queue

JOBS_INDEX = Path(sys.executable).with_name("jobs-index")
SECRET = "s3cr3t-pw"


def _spelled(pg_url: str, scheme: str) -> str:
    assert pg_url.startswith("postgresql+psycopg://")
    return pg_url.replace("postgresql+psycopg://", scheme, 1)


@pytest.mark.parametrize("scheme", ["postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"])
def test_plain_postgresql_url_opens_with_psycopg3(pg_url, scheme):
    with JobsIndex.open(_spelled(pg_url, scheme)) as index:
        assert index.engine.url.drivername == "postgresql+psycopg"
        index.ingest([from_queue([1, "job-1", {}, {"create_time": 5}, []], "pending")])
        assert [j["id"] for j in index.list_jobs(parse_list_query({})).jobs] == ["job-1"]
        with index.engine.connect() as conn:  # our session settings survived the URL rewrite
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
            assert conn.exec_driver_sql("SELECT current_schema()").scalar().startswith("t_")


def _pg_target(suffix: str) -> str:
    return f"postgresql://postgres:{SECRET}@{suffix}"


BAD_URLS = [
    # (url, error class, words the message must contain)
    (_pg_target("127.0.0.1:1/test"), StorageError, ["cannot open database", "Connection refused"]),
    (_pg_target("127.0.0.1:5432/no_such_db_jobs_index"), StorageError, ["no_such_db_jobs_index", "does not exist"]),
    ("postgresql://no_such_role_jobs_index@127.0.0.1:5432/test", StorageError, ["no_such_role_jobs_index"]),
    (_pg_target("no-such-host.invalid/test"), StorageError, ["no-such-host.invalid"]),
    (_pg_target("127.0.0.1:notaport/test"), ConfigError, ["not a database URL"]),
    (
        _pg_target("127.0.0.1/test").replace("postgresql:", "postgresql+asyncpg:"),
        ConfigError,
        ["unsupported database driver", "postgresql+asyncpg"],
    ),
    ("mysql://root@127.0.0.1/jobs", ConfigError, ["unsupported database", "mysql"]),
    (_pg_target("127.0.0.1:5432/test?sslmode=bogus"), StorageError, ["sslmode"]),
]


def _check_message(message: str, words: list[str]) -> None:
    assert "\n" not in message, message
    assert SECRET not in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("url,error,words", BAD_URLS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_url_is_one_clear_error(url, error, words):
    with pytest.raises(error) as info:
        JobsIndex.open(url)
    _check_message(info.value.message, words)


def test_sqlite_bad_locations(tmp_path):
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, not SQLite\n" * 100)
    with pytest.raises(StorageError) as info:
        JobsIndex.open(f"sqlite:///{not_a_db}")
    _check_message(info.value.message, ["cannot open database", "not a database"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:  # its "directory" is a file
        JobsIndex.open(f"sqlite:///{blocker}/sub/jobs.sqlite3")
    _check_message(info.value.message, ["cannot create the directory"])


def test_unreachable_host_fails_within_connect_timeout():
    """A host that never answers: the URL's connect_timeout bounds the wait."""
    import time

    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        JobsIndex.open(_pg_target("10.255.255.1:5432/test?connect_timeout=2"))
    assert time.monotonic() - start < 30
    _check_message(info.value.message, ["cannot open database", "10.255.255.1"])


@pytest.mark.parametrize("command", [["migrate"], ["import", "-"], ["serve", "--port", "0"]])
def test_cli_prints_one_line_and_exits_1(command):
    url = _pg_target("127.0.0.1:1/test")
    done = subprocess.run(
        [str(JOBS_INDEX), "--db", url, *command], input="{}", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot open database"), done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr
