"""jobs-index: a persistent, SQL-backed index of ComfyUI jobs.

    from jobs_index import JobsIndex, parse_list_query
    with JobsIndex.open("sqlite:///jobs.sqlite3") as index:
        page = index.list_jobs(parse_list_query({"limit": "50"}))

Exports are loaded on first use, so ``jobs-index --help`` does not import SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {
    "JobsIndex": "services",
    "JobsPage": "services",
    "ListQuery": "params",
    "parse_list_query": "params",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
