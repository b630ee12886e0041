"""Who may see it: the token a ``serve`` / ``follow --serve`` server requires.

A server bound to loopback (the default) answers this machine only and needs no
token. Told to listen beyond loopback (``--host 0.0.0.0`` or any other address), it
requires one for the page, the API and ``/metrics`` unless the operator opts out
(``--no-auth``); ``/healthz`` and ``/readyz`` stay open for probes. The token comes
from ``--token`` / ``$JOBS_INDEX_TOKEN`` or is generated at start; an explicit token
is required on loopback too.

A request shows the token as ``Authorization: Bearer <token>``, or (the page, in a
browser) as the cookie that opening the printed ``/ui/?token=<token>`` URL sets: the
server answers that URL with the cookie (HttpOnly, SameSite=Strict) and a redirect
to the same URL without the token. A refused API request is a JSON 401
(``errors.Unauthorized``); a refused page request is a small HTML page. Tokens are
compared in constant time (``hmac.compare_digest``).

The ComfyUI custom node does not use this: its ``/api/jobs`` keeps ComfyUI's own
(open) behaviour.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from .errors import ConfigError, Unauthorized

TOKEN_ENV = "JOBS_INDEX_TOKEN"
TOKEN_PARAM = "token"  # the page's URL parameter, exchanged for the cookie
COOKIE_PREFIX = "jobs_index_token"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: never behind the token
JSON_PREFIXES = ("/api/", "/metrics")  # refused with a JSON 401; every other path is the page's

TOKEN_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="color-scheme" content="dark">
<title>jobs-index \xc2\xb7 token required</title></head>
<body style="font: 15px system-ui, sans-serif; background: #1b1b1f; color: #ddd; max-width: 40em; margin: 4em auto">
<h1>Token required</h1>
<p>This jobs-index server listens beyond its own machine, so it shows its jobs only to
those who have its token. Open the URL it printed when it started
(<code>http://&lt;host&gt;:&lt;port&gt;/ui/?token=&hellip;</code>), or ask its operator.</p>
</body></html>
"""


def exposed(host: str) -> bool:
    """Does binding ``host`` listen beyond this machine? Every address but a loopback
    one does (``0.0.0.0``, ``::``, a LAN address); so does a host name other than
    ``localhost`` (it may resolve to anything)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True


def required_token(host: str, token: str | None, no_auth: bool) -> tuple[str | None, bool]:
    """The token a server bound to ``host`` requires (None: none) and whether it was
    generated here (then the server prints it). ``token``: ``--token`` or
    ``$JOBS_INDEX_TOKEN``; ``no_auth``: the operator's explicit opt-out."""
    if no_auth:
        if token is not None:
            raise ConfigError(f"--no-auth and --token (or ${TOKEN_ENV}) exclude each other")
        return None, False
    if token is not None:
        if not token.strip():
            raise ConfigError(f"the token (--token or ${TOKEN_ENV}) is empty")
        return token, False
    if exposed(host):
        return secrets.token_urlsafe(32), True
    return None, False


def access_notice(host: str, port: int, token: str | None, show_token: bool) -> list[str]:
    """What a server says at start about who may see it (lines to print)."""
    shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address
    base = f"http://{shown_host}:{port}"
    if token is None:
        if not exposed(host):
            return []
        return [
            f"WARNING: --no-auth: {base} serves the history page, the API and /metrics to anyone "
            "who can reach this port, without a token"
        ]
    shown = quote(token, safe="") if show_token else "<token>"
    where = "generated" if show_token else f"from --token / ${TOKEN_ENV}"
    return [
        f"token required ({where}): open {base}/ui/?{TOKEN_PARAM}={shown} ; "
        f"API and /metrics clients send 'Authorization: Bearer {'<token>' if not show_token else token}'"
    ]


def _matches(given: str | None, token: bytes) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token)


def _cookie_name(request: web.Request) -> str:
    """One cookie per port: browsers share a host's cookies across its ports, and two
    servers on one machine have different tokens."""
    port = request.url.port
    return f"{COOKIE_PREFIX}_{port}" if port else COOKIE_PREFIX


def _bearer(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _is_json_path(path: str) -> bool:
    return path.startswith(JSON_PREFIXES) or path == "/api"


def _refuse(request: web.Request) -> web.StreamResponse:
    if _is_json_path(request.path):
        raise Unauthorized()  # the error middleware renders it as JSON
    return web.Response(
        status=401,
        body=TOKEN_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={**Unauthorized.headers, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def token_middleware(token: str) -> Callable:
    """A middleware that lets through only requests that show ``token`` (see module doc)."""
    expected = token.encode("utf-8", "surrogatepass")

    @web.middleware
    async def require_token(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = request.rel_url.query.get(TOKEN_PARAM)
        if given is not None and not _is_json_path(request.path) and request.method in ("GET", "HEAD"):
            if not _matches(given, expected):
                return _refuse(request)
            # The printed URL: the token becomes a cookie, and the URL loses it (so it
            # stays out of the history, bookmarks and the Referer).
            rest = request.rel_url.query.copy()
            rest.popall(TOKEN_PARAM)
            target = request.rel_url.with_query(rest)
            location = "/" + str(target).lstrip("/")  # never a protocol-relative "//host"
            response = web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
            response.set_cookie(_cookie_name(request), token, httponly=True, samesite="Strict", path="/")
            return response
        if _matches(_bearer(request), expected) or _matches(request.cookies.get(_cookie_name(request)), expected):
            return await handler(request)
        return _refuse(request)

    return require_token
