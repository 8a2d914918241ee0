"""The dashboard's aiohttp application: sessions, CSRF, security headers, and serving it."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from outbox import logs, render, webserver
from outbox.config import Settings
from outbox.dashboard import access
from outbox.db import admin, portal
from outbox.errors import OutboxError, first_line, scrub

T = TypeVar("T")
_log = structlog.get_logger("outbox.dashboard")
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
# No inline script or style anywhere; the chart is inline SVG drawn with classes.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
OPEN_PATHS = ("/login", "/static/", "/portal/")
CSRF_REFUSED = "the form's CSRF token is missing or wrong: reload the page and send it again"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Context:
    """What every handler needs: settings, the database, the session key, the templates."""

    settings: Settings
    db_url: str
    portal_url: str  # the connection a portal link's pages use (confined to its account)
    key: bytes
    templates: jinja2.Environment


CONTEXT = web.AppKey("context", Context)
# The session of the request being handled: each request runs in a task of its own, which the
# middleware sets this in (aiohttp 3.10 has no typed request keys; a plain one warns).
SESSION: contextvars.ContextVar[access.Session | None] = contextvars.ContextVar(
    "outbox_dashboard_session", default=None
)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


class RevokedError(OutboxError):
    """The portal link this session was opened with has been revoked."""


async def db(
    request: web.Request, work: Callable[[admin.Connection], T], *, operator: bool = False
) -> T:
    """Run `work` on a connection of its own, in a worker thread; database errors come out as
    one-line OutboxErrors, as the CLI's do. A portal link's session runs it in one transaction
    as outbox_account, confined to its account by row-level security (`operator`: the dashboard's
    own connection whatever the session, for checking a link before it opens a session)."""
    ctx = context(request)
    current = session(request)
    account = current.account
    if account is None or operator:

        def run() -> T:
            with admin.session(ctx.db_url) as conn:
                return work(conn)

        return await asyncio.to_thread(run)
    issued = datetime.fromtimestamp(current.issued, UTC)

    def confined() -> T:
        with admin.session(ctx.portal_url) as conn, conn.transaction():
            if portal.revoked(conn, account, issued):
                raise RevokedError("this link has been revoked: ask for a new one")
            portal.confine(conn, account)
            return work(conn)

    return await asyncio.to_thread(confined)


def session(request: web.Request) -> access.Session:
    found = SESSION.get()
    if found is None:
        raise RuntimeError("no session: the sessions middleware did not run")
    return found


def page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A rendered page; every page knows the session's CSRF token and the flash note."""
    ctx = context(request)
    note = request.query.get("note")
    signed = note is not None and access.verify(
        ctx.key, f"note:{note}", request.query.get("sig", "")
    )
    values.setdefault("error", None)
    current = session(request)
    text = ctx.templates.get_template(template).render(
        csrf=current.csrf(ctx.key),
        account=current.account,
        read_only=current.read_only,
        note=note if signed else None,
        login=ctx.settings.dashboard_token is not None,
        **values,
    )
    return web.Response(text=text, status=status, content_type="text/html")


def done(request: web.Request, path: str, note: str) -> web.HTTPSeeOther:
    """A redirect after a successful action, carrying a note the next page shows (signed, so a
    link cannot make the page say something the dashboard did not)."""
    sig = access.sign(context(request).key, f"note:{note}")
    return web.HTTPSeeOther(f"{path}?{urlencode({'note': note, 'sig': sig})}")


def csp(request: web.Request) -> str:
    """The page's policy; a portal link's pages may be framed by the configured ancestors."""
    ancestors = context(request).settings.portal_frame_ancestors
    current = SESSION.get()
    if ancestors and isinstance(current, access.Session) and current.account is not None:
        return CSP.replace("frame-ancestors 'none'", f"frame-ancestors {ancestors}")
    return CSP


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.setdefault("Content-Security-Policy", csp(request))
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        # Pages may hold a secret once; no copy of one stays in a cache.
        response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every visitor has a signed session; with a token, only a logged-in one sees more than
    the login form. Every POST carries its session's CSRF token."""
    ctx = context(request)
    current = access.read_session(ctx.key, request.cookies.get(access.COOKIE))
    fresh = current is None
    if current is None:
        current = access.new_session(authed=ctx.settings.dashboard_token is None)
    SESSION.set(current)
    if request.method == "POST" and current.read_only and request.path != "/logout":
        raise web.HTTPForbidden(text="this link is read-only: it can show, not change")
    if request.method == "POST":
        form = await request.post()
        given = form.get("csrf")
        if (
            fresh
            or not isinstance(given, str)
            or not access.verify(ctx.key, f"csrf:{current.sid}", given)
        ):
            raise web.HTTPForbidden(text=CSRF_REFUSED)
    if not current.authed and not request.path.startswith(OPEN_PATHS):
        response: web.StreamResponse = web.HTTPSeeOther("/login")
    else:
        response = await handler(request)
    if fresh and access.COOKIE not in response.cookies:  # a portal link sets its own
        set_cookie(response, request, current)
    return response


def set_cookie(response: web.StreamResponse, request: web.Request, value: access.Session) -> None:
    # Framed inside the CRM's own page (another site), a portal session's cookie must be sent
    # cross-site, which browsers allow only for a Secure cookie, so only over HTTPS.
    ctx = context(request)
    framed = (
        value.account is not None
        and ctx.settings.portal_frame_ancestors is not None
        and request.secure
    )
    response.set_cookie(
        access.COOKIE,
        value.cookie(ctx.key),
        max_age=max(0, value.expires - int(time.time())),
        httponly=True,
        samesite="None" if framed else "Strict",
        secure=framed,
        path="/",
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A refused input or action: its one line on a page, status 400, nothing changed."""
    try:
        return await handler(request)
    except OutboxError as exc:
        status = 403 if isinstance(exc, RevokedError) else 400
        return page(request, "error.html", status=status, error=render.clean(str(exc)))
    except web.HTTPException:
        raise
    except Exception as exc:
        text = f"unexpected {type(exc).__name__}: {first_line(exc)}"
        # One line, no traceback: a traceback's locals could hold a secret.
        _log.error("dashboard_page_failed", path=request.path, error=scrub(text))
        return page(request, "error.html", status=500, error=render.clean(text))


def template_environment() -> jinja2.Environment:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["ts"] = render.timestamp
    return templates


def page_sessions(url: str) -> str:
    """The connection string the pages use: without JIT, whose compiling costs a page's short
    aggregates more than it saves (most of a second on a busy 2-vCPU machine)."""
    given = conninfo_to_dict(url).get("options") or ""
    return make_conninfo(url, options=f"{given} -c jit=off".strip())


def make_app(settings: Settings, db_url: str) -> web.Application:
    from outbox.dashboard import actions, views  # noqa: PLC0415 - they import this module

    templates = template_environment()
    app = web.Application(middlewares=[security_headers, sessions, errors])
    key = access.session_key(settings.dashboard_token)
    portal_url = page_sessions(settings.portal_database_url or db_url)
    app[CONTEXT] = Context(settings, page_sessions(db_url), portal_url, key, templates)
    views.routes(app)
    actions.routes(app)
    app.router.add_get("/portal/{token}", views.open_link)
    app.router.add_static("/static/", STATIC)
    return app


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner, bound = await webserver.start(app, host, port, what="listen")
    shown = f"[{host}]" if ":" in host else host
    logs.notice(f"dashboard: http://{shown}:{bound}/")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def serve(settings: Settings, db_url: str, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    asyncio.run(_serve(make_app(settings, db_url), host, port))
