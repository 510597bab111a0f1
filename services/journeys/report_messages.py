"""GetJourneyReport: the request's checks, the journey report (workflows/journeys/report.py)
computed, its coupon figures from the tasks service (workflows/journeys/report_coupons.py), and the
answer as its message. The servicer's method is `answer` for the call's tenant.

The report answers without the tasks service too: its figures are the journeys' own, and coupons
are then marked unavailable (`coupons_unavailable`) rather than the call failing."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

from memberops.journeys.v1 import report_pb2 as pb

from runtime import logs
from runtime.db import Database
from runtime.errors import FieldViolation, InvalidArgument, Unavailable
from runtime.peer_calls import PeerFailed
from workflows.journeys import report, report_coupons
from workflows.journeys.definition import KEY
from workflows.journeys.report_coupons import CouponCount

log = logs.get_logger("memberops.journeys.report")


class CouponStats(Protocol):
    """The tasks service's coupons of a journey per source arm (services/journeys/peers.py)."""

    async def coupon_stats(self, tenant_id: str, journey_key: str) -> Mapping[str, CouponCount]: ...


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
        coupons_unavailable=figures.coupons_unavailable,
    )


async def answer(
    db: Database, tenant_id: str, request: pb.GetJourneyReportRequest, coupons: CouponStats
) -> pb.JourneyReport:
    """The report, or InvalidArgument (a bad field) or NotFound (no such journey or version)."""
    key, version = checked(request)
    figures = await report.journey_report(db, tenant_id, key, version)
    try:
        stats: Mapping[str, CouponCount] | None = await coupons.coupon_stats(tenant_id, key)
    except (Unavailable, PeerFailed) as error:
        log.warning("coupon figures unavailable", journey=key, error=str(error))
        stats = None
    return to_message(report_coupons.with_coupons(figures, stats))
