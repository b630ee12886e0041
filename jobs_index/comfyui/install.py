"""``jobs-index install-comfyui``: write (or remove) the custom node shim.

The shim is ``<ComfyUI>/custom_nodes/jobs_index_node/__init__.py``: a few lines that
import this package from ComfyUI's Python and call ``setup()``. jobs-index itself must
be installed into that Python (``<ComfyUI python> -m pip install jobs-index``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

SHIM_DIR = "jobs_index_node"
SHIM_MARKER = "# jobs-index custom node shim (written by `jobs-index install-comfyui`)"
SHIM = f'''{SHIM_MARKER}
"""jobs-index: ComfyUI's /api/jobs from a persistent SQL index (all history, across restarts).

Remove with `jobs-index install-comfyui --uninstall <ComfyUI directory>`.
Settings (environment): JOBS_INDEX_DB (default <ComfyUI>/user/jobs-index/jobs.sqlite3),
JOBS_INDEX_SOURCE, JOBS_INDEX_SERVE, JOBS_INDEX_FOLLOW_DELETES, JOBS_INDEX_QUEUE_MAX,
JOBS_INDEX_WAIT_MS. See the jobs-index README.
"""
import logging
import os

NODE_CLASS_MAPPINGS = {{}}
NODE_DISPLAY_NAME_MAPPINGS = {{}}

try:
    from jobs_index.comfyui import setup as _setup
except ImportError as _exc:
    logging.getLogger("jobs_index").error(
        "jobs-index is not installed in the Python that runs ComfyUI (%s); "
        "install it with: python -m pip install jobs-index", _exc)
else:
    _setup(comfyui_dir=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
'''


def _custom_nodes(comfyui_dir: str | Path) -> Path:
    root = Path(comfyui_dir).expanduser()
    custom_nodes = root / "custom_nodes"
    if not custom_nodes.is_dir():
        raise ConfigError(f"{root} is not a ComfyUI directory (no custom_nodes/ in it)")
    return custom_nodes


def _is_ours(shim: Path) -> bool:
    try:
        return shim.read_text(encoding="utf-8").startswith(SHIM_MARKER)
    except OSError:
        return False


def install(comfyui_dir: str | Path) -> Path:
    """Write the shim; returns its path. Refuses to overwrite a package that is not ours."""
    target = _custom_nodes(comfyui_dir) / SHIM_DIR
    shim = target / "__init__.py"
    if target.exists() and not _is_ours(shim):
        raise ConfigError(f"{target} exists and was not written by jobs-index; remove it first")
    try:
        target.mkdir(exist_ok=True)
        tmp = shim.with_suffix(".tmp")
        tmp.write_text(SHIM, encoding="utf-8")
        tmp.replace(shim)
    except OSError as exc:
        raise ConfigError(f"cannot write {shim}: {exc.strerror}") from exc
    return shim


def uninstall(comfyui_dir: str | Path) -> Path | None:
    """Remove the shim package; returns its path, or None if it was not installed."""
    target = _custom_nodes(comfyui_dir) / SHIM_DIR
    if not target.exists():
        return None
    if not _is_ours(target / "__init__.py"):
        raise ConfigError(f"{target} was not written by jobs-index; not removing it")
    try:
        shutil.rmtree(target)
    except OSError as exc:
        raise ConfigError(f"cannot remove {target}: {exc.strerror}") from exc
    return target
