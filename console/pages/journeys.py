"""Journeys: the list by state, and the state changes an operator confirms (activate, pause,
resume, archive).

A state change is a POST from a confirmation page (never from a link), carrying the CSRF token and
a request id minted when the confirmation page was drawn: submitting the same form twice is one
change (the journeys service answers a repeated request id with its first answer).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2

from console import render
from console.clients import caller

PAGE_SIZE = 50
STATES = {
    "draft": journey_pb2.JOURNEY_STATE_DRAFT,
    "active": journey_pb2.JOURNEY_STATE_ACTIVE,
    "paused": journey_pb2.JOURNEY_STATE_PAUSED,
    "archived": journey_pb2.JOURNEY_STATE_ARCHIVED,
}
STATE_NAMES = {number: name for name, number in STATES.items()}
ACTIONS = ("activate", "pause", "resume", "archive")


@dataclass(frozen=True)
class Action:
    name: str  # one of ACTIONS
    label: str  # the i18n key of its button
    version: int = 0  # the version an activation makes live


def state_name(journey: journey_pb2.Journey) -> str:
    return STATE_NAMES.get(journey.state, "draft")


def actions(journey: journey_pb2.Journey) -> list[Action]:
    """What an operator may do to the journey in its state."""
    state = state_name(journey)
    if state == "draft":
        return [
            Action("activate", "action.activate", journey.latest_version),
            Action("archive", "action.archive"),
        ]
    if state == "active":
        found = [Action("pause", "action.pause"), Action("archive", "action.archive")]
        if journey.latest_version > journey.live_version:
            found.insert(0, Action("activate", "action.activate_latest", journey.latest_version))
        return found
    if state == "paused":
        return [Action("resume", "action.resume"), Action("archive", "action.archive")]
    return []


async def listing(request: web.Request) -> web.Response:
    state = request.query.get("state", "")
    if state and state not in STATES:
        raise web.HTTPNotFound
    reply = await caller(request).attempt(
        "journeys",
        "ListJourneys",
        journeys_service_pb2.ListJourneysRequest(
            page_size=PAGE_SIZE,
            page_token=request.query.get("page_token", ""),
            state=STATES.get(state, journey_pb2.JOURNEY_STATE_UNSPECIFIED),
        ),
    )
    if reply.problem is not None and reply.problem.http_status == 400:
        return render.problem_page(request, reply.problem)
    return render.page(
        request,
        "journeys.html",
        states=list(STATES),
        state=state,
        problem=reply.problem,
        journeys=list(reply.value.journeys) if reply.value else [],
        next_token=reply.value.next_page_token if reply.value else "",
        state_name=state_name,
        actions=actions,
    )


async def _journey(request: web.Request) -> journey_pb2.Journey | web.Response:
    got = await caller(request).attempt(
        "journeys",
        "GetJourney",
        journeys_service_pb2.GetJourneyRequest(name=f"journeys/{request.match_info['key']}"),
    )
    if got.problem is not None:
        return render.problem_page(request, got.problem)
    journey: journey_pb2.Journey = got.reply
    return journey


async def confirm(request: web.Request) -> web.Response:
    journey = await _journey(request)
    if isinstance(journey, web.Response):
        return journey
    offered = {a.name: a for a in actions(journey)}
    action = offered.get(request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound
    return render.page(
        request,
        "confirm.html",
        journey=journey,
        action=action,
        request_id=uuid.uuid4().hex,
        problem=None,
    )


async def perform(request: web.Request) -> web.Response:
    name = f"journeys/{request.match_info['key']}"
    action = request.match_info["action"]
    form = await request.post()
    request_id = str(form.get("request_id", ""))
    s = journeys_service_pb2
    requests: dict[str, tuple[str, object]] = {
        "activate": (
            "ActivateJourney",
            s.ActivateJourneyRequest(name=name, version=_int(form.get("version")), request_id=request_id),
        ),
        "pause": ("PauseJourney", s.PauseJourneyRequest(name=name, request_id=request_id)),
        "resume": ("ResumeJourney", s.ResumeJourneyRequest(name=name, request_id=request_id)),
        "archive": (
            "ArchiveJourney",
            s.ArchiveJourneyRequest(
                name=name, stop_running=form.get("stop_running") == "on", request_id=request_id
            ),
        ),
    }
    if action not in requests:
        raise web.HTTPNotFound
    method, message = requests[action]
    done = await caller(request).attempt("journeys", method, message)
    if done.problem is not None:
        return render.problem_page(request, done.problem)
    raise web.HTTPSeeOther(f"/journeys/{request.match_info['key']}/report?done={action}")


def _int(raw: object) -> int:
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 10 else 0


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/journeys", listing)
    router.add_get("/journeys/{key}/confirm/{action}", confirm)
    router.add_post("/journeys/{key}/{action}", perform)
