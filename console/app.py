"""Wires the console: routes of each page module, and the middlewares every request goes through.

In order: timing (server time per page, logged and sent as Server-Timing), errors (a missing page
or an unexpected failure becomes a page with a message, the traceback goes to the log only),
sign-in (every page but the sign-in and language ones needs a session; a token the services stop
accepting signs the operator out) and CSRF (every POST carries the form's token and, when the
browser says, comes from this console's own origin).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from console import charts, render, session
from console.clients import CALLER, PEERS, Caller, Peers, SignedOut
from console.pages import audiences, journeys, members, overview, report, signin, tags

log = structlog.get_logger("console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths served without a session.
PUBLIC = ("/signin", "/lang/", "/healthz")


# The console runs no script and loads nothing from elsewhere; no other site may frame it (its
# confirmation pages) or learn its URLs from a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@web.middleware
async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as redirect:  # redirects and the like
        _log_page(request, redirect.status, started)
        redirect.headers.update(SECURITY_HEADERS)
        raise
    elapsed_ms = _log_page(request, response.status, started)
    response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.1f}"
    response.headers.update(SECURITY_HEADERS)
    return response


def _log_page(request: web.Request, status: int, started: float) -> float:
    elapsed_ms = (time.perf_counter() - started) * 1000
    resource = request.match_info.route.resource
    log.info(
        "console_page",
        method=request.method,
        route=resource.canonical if resource else "",
        status=status,
        server_ms=round(elapsed_ms, 1),
    )
    return elapsed_ms


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return render.message_page(request, 404, "error.not_found")
    except web.HTTPMethodNotAllowed:
        return render.message_page(request, 405, "error.not_found")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("console_failure", path=request.path)
        return render.message_page(request, 500, "error.title")


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PUBLIC):
        return await handler(request)
    token = session.token_of(request)
    if token is None:
        raise web.HTTPSeeOther(
            f"/signin?next={urllib.parse.quote(request.path_qs)}" if request.method == "GET" else "/signin"
        )
    request[CALLER] = Caller(request.app[PEERS], token)
    try:
        return await handler(request)
    except SignedOut:
        response = web.HTTPSeeOther("/signin?expired=1")
        session.sign_out(response)
        raise response from None


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST":
        form = await request.post()
        submitted = form.get(session.CSRF_FIELD)
        if not (
            isinstance(submitted, str)
            and session.same_origin(request)
            and session.form_csrf_ok(request, submitted)
        ):
            log.warning("console_csrf_refused", path=request.path)
            return render.message_page(request, 403, "csrf.refused")
    return await handler(request)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def home(_request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/overview")


def build(peers: Peers, *, secure_cookies: bool = False) -> web.Application:
    """The console over `peers` (opened on start-up and closed on clean-up by the application)."""
    app = web.Application(middlewares=[timing, errors, signed_in, csrf])
    app[PEERS] = peers
    app[render.ENV_KEY] = render.environment()
    app[session.SECURE] = secure_cookies
    app.router.add_get("/", home)
    app.router.add_get("/healthz", healthz)
    for module in (signin, overview, members, journeys, report, tags, audiences):
        module.add_routes(app.router)

    connecting: list[asyncio.Task[None]] = []

    async def start(_app: web.Application) -> None:
        peers.open()
        connecting.append(asyncio.create_task(peers.connect()))
        await charts.warm_up()

    async def stop(_app: web.Application) -> None:
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        await peers.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
