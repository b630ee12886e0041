"""jobs-index: a persistent, SQL-backed index of ComfyUI jobs.

    from jobs_index import JobsIndex, parse_list_query
    with JobsIndex.open("sqlite:///jobs.sqlite3") as index:
        page = index.list_jobs(parse_list_query({"limit": "50"}))
"""
from .params import ListQuery, parse_list_query
from .services import JobsIndex, JobsPage

__all__ = ["JobsIndex", "JobsPage", "ListQuery", "parse_list_query"]
__version__ = "0.1.0"
