"""``--log-format json``: one JSON event per line, tracebacks included (issue #17)."""

from __future__ import annotations

import io
import json
import logging

from click.testing import CliRunner

from jobs_index.cli import cli
from jobs_index.logformat import JsonFormatter


def test_each_event_is_one_json_line_even_with_a_multiline_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("jobs_index.test_logformat")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("gpu1:8188: %s; reconnecting in %.1fs", "ClientConnectorError: refused\nsecond line", 0.5)
        try:
            raise ValueError("bad\nanswer")
        except ValueError:
            logger.exception("unexpected error")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "jobs_index.test_logformat"
    assert first["message"] == "gpu1:8188: ClientConnectorError: refused\nsecond line; reconnecting in 0.5s"
    assert first["time"].endswith("Z") and "exc" not in first
    assert second["exc_type"] == "ValueError" and "Traceback" in second["exc"] and "bad\nanswer" in second["exc"]


def test_log_format_is_an_option_of_the_long_running_commands():
    for command in ("serve", "follow"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert "--log-format [text|json]" in result.output
    result = CliRunner().invoke(cli, ["serve", "--log-format", "xml"])
    assert result.exit_code == 2 and "xml" in result.output
