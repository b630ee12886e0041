"""The ``jobs-index`` command: a thin layer over the library.

Every command takes the global ``--db`` (or ``JOBS_INDEX_DB``); errors are printed
as one line on stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import click

from . import __version__
from .cli_live import LOG_FORMAT_OPTION, access_options, server_access
from .cli_live import register as register_live
from .cli_toolbox import Duration, start_retention, stop_retention
from .cli_toolbox import register as register_toolbox
from .config import AUTO_MIGRATE_ENV, ENV_VAR, default_sqlite_path, resolve_url
from .errors import JobsIndexError
from .logformat import use_format
from .render import progress_bar

DB_HELP = (
    "Database URL: sqlite:///path/jobs.sqlite3 or postgresql+psycopg://user@host/db "
    f"(also ${ENV_VAR}). Default: {default_sqlite_path()}"
)


class Context:
    def __init__(self, db: str | None) -> None:
        self.db = db

    @property
    def url(self) -> str:
        return resolve_url(self.db)

    def open(self):
        from .services import JobsIndex

        return JobsIndex.open(self.db)


pass_ctx = click.make_pass_decorator(Context)


class IndexGroup(click.Group):
    """Turns domain errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except JobsIndexError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(1)


# Measured on a 100k-job dump: 10,000 jobs per transaction took 45 s against 82 s with
# 1,000 (random job ids touch a different index page per job; a batch writes each
# page to the WAL once, so fewer, larger batches write far fewer pages).
IMPORT_BATCH_SIZE = 10_000


@click.group(cls=IndexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar=ENV_VAR, metavar="URL", help=DB_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Log more (SQL warnings, upgrades).")
@click.option(
    "--auto-migrate",
    is_flag=True,
    envvar=AUTO_MIGRATE_ENV,
    help=f"Upgrade an older PostgreSQL schema when opening it (also ${AUTO_MIGRATE_ENV}=1). "
    "Without it a shared PostgreSQL database is upgraded only by `migrate`; "
    "a SQLite file is always upgraded on open, after a backup.",
)
@click.version_option(__version__, prog_name="jobs-index")
@click.pass_context
def cli(ctx: click.Context, db: str | None, verbose: bool, auto_migrate: bool) -> None:
    """A persistent, SQL-backed index of ComfyUI jobs.

    \b
    Example:
      curl -s 127.0.0.1:8188/history > history.json
      curl -s 127.0.0.1:8188/queue   > queue.json
      jobs-index --db sqlite:///jobs.sqlite3 import history.json queue.json
      jobs-index --db sqlite:///jobs.sqlite3 serve --port 8189
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if auto_migrate:  # every open in this process (serve, follow, retention) sees it
        os.environ[AUTO_MIGRATE_ENV] = "1"
    ctx.obj = Context(db)


def summary_line(result, files: int) -> str:
    parts = [f"{result.inserted} inserted", f"{result.updated} updated", f"{result.unchanged} unchanged"]
    if result.removed:
        parts.append(f"{result.removed} removed (no longer queued)")
    parts.append(f"{len(result.rejected)} rejected")
    return f"{files} file(s): " + ", ".join(parts)


@cli.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--source", metavar="NAME", help="Record NAME as the source of these jobs (e.g. the ComfyUI host).")
@click.option(
    "--batch-size",
    default=IMPORT_BATCH_SIZE,
    show_default=True,
    help="Jobs per transaction. Large batches write each index page once for many jobs "
    "(a killed import keeps every batch committed before it).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Processes normalising a large dump while this one writes "
    "(default: one per core, none on a single core; 0: none).",
)
@click.option(
    "--bulk/--no-bulk",
    default=True,
    show_default=True,
    help="Into an empty index: load in one transaction and build the indexes once at "
    "the end (several times faster for a large history; all or nothing; PostgreSQL: rows by COPY, "
    "then VACUUM (ANALYZE)). --no-bulk commits batch by batch, so a server sees the jobs arrive "
    "and a killed import keeps them.",
)
@pass_ctx
def import_(
    ctx: Context, files: tuple[str, ...], source: str | None, batch_size: int, workers: int | None, bulk: bool
) -> None:
    """Import ComfyUI /history and /queue dumps (JSON files, or - for stdin).

    The kind of each file is detected from its shape. Importing is idempotent; a
    newer version of a job replaces the older; a /queue dump removes pending and
    running jobs that are no longer queued. Malformed items are rejected with a
    reason and never stop the rest.

    \b
    Example:
      curl -s 127.0.0.1:8188/history | jobs-index import -
      jobs-index --db sqlite:///jobs.sqlite3 import history.json queue.json
    """
    from .ingest import default_workers, import_paths

    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    finishers: list[Callable[[], None]] = []

    def on_dump(dump):
        update, finish = progress_bar(f"{dump.name} ({dump.kind})", len(dump))
        finishers.append(finish)
        return update

    with ctx.open() as index:
        try:
            result, errors = import_paths(
                index,
                files,
                source=source,
                batch_size=batch_size,
                on_dump=on_dump,
                bulk=bulk,
                workers=default_workers(index.engine.dialect.name) if workers is None else workers,
            )
        finally:
            for finish in finishers:
                finish()
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    for job_id, reason in result.rejected[:20]:
        shown = job_id if len(job_id) <= 80 else f"{job_id[:77]}... ({len(job_id):,} characters)"
        click.echo(f"rejected {shown}: {reason}", err=True)
    if len(result.rejected) > 20:
        click.echo(f"... and {len(result.rejected) - 20} more rejected", err=True)
    click.echo(summary_line(result, len(files) - len(errors)))
    valid = result.inserted + result.updated + result.unchanged + result.removed
    if valid == 0 and (errors or result.rejected):
        sys.exit(1)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The default answers only this machine; beyond loopback (e.g. 0.0.0.0) "
    "the page and the API require a token (see --token, --no-auth).",
)
@click.option("--port", default=8189, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--pool-size",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Database connections (and worker threads) of this server process.",
)
@click.option(
    "--retention",
    "retention_ms",
    type=Duration(),
    metavar="DURATION",
    help="Also prune finished jobs created longer ago than DURATION (e.g. 90d), at start and then every hour.",
)
@access_options
@LOG_FORMAT_OPTION
@pass_ctx
def serve(
    ctx: Context,
    host: str,
    port: int,
    pool_size: int,
    retention_ms: int | None,
    token: str | None,
    no_auth: bool,
    log_format: str,
) -> None:
    """Serve GET /api/jobs and GET /api/jobs/{id} from the index, as ComfyUI does.

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 serve --port 8189
      curl '127.0.0.1:8189/api/jobs?limit=50&status=failed'
      jobs-index serve --retention 90d   # and keep 90 days of finished jobs
      curl 127.0.0.1:8189/metrics        # Prometheus; also /healthz, /readyz
      jobs-index serve --host 0.0.0.0    # prints the page's URL with a generated token
      curl -H "Authorization: Bearer $TOKEN" 'gpu-box:8189/api/jobs?limit=5'
    """
    announce = use_format(log_format) or (lambda line: click.echo(line, err=True))  # before imports log
    from .http import ServerConfig
    from .http import serve as run

    access = server_access(host, token, no_auth)
    retention = start_retention(ctx.url, retention_ms)
    run(ServerConfig(db_url=ctx.url, host=host, port=port, pool_size=pool_size, **access), print_fn=announce)
    stop_retention(retention)


@cli.command()
@click.option(
    "--jobs",
    "count",
    default=500,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="How many sample jobs to generate.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8189, show_default=True, type=click.IntRange(0, 65535))
@access_options
@pass_ctx
def demo(ctx: Context, count: int, host: str, port: int, token: str | None, no_auth: bool) -> None:
    """Build an index of sample jobs (shaped like real ComfyUI history) and serve it.

    Without --db the sample goes to ./jobs-index-demo.sqlite3.

    \b
    Example:
      jobs-index demo --port 8189
      curl '127.0.0.1:8189/api/jobs?limit=5'
    """
    from .http import ServerConfig
    from .http import serve as run
    from .sample import build_sample
    from .services import JobsIndex

    access = server_access(host, token, no_auth)
    url = ctx.url if ctx.db else "sqlite:///jobs-index-demo.sqlite3"
    with JobsIndex.open(url) as index:
        result = build_sample(index, count)
    click.echo(f"sample index {url}: {summary_line(result, 1)}", err=True)
    run(ServerConfig(db_url=url, host=host, port=port, **access), print_fn=lambda line: click.echo(line, err=True))


@cli.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_ctx
def migrate(ctx: Context, revision: str) -> None:
    """Upgrade the database schema.

    A SQLite file is also upgraded whenever it is opened, and backed up before an
    upgrade, next to it. A shared PostgreSQL database is upgraded only by this
    command (or --auto-migrate): upgrade every jobs-index that uses it first.
    A database upgraded by a newer jobs-index is refused, unchanged.

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 migrate
    """
    from .database import head_revision, make_engine
    from .database import migrate as run_migrate

    engine = make_engine(ctx.url)
    try:
        backup = run_migrate(engine, revision)
    finally:
        engine.dispose()
    if backup:
        click.echo(f"backup written to {backup}", err=True)
    click.echo(f"{ctx.url}: at {revision if revision != 'head' else head_revision()}")


# The operator's toolbox: sql, stats, prune, export (commands in cli_toolbox.py).
register_toolbox(cli)


# Live ingestion: follow, install-comfyui (commands in cli_live.py).
register_live(cli)


def main() -> None:
    cli(prog_name="jobs-index")


if __name__ == "__main__":
    main()
