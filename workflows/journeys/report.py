"""What a journey did, treated against holdout: `python -m workflows.journeys.report`.

    .venv/bin/python -m workflows.journeys.report --tenant dev --journey new-customer [--version 2] [--json]

Read from the worker's schema (needs DATABASE_URL), not from Temporal's history: the enrolments
(one row per member and entry: arm, state, conversion, GMV) and the message log (one row per
journey run, member and step). A member converts when the journey's goal happens within its
attribution window from entry (the workflow records it so); GMV is the converting order's amount.
Members still in the journey count as entered and not (yet) converted, in both arms alike.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.config import Settings
from runtime.db import Database
from runtime.errors import NotFound
from workflows.journeys import store

ARMS = ("treated", "holdout")


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    entered: int = 0
    # Of those entered, still walking or measuring.
    active: int = 0
    converted: int = 0
    gmv_minor: int = 0
    # Step id -> message status (sent, skipped, failed, unknown, sending, retry) -> messages.
    messages: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def conversion_rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    def sent(self, step_id: str) -> int:
        return self.messages.get(step_id, {}).get("sent", 0)

    def not_sent(self) -> int:
        """Messages skipped (opted out, no channel), failed or of unknown outcome, all steps."""
        return sum(
            n for statuses in self.messages.values() for status, n in statuses.items() if status != "sent"
        )


@dataclass(frozen=True)
class JourneyReport:
    journey_key: str
    # 0: every version.
    version: int
    attribution: str
    # The definition's send steps in order (then any other step the log names).
    send_steps: tuple[str, ...]
    treated: ArmFigures
    holdout: ArmFigures
    # Treated conversion rate minus the holdout's, in percentage points.
    uplift_points: float
    # Treated rate over holdout rate, minus one; None when no holdout member converted.
    uplift_relative: float | None


async def journey_report(db: Database, tenant_id: str, journey_key: str, version: int = 0) -> JourneyReport:
    """The figures of one journey (all versions, or one); NotFound for an unknown journey."""
    definition = (await store.get_definition(db, tenant_id, journey_key, version)).definition
    async with db.transaction(tenant_id, readonly=True) as conn:
        enrolled = await conn.fetch(
            """SELECT arm, count(*) AS entered,
                      count(*) FILTER (WHERE state = 'active') AS active,
                      count(*) FILTER (WHERE state = 'converted') AS converted,
                      coalesce(sum(gmv_minor) FILTER (WHERE state = 'converted'), 0)::bigint AS gmv_minor
               FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = $2 AND ($3 = 0 OR version = $3)
               GROUP BY arm""",
            tenant_id,
            journey_key,
            version,
        )
        logged = await conn.fetch(
            """SELECT e.arm, m.step_id, m.status, count(*) AS messages
               FROM journeys.messages m
               JOIN journeys.enrolments e
                 ON e.tenant_id = m.tenant_id AND e.journey_key = m.journey_key
                AND e.member_id = m.member_id AND m.journey_run = e.workflow_id || '#' || e.entry_number
               WHERE m.tenant_id = $1 AND m.journey_key = $2 AND ($3 = 0 OR e.version = $3)
               GROUP BY 1, 2, 3""",
            tenant_id,
            journey_key,
            version,
        )
    messages: dict[str, dict[str, dict[str, int]]] = {arm: {} for arm in ARMS}
    for row in logged:
        messages[row["arm"]].setdefault(row["step_id"], {})[row["status"]] = row["messages"]
    counts = {row["arm"]: row for row in enrolled}
    arms = {
        arm: ArmFigures(
            arm=arm,
            entered=counts[arm]["entered"] if arm in counts else 0,
            active=counts[arm]["active"] if arm in counts else 0,
            converted=counts[arm]["converted"] if arm in counts else 0,
            gmv_minor=counts[arm]["gmv_minor"] if arm in counts else 0,
            messages=messages[arm],
        )
        for arm in ARMS
    }
    sends = [step.id for step in definition.steps if step.send is not None]
    sends += sorted({step for arm in ARMS for step in messages[arm]} - set(sends))
    treated, holdout = arms["treated"], arms["holdout"]
    return JourneyReport(
        journey_key=journey_key,
        version=version,
        attribution=definition.goal.attribution if definition.goal is not None else "",
        send_steps=tuple(sends),
        treated=treated,
        holdout=holdout,
        uplift_points=100 * (treated.conversion_rate - holdout.conversion_rate),
        uplift_relative=(
            treated.conversion_rate / holdout.conversion_rate - 1 if holdout.conversion_rate else None
        ),
    )


async def journey_keys(db: Database, tenant_id: str) -> list[str]:
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT journey_key FROM journeys.definitions WHERE tenant_id = $1 ORDER BY 1", tenant_id
        )
    return [row["journey_key"] for row in rows]


def _money(minor: int) -> str:
    return f"{minor / 100:,.2f}"


def render(report: JourneyReport) -> str:
    """The report as a table, treated beside holdout."""
    t, h = report.treated, report.holdout
    version = f"version {report.version}" if report.version else "all versions"
    window = f", goal within {report.attribution} of entry" if report.attribution else ", no goal"
    rows: list[tuple[str, str, str]] = [
        ("entered", f"{t.entered:,}", f"{h.entered:,}"),
        ("  still in the journey", f"{t.active:,}", f"{h.active:,}"),
        *((f"sent {step}", f"{t.sent(step):,}", f"{h.sent(step):,}") for step in report.send_steps),
        ("  not sent (skipped, failed, unknown)", f"{t.not_sent():,}", f"{h.not_sent():,}"),
        ("converted", f"{t.converted:,}", f"{h.converted:,}"),
        ("conversion rate", f"{100 * t.conversion_rate:.2f}%", f"{100 * h.conversion_rate:.2f}%"),
        ("GMV (attributed)", _money(t.gmv_minor), _money(h.gmv_minor)),
    ]
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"journey {report.journey_key} ({version}{window})",
        f"{'':<{width}}  {'treated':>12}  {'holdout':>12}",
        *(f"{label:<{width}}  {a:>12}  {b:>12}" for label, a, b in rows),
    ]
    relative = (
        f"{100 * report.uplift_relative:+.1f}%"
        if report.uplift_relative is not None
        else "n/a (no holdout conversion)"
    )
    lines.append(f"uplift: {report.uplift_points:+.2f} percentage points; relative {relative}")
    return "\n".join(lines)


def to_json(report: JourneyReport) -> str:
    data = dataclasses.asdict(report)
    for arm in ARMS:
        data[arm]["conversion_rate"] = getattr(report, arm).conversion_rate
    return json.dumps(data, indent=2, sort_keys=True)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflows.journeys.report",
        description="Treated against holdout for a journey: entered, sent per step, converted, GMV, uplift.",
    )
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--journey", default="", help="a journey key (default: every journey of the tenant)")
    parser.add_argument("--version", type=int, default=0, help="one version only (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


async def run(argv: Sequence[str], settings: Settings) -> int:
    """The command: prints each report; 1 with a message when the journey does not exist."""
    args = parser().parse_args(argv)
    db = await Database.connect(settings.require_database(), min_size=1, max_size=2)
    try:
        keys = [args.journey] if args.journey else await journey_keys(db, args.tenant)
        reports = [await journey_report(db, args.tenant, key, args.version) for key in keys]
    except NotFound as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    for report in reports:
        print(to_json(report) if args.json else render(report) + "\n")
    return 0


def main() -> int:
    return asyncio.run(run(sys.argv[1:], Settings.from_env()))


if __name__ == "__main__":
    raise SystemExit(main())
