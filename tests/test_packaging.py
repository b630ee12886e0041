"""Packaging as a ComfyUI custom node: the repository itself is one (a top-level
``__init__.py`` ComfyUI imports, ``requirements.txt`` for ComfyUI's Python, registry
metadata in ``pyproject.toml``), and the requirements agree with ComfyUI's own.

``tests/fixtures/comfyui_requirements.txt`` is ComfyUI's ``requirements.txt`` at the
seed's commit (copied unchanged)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_REQUIREMENTS = Path(__file__).resolve().parent / "fixtures" / "comfyui_requirements.txt"


def requirements(path: Path) -> dict[str, Requirement]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_requirements_txt_is_the_package_dependencies():
    declared = {
        canonicalize_name(Requirement(line).name): Requirement(line) for line in pyproject()["project"]["dependencies"]
    }
    listed = requirements(ROOT / "requirements.txt")
    assert {name: str(r) for name, r in listed.items()} == {name: str(r) for name, r in declared.items()}


def test_our_requirements_do_not_fight_comfyuis_pins():
    """For every package both name (and aiohttp's own yarl pin), one version satisfies
    both specifiers: the one installed here (a witness that the intersection is not
    empty, on a real resolver's choice); and none of ours has an upper bound below
    ComfyUI's floor."""
    ours, theirs = requirements(ROOT / "requirements.txt"), requirements(COMFYUI_REQUIREMENTS)
    shared = sorted(set(ours) & set(theirs))
    assert {"aiohttp", "sqlalchemy", "alembic"} <= set(shared)
    for name in shared:
        installed = metadata.version(name)
        assert ours[name].specifier.contains(installed, prereleases=True), (name, installed)
        assert theirs[name].specifier.contains(installed, prereleases=True), (name, installed, str(theirs[name]))
        assert not any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in ours[name].specifier), (
            f"{name}: an upper bound or pin in our requirements could fight ComfyUI's"
        )
    # aiohttp brings yarl, which ComfyUI pins too
    assert theirs["yarl"].specifier.contains(metadata.version("yarl"), prereleases=True)


def test_registry_metadata():
    data = pyproject()
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert data["project"]["urls"]["Repository"].startswith("https://")
    assert data["project"]["name"] == data["project"]["name"].lower()  # the registry's node id


def test_the_wheel_holds_the_package_not_the_custom_node_entry(tmp_path):
    """``pip install .`` still installs ``jobs_index`` (migrations included) and not the
    repository's top-level ``__init__.py``, which is for ComfyUI only."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    import zipfile

    (wheel,) = tmp_path.glob("jobs_index-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "jobs_index/comfyui/upgrade.py" in names and "jobs_index/migrations/env.py" in names
    assert not [name for name in names if "/" not in name and name.endswith(".py")]  # no top-level module
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]


# The ComfyUI way: ComfyUI's loader imports custom_nodes/<dir>/__init__.py from its path
# under a module name of its own (nodes.load_custom_node), after creating PromptServer.
LOAD_AS_COMFYUI = r"""
import asyncio, importlib.util, json, sys, time
clone, standins = sys.argv[1], sys.argv[2]
sys.path.append(standins)
from tests.standins.comfy_server import PromptServer, install_comfy_modules
sys.path.remove(standins)
install_comfy_modules()
server = PromptServer(asyncio.new_event_loop())
path_before = list(sys.path)
spec = importlib.util.spec_from_file_location(clone, clone + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[clone] = module
spec.loader.exec_module(module)
import jobs_index
from jobs_index.comfyui import current
node = current()
deadline = time.monotonic() + 60
while node is not None and not node.writer.ready and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"mappings": module.NODE_CLASS_MAPPINGS, "jobs_index": jobs_index.__file__,
                  "node": node is not None, "ready": bool(node and node.writer.ready),
                  "failing": node and node.writer.failing, "db": node and node.config.db_url,
                  "path_unchanged": sys.path == path_before}))
node.close()
"""


def test_a_git_clone_in_custom_nodes_is_loaded_the_comfyui_way(tmp_path):
    """A copy of this repository as ``ComfyUI/custom_nodes/jobs-index`` (what ``git clone``
    gives), imported as ComfyUI's loader does in a fresh Python: it runs the clone's
    ``jobs_index`` (not an installed one), leaves ``sys.path`` alone, creates its index
    in ComfyUI's user directory (the schema upgrade, in a child process, imports the
    clone too) and exports empty ``NODE_CLASS_MAPPINGS``."""
    comfyui = tmp_path / "ComfyUI"
    clone = comfyui / "custom_nodes" / "jobs-index"
    (comfyui / "user").mkdir(parents=True)
    shutil.copytree(
        ROOT,
        clone,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "results"
        ),
    )
    env = {key: value for key, value in os.environ.items() if key != "JOBS_INDEX_DB"}
    env["JOBS_INDEX_SOURCE"] = "clone-test"  # the loader below starts no server, so no port names the source
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AS_COMFYUI, str(clone), str(ROOT)],
        cwd=comfyui,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mappings"] == {} and report["node"] and report["path_unchanged"]
    assert report["jobs_index"] == str(clone / "jobs_index" / "__init__.py")
    assert report["ready"], (report["failing"], done.stderr)
    assert report["db"] == f"sqlite:///{comfyui / 'user' / 'jobs-index' / 'jobs.sqlite3'}"
    assert (comfyui / "user" / "jobs-index" / "jobs.sqlite3").is_file()
    assert sorted(path.name for path in (comfyui / "user").iterdir()) == ["jobs-index"]
