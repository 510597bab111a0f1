"""GetJourneyReport: the request's checks, the journey report (workflows/journeys/report.py)
computed, and the answer as its message. The servicer's method is `answer` for the call's tenant."""

from __future__ import annotations

import dataclasses

from memberops.journeys.v1 import report_pb2 as pb

from runtime.db import Database
from runtime.errors import FieldViolation, InvalidArgument
from workflows.journeys import report
from workflows.journeys.definition import KEY


def checked(request: pb.GetJourneyReportRequest) -> tuple[str, int]:
    """(journey key, version), or InvalidArgument naming each bad field."""
    violations = []
    key = request.name.removeprefix("journeys/")
    if not request.name.startswith("journeys/") or not KEY.match(key):
        violations.append(FieldViolation("name", "must be a resource name of the form journeys/{key}"))
    if request.version < 0:
        violations.append(FieldViolation("version", "must be 0 (every version) or a version number"))
    if violations:
        raise InvalidArgument(violations)
    return key, request.version


def to_message(figures: report.JourneyReport) -> pb.JourneyReport:
    """Field by field: the dataclasses and the messages have the same names."""
    return pb.JourneyReport(
        journey_key=figures.journey_key,
        version=figures.version,
        attribution=figures.attribution,
        steps=[pb.StepFigures(**dataclasses.asdict(s)) for s in figures.steps],
        arms=[pb.ArmFigures(**dataclasses.asdict(a)) for a in figures.arms],
        comparisons=[pb.Comparison(**dataclasses.asdict(c)) for c in figures.comparisons],
        member_runs=figures.member_runs,
        cohorts=figures.cohorts,
    )


async def answer(db: Database, tenant_id: str, request: pb.GetJourneyReportRequest) -> pb.JourneyReport:
    """The report, or InvalidArgument (a bad field) or NotFound (no such journey or version)."""
    key, version = checked(request)
    return to_message(await report.journey_report(db, tenant_id, key, version))
