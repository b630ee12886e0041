"""The operator's toolbox commands: ``sql``, ``stats``, ``prune``, ``export``, ``check``, ``compact``.

Registered on the ``jobs-index`` group by ``cli.py`` (``register(cli)``); like the
other commands they parse and print only, the work is in ``adhoc``, ``toolbox`` and ``check``.
Bad input is one line on stderr (``Error: ...``) and exit status 2; a failed query
or database error exits 1. Heavy modules are imported inside the commands, so
``jobs-index --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from .render import progress_bar
from .units import DURATION_HELP, parse_duration, parse_statuses


class BadInput(click.ClickException):
    """Bad command-line input: ``Error: <message>`` on one line, exit status 2."""

    exit_code = 2


class Duration(click.ParamType):
    """``30m``, ``24h``, ``7d``, ``2w`` → milliseconds."""

    name = "DURATION"

    def __init__(self, allow_all: bool = False) -> None:
        self.allow_all = allow_all

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        if self.allow_all and value.strip().lower() == "all":
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise BadInput(f"{_name(param)}: {exc}") from None


class Statuses(click.ParamType):
    """``failed,cancelled`` → a tuple of statuses."""

    name = "STATUS[,STATUS...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_statuses(value)
        except ValueError as exc:
            raise BadInput(f"{_name(param)}: {exc}") from None


def _name(param) -> str:
    return param.opts[0] if param is not None and param.opts else "value"


@contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Stop quietly when the reader of stdout goes away (``... | head``), without a
    traceback; exit status 1, as Python's documentation recommends for EPIPE."""
    try:
        yield
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the final flush cannot fail again
        except (OSError, ValueError):
            pass
        sys.exit(1)


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _open_existing(obj):
    """Open (and upgrade) an index that must already exist: reading commands never
    create an empty database by mistake."""
    path = _sqlite_file(obj.url)
    if path is not None and not path.is_file():
        raise BadInput(f"no index at {path} (import some jobs first, or pass --db)")
    return obj.open()


def rows_output(json_help: str):
    """``--json``, ``--csv`` and ``--max-width``: how a command that prints rows prints them."""

    def decorate(command):
        for option in reversed(
            (
                click.option("--json", "as_json", is_flag=True, help=json_help),
                click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row."),
                click.option(
                    "--max-width",
                    default=60,
                    show_default=True,
                    type=click.IntRange(0),
                    help="Cut table cells longer than this (0: never). JSON and CSV are never cut.",
                ),
            )
        ):
            command = option(command)
        return command

    return decorate


# -- sql -------------------------------------------------------------------------


@click.command()
@click.argument("query", metavar="SQL")
@rows_output("Print a JSON array of row objects.")
@click.pass_obj
def sql(obj, query: str, as_json: bool, as_csv: bool, max_width: int) -> None:
    """Run one read-only SQL query (or - to read it from stdin) and print the rows.

    The connection itself is read-only: writes, ATTACH, PRAGMA changes and several
    statements are refused. Tables and the jobs_v view are described in
    docs/schema.md; docs/queries.md has examples.

    \b
    Example:
      jobs-index sql "SELECT status, count(*) AS n FROM jobs GROUP BY status"
      jobs-index sql --csv "SELECT job_id, filename FROM job_outputs WHERE filename = 'ComfyUI_00042_.png'"
      jobs-index sql --json - < failures_per_node_type.sql
    """
    from .adhoc import readonly_query
    from .render import format_table, write_csv, write_json

    if as_json and as_csv:
        raise BadInput("choose one of --json and --csv")
    if query == "-":
        query = sys.stdin.read()
    if not query.strip():
        raise BadInput("empty query")
    with _open_existing(obj):
        pass  # the schema is brought to the current revision (views included)
    with readonly_query(obj.url, query) as result, _reader_may_leave():
        # click 8.5 deprecated get_text_stream (gone in 9.0) and its module __getattr__ types
        # it as object; it is still the function (stdout re-encoded when ASCII-configured).
        out = click.get_text_stream("stdout")  # type: ignore[operator, unused-ignore]
        if as_json:
            write_json(out, result.columns, result.rows)
        elif as_csv:
            write_csv(out, result.columns, result.rows)
        else:
            out.write(format_table(result.columns, result.rows, max_width=max_width))


# -- stats -----------------------------------------------------------------------


def _seconds(ms) -> str:
    return "" if ms is None else f"{ms / 1000:.1f}"


def _seconds_value(ms) -> float | None:
    return None if ms is None else round(ms / 1000, 1)


def _percent(rate) -> str:
    return "" if rate is None else f"{rate * 100:.1f}%"


@click.command()
@click.option(
    "--since",
    "since_ms",
    default="7d",
    show_default=True,
    type=Duration(allow_all=True),
    help=f"Window: jobs created in the last DURATION, {DURATION_HELP}; or 'all'.",
)
@click.option(
    "--workflows",
    "top",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Show the N workflows with the most jobs (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (durations in ms).")
@click.pass_obj
def stats(obj, since_ms: int | None, top: int, as_json: bool) -> None:
    """Job counts by status, jobs per day, failure rate and p50/p95 durations.

    Over the jobs created in the window (UTC days). The failure rate is failed /
    (completed + failed + cancelled); durations are those of completed jobs
    (nearest-rank percentiles), overall and per workflow.

    \b
    Example:
      jobs-index stats                 # the last 7 days
      jobs-index stats --since 24h --json
      jobs-index stats --since 30m --workflows 5
    """
    from .render import format_table
    from .toolbox import stats as compute
    from .units import now_ms

    now = now_ms()
    with _open_existing(obj) as index:
        report = compute(index, None if since_ms is None else now - since_ms, until_ms=now, top_workflows=top or None)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    window = "all time" if report.since_ms is None else f"since {report.as_json()['window']['since']}"
    lines = [f"Jobs created {window} (until {report.as_json()['window']['until']}): {report.total}", ""]
    lines.append(format_table(["status", "jobs"], [[s, n] for s, n in report.counts.items()], footer=False))
    d = report.duration
    lines.append(f"failure rate: {_percent(report.failure_rate) or 'n/a'} (failed / finished)")
    lines.append(
        f"duration of completed jobs: n={d['n']}  p50 {_seconds(d['p50']) or '-'} s  "
        f"p95 {_seconds(d['p95']) or '-'} s  mean {_seconds(d['mean']) or '-'} s"
    )
    lines.append("")
    statuses = list(report.counts)
    lines.append(
        format_table(
            ["day (UTC)", "total", *statuses],
            [[day["day"], day["total"], *(day[s] for s in statuses)] for day in report.per_day],
            footer=False,
        )
    )
    shown = len(report.workflows)
    lines.append(f"workflows: {shown} shown of {report.workflows_total}")
    lines.append(
        format_table(
            ["workflow_id", "total", "completed", "failed", "cancelled", "fail rate", "p50 s", "p95 s"],
            [
                [
                    w["workflow_id"] if w["workflow_id"] is not None else "(none)",
                    w["total"],
                    w["completed"],
                    w["failed"],
                    w["cancelled"],
                    _percent(w["failure_rate"]),
                    _seconds_value(w["duration_ms"]["p50"]),
                    _seconds_value(w["duration_ms"]["p95"]),
                ]
                for w in report.workflows
            ],
            footer=False,
        )
    )
    click.echo("\n".join(lines).rstrip("\n"))


# -- prune -----------------------------------------------------------------------


def _by_status(removed: dict[str, int]) -> str:
    from .units import STATUS_ORDER

    parts = [f"{status} {removed[status]}" for status in STATUS_ORDER if removed.get(status)]
    return f" ({', '.join(parts)})" if parts else ""


@click.command()
@click.option(
    "--older-than",
    "older_than_ms",
    type=Duration(),
    metavar="DURATION",
    help=f"Remove jobs created longer ago than DURATION, {DURATION_HELP}.",
)
@click.option(
    "--keep",
    type=click.IntRange(0),
    metavar="N",
    help="Keep only the newest N jobs (by create_time) of the selected statuses.",
)
@click.option(
    "--status",
    "statuses",
    type=Statuses(),
    metavar="STATUS[,STATUS...]",
    help="Only these statuses [default: completed,failed,cancelled]; pending and "
    "in_progress jobs are pruned only when named here.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Jobs deleted per transaction (readers and writers wait at most one batch).",
)
@click.pass_obj
def prune(
    obj, older_than_ms: int | None, keep: int | None, statuses: tuple[str, ...] | None, dry_run: bool, batch_size: int
) -> None:
    """Remove old jobs from the index: by age, by count, or by status.

    With both --older-than and --keep, a job goes if either says so; --status narrows
    both. With only --status, every job of those statuses goes. A job without a
    create_time is dated by its execution end. Counts stay exact and each job's
    output/node rows go with it.

    \b
    Example:
      jobs-index prune --older-than 90d --dry-run
      jobs-index prune --keep 100000
      jobs-index prune --status failed,cancelled --older-than 7d
    """
    from .toolbox import count_prunable, prune_filter
    from .toolbox import prune as run

    if older_than_ms is None and keep is None and statuses is None:
        raise BadInput("nothing to prune: give --older-than, --keep and/or --status")
    with _open_existing(obj) as index:
        selection = prune_filter(index, older_than_ms=older_than_ms, keep=keep, statuses=statuses)
        update, finish = (None, lambda: None)
        if not dry_run and sys.stderr.isatty():
            update, finish = progress_bar("pruning", count_prunable(index, selection))
        try:
            result = run(index, selection, dry_run=dry_run, batch_size=batch_size, progress=update)
        finally:
            finish()
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {result.total} job(s){_by_status(result.removed)}")


# -- export ----------------------------------------------------------------------


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="Write to this file (- for stdout).",
)
@click.option(
    "--status", "statuses", type=Statuses(), metavar="STATUS[,STATUS...]", help="Only jobs with these statuses."
)
@click.option("--workflow-id", metavar="ID", help="Only jobs of this workflow.")
@click.option(
    "--since",
    "since_ms",
    type=Duration(),
    metavar="DURATION",
    help=f"Only jobs created in the last DURATION, {DURATION_HELP}.",
)
@click.pass_obj
def export(obj, output: str, statuses: tuple[str, ...] | None, workflow_id: str | None, since_ms: int | None) -> None:
    """Export jobs as JSONL (one job per line, oldest first), for backup or moving
    an index between SQLite and PostgreSQL; 'jobs-index import' reads it back.

    Each line holds the job detail (as GET /api/jobs/{id} answers) and the raw
    ComfyUI item it was built from, so an import rebuilds the job exactly.

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 export -o jobs.jsonl
      jobs-index --db postgresql+psycopg://me@db/jobs import jobs.jsonl
      jobs-index export --status failed --since 7d | jq -r '.job.execution_error.exception_message'
    """
    from .toolbox import export_count, export_lines
    from .toolbox_queries import ExportFilter
    from .units import now_ms

    selection = ExportFilter(statuses, workflow_id or None, None if since_ms is None else now_ms() - since_ms)
    count = 0
    with _open_existing(obj) as index:
        update, finish = (None, lambda: None)
        if sys.stderr.isatty():
            update, finish = progress_bar("exporting", export_count(index, selection))
        try:
            with _reader_may_leave(), click.open_file(output, "w", encoding="utf-8", atomic=output != "-") as out:
                for line in export_lines(index, selection):
                    out.write(line)
                    out.write("\n")
                    count += 1
                    if update is not None:
                        update(1)
        finally:
            finish()
    click.echo(f"exported {count} job(s)" + (f" to {output}" if output != "-" else ""), err=True)


# -- check -----------------------------------------------------------------------


def _counter_key(key: tuple[str, str, str]) -> str:
    source, workflow_id, status = key
    return f"{status} (source {source or 'all'}, workflow {workflow_id or 'all'})"


def _finding_line(label: str, finding, fixed: bool) -> str:
    line = f"{label}: {finding.count}"
    if finding.count:
        line += f" (e.g. {'; '.join(finding.examples)})" + (" - repaired" if fixed else "")
    return line


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Rewrite what differs from the rows: derived columns and side rows from raw, "
    "then job_counts from a recount. Unreadable raw is reported, never changed.",
)
@click.option(
    "--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Jobs per transaction."
)
@click.pass_obj
def check(obj, repair: bool, batch_size: int) -> None:
    """Verify job_counts, job_outputs/job_search and the columns derived from raw.

    The rows of jobs are the truth: every job's raw item is read again (in
    batches by id) and the columns and side rows it implies are compared with the
    stored ones; side rows without their job are found; job_counts is compared with
    a recount. Writes that bypass jobs-index (INSERT OR REPLACE in the sqlite3
    shell, an UPDATE of raw) are what drift looks like. Exit status 1 when
    something is wrong and was not repaired.

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 check
      jobs-index --db sqlite:///jobs.sqlite3 check --repair
    """
    from .check import check as run_check

    with _open_existing(obj) as index:
        update, finish = progress_bar("checking" if not repair else "repairing", index.total())
        try:
            report = run_check(index, repair=repair, batch_size=batch_size, progress=update)
        finally:
            finish()
    click.echo(f"checked {report.jobs} job(s)")
    click.echo(_finding_line("jobs whose columns differ from raw", report.derived, repair))
    click.echo(_finding_line("jobs whose job_outputs/job_search differ from raw", report.side_rows, repair))
    click.echo(_finding_line("side rows without their job", report.orphans, repair))
    wrong = sorted(report.counters.items())
    line = f"job_counts rows that differ from a recount: {len(wrong)}"
    if wrong:
        shown = "; ".join(f"{_counter_key(k)}: {was} stored, {now} in jobs" for k, (was, now) in wrong[:EXAMPLES])
        line += f" (e.g. {shown})" + (" - repaired" if repair else "")
    click.echo(line)
    wrong_buckets = sorted(report.buckets.items())
    line = f"job_time_buckets rows that differ from a recount: {len(wrong_buckets)}"
    if wrong_buckets:
        shown = "; ".join(
            f"bits {bits} status {status or 'all'!r} bucket {key}: {was} stored, {now} in jobs"
            for (bits, status, key), (was, now) in wrong_buckets[:EXAMPLES]
        )
        line += f" (e.g. {shown})" + (" - repaired" if repair else "")
    click.echo(line)
    click.echo(_finding_line("jobs whose raw cannot be read (left as they are)", report.unreadable, False))
    if report.problems and not repair:
        click.echo(f"{report.problems} problem(s) found; `jobs-index check --repair` fixes them", err=True)
        sys.exit(1)
    if report.unreadable.count:
        sys.exit(1)


EXAMPLES = 3


@click.command("compact")
@click.option(
    "--keep-dictionary",
    is_flag=True,
    help="Re-encode with the current dictionary instead of training a new one (e.g. to finish a killed run).",
)
@click.option(
    "--zlib", "to_zlib", is_flag=True, help="Re-encode every row as zlib (before downgrading past revision 0010)."
)
@click.option("--vacuum", is_flag=True, help="Then give the freed space back (SQLite: VACUUM rewrites the file).")
@click.option(
    "--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Jobs per transaction."
)
@click.pass_obj
def compact_command(obj, keep_dictionary: bool, to_zlib: bool, vacuum: bool, batch_size: int) -> None:
    """Train a raw dictionary on the newest jobs and re-encode older rows with it.

    New rows are compressed with the index's current zstd dictionary (an import
    into an empty index trains one first; a live index trains one once it has
    1,000 jobs). Rows written before it stay as they were (zlib, or an older
    dictionary) until this rewrites them: in batches by id, each batch one
    transaction, so it is safe to kill and a second run carries on. The JSON of
    every row stays exactly the same. The file does not shrink by itself: SQLite
    reuses the freed pages; --vacuum returns them.

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 compact
      jobs-index --db sqlite:///jobs.sqlite3 compact --keep-dictionary --vacuum
    """
    from .compact import compact as run_compact
    from .compact import vacuum as run_vacuum

    if keep_dictionary and to_zlib:
        raise BadInput("--keep-dictionary and --zlib: choose one")
    bar: dict = {}
    done = [0, 0]  # jobs looked at, at the last progress line

    def started(report, jobs: int) -> None:
        target = "zlib" if report.dictionary is None else f"dictionary {report.dictionary}"
        click.echo(f"re-encoding raw with {target}" + (" (trained now)" if report.trained else ""), err=True)
        bar["update"], bar["finish"] = progress_bar("compacting", jobs)
        bar["jobs"] = jobs

    def progress(n: int) -> None:
        if bar["update"] is not None:
            bar["update"](n)
            return
        done[0] += n  # not a terminal: a line every 100,000 jobs
        if done[0] - done[1] >= 100_000:
            done[1] = done[0]
            click.echo(f"compacting: {done[0]:,} of about {bar['jobs']:,} jobs", err=True)

    with _open_existing(obj) as index:
        try:
            report = run_compact(
                index,
                train=not keep_dictionary,
                to_zlib=to_zlib,
                batch_size=batch_size,
                progress=progress,
                started=started,
            )
        finally:
            if "finish" in bar:
                bar["finish"]()
        if vacuum:
            run_vacuum(index)
    click.echo(
        f"{report.jobs} job(s), {report.rewritten} re-encoded: raw {report.bytes_before:,} -> "
        f"{report.bytes_after:,} bytes" + ("; vacuumed" if vacuum else "")
    )


# -- search ----------------------------------------------------------------------

SEARCH_COLUMNS = ("created_at", "status", "source", "id", "output", "match")


@click.command()
@click.argument("query", metavar="QUERY")
@click.option(
    "--status", "statuses", type=Statuses(), metavar="STATUS[,STATUS...]", help="Only jobs with these statuses."
)
@click.option("--source", metavar="NAME", help="Only jobs from this source.")
@click.option("--workflow-id", metavar="ID", help="Only jobs of this workflow.")
@click.option(
    "--since",
    "since_ms",
    type=Duration(),
    metavar="DURATION",
    help=f"Only jobs created in the last DURATION, {DURATION_HELP}.",
)
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(0), help="Print at most this many jobs (0: all)."
)
@rows_output("Print a JSON array of objects (created_at in ms too).")
@click.pass_obj
def search(
    obj,
    query: str,
    statuses: tuple[str, ...] | None,
    source: str | None,
    workflow_id: str | None,
    since_ms: int | None,
    limit: int,
    as_json: bool,
    as_csv: bool,
    max_width: int,
) -> None:
    """Find jobs by prompt text, model and LoRA names, seeds, node types, output
    file names and errors: newest first, one line per job with the matching text
    (the matched words in [brackets]).

    \b
    QUERY syntax (the same as GET /api/jobs?q=; case and accents do not matter):
      red fox            both words, anywhere in the job
      "red fox"          the phrase
      jugg*              a word starting with jugg
      -blurry            without this word (or -"phrase", -prefix*)
    Names are split into words: juggernautXL_v9 finds juggernautXL_v9.safetensors.

    \b
    Example:
      jobs-index search "red fox" --status completed
      jobs-index search juggernautXL_v9 --since 30d
      jobs-index search detail_tweaker --json
      jobs-index search 8675309
    """
    from .params import STATUSES, ListQuery
    from .render import format_table, write_csv, write_json
    from .search import parse
    from .units import iso_ms, now_ms

    if as_json and as_csv:
        raise BadInput("choose one of --json and --csv")
    listing = ListQuery(
        statuses=statuses or STATUSES,
        workflow_id=workflow_id or None,
        source=source or None,
        limit=limit or None,
        search=parse(query),
    )
    since = None if since_ms is None else now_ms() - since_ms
    with _open_existing(obj) as index, _reader_may_leave():
        hits = list(index.search(listing, since_ms=since))
    out = click.get_text_stream("stdout")  # type: ignore[operator, unused-ignore]  # see sql()
    if as_json:
        write_json(
            out,
            ("create_time", *SEARCH_COLUMNS),
            [(h.create_time, iso_ms(h.create_time), h.status, h.source, h.id, h.output, h.text) for h in hits],
        )
        return
    rows = [(iso_ms(h.create_time), h.status, h.source, h.id, h.output, h.text) for h in hits]
    if as_csv:
        write_csv(out, SEARCH_COLUMNS, rows)
    else:
        out.write(format_table(SEARCH_COLUMNS, rows, max_width=max_width, footer=False))


# -- serve --retention ---------------------------------------------------------------


def start_retention(url: str, older_than_ms: int | None, *, interval_s: float = 3600):
    """Start pruning finished jobs older than ``older_than_ms`` in the background of
    ``serve`` (None: no retention). Returns the worker, for ``stop_retention``."""
    if older_than_ms is None:
        return None
    from .toolbox import RetentionWorker

    worker = RetentionWorker(url, older_than_ms, interval_s=interval_s, report=lambda line: click.echo(line, err=True))
    worker.start()
    return worker


def stop_retention(worker) -> None:
    if worker is not None:
        worker.stop()


COMMANDS = (sql, stats, prune, export, check, compact_command, search)


def register(group: click.Group) -> None:
    """Add the toolbox commands to the ``jobs-index`` group."""
    for command in COMMANDS:
        group.add_command(command)
