"""Small parsers for command-line input: durations (``7d``), status lists, times.

Kept free of heavy imports so the CLI can validate options before loading SQLAlchemy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone

STATUS_ORDER = ("pending", "in_progress", "completed", "failed", "cancelled")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
DURATION_HELP = "a whole number and a unit s, m, h, d or w (e.g. 30m, 24h, 7d, 2w)"


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_duration(text: str) -> int:
    """``7d`` → milliseconds. Raises ValueError with a one-line message."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"invalid duration {text!r}: use {DURATION_HELP}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_statuses(text: str, *, allowed: Sequence[str] = STATUS_ORDER) -> tuple[str, ...]:
    """``failed, cancelled`` → ('failed', 'cancelled'); ValueError on an unknown or no status."""
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"invalid status {', '.join(bad)}: use a comma list of {', '.join(allowed)}")
    if not values:
        raise ValueError(f"no status given: use a comma list of {', '.join(allowed)}")
    return values


def iso_ms(ms: int | None) -> str | None:
    """Epoch ms → ``2025-11-24T16:00:00.123Z`` (the format of the ``jobs_v`` view)."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def day_iso(day: int) -> str:
    """Days since the epoch → ``2025-11-24`` (UTC)."""
    return datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%d")
