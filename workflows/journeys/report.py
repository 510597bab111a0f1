"""What a journey did: `journey_report` computes the figures JourneyService.GetJourneyReport
answers; `python -m workflows.journeys.report` asks the service for them and prints them.

    .venv/bin/python -m workflows.journeys.report --tenant dev --journey new-customer [--version 2] [--json]

The figures come from the worker's schema, not from Temporal's history, and cover both shapes of a
journey together: member journeys (`enrolments`, one row per member and entry, and the message log)
and the cohorts of its broadcasts (`cohort_members`, and what each finished batch counted).

- Arms: treated, holdout, and each split arm (`{step id}:{arm name}`), with members, those still
  in the journey, conversions (the goal within the attribution window from entry; members still in
  the journey count as not converted yet), GMV of the converting orders. A split arm counts treated
  members only: the holdout walks the same paths but is sent nothing on any of them.
- Coupons: per arm, issued and used, from the tasks service (report_coupons.py; added by the
  service's GetJourneyReport, not by this module, which reads the worker's schema only).
- Comparisons: every arm against the holdout, and each split arm against the arms of its split
  listed before it, with the statistics of `stats`.
- Steps: a member journey's figures per step are written when the member leaves
  (`enrolments.step_figures`); for members still in it (and runs that ended before those figures
  were kept) the message log's outcomes count, so their entered and deferred are not counted yet.
  Cohorts add what their finished batches counted (`cohort_batches.figures`), while they run too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from google.protobuf import json_format
from memberops.journeys.v1 import journeys_service_pb2_grpc, report_pb2

from runtime.config import ConfigError, Settings
from runtime.db import Connection, Database
from workflows.journeys import stats, store
from workflows.journeys.definition import JourneyDefinition
from workflows.journeys.report_table import render

TREATED, HOLDOUT = "treated", "holdout"
STEP_COUNTERS = ("entered", "sent", "skipped", "deferred", "failed", "unknown", "held_out", "done")
# Message statuses that are outcomes (queued, sending and retry are still under way).
LOGGED_OUTCOMES = ("sent", "skipped", "failed", "unknown")


@dataclass(frozen=True)
class StepFigures:
    step_id: str
    entered: int = 0
    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    held_out: int = 0
    done: int = 0


@dataclass(frozen=True)
class ArmFigures:
    # treated, holdout or `{step id}:{arm name}`.
    arm: str
    members: int = 0
    # Of those, still in the journey.
    active: int = 0
    conversions: int = 0
    rate: float = 0.0
    # The rate's 95 % Wilson interval.
    ci_low: float = 0.0
    ci_high: float = 1.0
    gmv_minor: int = 0
    gmv_per_member_minor: int = 0
    # Coupons of the journey's issue_coupon steps given to the arm's members, and used (from the
    # tasks service; see report_coupons.py).
    coupons_issued: int = 0
    coupons_used: int = 0


@dataclass(frozen=True)
class Comparison:
    """The arm's conversion rate minus the baseline's (see stats.compare)."""

    arm: str
    baseline: str
    difference: float = 0.0
    ci_low: float = -1.0
    ci_high: float = 1.0
    p_value: float = 1.0
    too_small: bool = True


@dataclass(frozen=True)
class JourneyReport:
    """Every field but the key has a default: the dispatcher's recorded histories hold reports of an
    older shape, which decode into this one (unknown fields are dropped) when they replay."""

    journey_key: str
    # 0: every version.
    version: int = 0
    attribution: str = ""
    steps: tuple[StepFigures, ...] = ()
    arms: tuple[ArmFigures, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    # Member journey runs (one per member and entry) and broadcast cohorts counted.
    member_runs: int = 0
    cohorts: int = 0
    # The tasks service did not answer for the coupon figures (they are 0 for want of an answer).
    coupons_unavailable: bool = False

    def arm(self, name: str) -> ArmFigures:
        """The arm's figures (empty ones for an arm nobody is in)."""
        return next((a for a in self.arms if a.arm == name), ArmFigures(name))

    @property
    def treated(self) -> ArmFigures:
        return self.arm(TREATED)

    @property
    def holdout(self) -> ArmFigures:
        return self.arm(HOLDOUT)


@dataclass
class _Tally:
    members: int = 0
    active: int = 0
    conversions: int = 0
    gmv_minor: int = 0


class _Counts:
    """What the queries found, added up per arm and per step."""

    def __init__(self) -> None:
        self.arms: defaultdict[str, _Tally] = defaultdict(_Tally)
        self.steps: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add_members(self, row: asyncpg.Record) -> None:
        """A row of members of one arm, state and split arms (joined by commas): count, GMV."""
        treated = row["treated"]
        split_arms = row["split_arms"].split(",") if treated and row["split_arms"] else []
        for arm in [TREATED if treated else HOLDOUT, *split_arms]:
            tally = self.arms[arm]
            tally.members += row["members"]
            if row["state"] == "active":
                tally.active += row["members"]
            elif row["state"] == "converted":
                tally.conversions += row["members"]
                tally.gmv_minor += row["gmv_minor"]

    def add_step(self, step_id: str, counter: str, n: int) -> None:
        if counter in STEP_COUNTERS:
            self.steps[step_id][counter] += n


async def journey_report(db: Database, tenant_id: str, journey_key: str, version: int = 0) -> JourneyReport:
    """The figures of one journey (all versions, or one); NotFound for an unknown journey or version."""
    definition = (await store.get_definition(db, tenant_id, journey_key, version)).definition
    counts = _Counts()
    async with db.transaction(tenant_id, readonly=True) as conn:
        member_runs = await _member_journeys(conn, counts, tenant_id, journey_key, version)
        cohorts = await _cohorts(conn, counts, tenant_id, journey_key, version)
    return JourneyReport(
        journey_key=journey_key,
        version=version,
        attribution=definition.goal.attribution if definition.goal is not None else "",
        steps=tuple(_steps(definition, counts)),
        arms=(arms := tuple(_arms(definition, counts))),
        comparisons=tuple(_comparisons(arms)),
        member_runs=member_runs,
        cohorts=cohorts,
    )


# One row per arm, state and combination of split arms: a few rows whatever the number of members.
# The split arms are grouped as text (elements never hold a comma): hashing text[] itself took twice
# as long over a million members.
_ARM_FIGURES = """array_to_string(split_arms, ',') AS split_arms, state,
       count(*) AS members, sum(gmv_minor)::bigint AS gmv_minor"""


async def _member_journeys(conn: Connection, counts: _Counts, tenant_id: str, key: str, version: int) -> int:
    """Adds the member journeys' arms and steps; the number of runs."""
    where = "e.tenant_id = $1 AND e.journey_key = $2 AND ($3 = 0 OR e.version = $3)"
    runs = 0
    for row in await conn.fetch(
        f"""SELECT arm = 'treated' AS treated, {_ARM_FIGURES}
            FROM journeys.enrolments e WHERE {where} GROUP BY 1, 2, 3""",
        tenant_id,
        key,
        version,
    ):
        counts.add_members(row)
        runs += row["members"]
    # Members who left: the figures their run wrote.
    for row in await conn.fetch(
        f"""SELECT s.key AS step_id, c.key AS counter, sum(c.value::bigint)::bigint AS n
            FROM journeys.enrolments e
            CROSS JOIN LATERAL jsonb_each(e.step_figures) s
            CROSS JOIN LATERAL jsonb_each_text(s.value) c
            WHERE {where} AND e.state <> 'active' AND e.step_figures <> '{{}}'::jsonb
            GROUP BY 1, 2""",
        tenant_id,
        key,
        version,
    ):
        counts.add_step(row["step_id"], row["counter"], row["n"])
    # Members still in the journey, and runs that ended before step figures were kept: the log.
    for row in await conn.fetch(
        f"""SELECT m.step_id, m.status, count(*) AS n
            FROM journeys.enrolments e
            JOIN journeys.messages m
              ON m.tenant_id = e.tenant_id AND m.journey_run = e.workflow_id || '#' || e.entry_number
             AND m.member_id = e.member_id
            WHERE {where} AND (e.state = 'active' OR e.step_figures = '{{}}'::jsonb)
              AND m.status = ANY($4::text[])
            GROUP BY 1, 2""",
        tenant_id,
        key,
        version,
        list(LOGGED_OUTCOMES),
    ):
        counts.add_step(row["step_id"], row["status"], row["n"])
    return runs


async def _cohorts(conn: Connection, counts: _Counts, tenant_id: str, key: str, version: int) -> int:
    """Adds the broadcasts' cohorts' arms and steps; the number of cohorts."""
    cohort_ids = [
        row["cohort_id"]
        for row in await conn.fetch(
            """SELECT cohort_id FROM journeys.cohorts
               WHERE tenant_id = $1 AND journey_key = $2 AND ($3 = 0 OR version = $3)""",
            tenant_id,
            key,
            version,
        )
    ]
    if not cohort_ids:
        return 0
    for row in await conn.fetch(
        f"""SELECT NOT holdout AS treated, {_ARM_FIGURES}
            FROM journeys.cohort_members WHERE tenant_id = $1 AND cohort_id = ANY($2::bigint[])
            GROUP BY 1, 2, 3""",
        tenant_id,
        cohort_ids,
    ):
        counts.add_members(row)
    # Finished batches' counters, {"step:hello:sent": 4980, "step:split-1:arm:a": 2500, ...}.
    for row in await conn.fetch(
        """SELECT f.key, sum(f.value::bigint)::bigint AS n
           FROM journeys.cohort_batches b CROSS JOIN LATERAL jsonb_each_text(b.figures) f
           WHERE b.tenant_id = $1 AND b.cohort_id = ANY($2::bigint[]) AND b.state = 'done'
             AND f.key LIKE 'step:%'
           GROUP BY 1""",
        tenant_id,
        cohort_ids,
    ):
        step_id, _, counter = row["key"].removeprefix("step:").partition(":")
        counts.add_step(step_id, counter, row["n"])
    return len(cohort_ids)


def _steps(definition: JourneyDefinition, counts: _Counts) -> Iterable[StepFigures]:
    """The definition's steps in order, then steps of other versions the figures name, by id."""
    ids = [step.id for step in definition.steps]
    for step_id in ids + sorted(counts.steps.keys() - set(ids)):
        figures: Mapping[str, int] = counts.steps.get(step_id, {})
        yield StepFigures(step_id, **{name: figures.get(name, 0) for name in STEP_COUNTERS})


def _arms(definition: JourneyDefinition, counts: _Counts) -> Iterable[ArmFigures]:
    """treated, holdout, the definition's split arms in order, then any other split arm, by name."""
    names = [TREATED, HOLDOUT] + [
        f"{step.id}:{arm.name}"
        for step in definition.steps
        if step.split is not None
        for arm in step.split.arms
    ]
    for name in names + sorted(counts.arms.keys() - set(names)):
        t = counts.arms.get(name, _Tally())
        low, high = stats.wilson(t.conversions, t.members)
        yield ArmFigures(
            arm=name,
            members=t.members,
            active=t.active,
            conversions=t.conversions,
            rate=stats.rate(t.conversions, t.members),
            ci_low=low,
            ci_high=high,
            gmv_minor=t.gmv_minor,
            # Rounded half up, in integers (money stays integral).
            gmv_per_member_minor=(2 * t.gmv_minor + t.members) // (2 * t.members) if t.members else 0,
        )


def _comparisons(arms: Sequence[ArmFigures]) -> Iterable[Comparison]:
    """Each arm against the holdout; each split arm against the earlier arms of its split."""
    by_name = {a.arm: a for a in arms}
    holdout = by_name[HOLDOUT]
    for arm in arms:
        if arm.arm != HOLDOUT:
            yield _compare(arm, holdout)
    splits: defaultdict[str, list[ArmFigures]] = defaultdict(list)
    for arm in arms:
        if ":" in arm.arm:
            splits[arm.arm.partition(":")[0]].append(arm)
    for split_arms in splits.values():
        for i, baseline in enumerate(split_arms):
            for arm in split_arms[i + 1 :]:
                yield _compare(arm, baseline)


def _compare(arm: ArmFigures, baseline: ArmFigures) -> Comparison:
    d = stats.compare(arm.conversions, arm.members, baseline.conversions, baseline.members)
    return Comparison(arm.arm, baseline.arm, d.difference, d.ci_low, d.ci_high, d.p_value, d.too_small)


# --- the command: a client of JourneyService.GetJourneyReport --------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflows.journeys.report",
        description="What a journey did, from JourneyService.GetJourneyReport: per step, per arm "
        "(treated, holdout, split arms) with 95 %% intervals, and uplift with p-values.",
    )
    parser.add_argument(
        "--tenant", required=True, help="the tenant; its token is taken from MEMBEROPS_AUTH_TOKENS"
    )
    parser.add_argument("--journey", required=True, help="the journey's key")
    parser.add_argument("--version", type=int, default=0, help="one version only (default: all)")
    parser.add_argument(
        "--address",
        default="",
        help="the journey service (default: $MEMBEROPS_JOURNEYS_ADDRESS or 127.0.0.1:50054)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON instead of tables")
    return parser


async def fetch(
    address: str, token: str, request: report_pb2.GetJourneyReportRequest
) -> report_pb2.JourneyReport:
    """One GetJourneyReport call."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = journeys_service_pb2_grpc.JourneyServiceStub(channel)
        return await stub.GetJourneyReport(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
        )


async def run(argv: Sequence[str], settings: Settings) -> int:
    """The command: prints the report; 1 with the service's message when it refuses."""
    args = parser().parse_args(argv)
    try:
        token = settings.token_for_tenant(args.tenant)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    request = report_pb2.GetJourneyReportRequest(name=f"journeys/{args.journey}", version=args.version)
    try:
        answer = await fetch(args.address or settings.journeys_address, token, request)
    except grpc.aio.AioRpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json_format.MessageToJson(
                answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
    else:
        print(render(answer))
    return 0


def main() -> int:
    return asyncio.run(run(sys.argv[1:], Settings.from_env()))


if __name__ == "__main__":
    raise SystemExit(main())
