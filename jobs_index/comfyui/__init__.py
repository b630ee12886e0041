"""jobs-index as a ComfyUI custom node: every job recorded in the index as ComfyUI runs
it, and ComfyUI's ``GET /api/jobs`` answered from the index (the whole persistent
history, beyond ComfyUI's 10,000 entries and across restarts).

Enable it with ``jobs-index install-comfyui /path/to/ComfyUI``, which writes the shim
``custom_nodes/jobs_index_node/__init__.py`` that calls ``setup()`` (see ``node``).
"""

from __future__ import annotations

from .node import JobsNode, NodeConfig, current, default_db_url, setup

__all__ = ["JobsNode", "NodeConfig", "current", "default_db_url", "setup"]
