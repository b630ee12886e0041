"""Who holds a source's lease: holder names and the "is its process gone?" check
shared by the live writers (the ComfyUI custom node, ``follow``).

A holder is ``host/pid/token``: the host name, the process id and a random token
(one process may hold several leases under one name). The lease itself lives in the
database (``source_leases``, ``JobsIndex.acquire_lease``).
"""

from __future__ import annotations

import os
import socket
import uuid

HOST = socket.gethostname()


def new_holder() -> str:
    """A holder name for this process (a new token each call)."""
    return f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        return True
    return True


def holder_is_gone(holder: str) -> bool:
    """A holder on this host whose process has exited (its lease can be taken at
    once, without waiting for it to expire). Holders elsewhere: unknown, False."""
    host, _, pid = holder.rpartition("/")[0].rpartition("/")
    try:
        number = int(pid)
    except ValueError:
        return False
    return host == HOST and number != os.getpid() and not _pid_alive(number)
