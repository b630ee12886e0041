"""Logs a machine can read: ``--log-format json`` on the long-running commands.

One JSON object per line (a traceback is a string field, its newlines escaped):
``{"time": "2026-12-06T03:21:28.123Z", "level": "WARNING", "logger": "jobs_index.follow",
"message": "...", "exc_type": "...", "exc": "..."}``. The formatter writes only what
the log call gave it: jobs-index never logs prompt text, workflows or the sensitive
sixth element of a queue item (``tests/test_reliability_secrets.py`` plants a key and
searches the logs of both formats for it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

FORMATS = ("text", "json")
ANNOUNCE_LOGGER = "jobs_index.announce"  # start-up lines ("serving ...", "following ...")


class JsonFormatter(logging.Formatter):
    """A ``logging`` record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_type"] = record.exc_info[0].__name__
            event["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exc"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def use_format(log_format: str) -> Callable[[str], None] | None:
    """Switch the root logger's handlers to ``log_format``. For ``json``, returns
    the function that writes start-up announcements as INFO events of
    ``ANNOUNCE_LOGGER`` (so stderr stays one JSON event per line); None for text."""
    if log_format != "json":
        return None
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
    announce = logging.getLogger(ANNOUNCE_LOGGER)
    if announce.getEffectiveLevel() > logging.INFO:
        announce.setLevel(logging.INFO)
    return announce.info
