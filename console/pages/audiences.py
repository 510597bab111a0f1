"""Audiences: the list with each one's kind and size, the rule editor (a GET form whose URL is the
draft: every change is one submit that re-renders with the draft's count and breakdown, counted by
the audience service as an unsaved rule), saving a draft as an audience, and one audience's page
(its rule in words, size, breakdown, and its snapshots with their arms, newest first).

Saving is a POST carrying a request id minted when the editor was drawn: submitting it twice
creates one audience (the service answers a repeated request id with the audience it created).
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from console import audience_draft, audience_text, charts, i18n, render, session
from console.clients import Caller, Outcome, Problem, caller

PAGE_SIZE = 50
SNAPSHOTS_PAGE = 10
DEFAULT_BREAKDOWN = "lifecycle"
svc = audience_service_pb2


@dataclass
class Save:
    """The save form's fields, and what the service said of them."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    audience_id: str = ""
    display_name: str = ""
    dynamic: bool = False
    errors: dict[str, list[str]] = field(default_factory=dict)
    problem: Problem | None = None


async def listing(request: web.Request) -> web.Response:
    call = caller(request)
    listed = await call.attempt(
        "audience",
        "ListAudiences",
        svc.ListAudiencesRequest(page_size=PAGE_SIZE, page_token=request.query.get("page_token", "")),
    )
    if listed.problem is not None and listed.problem.http_status == 400:
        return render.problem_page(request, listed.problem)
    audiences = list(listed.value.audiences) if listed.value else []
    counts = await asyncio.gather(
        *(call.attempt("audience", "CountAudience", svc.CountAudienceRequest(name=a.name)) for a in audiences)
    )
    return render.page(
        request,
        "audiences.html",
        problem=listed.problem,
        rows=list(zip(audiences, counts, strict=True)),
        next_token=listed.value.next_page_token if listed.value else "",
    )


async def _dimensions(call: Caller) -> Outcome[Any]:
    return await call.attempt(
        "tagging", "ListTagDefinitions", tagging_service_pb2.ListTagDefinitionsRequest(page_size=1000)
    )


def _active(listed: Outcome[Any]) -> list[tags_pb2.TagDefinition]:
    if listed.value is None:
        return []
    return [d for d in listed.value.tag_definitions if d.state == tags_pb2.TAG_DEFINITION_STATE_ACTIVE]


def _breakdown_rows(reply: svc.BreakdownAudienceResponse, no_value: str) -> list[dict[str, Any]]:
    rows = [{"label": v.value, "value": v.member_count} for v in reply.tag_values]
    if reply.members_without_value:
        rows.append({"label": no_value, "value": reply.members_without_value})
    return rows


async def _chart(request: web.Request, breakdown: Outcome[Any]) -> str:
    if breakdown.value is None:
        return ""
    t = i18n.translator(session.language_of(request))
    rows = _breakdown_rows(breakdown.value, t("audiences.no_value"))
    return await charts.render(charts.bars(rows, title="")) if rows else ""


async def _editor(request: web.Request, draft: audience_draft.Draft, by: str, save: Save) -> web.Response:
    call = caller(request)
    built = audience_draft.build(draft)
    errors = {name: list(found) for name, found in built.errors.items()}
    if errors:
        dimensions = await _dimensions(call)
        count = breakdown = Outcome[Any]()
    else:
        dimensions, count, breakdown = await asyncio.gather(
            _dimensions(call),
            call.attempt("audience", "CountAudience", svc.CountAudienceRequest(rule=built.rule)),
            call.attempt(
                "audience",
                "BreakdownAudience",
                svc.BreakdownAudienceRequest(rule=built.rule, tag=svc.TagBreakdown(dimension=by)),
            ),
        )
    # Violations of the draft (from the count, or from saving) go next to the fields they name.
    elsewhere: list[str] = []
    for problem in (count.problem, save.problem):
        if problem is not None and problem.violations:
            outside = audience_draft.place(draft, problem.violations, errors)
            for entry in outside:
                path = entry.partition(":")[0]
                if path.startswith("audience.") and problem is save.problem:
                    save.errors.setdefault(path.removeprefix("audience."), []).append(
                        entry.partition(": ")[2]
                    )
                elif entry not in elsewhere:
                    elsewhere.append(entry)
    breakdown_errors = [
        d for p, d in (breakdown.problem.violations if breakdown.problem else ()) if p.startswith("tag.")
    ]
    invalid = bool(errors or elsewhere or save.errors)
    return render.page(
        request,
        "audience_builder.html",
        status=400 if invalid else (save.problem.http_status if save.problem else 200),
        draft=draft,
        draft_query=urllib.parse.urlencode(draft.query()),
        errors=errors,
        elsewhere=elsewhere,
        dimensions=_active(dimensions),
        dimensions_problem=dimensions.problem,
        count=count,
        breakdown=breakdown,
        breakdown_errors=breakdown_errors,
        by=by,
        chart=await _chart(request, breakdown),
        save=save,
        choices=audience_draft,
    )


async def builder(request: web.Request) -> web.Response:
    draft = audience_draft.parse(request.query)
    return await _editor(request, draft, request.query.get("by", DEFAULT_BREAKDOWN), Save())


async def create(request: web.Request) -> web.Response:
    form = await request.post()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    draft = audience_draft.parse(dict(urllib.parse.parse_qsl(fields.get("draft", ""))))
    by = fields.get("by", DEFAULT_BREAKDOWN)
    save = Save(
        request_id=fields.get("request_id", "")[:128] or uuid.uuid4().hex,
        audience_id=fields.get("audience_id", "").strip(),
        display_name=fields.get("display_name", "").strip(),
        dynamic=fields.get("dynamic") == "on",
    )
    built = audience_draft.build(draft)
    if built.errors:
        return await _editor(request, draft, by, save)
    audience = audience_pb2.Audience(
        audience_id=save.audience_id, display_name=save.display_name, rule=built.rule, dynamic=save.dynamic
    )
    created = await caller(request).attempt(
        "audience", "CreateAudience", svc.CreateAudienceRequest(audience=audience, request_id=save.request_id)
    )
    if created.problem is not None:
        save.problem = created.problem
        return await _editor(request, draft, by, save)
    raise web.HTTPSeeOther(f"/audiences/{urllib.parse.quote(save.audience_id)}?created=1")


async def audience(request: web.Request) -> web.Response:
    name = f"audiences/{request.match_info['audience_id']}"
    by = request.query.get("by", DEFAULT_BREAKDOWN)
    call = caller(request)
    got, count, breakdown, dimensions, snapshots = await asyncio.gather(
        call.attempt("audience", "GetAudience", svc.GetAudienceRequest(name=name)),
        call.attempt("audience", "CountAudience", svc.CountAudienceRequest(name=name)),
        call.attempt(
            "audience",
            "BreakdownAudience",
            svc.BreakdownAudienceRequest(name=name, tag=svc.TagBreakdown(dimension=by)),
        ),
        _dimensions(call),
        call.attempt(
            "audience",
            "ListSnapshots",
            svc.ListSnapshotsRequest(
                audience=name, page_size=SNAPSHOTS_PAGE, page_token=request.query.get("snapshots_token", "")
            ),
        ),
    )
    if got.problem is not None:
        return render.problem_page(request, got.problem)
    found: audience_pb2.Audience = got.reply
    return render.page(
        request,
        "audience.html",
        audience=found,
        rule=audience_text.describe(found.rule),
        count=count,
        breakdown=breakdown,
        chart=await _chart(request, breakdown),
        dimensions=_active(dimensions),
        by=by,
        snapshots=snapshots,
        created=request.query.get("created") == "1",
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/audiences", listing)
    router.add_get("/audience-builder", builder)
    router.add_post("/audience-builder", create)
    router.add_get("/audiences/{audience_id}", audience)
