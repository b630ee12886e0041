"""ComfyUI's own ``comfy_execution/jobs.py`` of several versions, loaded at test time,
and ComfyUI's ``GET /api/jobs`` handler over each (``comfy_list`` / ``comfy_detail``).

ComfyUI is GPL-3.0 and its code is not part of this repository: the modules are read
from a ComfyUI git repository on this machine, named by ``JOBS_INDEX_COMFYUI_GIT``
(one path, or several separated by ``os.pathsep``; a clone or a bare git directory),
with ``git show <commit>:comfy_execution/jobs.py`` (and ``utils/cursor.py``, which the
cursor version imports). A version whose commit none of them holds is skipped, so a
plain clone of https://github.com/comfyanonymous/ComfyUI runs the released versions;
the seed's commit lives on a fork's branch (``zhangtony239/ComfyUI``, or any fork that
fetched ``matt/be-944-core-cursor-based-pagination-for-get-apiassets``).

Each module runs unmodified; the one name it imports from the rest of ComfyUI,
``comfy_api.internal.prune_dict``, is provided here (``{k: v ... if v is not None}``,
as ComfyUI defines it). ``comfy_list`` follows ComfyUI's ``server.py`` handler of that
version: the same validation in the same order (written here from server.py, the
same in every version but for ``after``), then ``get_all_jobs`` of the loaded module;
``has_more`` is computed as v0.26's handler does, ``next_cursor`` taken from the
cursor version's answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ENV_VAR = "JOBS_INDEX_COMFYUI_GIT"

# name -> (commit, the kind jobs_index.comfyui.compat.detect must give it)
VERSIONS: dict[str, tuple[str, str]] = {
    # ComfyUI v0.26.0 (tag commit): offset paging, cancel routes.
    "v0.26.0": ("f6c162ddcfbd7eefb39c06fe5b8d4c46e8d09f40", "offset"),
    # The seed's commit: cursor paging (branch matt/be-944-core-cursor-based-pagination-for-get-apiassets).
    "seed-33109e0a": ("33109e0a04dd870bd8875eae0f9f490fa77c6dac", "cursor"),
    # The newest master fetched (2026-07-01); its jobs.py is v0.26.0's.
    "master-e62fa54f": ("e62fa54fc56048f8a3b26a405a6cb9e4d080a0c0", "offset"),
    # v0.16.0: the oldest whose answers equal the index's (text previews, 3D strings).
    "v0.16.0": ("e04d0dbeb8266aa9262b5a4c3934ba4e4a371e37", "offset"),
    # v0.14.0: text outputs are neither counted nor previewed: answers differ.
    "v0.14.0": ("fe52843fe55b92dedaabff684294dd7a115d2204", "unknown"),
    # An unreleased branch (matt/jobs-ids-filter, 2026-06-30): an ``ids`` filter.
    "jobs-ids-filter-b6562175": ("b65621751412ef166792af651e0ed5ab75edecaf", "unknown"),
}


def _repositories() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def _show(commit: str, path: str) -> str | None:
    for repo in _repositories():
        result = subprocess.run(
            [
                "git",
                "--git-dir",
                str(repo / ".git") if (repo / ".git").exists() else str(repo),
                "show",
                f"{commit}:{path}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            return result.stdout
    return None


def _prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _module(name: str, source: str, filename: str) -> ModuleType:
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses look their module up while it runs
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


@cache
def load(version: str) -> ModuleType | None:
    """``comfy_execution.jobs`` of ``version`` (a key of VERSIONS), or None if no
    repository named by JOBS_INDEX_COMFYUI_GIT holds its commit."""
    commit = VERSIONS[version][0]
    jobs_source = _show(commit, "comfy_execution/jobs.py")
    if jobs_source is None:
        return None
    names = ("comfy_api", "comfy_api.internal", "utils", "utils.cursor", "comfy_execution.jobs")
    saved = {name: sys.modules.get(name) for name in names}
    try:
        internal = types.ModuleType("comfy_api.internal")
        internal.prune_dict = _prune_dict
        sys.modules["comfy_api"] = types.ModuleType("comfy_api")
        sys.modules["comfy_api.internal"] = internal
        cursor_source = _show(commit, "utils/cursor.py") if "utils.cursor" in jobs_source else None
        if cursor_source is not None:
            sys.modules["utils"] = types.ModuleType("utils")
            sys.modules["utils.cursor"] = _module("utils.cursor", cursor_source, f"<ComfyUI {version}>/utils/cursor.py")
        module = _module("comfy_execution.jobs", jobs_source, f"<ComfyUI {version}>/comfy_execution/jobs.py")
        module.INVALID_CURSOR_ERROR = getattr(sys.modules.get("utils.cursor"), "InvalidCursorError", None)
        return module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def available() -> list[str]:
    return [version for version in VERSIONS if load(version) is not None]


def skip_reason(version: str) -> str:
    return f"ComfyUI {version} ({VERSIONS[version][0][:8]}) not found: set {ENV_VAR} to a ComfyUI git repository"


# -- ComfyUI's handlers (server.py) over a loaded module -----------------------------


def _bad(message: str, **extra: Any) -> tuple[int, dict]:
    return 400, {"error": message, **extra}


def comfy_list(module: ModuleType, history: dict, running: list, pending: list, params: dict) -> tuple[int, dict]:
    """ComfyUI's ``GET /api/jobs`` answer for ``params`` (first value of each)."""
    statuses = list(module.JobStatus.ALL)
    status_filter = None
    if params.get("status"):
        status_filter = [s.strip().lower() for s in params["status"].split(",") if s.strip()]
        invalid = [s for s in status_filter if s not in statuses]
        if invalid:
            return _bad(f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(statuses)}")
    sort_by = params.get("sort_by", "created_at").lower()
    sort_order = params.get("sort_order", "desc").lower()
    if sort_by not in {"created_at", "execution_duration"}:
        return _bad("sort_by must be 'created_at' or 'execution_duration'")
    if sort_order not in {"asc", "desc"}:
        return _bad("sort_order must be 'asc' or 'desc'")
    limit = None
    if "limit" in params:
        try:
            limit = int(params["limit"])
        except (ValueError, TypeError):
            return _bad("limit must be an integer")
        if limit <= 0:
            return _bad("limit must be a positive integer")
    offset = 0
    if "offset" in params:
        try:
            offset = max(0, int(params["offset"]))
        except (ValueError, TypeError):
            return _bad("offset must be an integer")
    options = dict(
        status_filter=status_filter,
        workflow_id=params.get("workflow_id"),
        sort_by=sort_by,
        sort_order=sort_order,
        limit=limit,
        offset=offset,
    )
    cursor_error = getattr(module, "INVALID_CURSOR_ERROR", None)
    if cursor_error is not None:  # the cursor version
        try:
            jobs, total, has_more, next_cursor = module.get_all_jobs(
                running, pending, history, after=params.get("after"), **options
            )
        except cursor_error:
            return _bad("Invalid pagination cursor", code="INVALID_CURSOR")
    else:
        jobs, total = module.get_all_jobs(running, pending, history, **options)
        has_more, next_cursor = (offset + len(jobs)) < total, None
    pagination = {"offset": offset, "limit": limit, "total": total, "has_more": has_more}
    if next_cursor is not None:
        pagination["next_cursor"] = next_cursor
    return 200, {"jobs": jobs, "pagination": pagination}


def comfy_detail(module: ModuleType, history: dict, running: list, pending: list, job_id: str) -> tuple[int, dict]:
    """ComfyUI's ``GET /api/jobs/{job_id}`` answer."""
    job = module.get_job(job_id, running, pending, history)
    return (404, {"error": "Job not found"}) if job is None else (200, job)
