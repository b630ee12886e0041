"""The operator's toolbox: stats, retention (prune) and JSONL export.

Services over a ``JobsIndex``: each function owns its transactions (SQL lives in
``toolbox_queries``; ad-hoc SQL in ``adhoc``; import of an export in ``ingest``).
Times are epoch milliseconds; windows are "the last N units" ending now.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from . import rawcodec
from . import toolbox_queries as tq
from .database import read_transaction, write_transaction
from .errors import JobsIndexError
from .normalize import answer_text
from .services import JobsIndex
from .transfer import export_line
from .units import STATUS_ORDER, day_iso, iso_ms, now_ms

FINISHED = tq.FINISHED_STATUSES
PERCENTS = (50, 95)


# -- stats ---------------------------------------------------------------------


@dataclass
class Stats:
    since_ms: int | None
    until_ms: int
    counts: dict[str, int]
    per_day: list[dict]
    duration: dict
    workflows: list[dict]
    workflows_total: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failure_rate(self) -> float | None:
        return _failure_rate(self.counts)

    def as_json(self) -> dict:
        return {
            "window": {
                "since": iso_ms(self.since_ms),
                "until": iso_ms(self.until_ms),
                "since_ms": self.since_ms,
                "until_ms": self.until_ms,
            },
            "total": self.total,
            "counts": self.counts,
            "failure_rate": self.failure_rate,
            "duration_ms": self.duration,
            "per_day": self.per_day,
            "workflows": self.workflows,
            "workflows_total": self.workflows_total,
        }


def _failure_rate(counts: dict[str, int]) -> float | None:
    """failed / finished (completed + failed + cancelled); None when nothing finished."""
    finished = sum(counts.get(s, 0) for s in FINISHED)
    return round(counts.get("failed", 0) / finished, 4) if finished else None


def _percentiles(entry) -> dict:
    if entry is None:
        return {"n": 0, "p50": None, "p95": None, "mean": None}
    _, n, values, mean = entry
    return {"n": n, "p50": values.get(50), "p95": values.get(95), "mean": round(mean)}


def stats(
    index: JobsIndex, since_ms: int | None, *, until_ms: int | None = None, top_workflows: int | None = 20
) -> Stats:
    """Counts by status, jobs per UTC day, failure rate, and nearest-rank p50/p95 of
    completed jobs' durations, overall and per workflow, for jobs created since
    ``since_ms`` (None: all). One read transaction (one snapshot on PostgreSQL)."""
    until_ms = now_ms() if until_ms is None else until_ms
    with read_transaction(index.engine) as conn:
        counts = tq.status_counts(conn, since_ms)
        days = tq.per_day(conn, since_ms)
        by_workflow = tq.per_workflow(conn, since_ms)
        overall = tq.duration_percentiles(conn, since_ms, PERCENTS, by_workflow=False)
        per_wf = {e[0]: e for e in tq.duration_percentiles(conn, since_ms, PERCENTS, by_workflow=True)}

    ordered = {s: counts.get(s, 0) for s in STATUS_ORDER}
    per_day: dict[int, dict] = {}
    for day, status, n in days:
        entry = per_day.setdefault(day, {"day": day_iso(day), "total": 0, **{s: 0 for s in STATUS_ORDER}})
        entry[status] = n
        entry["total"] += n
    workflows: dict[str | None, dict[str, int]] = {}
    for workflow_id, status, n in by_workflow:
        workflows.setdefault(workflow_id, {s: 0 for s in STATUS_ORDER})[status] = n
    ranked = sorted(workflows.items(), key=lambda kv: (-sum(kv[1].values()), kv[0] is None, kv[0] or ""))
    if top_workflows:
        ranked = ranked[:top_workflows]
    rows = [
        {
            "workflow_id": answer_text(wid),
            "total": sum(c.values()),
            **c,
            "failure_rate": _failure_rate(c),
            "duration_ms": _percentiles(per_wf.get(wid)),
        }
        for wid, c in ranked
    ]
    return Stats(
        since_ms,
        until_ms,
        ordered,
        [per_day[d] for d in sorted(per_day)],
        _percentiles(overall[0] if overall else None),
        rows,
        len(workflows),
    )


# -- retention -----------------------------------------------------------------


@dataclass
class PruneResult:
    removed: dict[str, int] = field(default_factory=dict)  # by status (would be, in a dry run)
    dry_run: bool = False
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def prune_filter(
    index: JobsIndex,
    *,
    older_than_ms: int | None = None,
    keep: int | None = None,
    statuses: Sequence[str] | None = None,
    now: int | None = None,
) -> tq.PruneFilter:
    """What to prune. ``statuses`` defaults to the finished ones: pending and running
    jobs go only when named. The ``keep`` boundary is fixed once, here."""
    statuses = tuple(statuses) if statuses else FINISHED
    before_ms = None if older_than_ms is None else (now_ms() if now is None else now) - older_than_ms
    boundary = None
    if keep is not None and keep > 0:
        with read_transaction(index.engine) as conn:
            boundary = tq.keep_boundary(conn, statuses, keep)
    return tq.PruneFilter(statuses, before_ms, keep, boundary)


def prune(
    index: JobsIndex,
    selection: tq.PruneFilter,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> PruneResult:
    """Delete the selected jobs in short transactions of ``batch_size`` (oldest first
    within each status), so readers and other writers wait at most one batch. Counts
    stay exact (triggers); job_outputs rows go with their job (cascade), search rows too
    (``search_queries.store(conn).forget``)."""
    result = PruneResult(dry_run=dry_run)
    if dry_run:
        with read_transaction(index.engine) as conn:
            result.removed = tq.prune_counts(conn, selection)
        return result
    while True:
        with write_transaction(index.engine) as conn:
            removed = tq.prune_batch(conn, selection, batch_size)
        if not removed:
            return result
        result.batches += 1
        for status, n in removed.items():
            result.removed[status] = result.removed.get(status, 0) + n
        if progress is not None:
            progress(sum(removed.values()))


def count_prunable(index: JobsIndex, selection: tq.PruneFilter) -> int:
    with read_transaction(index.engine) as conn:
        return sum(tq.prune_counts(conn, selection).values())


# -- export --------------------------------------------------------------------


def export_count(index: JobsIndex, selection: tq.ExportFilter) -> int:
    with read_transaction(index.engine) as conn:
        return tq.export_count(conn, selection)


def export_lines(index: JobsIndex, selection: tq.ExportFilter, *, chunk: int = 500) -> Iterator[str]:
    """JSONL lines (no newline) of the selected jobs, oldest first, read in keyset
    chunks of ``chunk`` rows, each in its own short read transaction."""
    after = None
    while True:
        with read_transaction(index.engine) as conn:
            rows = tq.export_chunk(conn, selection, after, chunk)
            reader = rawcodec.Reader(conn)
            texts = [reader.json(row.raw, row.raw_dict_id, row.id) for row in rows]
        for row, text in zip(rows, texts, strict=True):
            yield export_line(row, text)
        if len(rows) < chunk:
            return
        after = (rows[-1].create_time, rows[-1].id)


# -- retention while serving -----------------------------------------------------


class RetentionWorker(threading.Thread):
    """Applies ``prune --older-than`` now and then every ``interval_s`` seconds, in
    the background of ``serve --retention``: finished jobs older than ``older_than_ms``
    go, in short batches, so the API keeps answering while it runs. Pending and
    running jobs are never touched. Errors are reported and retried next round."""

    def __init__(
        self,
        url: str,
        older_than_ms: int,
        *,
        interval_s: float = 3600,
        batch_size: int = 1000,
        report: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name="jobs-index-retention", daemon=True)
        self.url, self.older_than_ms, self.interval_s = url, older_than_ms, interval_s
        self.batch_size, self.report = batch_size, report
        self.stopped = threading.Event()
        self.rounds = 0

    def run_once(self, index: JobsIndex) -> PruneResult:
        result = prune(index, prune_filter(index, older_than_ms=self.older_than_ms), batch_size=self.batch_size)
        self.rounds += 1
        if result.total:
            self.report(f"retention: removed {result.total} job(s) created over {self.older_than_ms // 1000}s ago")
        return result

    def run(self) -> None:
        index = None
        try:
            while not self.stopped.is_set():
                try:
                    if index is None:
                        index = JobsIndex.open(self.url, pool_size=1)
                    self.run_once(index)
                except JobsIndexError as exc:
                    self.report(f"retention: {exc.message} (retrying in {self.interval_s:g}s)")
                self.stopped.wait(self.interval_s)
        finally:
            if index is not None:
                index.close()

    def stop(self, timeout: float = 10) -> None:
        self.stopped.set()
        self.join(timeout)
