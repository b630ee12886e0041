"""The history page: browse, filter, search and inspect the index's jobs in a browser.

Plain HTML, CSS and JavaScript shipped in this package (``static/``): no build step,
no CDN, no front-end dependency. ``page_app()`` is one aiohttp sub-application (the
page at its root, its files under ``static/``) that ``http.add_page`` mounts at
``/ui/``. The page calls only the JSON API, by URLs relative to its own
(``../api/jobs``, ``../api/jobs/{id}``, ``../api/jobs-index/counts`` and
``../api/jobs-index/sources``), so it works under any prefix whose parent answers
``/api/``. Every string from job data is inserted as text (``textContent``), never as
HTML, and the page's Content-Security-Policy allows scripts from its own files only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from aiohttp import web

STATIC = Path(str(files(__name__) / "static"))

# Scripts and styles from the page's own files only; images from anywhere over HTTP(S)
# (thumbnails come from each source's ComfyUI); API calls to this origin only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src http: https: data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


_KINDS = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _page() -> web.Response:
    return web.Response(
        body=(STATIC / "index.html").read_bytes(), content_type="text/html", charset="utf-8", headers=HEADERS
    )


def page_response(subpath: str) -> web.Response | None:
    """The answer for ``subpath`` below the page's mount point (``/`` is the page,
    ``/static/NAME`` its files), or None when there is no such file. For hosts that
    route by hand (the ComfyUI custom node's middleware)."""
    if subpath == "/":
        return _page()
    name = subpath[len("/static/") :] if subpath.startswith("/static/") else ""
    path = STATIC / name
    kind = _KINDS.get(path.suffix)
    if not name or "/" in name or "\\" in name or name.startswith(".") or kind is None or not path.is_file():
        return None
    return web.Response(body=path.read_bytes(), content_type=kind, headers=HEADERS)


async def _index(request: web.Request) -> web.Response:
    return _page()


async def _static(request: web.Request) -> web.Response:
    response = page_response("/static/" + request.match_info["name"])
    if response is None:
        raise web.HTTPNotFound()
    return response


def page_app() -> web.Application:
    """The page as a sub-application: ``/`` is the page, ``/static/{name}`` its files."""
    app = web.Application()
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    return app
