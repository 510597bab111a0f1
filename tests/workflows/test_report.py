"""The journey report: its figures are what the enrolments, the message log, the cohorts' members
and their batches hold, per step and per arm (split arms too), with each arm's statistics; and the
report command prints them as a client of GetJourneyReport."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.errors import NotFound
from services.journeys import report_messages
from tests.conftest import TENANT_ACME, unique
from tests.waiting import eventually
from tests.workflows.journey_helpers import journey, member_in, running, seed_member, start
from workflows.journeys import report, stats, store
from workflows.journeys.definition import EventMatch, Goal, Send, Split, SplitArm, Step, Template, Wait
from workflows.journeys.payloads import MemberEvent
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def report_address(journeys: app.RunningService) -> str:
    """The journey service the report command asks."""
    return f"127.0.0.1:{journeys.port}"


async def logged(db: Database, journey_key: str) -> dict[str, int]:
    """Step -> messages sent, straight from the message log."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT step_id, count(*) AS n FROM journeys.messages
               WHERE tenant_id = $1 AND journey_key = $2 AND status = 'sent' GROUP BY 1""",
            TENANT_ACME,
            journey_key,
        )
    return {row["step_id"]: row["n"] for row in rows}


async def test_the_report_of_member_journeys_run_by_the_worker(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    report_address: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    definition = journey(
        Step(id="offer", send=Send(template="hello")),
        Step(id="wait-1d", wait=Wait(duration="1d")),
        Step(id="nudge", send=Send(template="nudge")),
        holdout_percent=50,
        goal=Goal(event=EventMatch(kind="order"), attribution="3d"),
        templates={
            "hello": Template(subject="Hello", body="Hi {nickname}."),
            "nudge": Template(subject="Still there?", body="Hi {nickname}, 10 off today."),
        },
    )
    treated = [member_in(definition, holdout=False) for _ in range(4)]
    held = [member_in(definition, holdout=True) for _ in range(3)]
    # Orders while the member waits its day: two treated members and one holdout member convert.
    orders = {treated[0]: 10_000, treated[1]: 2_550, held[0]: 4_000}
    for member_id in treated + held:
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handles = {
            member_id: await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
            for member_id in treated + held
        }
        for member_id, amount in orders.items():
            handle = handles[member_id]

            async def waiting(handle: Any = handle) -> bool:
                return bool((await handle.query(JourneyWorkflow.funnel)).current_step == "wait-1d")

            await eventually(waiting, f"did {member_id} get to wait-1d")
            await handle.signal(JourneyWorkflow.event, MemberEvent(kind="order", amount_minor=amount))
        funnels = {member_id: await handle.result() for member_id, handle in handles.items()}

    figures = await report.journey_report(journeys_db, TENANT_ACME, definition.key)
    assert (figures.member_runs, figures.cohorts, figures.attribution) == (7, 0, "3d")
    for arm, members in (("treated", treated), ("holdout", held)):
        shown = figures.arm(arm)
        converted = [m for m in members if funnels[m].converted]
        assert converted == [m for m in members if m in orders]
        assert (shown.members, shown.active, shown.conversions) == (len(members), 0, len(converted))
        assert shown.gmv_minor == sum(orders.get(m, 0) for m in members)
        assert (shown.ci_low, shown.ci_high) == stats.wilson(len(converted), len(members))
    assert figures.treated.rate == 0.5 and figures.holdout.rate == 1 / 3
    assert figures.treated.gmv_per_member_minor == round(12_550 / 4)
    (uplift,) = figures.comparisons
    assert (uplift.arm, uplift.baseline, uplift.too_small) == ("treated", "holdout", True)
    assert uplift.difference == pytest.approx(0.5 - 1 / 3)
    # Every treated member got the offer; only those who had not ordered got the nudge; no holdout
    # member got anything.
    sent = await logged(journeys_db, definition.key)
    assert sent == {"offer": 4, "nudge": 2}
    assert [(s.step_id, s.sent) for s in figures.steps] == [("offer", 4), ("wait-1d", 0), ("nudge", 2)]

    # The command asks the service and prints the same.
    settings = worker_settings
    common = ["--tenant", TENANT_ACME, "--journey", definition.key, "--address", report_address]
    capsys.readouterr()
    assert await report.run([*common, "--json"], settings) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arms"][0] == {
        "arm": "treated",
        "members": "4",
        "active": "0",
        "conversions": "2",
        "rate": 0.5,
        "ci_low": figures.treated.ci_low,
        "ci_high": figures.treated.ci_high,
        "gmv_minor": "12550",
        "gmv_per_member_minor": "3138",
        # The journey issues no coupons.
        "coupons_issued": "0",
        "coupons_used": "0",
    }
    assert [s["step_id"] for s in shown["steps"]] == ["offer", "wait-1d", "nudge"]
    assert shown["comparisons"][0]["too_small"] is True
    assert await report.run(common, settings) == 0
    table = capsys.readouterr().out
    assert "treated vs holdout           +16.67" in table and "too small to say" in table
    assert f"{100 * figures.holdout.ci_high:.2f}%" in table


async def test_the_command_says_what_the_service_refused(
    settings: Settings, report_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--tenant", TENANT_ACME, "--address", report_address, "--journey"]
    assert await report.run([*args, "no-such-journey"], settings) == 1
    assert "NOT_FOUND: journey 'no-such-journey' does not exist" in capsys.readouterr().err
    assert await report.run([*args, "Not A Key"], settings) == 1
    assert "INVALID_ARGUMENT: name: must be a resource name" in capsys.readouterr().err
    assert (
        await report.run(["--tenant", "nobody", "--journey", "x", "--address", report_address], settings) == 1
    )
    assert "no token for tenant 'nobody'" in capsys.readouterr().err


# --- figures from rows written here --------------------------------------------------------------


def split_journey() -> Any:
    return journey(
        Step(id="hello", send=Send(template="hello")),
        Step(id="pick", split=Split(arms=(SplitArm("a", 50, "offer-a"), SplitArm("b", 50, "offer-b")))),
        Step(id="offer-a", send=Send(template="hello")),
        Step(id="offer-b", send=Send(template="hello")),
        holdout_percent=10,
        goal=Goal(event=EventMatch(kind="order"), attribution="7d"),
    )


async def enrol(
    db: Database,
    key: str,
    version: int,
    *,
    arm: str = "treated",
    state: str = "completed",
    gmv_minor: int = 0,
    split_arms: tuple[str, ...] = (),
    step_figures: dict[str, dict[str, int]] | None = None,
    messages: dict[str, str] | None = None,
) -> None:
    """An enrolment row, and its run's message log (step -> status)."""
    member_id = unique()
    workflow_id = f"journey/{key}/member/{member_id}"
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute(
            """INSERT INTO journeys.enrolments (tenant_id, journey_key, version, member_id, entry_number,
                   workflow_id, run_id, arm, state, enter_time, finish_time, convert_time, gmv_minor,
                   split_arms, step_figures)
               VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)""",
            TENANT_ACME,
            key,
            version,
            member_id,
            workflow_id,
            unique("run"),
            arm,
            state,
            NOW,
            None if state == "active" else NOW,
            NOW if state == "converted" else None,
            gmv_minor,
            list(split_arms),
            json.dumps(step_figures or {}),
        )
        for step_id, status in (messages or {}).items():
            await conn.execute(
                """INSERT INTO journeys.messages (tenant_id, journey_run, member_id, step_id, journey_key,
                       channel, status, local_day, create_time, update_time)
                   VALUES ($1, $2, $3, $4, $5, 'sms', $6, $7, $8, $8)""",
                TENANT_ACME,
                f"{workflow_id}#1",
                member_id,
                step_id,
                key,
                status,
                NOW.date(),
                NOW,
            )


async def cohort(
    db: Database,
    key: str,
    version: int,
    members: list[tuple[bool, str, int, tuple[str, ...]]],
    batches: list[tuple[str, dict[str, int]]],
) -> None:
    """A cohort with members (holdout, state, GMV, split arms) and batches (state, figures)."""
    snapshot = unique("snap")
    async with db.transaction(TENANT_ACME) as conn:
        cohort_id = await conn.fetchval(
            """INSERT INTO journeys.cohorts (tenant_id, journey_key, version, snapshot_id, workflow_id,
                   first_run_id, start_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING cohort_id""",
            TENANT_ACME,
            key,
            version,
            snapshot,
            f"journey/{key}/snapshot/{snapshot}",
            unique("run"),
            NOW,
        )
        await conn.executemany(
            """INSERT INTO journeys.cohort_members (tenant_id, cohort_id, member_id, holdout, snapshot_arm,
                   state, due_time, enter_time, convert_time, gmv_minor, split_arms)
               VALUES ($1, $2, $3, $4, '', $5, $6, $6, $7, $8, $9)""",
            [
                (
                    TENANT_ACME,
                    cohort_id,
                    unique(),
                    holdout,
                    state,
                    NOW,
                    NOW if state == "converted" else None,
                    gmv,
                    list(arms),
                )
                for holdout, state, gmv, arms in members
            ],
        )
        await conn.executemany(
            """INSERT INTO journeys.cohort_batches (tenant_id, cohort_id, seq, state, figures, create_time,
                   update_time)
               VALUES ($1, $2, $3, $4, $5::jsonb, $6, $6)""",
            [
                (TENANT_ACME, cohort_id, seq, state, json.dumps(figures), NOW)
                for seq, (state, figures) in enumerate(batches)
            ],
        )


async def test_steps_and_arms_of_member_journeys_and_cohorts_together(journeys_db: Database) -> None:
    definition = split_journey()
    v1 = (await store.put_definition(journeys_db, TENANT_ACME, definition)).version
    v2 = (
        await store.put_definition(
            journeys_db, TENANT_ACME, dataclasses.replace(definition, name="second version")
        )
    ).version
    key = definition.key
    # Member journeys. Finished ones count what their run wrote.
    await enrol(
        journeys_db,
        key,
        v1,
        state="converted",
        gmv_minor=1_000,
        split_arms=("pick:a",),
        step_figures={
            "hello": {"entered": 1, "sent": 1},
            "pick": {"entered": 1},
            "offer-a": {"entered": 1, "sent": 1},
        },
        # The log is not read for runs with step figures.
        messages={"hello": "sent", "offer-a": "sent"},
    )
    await enrol(
        journeys_db,
        key,
        v1,
        split_arms=("pick:b",),
        step_figures={
            "hello": {"entered": 1, "deferred": 2, "sent": 1},
            "pick": {"entered": 1},
            "offer-b": {"entered": 1, "skipped": 1},
        },
    )
    await enrol(
        journeys_db,
        key,
        v1,
        arm="holdout",
        state="converted",
        gmv_minor=400,
        split_arms=("pick:a",),
        step_figures={
            "hello": {"entered": 1, "held_out": 1},
            "pick": {"entered": 1},
            "offer-a": {"entered": 1, "held_out": 1},
        },
    )
    # Still in the journey: the log's outcomes (a send under way counts nothing yet).
    await enrol(
        journeys_db,
        key,
        v1,
        state="active",
        split_arms=("pick:a",),
        messages={"hello": "sent", "offer-a": "queued"},
    )
    # Finished before step figures were kept (none written): the log.
    await enrol(journeys_db, key, v1, state="exited", messages={"hello": "failed"})
    # A broadcast of version 1: 3 holdout members (1 converted), 4 treated in arm a (2 converted,
    # one still active), 4 in arm b (1 converted).
    await cohort(
        journeys_db,
        key,
        v1,
        [
            (True, "converted", 500, ("pick:b",)),
            (True, "completed", 0, ("pick:a",)),
            (True, "completed", 0, ("pick:b",)),
            (False, "converted", 700, ("pick:a",)),
            (False, "converted", 301, ("pick:a",)),
            (False, "completed", 0, ("pick:a",)),
            (False, "active", 0, ("pick:a",)),
            (False, "converted", 999, ("pick:b",)),
            (False, "completed", 0, ("pick:b",)),
            (False, "completed", 0, ("pick:b",)),
            (False, "exited", 0, ("pick:b",)),
        ],
        [
            (
                "done",
                {
                    "entered:treated": 8,
                    "entered:holdout": 3,
                    "step:hello:entered": 11,
                    "step:hello:sent": 6,
                    "step:hello:deferred": 4,
                    "step:hello:unknown": 1,
                    "step:hello:held_out": 3,
                    "step:pick:entered": 11,
                    "step:pick:arm:a": 5,
                    "step:pick:arm:b": 6,
                },
            ),
            (
                "done",
                {
                    "step:offer-a:entered": 5,
                    "step:offer-a:sent": 3,
                    "step:offer-b:entered": 6,
                    "step:offer-b:failed": 2,
                },
            ),
            # Claimed: its counters are not final until it is done.
            ("claimed", {"step:offer-b:sent": 100}),
        ],
    )
    # A broadcast of version 2 with an old step: only in the report of every version.
    await cohort(journeys_db, key, v2, [(False, "converted", 50, ())], [("done", {"step:gone:sent": 1})])

    one = await report.journey_report(journeys_db, TENANT_ACME, key, v1)
    assert (one.version, one.member_runs, one.cohorts, one.attribution) == (v1, 5, 1, "7d")
    steps = {s.step_id: s for s in one.steps}
    assert [s.step_id for s in one.steps] == ["hello", "pick", "offer-a", "offer-b"]
    assert steps["hello"] == report.StepFigures(
        "hello", entered=3 + 11, sent=2 + 1 + 6, deferred=2 + 4, failed=1, unknown=1, held_out=1 + 3
    )
    assert steps["pick"] == report.StepFigures("pick", entered=3 + 11)
    assert steps["offer-a"] == report.StepFigures("offer-a", entered=2 + 5, sent=1 + 3, held_out=1)
    assert steps["offer-b"] == report.StepFigures("offer-b", entered=1 + 6, skipped=1, failed=2)

    arms = {a.arm: a for a in one.arms}
    assert [a.arm for a in one.arms] == ["treated", "holdout", "pick:a", "pick:b"]
    expected = {
        # (members, active, conversions, GMV): member journeys + the cohort.
        "treated": (4 + 8, 1 + 1, 1 + 3, 1_000 + 700 + 301 + 999),
        "holdout": (1 + 3, 0, 1 + 1, 400 + 500),
        # Treated members only.
        "pick:a": (2 + 4, 1 + 1, 1 + 2, 1_000 + 700 + 301),
        "pick:b": (1 + 4, 0, 0 + 1, 999),
    }
    for name, (members, active, conversions, gmv) in expected.items():
        arm = arms[name]
        assert (arm.members, arm.active, arm.conversions, arm.gmv_minor) == (
            members,
            active,
            conversions,
            gmv,
        )
        assert arm.rate == conversions / members
        assert (arm.ci_low, arm.ci_high) == stats.wilson(conversions, members)
    # Rounded half up: 2,001 / 6 = 333.5.
    assert (arms["pick:a"].gmv_per_member_minor, arms["holdout"].gmv_per_member_minor) == (334, 225)

    pairs = [(c.arm, c.baseline) for c in one.comparisons]
    assert pairs == [
        ("treated", "holdout"),
        ("pick:a", "holdout"),
        ("pick:b", "holdout"),
        ("pick:b", "pick:a"),
    ]
    for c in one.comparisons:
        a, b = arms[c.arm], arms[c.baseline]
        d = stats.compare(a.conversions, a.members, b.conversions, b.members)
        assert (c.difference, c.ci_low, c.ci_high, c.p_value, c.too_small) == (
            d.difference,
            d.ci_low,
            d.ci_high,
            d.p_value,
            True,
        )

    every = await report.journey_report(journeys_db, TENANT_ACME, key)
    assert (every.version, every.member_runs, every.cohorts) == (0, 5, 2)
    assert every.treated.members == 13 and every.treated.gmv_minor == 1_000 + 700 + 301 + 999 + 50
    assert [s.step_id for s in every.steps] == ["hello", "pick", "offer-a", "offer-b", "gone"]
    assert every.steps[-1] == report.StepFigures("gone", sent=1)
    # The message carries every figure under the same names.
    message = report_messages.to_message(one)
    assert message.arms[2].arm == "pick:a" and message.arms[2].gmv_per_member_minor == 334
    assert message.steps[0].deferred == 6 and message.comparisons[3].baseline == "pick:a"
    assert report_messages.to_message(every).cohorts == 2


async def test_a_journey_without_runs_and_an_unknown_one(journeys_db: Database) -> None:
    definition = split_journey()
    await store.put_definition(journeys_db, TENANT_ACME, definition)
    empty = await report.journey_report(journeys_db, TENANT_ACME, definition.key)
    assert [a.arm for a in empty.arms] == ["treated", "holdout", "pick:a", "pick:b"]
    assert all(a == report.ArmFigures(a.arm) for a in empty.arms)
    assert all(c.too_small and c.p_value == 1.0 for c in empty.comparisons)
    with pytest.raises(NotFound):
        await report.journey_report(journeys_db, TENANT_ACME, definition.key, 2)
    with pytest.raises(NotFound):
        await report.journey_report(journeys_db, TENANT_ACME, unique("t"))
