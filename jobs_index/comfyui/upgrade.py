"""Opening the index inside ComfyUI without ever running Alembic in ComfyUI's process.

ComfyUI imports the custom nodes and then, on its main thread, upgrades its own
``user/comfyui.db`` with Alembic (``setup_database()`` in ``main.py``). Alembic's
``context`` and ``op`` are module globals, set for the one migration that runs at a
time in a process: two upgrades on two threads use each other's connection and
configuration (ComfyUI's tables end up in our file, its ``comfyui.db`` stays at its
first revision, ``KeyError: 'config'``, even a segmentation fault). So the node

* reads the schema revision in-process with plain SQL (our version table, on our own
  connection; no ``env.py``, no ``context``/``op`` proxies) and compares it with
  the head of this version's scripts (``ScriptDirectory``: parses our revision files,
  touches no global state);
* when the index is behind (a new file, or an older jobs-index wrote it), runs
  ``database.migrate`` in a child Python (``sys.executable``, ComfyUI's interpreter,
  importing the very ``jobs_index`` package this process loaded) and waits for it on
  the writer thread. Whatever ComfyUI's own timing, the two migrations live in two
  processes; Alembic's logging, ``sys.path`` and module state stay out of ComfyUI's.

The URL reaches the child through ``JOBS_INDEX_DB`` in its environment (never on its
command line, where ``ps`` would show a password).

``open_failure_hint`` turns why the index could not be opened into what to do, for
the one log line the node writes when it runs without its index.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

# Alembic's modules are imported here, when ComfyUI imports the custom node on its main
# thread, never first on the writer thread: two threads importing alembic for the first
# time at once (ours and ComfyUI's own database set-up) fail with "partially
# initialized module" (tests/test_custom_node_startup.py). Importing them runs no
# migration and sets none of Alembic's context.
import alembic.config  # noqa: F401 - imported for its side effect on the module cache (above)
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from ..config import ENV_VAR
from ..database import VERSION_TABLE, alembic_config, driver_message
from ..errors import DatabaseTooNew, StorageError

log = logging.getLogger("jobs_index.comfyui")

CHILD_TIMEOUT = 3600.0  # seconds: an upgrade of a large file (backup + DDL) is slow, not stuck
# The child: import the jobs_index this process runs (a git clone in custom_nodes/ is
# not on sys.path), without ComfyUI's working directory shadowing anything, and only
# what a migration needs (not this package, which imports aiohttp and the services).
_CHILD_CODE = """
import os, sys
if sys.path and sys.path[0] in ('', '.'):
    del sys.path[0]
if sys.argv[1] not in sys.path:
    sys.path.insert(0, sys.argv[1])
import logging
logging.basicConfig(level=logging.WARNING, format='%(message)s')  # this child's own logging
from jobs_index.database import make_engine, migrate
from jobs_index.errors import JobsIndexError
try:
    engine = make_engine(os.environ['JOBS_INDEX_DB'], pool_size=1)
    try:
        migrate(engine)
    finally:
        engine.dispose()
except JobsIndexError as exc:
    sys.exit('Error: ' + exc.message)
except Exception as exc:  # Alembic's own errors
    sys.exit('Error: %s: %s' % (type(exc).__name__, ' '.join(str(exc).split())))
"""


def package_root() -> str:
    """The directory holding the ``jobs_index`` package this process imported."""
    return str(Path(__file__).resolve().parent.parent.parent)


def is_at_head(engine: Engine) -> bool:
    """True when the index's schema is this version's head, False when it is behind (a
    read; no migration). A revision these scripts do not know (a newer jobs-index wrote
    the index) is a ``StorageError``: retrying cannot help, so no child is started."""

    try:
        with engine.connect() as conn:
            current = stored_revision(conn)
    except DBAPIError as exc:
        raise StorageError(f"cannot open {_shown(engine)}: {driver_message(exc)}") from exc
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as exc:
            raise DatabaseTooNew(
                f"{_shown(engine)} is at schema revision {current!r}, which this jobs-index "
                "does not know (a newer version wrote it)"
            ) from exc
    return current == script.get_current_head()


def stored_revision(conn) -> str | None:
    """The revision in our version table (None: no table yet), by plain SQL: Alembic's
    ``MigrationContext`` would also log its "Context impl" lines into ComfyUI's log."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def ensure_schema(engine: Engine, url: str, *, timeout: float = CHILD_TIMEOUT) -> bool:
    """Bring the index at ``url`` (open as ``engine``) to head, migrating in a child
    process if needed. Returns True if a migration ran. Raises ``StorageError``."""
    if is_at_head(engine):
        return False
    log.info("jobs-index: creating or upgrading the index schema in %s (separate process)", _shown(engine))
    upgrade_in_child(url, timeout=timeout)
    if not is_at_head(engine):
        raise StorageError(f"{_shown(engine)} is not at this version's schema after the upgrade")
    return True


def upgrade_in_child(url: str, *, timeout: float = CHILD_TIMEOUT) -> None:
    """Run ``database.migrate`` on ``url`` in a child Python; raise ``StorageError`` with
    the child's last error line if it fails."""
    env = dict(os.environ)
    env[ENV_VAR] = url
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console window
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, package_root()],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            creationflags=flags,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StorageError(f"cannot run the schema upgrade ({sys.executable}): {exc}") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise StorageError(f"schema upgrade failed: {reason.removeprefix('Error: ')}")


def open_failure_hint(exc: BaseException, url: str) -> str:
    """What a user can do about ``exc``, raised while opening the index at ``url``."""
    text = str(exc).lower()
    where: str | None = url  # or an SQLite URL's database path (None for sqlite://: in memory)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        where = parsed.database if parsed.get_backend_name() == "sqlite" else parsed.render_as_string(True)
    except Exception:
        pass
    if "can't locate revision" in text or "newer version" in text:
        return (
            f"{where} was written by a newer jobs-index: update this node (git pull, or "
            f"pip install -U jobs-index), or set {ENV_VAR} to another database"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"{where} is damaged: move it aside (a {Path(str(where)).name}.bak-* next to it is an "
            f"earlier backup), or set {ENV_VAR} to another file"
        )
    if "locked" in text:
        return f"another process holds a lock on {where}; close it (another ComfyUI or jobs-index?)"
    if (
        "readonly" in text
        or "read-only" in text
        or "permission" in text
        or "unable to open" in text
        or "cannot create the directory" in text
        or "is a directory" in text
    ):
        return (
            f"make {where} (and its directory) writable by the user running ComfyUI, "
            f"or set {ENV_VAR} to a writable location"
        )
    if "connect" in text or "timeout" in text or "could not translate host" in text:
        return f"start the database server or fix {ENV_VAR} ({where})"
    return f"fix the cause above, or set {ENV_VAR} to another database"


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
