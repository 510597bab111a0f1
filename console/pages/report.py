"""A journey's report (GetJourneyReport): its steps drawn as a flow with per-step counts, the arms
(treated, holdout, split arms) with conversion and GMV per member, and each comparison's uplift
with its 95 % interval and p-value; the journey's state and the changes it allows on top.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2, report_pb2

from console import charts, i18n, render, session
from console.clients import caller
from console.pages.journeys import ACTIONS, actions, state_name

BOX_WIDTH = 560
BOX_HEIGHT = 58
GAP = 26
COUNTS = ("sent", "skipped", "deferred", "failed", "unknown", "held_out", "done")
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Box:
    """One step in the flow picture."""

    step_id: str
    kind: str
    what: str  # the step's own settings, short
    entered: int
    counts: tuple[tuple[str, int], ...]  # (label key, count) of the non-zero outcomes
    y: int
    bar: int  # width of the entered bar, against the step most entered


def describe(step: journey_pb2.Step | None) -> tuple[str, str]:
    """(kind, a short summary of its settings and where it leads)."""
    if step is None:
        return "", ""
    kind = step.WhichOneof("kind") or ""
    if kind == "send":
        return (
            kind,
            f"{step.send.template}{' · ' + step.send.channel if step.send.HasField('channel') else ''}",
        )
    if kind == "wait":
        return kind, step.wait.duration
    if kind == "wait_until_hour":
        return kind, f"{step.wait_until_hour.hour:02d}:{step.wait_until_hour.minute:02d}"
    if kind == "wait_for_event":
        w = step.wait_for_event
        return kind, f"{w.event.kind} ≤ {w.timeout} → {w.on_event or 'next'} / {w.on_timeout or 'next'}"
    if kind == "branch":
        return kind, f"→ {step.branch.if_true or 'next'} / {step.branch.if_false or 'next'}"
    if kind == "split":
        return kind, " / ".join(f"{a.name} {a.percent}% → {a.next or 'next'}" for a in step.split.arms)
    if kind == "award":
        return kind, f"+{step.award.points}"
    if kind == "add_tag":
        return kind, f"{step.add_tag.dimension}={step.add_tag.value}"
    if kind == "exit":
        return kind, step.exit.reason
    if kind == "issue_coupon":
        return kind, step.issue_coupon.template
    return kind, ""


def flow(journey: journey_pb2.Journey, report: report_pb2.JourneyReport) -> list[Box]:
    steps = {step.id: step for step in journey.definition.steps}
    most = max((s.entered for s in report.steps), default=0) or 1
    boxes = []
    for index, figures in enumerate(report.steps):
        kind, what = describe(steps.get(figures.step_id))
        counts = tuple((f"step.{c}", int(getattr(figures, c))) for c in COUNTS if getattr(figures, c))
        boxes.append(
            Box(
                figures.step_id,
                kind,
                what,
                figures.entered,
                counts,
                y=index * (BOX_HEIGHT + GAP),
                bar=round((BOX_WIDTH - 2) * figures.entered / most),
            )
        )
    return boxes


async def show(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    call = caller(request)
    got, reported = await asyncio.gather(
        call.attempt(
            "journeys", "GetJourney", journeys_service_pb2.GetJourneyRequest(name=f"journeys/{key}")
        ),
        call.attempt(
            "journeys", "GetJourneyReport", report_pb2.GetJourneyReportRequest(name=f"journeys/{key}")
        ),
    )
    if got.problem is not None:
        return render.problem_page(request, got.problem)
    journey: journey_pb2.Journey = got.reply
    report: report_pb2.JourneyReport | None = reported.value
    chart = ""
    if report is not None and report.arms:
        t = i18n.translator(session.language_of(request))
        rows = [{"arm": a.arm, "rate": a.rate, "low": a.ci_low, "high": a.ci_high} for a in report.arms]
        chart = await charts.render(charts.rates_with_intervals(rows, title=t("report.rate_chart")))
    boxes = flow(journey, report) if report is not None else []
    done = request.query.get("done", "")
    return render.page(
        request,
        "report.html",
        journey=journey,
        key=key,
        state=state_name(journey),
        actions=actions(journey),
        done=done if done in ACTIONS else "",
        report=report,
        problem=reported.problem,
        boxes=boxes,
        box_width=BOX_WIDTH,
        box_height=BOX_HEIGHT,
        flow_height=max(len(boxes) * (BOX_HEIGHT + GAP) - GAP, 0) + 2,
        chart=chart,
        significance=SIGNIFICANCE,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/journeys/{key}/report", show)
