"""jobs-index as a ComfyUI custom node: this repository is one.

    cd ComfyUI/custom_nodes && git clone <repository URL> jobs-index
    <ComfyUI's python> -m pip install -r jobs-index/requirements.txt

(what ComfyUI-Manager's "Install via Git URL" and ``comfy node install`` do). ComfyUI
imports this file at start-up, after creating its server. It then

* makes this clone's ``jobs_index`` package importable under its own name: one
  ``sys.modules`` entry, loaded from ``<this directory>/jobs_index``; ``sys.path`` is
  left alone, so nothing else in this directory (``tests``, ``migrations``...) can
  shadow a module of ComfyUI or of another node. If ``jobs_index`` is already
  imported (e.g. by the shim ``jobs-index install-comfyui`` writes), that one is used;
* calls ``jobs_index.comfyui.setup()`` (see ``jobs_index/comfyui/node.py``), which
  never raises: on any problem ComfyUI starts without jobs-index and the log says why.

Outside ComfyUI (pytest collecting this repository, ``pip install .``) it does nothing.
"""

import importlib.util
import logging
import os
import sys

NODE_CLASS_MAPPINGS = {}  # no graph nodes: jobs-index records jobs and serves /api/jobs
NODE_DISPLAY_NAME_MAPPINGS = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _in_comfyui() -> bool:
    """ComfyUI imports custom nodes after ``server.PromptServer`` exists (looked up in
    ``sys.modules``: importing some unrelated ``server`` module is not our business)."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None) is not None


def _load_jobs_index():
    if "jobs_index" in sys.modules:
        return sys.modules["jobs_index"]
    package_dir = os.path.join(_HERE, "jobs_index")
    spec = importlib.util.spec_from_file_location(
        "jobs_index", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["jobs_index"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["jobs_index"]
        raise
    return module


if _in_comfyui():
    try:
        _load_jobs_index()
        from jobs_index.comfyui import setup as _setup
    except ImportError as _exc:  # a requirement missing from ComfyUI's Python
        logging.getLogger("jobs_index").error(
            "jobs-index: not enabled (%s); install its requirements into the Python that runs ComfyUI: "
            "%s -m pip install -r %s",
            _exc,
            sys.executable,
            os.path.join(_HERE, "requirements.txt"),
        )
    else:
        _setup(comfyui_dir=os.path.dirname(os.path.dirname(_HERE)))
