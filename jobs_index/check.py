"""``jobs-index check [--repair]``: verify everything derived against the rows.

The rows of ``jobs`` are the truth, and each row's ``raw`` item is the truth about
the row. Derived from them, and checked here (in keyset batches by id, each batch
one transaction, on both engines):

* the columns ``normalize`` derives from ``raw`` (status, times, error fields, ...);
* the side rows (``job_outputs``, ``job_search``: its copies of the listing columns
  and the search document's names) of every job, and side rows whose job is gone;
* ``job_counts`` and ``job_time_buckets`` against a recount of ``jobs`` (one snapshot).

Drift comes from writes that bypass jobs-index: ``INSERT OR REPLACE`` in the
``sqlite3`` shell deletes the old row without firing the delete trigger, an
``UPDATE`` of ``raw`` leaves the derived columns alone, a delete with foreign keys
off... ``repair=True`` writes back what the rows say: derived columns and side rows
batch by batch (a writer's transaction each; PostgreSQL locks the batch's rows),
then the counters (``JobsIndex.repair_counts``, ``repair_buckets``). A ``raw`` that
cannot be read or normalised is reported, never changed or deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from . import check_queries as cq
from . import queries, rawcodec
from .database import read_transaction, write_transaction
from .errors import InvalidItem, RawUnreadable
from .normalize import (
    KIND_HISTORY,
    JobRecord,
    answer_text,
    column_text,
    from_history,
    from_queue,
    loads_exact,
)
from .services import JobsIndex
from .write_queries import pg_priority

BATCH_SIZE = 1000
EXAMPLES = 5  # ids kept per kind of problem, for the report
JSON_COLUMNS = ("preview_output", "execution_error")


@dataclass
class Finding:
    """One kind of problem: how many, and a few examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, n: int = 1) -> None:
        self.count += n
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class CheckReport:
    jobs: int = 0
    derived: Finding = field(default_factory=Finding)  # jobs whose derived columns differ from raw
    side_rows: Finding = field(default_factory=Finding)  # jobs whose side rows differ from raw
    orphans: Finding = field(default_factory=Finding)  # side rows whose job is gone
    unreadable: Finding = field(default_factory=Finding)  # raw that cannot be read or normalised
    counters: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)  # key: (stored, actual)
    buckets: dict[tuple[int, str, int], tuple[int, int]] = field(default_factory=dict)  # job_time_buckets, as counters
    repaired: bool = False

    @property
    def problems(self) -> int:
        """Problems a repair fixes (unreadable raw is reported, never repaired)."""
        return self.derived.count + self.side_rows.count + self.orphans.count + len(self.counters) + len(self.buckets)

    @property
    def clean(self) -> bool:
        return self.problems == 0 and self.unreadable.count == 0


def derive(row, reader: rawcodec.Reader) -> JobRecord:
    """The record ``raw`` says this row is (raises on unreadable raw), its workflow id
    as the column stores it (``normalize.column_text``)."""
    item, exact = loads_exact(reader.json(row.raw, row.raw_dict_id, row.id))
    if row.raw_kind == KIND_HISTORY:
        record = from_history(row.id, item, exact)
    else:
        record = from_queue(item, row.status, exact)  # pending vs running is not in a queue item
    record.workflow_id = column_text(record.workflow_id)
    return record


def _same(name: str, stored, derived) -> bool:
    if isinstance(stored, Decimal):  # PostgreSQL's numeric priority: 4.0 is not 4, NaN is NaN
        return isinstance(derived, Decimal) and str(stored) == str(derived)
    if stored == derived:
        return True
    if name in JSON_COLUMNS and stored is not None and derived is not None:
        try:  # the same value written by another encoder (e.g. 1e-07 vs 1e-7)
            return json.loads(stored) == json.loads(derived)
        except ValueError:
            return False
    return False


def _group(rows, columns: tuple[str, ...]) -> dict[str, list[tuple]]:
    grouped: dict[str, list[tuple]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(tuple(getattr(row, c) for c in columns))
    return grouped


def _json_list(values) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def _search_row(row, record: JobRecord, copies_from_row: bool) -> tuple:
    """The ``job_search`` row (``cq.SEARCH_COLUMNS``) a job should have: the listing
    columns as its ``jobs`` row holds them (``copies_from_row``) or as ``raw`` says
    (the row's own columns being wrong: a repair rewrites them, and the copies
    follow), and the search document's name lists."""
    assert record.search is not None  # derive() gives every record its document
    listed = tuple(getattr(row if copies_from_row or name == "source" else record, name) for name in cq.SEARCH_LISTED)
    doc = record.search
    return (*listed, _json_list(doc.node_types), _json_list(doc.models), _json_list(doc.loras))


def _check_batch(conn, after: str | None, size: int, repair: bool, report: CheckReport) -> str | None:
    """Check (and repair) the jobs after ``after``; returns the last id, None at the end."""
    rows = cq.job_batch(conn, after, size, for_update=repair)
    last = rows[-1].id if rows else None
    stored_outputs, stored_search = cq.side_rows_between(conn, after, last)
    outputs, searches = _group(stored_outputs, cq.OUTPUT_COLUMNS), _group(stored_search, cq.SEARCH_COLUMNS)
    fix_side, new_outputs, new_search = [], [], []
    pg = conn.dialect.name == "postgresql"
    reader = rawcodec.Reader(conn)
    for row in rows:
        report.jobs += 1
        outputs_of, search_of = outputs.pop(row.id, []), searches.pop(row.id, [])
        try:
            record = derive(row, reader)
        except (InvalidItem, ValueError, RawUnreadable, TypeError) as exc:
            report.unreadable.add(f"{row.id}: {type(exc).__name__}: {exc}"[:200])
            continue
        if pg:  # the priority as PostgreSQL's numeric holds it (write_queries.job_rows)
            record.priority = pg_priority(record.priority, record.priority_json)
        wrong = [name for name in cq.DERIVED_COLUMNS if not _same(name, getattr(row, name), getattr(record, name))]
        if wrong:
            report.derived.add(f"{row.id} ({', '.join(wrong)})")
            if repair:
                cq.update_derived(conn, row.id, {name: getattr(record, name) for name in cq.DERIVED_COLUMNS})
        want_outputs = [tuple(o[c] for c in cq.OUTPUT_COLUMNS) for o in record.output_files]
        # A row whose own columns are wrong: its copies may hold either the row's values
        # (PostgreSQL's trigger followed an UPDATE) or raw's (SQLite's INSERT OR REPLACE
        # fires no trigger); the repair's UPDATE of the row carries raw's over.
        want_search = {_search_row(row, record, copies) for copies in ((True, False) if wrong else (True,))}
        if outputs_of != want_outputs or len(search_of) != 1 or search_of[0] not in want_search:
            report.side_rows.add(row.id)
            fix_side.append(row.id)
            new_outputs += [{**o, "job_id": row.id} for o in record.output_files]
            # The search row is written from ComfyUI's values (search_queries maps them
            # to the column form) and the row's source, as the row will be after repair.
            new_search.append(
                replace(record, id=answer_text(row.id), workflow_id=answer_text(record.workflow_id), source=row.source)
            )
    orphan_ids = sorted(outputs.keys() | searches.keys())  # side rows in this id range with no job
    for job_id in orphan_ids:
        report.orphans.add(job_id, len(outputs.get(job_id, ())) + len(searches.get(job_id, ())))
    if repair and (fix_side or orphan_ids):
        cq.replace_side_rows(conn, fix_side + orphan_ids, new_outputs, new_search)
    return last


def check(
    index: JobsIndex,
    *,
    repair: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Verify (and with ``repair`` rebuild) derived columns, side rows and counters."""
    report = CheckReport(repaired=repair)
    transaction = write_transaction if repair else read_transaction
    after: str | None = None
    while True:
        before = report.jobs
        with transaction(index.engine) as conn:
            last = _check_batch(conn, after, batch_size, repair, report)
        if progress is not None:
            progress(report.jobs - before)
        if last is None:
            break
        after = last
    if repair:
        report.counters = index.repair_counts()
        report.buckets = index.repair_buckets()
    else:
        with read_transaction(index.engine) as conn:
            report.counters = _differences(queries.stored_counts(conn), queries.recount(conn))
            report.buckets = _differences(queries.stored_buckets(conn), queries.recount_buckets(conn))
    return report


def _differences(stored: dict, actual: dict) -> dict:
    """``{key: (stored, actual)}`` where they differ (a missing key is 0)."""
    return {
        key: (stored.get(key, 0), actual.get(key, 0))
        for key in stored.keys() | actual.keys()
        if stored.get(key, 0) != actual.get(key, 0)
    }
