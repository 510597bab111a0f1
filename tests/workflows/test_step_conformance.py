"""One step semantics: the same broadcast definition run over the same members as a cohort and as
member journeys gives the same funnel for every step kind both shapes run (split, send, add_tag,
exit, wait, wait_until_hour with the members' own send hours), the same arm per member, the same
member-local send times, and the same split arms recorded for the report; a path ending in an exit
step or in a wait gives each member the same walk, state and conversion in both shapes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.testing import WorkflowEnvironment

from runtime.buckets import bucket
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME, unique
from tests.waiting import eventually
from tests.workflows import cohort_helpers
from tests.workflows.cohort_helpers import broadcast
from tests.workflows.journey_helpers import running, seed_member
from tests.workflows.journey_helpers import start as start_member
from tests.workflows.step_helpers import audience_of, give_send_hours, recorded, send_hours, sends, snapshot
from tests.workflows.test_dispatcher import _state
from tests.workflows.test_journeys import strategy_dimension
from workflows.journeys.activities import holdout_salt
from workflows.journeys.cohort.payloads import CohortEvent, CohortFunnel
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import (
    AddTag,
    EventMatch,
    Exit,
    Goal,
    JourneyDefinition,
    Reentry,
    Send,
    Split,
    SplitArm,
    Step,
    Wait,
    WaitUntilHour,
)
from workflows.journeys.payloads import Funnel, MemberEvent
from workflows.journeys.steps.split import split_arm
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

SHANGHAI = ZoneInfo("Asia/Shanghai")
COUNTERS = ("entered", "sent", "skipped", "deferred", "failed", "unknown", "held_out", "done")
ALL_CHANNELS = ("sms", "email", "app_push", "wecom")


def cohort_figures(funnel: CohortFunnel) -> dict[str, dict[str, Any]]:
    return {
        s.step_id: {name: getattr(s, name) for name in COUNTERS} | {"arms": dict(s.arms)}
        for s in funnel.steps
    }


def member_figures(funnels: list[Funnel], step_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The members' funnels summed per step, in the cohort's form."""
    total: dict[str, dict[str, Any]] = {
        step_id: dict.fromkeys(COUNTERS, 0) | {"arms": Counter()} for step_id in step_ids
    }
    for funnel in funnels:
        for s in funnel.steps:
            for name in COUNTERS:
                total[s.step_id][name] += getattr(s, name)
            if s.arm:
                total[s.step_id]["arms"][s.arm] += 1
    return {k: v | {"arms": dict(v["arms"])} for k, v in total.items()}


async def cohort_members(db: Database, cohort_id: int) -> dict[str, list[str]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, split_arms FROM journeys.cohort_members
               WHERE tenant_id = $1 AND cohort_id = $2""",
            TENANT_ACME,
            cohort_id,
        )
    return {r["member_id"]: list(r["split_arms"]) for r in rows}


def local_clock(rows: list[dict[str, Any]], step_id: str) -> dict[str, str]:
    return {
        r["member_id"]: r["update_time"].astimezone(SHANGHAI).strftime("%H:%M")
        for r in rows
        if r["step_id"] == step_id and r["status"] == "sent"
    }


# The members' roles: (split arm, holdout, own send hour in Shanghai or None, reachable).
ROLES = (
    ("a", False, None, True),
    ("a", False, None, True),
    ("a", False, 20, True),
    ("a", True, None, True),
    ("b", False, 20, True),
    ("b", False, 20, True),
    ("b", False, 9, True),
    ("b", False, None, True),
    ("b", False, None, True),
    ("b", True, 20, True),
    ("b", False, None, False),
)
# Orders paid at this UTC hour give a member this own send hour in Shanghai (UTC+8).
UTC_HOUR = {20: 12, 9: 1}


def cast(
    definition: JourneyDefinition, batch: str, roles: tuple[tuple[str, bool, int | None, bool], ...] = ROLES
) -> dict[str, tuple[str, bool, int | None, bool]]:
    """A member id for each role (the arm and the holdout follow from the id and the journey)."""
    chosen: dict[str, tuple[str, bool, int | None, bool]] = {}
    open_roles = list(roles)
    n = 0
    while open_roles:
        member_id, n = f"{batch}-{n:03d}", n + 1
        arm = split_arm(definition.key, definition.steps[0], member_id).name
        held = bucket(holdout_salt(definition.key), member_id) < definition.holdout_percent * 100
        role = next((r for r in open_roles if r[:2] == (arm, held)), None)
        if role is not None:
            open_roles.remove(role)
            chosen[member_id] = role
    return chosen


async def test_a_definition_runs_the_same_as_a_cohort_and_as_member_journeys(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    batch = unique("batch")
    audience_id = await audience_of(resources.audience, batch)
    dimension = await strategy_dimension(resources)
    definition = broadcast(
        audience_id,
        Step(id="s", split=Split(arms=(SplitArm("a", 50, next="a-hi"), SplitArm("b", 50, next="b-wait")))),
        Step(id="a-hi", send=Send(template="hello")),
        Step(id="a-tag", add_tag=AddTag(dimension=dimension, value="nurtured")),
        Step(id="a-out", exit=Exit(reason="arm a done")),
        Step(id="b-wait", wait=Wait(duration="1d")),
        Step(id="b-hour", wait_until_hour=WaitUntilHour(hour=7, preferred=True)),
        Step(id="b-hi", send=Send(template="hello")),
        holdout_percent=25,
        goal=Goal(event=EventMatch(kind="order"), attribution="1d"),
        frequency_cap=10,
        # Members of the cohort may then enter the member journeys of the same definition.
        reentry=Reentry(policy="after_exit"),
    )
    roles = cast(definition, batch)
    members = sorted(roles)
    for member_id, (_, _, _, reachable) in roles.items():
        opted_out = () if reachable else ALL_CHANNELS
        await seed_member(resources.tagging, member_id, attributes={"batch": batch}, opted_out=opted_out)
    await give_send_hours(
        resources.tagging, {m: UTC_HOUR[hour] for m, (_, _, hour, _) in roles.items() if hour is not None}
    )
    own = {m: int(h) for m, h in (await send_hours(resources.tagging, members)).items()}
    assert own == {m: hour for m, (_, _, hour, _) in roles.items() if hour is not None}
    frozen = await snapshot(resources.audience, audience_id)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await cohort_helpers.start(
            time_skipping_env, worker_settings, journeys_db, definition, frozen.name, batch_size=4
        )
        cohort = await handle.result()
        handles = [
            await start_member(time_skipping_env, worker_settings, journeys_db, definition, m)
            for m in members
        ]
        funnels = [await h.result() for h in handles]
    assert cohort.state == "completed" and {f.state for f in funnels} == {"completed"}
    assert (cohort.treated.entered, cohort.holdout.entered) == (9, 2)
    assert Counter(f.arm for f in funnels) == {"treated": 9, "holdout": 2}
    # The funnel, step by step, is the same in both shapes, and it is the one the roles make.
    by_cohort = cohort_figures(cohort)
    assert by_cohort == member_figures(funnels, [s.id for s in definition.steps])
    nothing: dict[str, Any] = dict.fromkeys(COUNTERS, 0) | {"arms": {}}
    assert by_cohort == {
        "s": nothing | {"entered": 11, "arms": {"a": 4, "b": 7}},
        "a-hi": nothing | {"entered": 4, "sent": 3, "held_out": 1},
        "a-tag": nothing | {"entered": 4, "done": 3, "held_out": 1},
        "a-out": nothing | {"entered": 4},
        "b-wait": nothing | {"entered": 7},
        "b-hour": nothing | {"entered": 7},
        "b-hi": nothing | {"entered": 7, "sent": 5, "skipped": 1, "held_out": 1},
    }
    # Each member takes the arm of its bucket in both shapes, recorded for the report.
    arms = {m: role[0] for m, role in roles.items()}
    assert await cohort_members(journeys_db, cohort.cohort_id) == {m: [f"s:{arms[m]}"] for m in members}
    for member_id, funnel in zip(members, funnels, strict=True):
        assert next(s.arm for s in funnel.steps if s.step_id == "s") == arms[member_id]
        assert (await recorded(journeys_db, definition.key, member_id))["split_arms"] == [
            f"s:{arms[member_id]}"
        ]
    # Arm b is sent at each member's own hour, or at the fallback 07:00, in both shapes.
    expected = {
        m: f"{own.get(m, 7):02d}:00"
        for m, (arm, held, _, reachable) in roles.items()
        if arm == "b" and not held and reachable
    }
    assert local_clock(await sends(journeys_db, definition.key, cohort=True), "b-hi") == expected
    assert local_clock(await sends(journeys_db, definition.key, cohort=False), "b-hi") == expected


# (split arm, holdout, own send hour, reachable) of the exit and trailing-wait test; each arm has
# a treated and a held-out member who order after their path, and a treated one whose only order
# is history.
PATH_ROLES = (
    ("a", False, None, True),
    ("a", True, None, True),
    ("a", False, None, True),
    ("b", False, None, True),
    ("b", True, None, True),
    ("b", False, None, True),
)
TRAILING = dt.timedelta(days=2)


def order(member_id: str, at: dt.datetime) -> MemberEvent:
    return MemberEvent(kind="order", subject_id=unique("o"), amount_minor=1200, occur_time=at)


async def cohort_outcome(db: Database, cohort_id: int) -> dict[str, tuple[str, bool]]:
    """(state, converted) of each member of the cohort."""
    rows = await cohort_helpers.members(db, cohort_id)
    return {m: (r["state"], r["state"] == "converted") for m, r in rows.items()}


async def cohort_walking(db: Database, cohort_id: int) -> dict[str, bool]:
    """Whether each member of the cohort is still walking its steps (not past the last one)."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, state = 'active' AND due_time <> 'infinity' AS walking
               FROM journeys.cohort_members WHERE tenant_id = $1 AND cohort_id = $2""",
            TENANT_ACME,
            cohort_id,
        )
    return {r["member_id"]: r["walking"] for r in rows}


async def test_an_exit_step_and_a_trailing_wait_are_the_same_in_both_shapes(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """Arm a ends with an exit step, arm b with a wait. Both shapes keep arm b's members walking
    for the wait, and measure every member for the goal after its path, treated and held out alike:
    an order after the path converts, an order of history does not."""
    batch = unique("batch")
    audience_id = await audience_of(resources.audience, batch)
    definition = broadcast(
        audience_id,
        Step(id="s", split=Split(arms=(SplitArm("a", 50, next="a-hi"), SplitArm("b", 50, next="b-hi")))),
        Step(id="a-hi", send=Send(template="hello")),
        Step(id="a-out", exit=Exit(reason="arm a done")),
        Step(id="b-hi", send=Send(template="hello")),
        Step(id="b-cool", wait=Wait(duration="2d")),
        holdout_percent=30,
        goal=Goal(event=EventMatch(kind="order"), attribution="7d"),
        frequency_cap=10,
        reentry=Reentry(policy="after_exit"),
    )
    roles = cast(definition, batch, PATH_ROLES)
    members = sorted(roles)
    # The last treated member of each arm orders only in history.
    historic = {max(m for m, r in roles.items() if r[:2] == (arm, False)) for arm in ("a", "b")}
    for member_id in members:
        await seed_member(resources.tagging, member_id, attributes={"batch": batch})
    frozen = await snapshot(resources.audience, audience_id)

    async def orders(signal: Any, now: dt.datetime) -> None:
        for m in members:
            await signal(m, order(m, now - dt.timedelta(days=200) if m in historic else now))

    async with running(time_skipping_env, worker_settings, resources):
        handle = await cohort_helpers.start(
            time_skipping_env, worker_settings, journeys_db, definition, frozen.name
        )
        await cohort_helpers.until_asleep(handle, "the first batches")
        cohort_id = (await handle.query(CohortJourneyWorkflow.funnel)).cohort_id
        walking_in_cohort = await cohort_walking(journeys_db, cohort_id)
        await time_skipping_env.sleep(TRAILING + dt.timedelta(hours=1))
        await cohort_helpers.until(handle, "measuring", lambda f: f.state == "measuring")
        now = await time_skipping_env.get_current_time()
        await orders(lambda m, e: handle.signal(CohortJourneyWorkflow.event, CohortEvent(m, e)), now)
        cohort = await handle.result()
        in_cohort = await cohort_outcome(journeys_db, cohort.cohort_id)

        handles = {
            m: await start_member(time_skipping_env, worker_settings, journeys_db, definition, m)
            for m in members
        }

        async def settled(m: str) -> Funnel | None:
            f: Funnel = await handles[m].query(JourneyWorkflow.funnel)
            return f if f.state == "measuring" or f.current_step == "b-cool" else None

        first = {m: await eventually(partial(settled, m), f"did {m} settle") for m in members}
        walking_alone = {m: f.state == "active" for m, f in first.items()}
        await time_skipping_env.sleep(TRAILING + dt.timedelta(hours=1))
        for m in members:
            await eventually(partial(_state, handles[m], "measuring"), f"did {m} walk")
        now = await time_skipping_env.get_current_time()
        await orders(lambda m, e: handles[m].signal(JourneyWorkflow.event, e), now)
        alone = {m: ((f := await handles[m].result()).state, f.converted) for m in members}
    arm_b = {m: roles[m][0] == "b" for m in members}
    assert walking_in_cohort == walking_alone == arm_b
    expected = {m: ("completed", False) if m in historic else ("converted", True) for m in members}
    assert in_cohort == alone == expected
