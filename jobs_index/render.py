"""Printing rows for people and programs: an aligned text table, CSV or JSON.

No database code: values come from the drivers (``int``, ``float``, ``str``,
``bytes``, ``Decimal``, ``datetime``, dicts for PostgreSQL json, ...).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def json_value(value: Any) -> Any:
    """A value JSON can carry, as close to the SQL value as possible."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinities: their names, spelt as json.dumps and
        # PostgreSQL's numeric spell them, so both engines print the same.
        return value if math.isfinite(value) else json.dumps(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        # A numeric keeps its scale: 4.0 (a float's queue number, jobs.priority) stays a
        # float, 4 an int (exact, however large).
        exponent = value.as_tuple().exponent  # an int: the value is finite (a NaN or an infinity has a letter)
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def text_value(value: Any) -> str:
    """A cell for a table or CSV: NULL is empty, JSON values are compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_value(value), ensure_ascii=False, separators=(",", ":"))
    converted = json_value(value)
    return converted if isinstance(converted, str) else str(converted)


def _unique(columns: Sequence[str]) -> list[str]:
    """JSON object keys: a repeated column name gets a suffix (id, id_2, ...)."""
    seen: dict[str, int] = {}
    keys = []
    for name in columns:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return keys


def write_json(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """A JSON array of objects, written row by row. Returns the row count."""
    keys = _unique(columns)
    count = 0
    out.write("[")
    for row in rows:
        out.write(",\n " if count else "\n ")
        out.write(json.dumps({k: json_value(v) for k, v in zip(keys, row, strict=True)}, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_csv(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """RFC 4180 CSV with a header row, written row by row. Returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([text_value(v) for v in row])
        count += 1
    return count


def _cell(value: Any, max_width: int) -> str:
    text = text_value(value).replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    if max_width and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def format_table(columns: Sequence[str], rows: Iterable[Sequence], *, max_width: int = 60, footer: bool = True) -> str:
    """An aligned text table (numbers right-aligned), like psql's, with a row count."""
    data = [[(_cell(v, max_width), _numeric(v)) for v in row] for row in rows]
    headers = [str(c) for c in columns]
    widths = [len(h) for h in headers]
    for row in data:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "-+-".join("-" * w for w in widths),
    ]
    for row in data:
        lines.append(
            " | ".join(
                text.rjust(w) if numeric else text.ljust(w) for (text, numeric), w in zip(row, widths, strict=True)
            ).rstrip()
        )
    if footer:
        lines.append(f"({len(data)} row{'s' if len(data) != 1 else ''})")
    return "\n".join(lines) + "\n"


def progress_bar(label: str, total: int):
    """``(update, finish)``: a progress bar on stderr when it is a terminal and the
    work is long (200+ steps); otherwise ``update`` is None and ``finish`` a no-op."""
    import sys

    import click

    if not sys.stderr.isatty() or total < 200:
        return None, lambda: None
    bar = click.progressbar(length=total, label=label, file=sys.stderr)
    bar.__enter__()
    return bar.update, lambda: bar.__exit__(None, None, None)
