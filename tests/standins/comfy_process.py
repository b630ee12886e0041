"""A stand-in ComfyUI *process* with the jobs-index custom node, for tests that kill it.

    python -m tests.standins.comfy_process --port 8188 --dir /path/to/ComfyUI

As ComfyUI's ``main.py`` does: parse the arguments (here a ``comfy.cli_args`` module
with ``args.port``/``args.listen``, as the custom node reads them at import), build the
``PromptServer`` (``comfy_server``), import the custom node (``setup()``, configured
from the environment: ``JOBS_INDEX_DB`` ...; ``folder_paths.get_user_directory()`` is
``<dir>/user``), start the server, then the prompt worker. Prints ``READY <url>`` on
stdout once it listens, and runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import types
from pathlib import Path

from jobs_index.comfyui import setup

from .comfy_server import PromptServer, install_comfy_modules, run_worker


def install_comfyui_args(port: int, listen: str, user_dir: Path) -> None:
    comfy = types.ModuleType("comfy", "Stand-in for ComfyUI's comfy package.")
    cli_args = types.ModuleType("comfy.cli_args", "Stand-in for ComfyUI's parsed arguments.")
    cli_args.args = types.SimpleNamespace(port=port, listen=listen)
    comfy.cli_args = cli_args
    folder_paths = types.ModuleType("folder_paths", "Stand-in for ComfyUI's folder_paths.")
    folder_paths.get_user_directory = lambda: str(user_dir)
    sys.modules.update({"comfy": comfy, "comfy.cli_args": cli_args, "folder_paths": folder_paths})


async def main(port: int, comfyui_dir: Path) -> None:
    install_comfy_modules()
    install_comfyui_args(port, "127.0.0.1", comfyui_dir / "user")
    server = PromptServer(asyncio.get_running_loop())
    node = setup(server, comfyui_dir=comfyui_dir)
    if node is None:
        raise SystemExit("jobs-index did not start")
    url = await server.start(port=port)
    run_worker(server.prompt_queue)
    print(f"READY {url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(options.port, options.dir))
