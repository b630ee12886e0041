"""Where the index lives: the database URL and its default. No heavy imports here,
so the CLI starts fast."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "JOBS_INDEX_DB"
APP_NAME = "jobs-index"


def default_sqlite_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path(APP_NAME, appauthor=False) / "jobs.sqlite3"


def resolve_url(url: str | None) -> str:
    """The database URL: explicit, else $JOBS_INDEX_DB, else the per-user SQLite file."""
    url = url or os.environ.get(ENV_VAR)
    if url:
        if "://" not in url:  # a bare path means a SQLite file
            url = f"sqlite:///{Path(url).expanduser()}"
        return url
    return f"sqlite:///{default_sqlite_path()}"


AUTO_MIGRATE_ENV = "JOBS_INDEX_AUTO_MIGRATE"  # "1": upgrade an older PostgreSQL schema on open
