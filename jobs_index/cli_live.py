"""Live-ingestion commands: ``follow`` (out of process) and ``install-comfyui`` (the
custom node). Registered on the ``jobs-index`` group by ``cli.py``; heavy imports
happen inside the commands, so ``jobs-index --help`` stays fast."""

from __future__ import annotations

import sys

import click

from .logformat import FORMATS, use_format

LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    envvar="JOBS_INDEX_LOG_FORMAT",
    help="json: one JSON object per log event and line, on stderr (also $JOBS_INDEX_LOG_FORMAT).",
)

TOKEN_ENV = "JOBS_INDEX_TOKEN"  # access.TOKEN_ENV (not imported: --help stays fast)


def access_options(command):
    """``--token`` / ``--no-auth`` of a command that serves the page and the API."""
    command = click.option(
        "--no-auth",
        is_flag=True,
        help="Serve beyond loopback WITHOUT a token (say it: anyone who reaches the port sees every job).",
    )(command)
    return click.option(
        "--token",
        envvar=TOKEN_ENV,
        metavar="TOKEN",
        help=f"Token the page, the API and /metrics require (also ${TOKEN_ENV}). Default: none on "
        "loopback; generated and printed when --host listens beyond loopback.",
    )(command)


def server_access(host: str, token: str | None, no_auth: bool) -> dict:
    """``ServerConfig``'s ``token`` and ``show_token`` for these options (``access``)."""
    from .access import required_token

    required, generated = required_token(host, token, no_auth)
    return {"token": required, "show_token": generated}


def register(cli: click.Group) -> None:
    cli.add_command(follow)
    cli.add_command(install_comfyui)


@click.command()
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option(
    "--source",
    metavar="NAME",
    help="Source name recorded on this server's jobs (one URL only). Default: host:port of the URL.",
)
@click.option("--serve", is_flag=True, help="Also serve GET /api/jobs from the index, in this process.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address --serve binds. Beyond loopback (e.g. 0.0.0.0) a token is required (see --token).",
)
@click.option("--port", default=8189, show_default=True, type=click.IntRange(0, 65535), help="Port --serve binds.")
@click.option(
    "--page-size",
    default=100,
    show_default=True,
    type=click.IntRange(2, 10_000),
    help="History entries per GET /history request.",
)
@click.option("--once", is_flag=True, help="Sync each server once (history and queue), then exit.")
@access_options
@LOG_FORMAT_OPTION
@click.pass_obj
def follow(
    ctx,
    urls: tuple[str, ...],
    source: str | None,
    serve: bool,
    host: str,
    port: int,
    page_size: int,
    once: bool,
    token: str | None,
    no_auth: bool,
    log_format: str,
) -> None:
    """Follow running ComfyUI servers: backfill, then stay current live.

    Reads each server's /history (paged) and /queue, then listens on its websocket
    and writes every queued, started and finished job within a second. Reconnects
    (with backoff) and re-syncs after a ComfyUI restart or a network drop. History
    that ComfyUI evicts or forgets stays in the index; ComfyUI's explicit deletions
    are not propagated. Each server is a source (see GET /api/jobs?source=NAME).

    \b
    Example:
      jobs-index --db sqlite:///jobs.sqlite3 follow http://127.0.0.1:8188 --serve --port 8189
      jobs-index follow http://gpu1:8188 http://gpu2:8188
      curl '127.0.0.1:8189/api/jobs?source=gpu1:8188&limit=20'
      curl 127.0.0.1:8189/metrics   # with --serve: Prometheus, follower status; /healthz, /readyz
    """
    announce = use_format(log_format) or (lambda line: click.echo(line, err=True))  # before imports log
    from .follow import make_targets, run
    from .http import ServerConfig

    targets = make_targets(urls, source)
    access = server_access(host, token, no_auth) if serve else {}
    with ctx.open() as index:
        run(
            index,
            targets,
            page_size=page_size,
            once=once,
            serve=ServerConfig(host=host, port=port, **access) if serve else None,
            print_fn=announce,
        )


@click.command("install-comfyui")
@click.argument("comfyui_dir", metavar="COMFYUI_DIR", type=click.Path(file_okay=False))
@click.option("--uninstall", is_flag=True, help="Remove the custom node instead.")
def install_comfyui(comfyui_dir: str, uninstall: bool) -> None:
    """Enable (or remove) jobs-index inside ComfyUI, as a custom node.

    Writes COMFYUI_DIR/custom_nodes/jobs_index_node/__init__.py. jobs-index must be
    installed into the Python that runs ComfyUI. After a restart ComfyUI records every
    job in the index (default COMFYUI_DIR/user/jobs-index/jobs.sqlite3, or
    $JOBS_INDEX_DB) and answers GET /api/jobs from it: the queue and history panels
    page through all history, beyond 10,000 jobs and across restarts.

    \b
    Example:
      /path/to/ComfyUI/venv/bin/python -m pip install jobs-index
      jobs-index install-comfyui /path/to/ComfyUI
      jobs-index install-comfyui --uninstall /path/to/ComfyUI
    """
    from .comfyui.install import install
    from .comfyui.install import uninstall as remove

    if uninstall:
        removed = remove(comfyui_dir)
        click.echo(f"removed {removed}; restart ComfyUI" if removed else "jobs-index is not installed there")
        return
    shim = install(comfyui_dir)
    click.echo(f"installed {shim}")
    click.echo(
        "Restart ComfyUI. jobs-index must be installed in ComfyUI's Python, e.g.\n"
        "  <ComfyUI's python> -m pip install jobs-index\n"
        f"(this jobs-index runs on {sys.executable})"
    )
