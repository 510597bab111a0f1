"""Sign-in with a tenant token, sign-out, and the language switch.

A pasted token is checked with one cheap authenticated call (the first tag definition) before it
is kept: the services, not the console, know which tokens are valid.
"""

from __future__ import annotations

from aiohttp import web
from memberops.tagging.v1 import tagging_service_pb2

from console import render, session
from console.clients import PEERS, Caller, SignedOut

MAX_TOKEN = 512


def _form(
    request: web.Request, *, status: int = 200, message: str = "", problem: object = None
) -> web.Response:
    placeholder = web.Response()
    token = session.token_of(request)
    form_csrf = session.csrf_for(token) if token else session.login_csrf(request, placeholder)
    response = render.page(
        request,
        "signin.html",
        status=status,
        form_csrf=form_csrf,
        next=session.safe_next(request.query.get("next")),
        message=message or ("signin.expired" if request.query.get("expired") else ""),
        problem=problem,
    )
    for name, morsel in placeholder.cookies.items():
        response.cookies[name] = morsel
    return response


async def show(request: web.Request) -> web.Response:
    return _form(request)


async def submit(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    if not token or len(token) > MAX_TOKEN:
        return _form(request, status=400, message="signin.empty")
    try:
        checked = await Caller(request.app[PEERS], token).attempt(
            "tagging", "ListTagDefinitions", tagging_service_pb2.ListTagDefinitionsRequest(page_size=1)
        )
    except SignedOut:
        return _form(request, status=401, message="signin.refused")
    if checked.problem is not None:
        return _form(request, status=checked.problem.http_status, problem=checked.problem)
    response = web.HTTPSeeOther(session.safe_next(str(form.get("next", "/"))))
    session.sign_in(response, request, token)
    raise response


async def sign_out(_request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/signin")
    session.sign_out(response)
    raise response


async def language(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther(session.safe_next(request.query.get("next")))
    session.set_language(response, request, request.match_info["language"])
    raise response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/signin", show)
    router.add_post("/signin", submit)
    router.add_post("/signout", sign_out)
    router.add_get("/lang/{language}", language)
