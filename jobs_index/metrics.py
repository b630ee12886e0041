"""Operating metrics: what ``/metrics``, ``/healthz`` and ``/readyz`` report.

Everything here is written with ``prometheus-client`` (a custom ``Collector`` per
application, in its own ``CollectorRegistry``: no process-global state, so several
apps or tests in one process never mix their numbers).

* **Jobs by source and status** (gauges) come from the exact, trigger-kept
  ``job_counts``, read by one cheap query per scrape (``metrics_queries``): O(sources),
  whatever the history size. Pending and running jobs per source are the
  ``status="pending"`` / ``status="in_progress"`` series of the same gauge. They
  follow every write path: imports, status changes, deletes, prunes, ad-hoc SQL.
* **Execution durations** (histogram per source and status) and **failures by error
  type** (counter) are kept incrementally, in this process, as jobs finish: the
  index calls ``FinishedJobs.observe`` after each committed write with the jobs it
  turned into finished (history) rows, each job once. Why in-process and not a table
  of buckets kept by the writer: a Prometheus histogram is a set of counters that
  only grow (``rate()``/``histogram_quantile`` read increases; a restart is a reset
  Prometheus handles), while a table mirrored from ``jobs`` would *shrink* on every
  prune or delete, which ``rate()`` misreads as a counter reset; and a table would
  add a trigger write to every job write (the cost migration 0004 removed). Across
  a fleet every writer (one ``follow`` per machine or the custom node) is scraped and
  PromQL sums them; a read-only ``serve`` reports counts but observes no durations.
* **Followers** (``follow --serve``): up/down, seconds since the last websocket
  event, reconnects, last sync duration, seconds since the watermark was last
  current (``Follower`` attributes, read at scrape time).

Label values stay bounded: source names (one per machine) and statuses; error types
are ComfyUI exception class names, capped at ``MAX_ERROR_TYPES`` per source (the
rest are counted as ``other``). No job or workflow id is ever a label.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import metrics_queries
from .database import current_revision, head_revision, read_transaction
from .errors import JobsIndexError
from .schema import STATUS_VALUES

log = logging.getLogger(__name__)

# Execution-duration buckets, seconds: ComfyUI jobs run from under a second (cached)
# to hours (video).
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
MAX_ERROR_TYPES = 50  # distinct error_type label values per source
MAX_ERROR_TYPE_LEN = 100
OTHER = "other"


# -- incremental observations --------------------------------------------------


class _Histogram:
    __slots__ = ("buckets", "total", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0
        self.sum = 0.0


class FinishedJobs:
    """Execution-duration histograms per (source, status) and failure counters per
    (source, error type) of the jobs this process wrote as finished. Thread-safe:
    writers observe from the database threads, scrapes read from another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._error_types: dict[str, set[str]] = {}

    def observe(self, finished: Iterable[tuple[str | None, str, float | None, str | None]]) -> None:
        """``(source, status, duration in seconds or None, error_type)`` of jobs that
        just became finished. A job without both execution times has no duration and
        is not observed in the histogram (it still counts as a failure if it failed)."""
        with self._lock:
            for source, status, seconds, error_type in finished:
                source = source or ""
                if seconds is not None:
                    histogram = self._durations.get((source, status))
                    if histogram is None:
                        histogram = self._durations[(source, status)] = _Histogram()
                    histogram.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
                    histogram.total += 1
                    histogram.sum += seconds
                if status == "failed":
                    key = (source, self._error_label(source, error_type))
                    self._failures[key] = self._failures.get(key, 0) + 1

    def _error_label(self, source: str, error_type: str | None) -> str:
        label = (error_type or "").strip()[:MAX_ERROR_TYPE_LEN] or "unknown"
        seen = self._error_types.setdefault(source, set())
        if label in seen:
            return label
        if len(seen) >= MAX_ERROR_TYPES:
            return OTHER
        seen.add(label)
        return label

    def snapshot(self) -> tuple[dict[tuple[str, str], tuple[list[int], int, float]], dict[tuple[str, str], int]]:
        with self._lock:
            durations = {key: (list(h.buckets), h.total, h.sum) for key, h in self._durations.items()}
            return durations, dict(self._failures)


# -- the collector -------------------------------------------------------------


class IndexCollector(Collector):
    """Reads the index and the followers at scrape time (runs on a worker thread)."""

    def __init__(self, index: Any, finished: FinishedJobs, followers: Callable[[], Sequence[Any]]) -> None:
        self.index = index
        self.finished = finished
        self.followers = followers

    def collect(self):
        started = time.perf_counter()
        up = GaugeMetricFamily("jobs_index_database_up", "1 if the last scrape read the database, else 0")
        try:
            with read_transaction(self.index.engine) as conn:
                counts = metrics_queries.source_status_counts(conn)
        except (JobsIndexError, SQLAlchemyError, DBAPIError, OSError) as exc:
            log.warning("metrics: cannot read job counts: %s", type(exc).__name__)
            counts = None
        up.add_metric([], 0 if counts is None else 1)
        yield up
        if counts is not None:
            yield from self._counts(counts)
        yield from self._finished()
        yield from self._followers()
        took = GaugeMetricFamily("jobs_index_scrape_duration_seconds", "Time this scrape spent reading the index")
        took.add_metric([], time.perf_counter() - started)
        yield took

    @staticmethod
    def _counts(counts: dict[tuple[str, str], int]):
        jobs = GaugeMetricFamily(
            "jobs_index_jobs",
            "Jobs in the index by source and status (exact, from "
            'job_counts); source="" are jobs recorded without a source',
            labels=["source", "status"],
        )
        total = GaugeMetricFamily("jobs_index_jobs_all", "Jobs in the index by status, all sources", labels=["status"])
        named: dict[str, int] = {}
        for (source, status), n in sorted(counts.items()):
            if source:
                jobs.add_metric([source, status], n)
                named[status] = named.get(status, 0) + n
        for status in STATUS_VALUES:
            all_n = counts.get(("", status), 0)
            total.add_metric([status], all_n)
            if all_n - named.get(status, 0):
                jobs.add_metric(["", status], all_n - named.get(status, 0))
        yield jobs
        yield total

    def _finished(self):
        durations, failures = self.finished.snapshot()
        histogram = HistogramMetricFamily(
            "jobs_index_job_execution_seconds",
            "Execution time of jobs this process wrote as finished, by source and status",
            labels=["source", "status"],
        )
        for (source, status), (buckets, _count, total) in sorted(durations.items()):
            cumulative, running = [], 0
            for bound, n in zip(DURATION_BUCKETS + (float("inf"),), buckets, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            histogram.add_metric([source, status], cumulative, total)
        yield histogram
        failed = CounterMetricFamily(
            "jobs_index_job_failures",
            "Jobs this process wrote as failed, by source and ComfyUI error type",
            labels=["source", "error_type"],
        )
        for (source, error_type), n in sorted(failures.items()):
            failed.add_metric([source, error_type], n)
        yield failed

    def _followers(self):
        followers = list(self.followers())
        if not followers:
            return
        now = time.time()
        up = GaugeMetricFamily(
            "jobs_index_follow_up", "1 while the follower is connected to its ComfyUI", labels=["source"]
        )
        since_event = GaugeMetricFamily(
            "jobs_index_follow_seconds_since_last_event",
            "Seconds since the last websocket message from ComfyUI (since start if none yet)",
            labels=["source"],
        )
        reconnects = CounterMetricFamily(
            "jobs_index_follow_reconnects", "Connections lost or refused since start", labels=["source"]
        )
        sync_seconds = GaugeMetricFamily(
            "jobs_index_follow_last_sync_seconds", "Duration of the last successful sync", labels=["source"]
        )
        lag = GaugeMetricFamily(
            "jobs_index_follow_watermark_lag_seconds",
            "Seconds since the history watermark was last current (the last successful sync; since start if none yet)",
            labels=["source"],
        )
        syncs = CounterMetricFamily("jobs_index_follow_syncs", "Successful syncs since start", labels=["source"])
        for follower in followers:
            status = follower_status(follower, now)
            labels = [follower.source]
            up.add_metric(labels, 1 if status["up"] else 0)
            since_event.add_metric(labels, status["seconds_since_last_event"])
            reconnects.add_metric(labels, status["reconnects"])
            sync_seconds.add_metric(labels, status["last_sync_seconds"] or 0.0)
            lag.add_metric(labels, status["watermark_lag_seconds"])
            syncs.add_metric(labels, status["syncs"])
        yield from (up, since_event, reconnects, sync_seconds, lag, syncs)


def follower_status(follower: Any, now: float | None = None) -> dict:
    """A follower's state as numbers (``/metrics`` and ``/readyz``)."""
    now = time.time() if now is None else now
    stats = follower.stats
    last_event = stats.last_event_at or stats.started_at
    synced = stats.last_synced_at or stats.started_at
    return {
        "source": follower.source,
        "up": bool(follower.connected),
        "seconds_since_last_event": max(0.0, now - last_event),
        "reconnects": stats.disconnects,
        "syncs": stats.syncs,
        "last_sync_seconds": stats.last_sync_seconds,
        "watermark_lag_seconds": max(0.0, now - synced),
    }


class Metrics:
    """One application's registry: its index, its finished-job observations, its
    followers. ``scrape()`` is blocking (run it on a worker thread)."""

    def __init__(self, index: Any, followers: Sequence[Any] = ()) -> None:
        self.index = index
        self.followers = list(followers)
        self.finished = FinishedJobs()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(IndexCollector(index, self.finished, lambda: self.followers))
        index.add_finished_observer(self.finished.observe)

    def close(self) -> None:
        self.index.remove_finished_observer(self.finished.observe)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


# -- health --------------------------------------------------------------------

_HEAD: list[str] = []


def _head() -> str:
    if not _HEAD:
        _HEAD.append(head_revision())
    return _HEAD[0]


def readiness(index: Any, followers: Sequence[Any] = ()) -> tuple[bool, dict]:
    """``(ready, body)``: the database answers and is at this code's schema revision,
    and every follower is connected. Blocking; one ``SELECT`` of the version row."""
    body: dict[str, Any] = {}
    try:
        with read_transaction(index.engine) as conn:
            revision = current_revision(conn)
        body["database"] = "ok"
    except (JobsIndexError, SQLAlchemyError, DBAPIError, OSError) as exc:
        body["database"] = f"unreachable: {type(exc).__name__}"
        revision = None
        ready = False
    else:
        ready = revision == _head()
        if not ready:
            body["database"] = f"not migrated: schema revision {revision or 'none'}, needs {_head()}"
    body["schema_revision"] = revision
    if followers:
        states = [follower_status(follower) for follower in followers]
        body["followers"] = {s["source"]: "connected" if s["up"] else "disconnected" for s in states}
        ready = ready and all(s["up"] for s in states)
    body["status"] = "ready" if ready else "not ready"
    return ready, body
