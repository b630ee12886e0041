"""Headless Chromium for the page tests: Debian's ``chromium`` package (Playwright's
own browser download is not reachable here), started with the flags this machine's
closed network needs (no background connections, no component updates)."""

from __future__ import annotations

import os
import shutil

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
