"""Member journeys run every step kind, on the time-skipping server against the real services:
branches on an audience and on a tag (both arms), splits by the member's bucket (recorded for the
report), member-local hours (fixed, and the member's own send hour with its fallback), waits for
an event that comes or times out, and exit criteria."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import unique
from tests.waiting import eventually
from tests.workflows.journey_helpers import figures, journey, keep_history, running, seed_member, start
from tests.workflows.step_helpers import add_tag, audience_of, give_send_hours, recorded, send_hours
from tests.workflows.test_journeys import messages, order_wait, strategy_dimension
from workflows.journeys.definition import (
    Branch,
    Condition,
    EventMatch,
    Exit,
    Send,
    Split,
    SplitArm,
    Step,
    TagCondition,
    Wait,
    WaitForEvent,
    WaitUntilHour,
)
from workflows.journeys.payloads import Funnel, MemberEvent
from workflows.journeys.steps.split import split_arm
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

SHANGHAI = ZoneInfo("Asia/Shanghai")


def walked(funnel: Funnel) -> list[str]:
    """The steps the member entered, in order."""
    return [s.step_id for s in funnel.steps]


async def at_step(handle: WorkflowHandle[JourneyWorkflow, Funnel], step_id: str) -> None:
    """Until the member is at the step (a bounded wait for the worker)."""

    async def there() -> bool:
        return (await handle.query(JourneyWorkflow.funnel)).current_step == step_id

    await eventually(there, f"did the member get to {step_id}")


def branching(condition: Condition) -> tuple[Step, ...]:
    """`check` goes to `inside` (then exits) or to `outside`."""
    return (
        Step(id="check", branch=Branch(condition=condition, if_true="inside", if_false="outside")),
        Step(id="inside", send=Send(template="hello")),
        Step(id="stop", exit=Exit(reason="took the inside arm")),
        Step(id="outside", wait=Wait(duration="1h")),
    )


async def run_all(
    env: WorkflowEnvironment,
    settings: Settings,
    resources: Resources,
    db: Database,
    definition: Any,
    *members: str,
) -> list[Funnel]:
    async with running(env, settings, resources):
        handles = [await start(env, settings, db, definition, m) for m in members]
        return [await h.result() for h in handles]


async def test_a_branch_on_an_audience_takes_each_member_down_its_arm(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    batch = unique("batch")
    inside, outside = unique("m"), unique("m")
    await seed_member(resources.tagging, inside, attributes={"batch": batch})
    await seed_member(resources.tagging, outside, attributes={"batch": unique("other")})
    audience_id = await audience_of(resources.audience, batch)
    definition = journey(*branching(Condition(audience=audience_id)))
    funnel_in, funnel_out = await run_all(
        time_skipping_env, worker_settings, resources, journeys_db, definition, inside, outside
    )
    assert walked(funnel_in) == ["check", "inside", "stop"] and funnel_in.detail == "took the inside arm"
    assert figures(funnel_in, "inside") == {"entered": 1, "sent": 1}
    assert walked(funnel_out) == ["check", "outside"] and funnel_out.state == "completed"
    assert [m["step_id"] for m in await messages(journeys_db, inside)] == ["inside"]
    assert await messages(journeys_db, outside) == []


async def test_a_branch_on_a_tag_takes_each_member_down_its_arm(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    dimension = await strategy_dimension(resources)
    holder, other = unique("m"), unique("m")
    for member_id in (holder, other):
        await seed_member(resources.tagging, member_id)
    await add_tag(resources.tagging, dimension, "nurtured", [holder])
    definition = journey(*branching(Condition(tag=TagCondition(dimension=dimension, values=("nurtured",)))))
    funnel_in, funnel_out = await run_all(
        time_skipping_env, worker_settings, resources, journeys_db, definition, holder, other
    )
    assert walked(funnel_in) == ["check", "inside", "stop"]
    assert walked(funnel_out) == ["check", "outside"]


async def test_a_split_sends_each_member_down_the_arm_of_its_bucket_and_records_it(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition = journey(
        Step(id="ab", split=Split(arms=(SplitArm("a", 50, next="for-a"), SplitArm("b", 50, next="for-b")))),
        Step(id="for-a", send=Send(template="hello")),
        Step(id="a-done", exit=Exit()),
        Step(id="for-b", wait=Wait(duration="1h")),
    )
    # Five members of each arm, chosen by the split's own bucket: ten drawn ids fell all in one arm
    # one run in 512 (the ids are new each run).
    chosen: dict[str, list[str]] = {"a": [], "b": []}
    while any(len(ids) < 5 for ids in chosen.values()):
        candidate = unique("m")
        side = chosen[split_arm(definition.key, definition.steps[0], candidate).name]
        if len(side) < 5:
            side.append(candidate)
    members = chosen["a"] + chosen["b"]
    for member_id in members:
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handles = [
            await start(time_skipping_env, worker_settings, journeys_db, definition, m) for m in members
        ]
        funnels = [await h.result() for h in handles]
        await keep_history(handles[0], "member_split_by_bucket")
    arms = {m: split_arm(definition.key, definition.steps[0], m).name for m in members}
    assert sorted(arms.values()) == ["a"] * 5 + ["b"] * 5
    for member_id, funnel in zip(members, funnels, strict=True):
        arm = arms[member_id]
        assert figures(funnel, "ab") == {"entered": 1, "arm": arm}
        assert walked(funnel) == (["ab", "for-a", "a-done"] if arm == "a" else ["ab", "for-b"])
        row = await recorded(journeys_db, definition.key, member_id)
        assert row["split_arms"] == [f"ab:{arm}"]
        expected = {"ab": {"entered": 1}}
        expected |= (
            {"for-a": {"entered": 1, "sent": 1}, "a-done": {"entered": 1}}
            if arm == "a"
            else {"for-b": {"entered": 1}}
        )
        assert row["step_figures"] == expected and row["state"] == "completed"


def _local_send_clock(rows: list[dict[str, Any]]) -> str:
    (row,) = rows
    moment: dt.datetime = row["update_time"]
    return moment.astimezone(SHANGHAI).strftime("%H:%M")


async def test_wait_until_hour_sends_at_the_members_local_hour_or_own_preferred_hour(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """A fixed hour for everyone; with `preferred`, a member's own send hour (20:00 in Shanghai
    from orders at 12:30 UTC), and the fallback hour for a member without one."""
    fixed, own, none = unique("m"), unique("m"), unique("m")
    for member_id in (fixed, own, none):
        await seed_member(resources.tagging, member_id)
    await give_send_hours(resources.tagging, {own: 12})
    assert await send_hours(resources.tagging, [own, none]) == {own: "20"}
    hour = (dt.datetime.now(SHANGHAI).hour + 5) % 24
    at_hour = journey(
        Step(id="later", wait_until_hour=WaitUntilHour(hour=hour, minute=15)),
        Step(id="hi", send=Send(template="hello")),
    )
    preferred = journey(
        Step(id="later", wait_until_hour=WaitUntilHour(hour=7, preferred=True)),  # 07:00: the fallback
        Step(id="hi", send=Send(template="hello")),
    )
    async with running(time_skipping_env, worker_settings, resources):
        handles: list[WorkflowHandle[JourneyWorkflow, Funnel]] = [
            await start(time_skipping_env, worker_settings, journeys_db, at_hour, fixed),
            await start(time_skipping_env, worker_settings, journeys_db, preferred, own),
            await start(time_skipping_env, worker_settings, journeys_db, preferred, none),
        ]
        for handle in handles:
            assert (await handle.result()).state == "completed"
    assert _local_send_clock(await messages(journeys_db, fixed)) == f"{hour:02d}:15"
    assert _local_send_clock(await messages(journeys_db, own)) == "20:00"
    assert _local_send_clock(await messages(journeys_db, none)) == "07:00"


async def test_a_wait_for_an_event_goes_on_at_the_event_or_at_the_timeout(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition = journey(
        Step(
            id="wait",
            wait_for_event=WaitForEvent(
                event=EventMatch(kind="tag_added", dimension="coupon_claimed"),
                timeout="2d",
                on_event="thanks",
                on_timeout="nudge",
            ),
        ),
        Step(id="thanks", send=Send(template="hello")),
        Step(id="done", exit=Exit(reason="claimed")),
        Step(id="nudge", send=Send(template="hello")),
    )
    claims, idles = unique("m"), unique("m")
    for member_id in (claims, idles):
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        started = await time_skipping_env.get_current_time()
        claiming = await start(time_skipping_env, worker_settings, journeys_db, definition, claims)
        idle = await start(time_skipping_env, worker_settings, journeys_db, definition, idles)
        await at_step(claiming, "wait")
        # Another dimension is not the event waited for; the claim is.
        await claiming.signal(JourneyWorkflow.event, MemberEvent(kind="tag_added", dimension="other"))
        await claiming.signal(
            JourneyWorkflow.event, MemberEvent(kind="tag_added", dimension="coupon_claimed")
        )
        claimed, timed_out = await claiming.result(), await idle.result()
        finished = await time_skipping_env.get_current_time()
    assert walked(claimed) == ["wait", "thanks", "done"] and claimed.detail == "claimed"
    assert walked(timed_out) == ["wait", "nudge"] and timed_out.state == "completed"
    assert finished - started >= dt.timedelta(days=2)
    assert [m["step_id"] for m in await messages(journeys_db, claims)] == ["thanks"]
    assert [m["step_id"] for m in await messages(journeys_db, idles)] == ["nudge"]


async def test_an_exit_criterion_ends_the_journey_before_its_next_send(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition = journey(
        Step(id="hello", send=Send(template="hello")),
        Step(id="wait-3d", wait=Wait(duration="3d")),
        Step(id="again", send=Send(template="hello")),
        exit_on=(EventMatch(kind="tag_added", dimension="unsubscribed"),),
    )
    leaver, stayer = unique("m"), unique("m")
    for member_id in (leaver, stayer):
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        leaving = await start(time_skipping_env, worker_settings, journeys_db, definition, leaver)
        staying = await start(time_skipping_env, worker_settings, journeys_db, definition, stayer)
        await at_step(leaving, "wait-3d")
        await leaving.signal(JourneyWorkflow.event, MemberEvent(kind="tag_added", dimension="unsubscribed"))
        left, stayed = await leaving.result(), await staying.result()
    assert (left.state, left.detail) == ("exited", "exit criterion tag_added")
    assert walked(left) == ["hello", "wait-3d"]
    assert [m["step_id"] for m in await messages(journeys_db, leaver)] == ["hello"]
    assert stayed.state == "completed" and walked(stayed) == ["hello", "wait-3d", "again"]
    row = await recorded(journeys_db, definition.key, leaver)
    assert row["state"] == "exited" and row["split_arms"] == []
    assert row["step_figures"] == {"hello": {"entered": 1, "sent": 1}, "wait-3d": {"entered": 1}}


async def test_history_ends_no_wait_and_exits_nobody(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """Facts that happened before a wait_for_event step began do not end it, and facts of the
    member's history (before it entered) are no exit criterion: an order paid 200 days ago and an
    old unsubscription, loaded now, leave the member waiting until the timeout."""
    definition = journey(
        order_wait("2d"),
        Step(id="thanks", send=Send(template="hello")),
        Step(id="done", exit=Exit(reason="bought")),
        Step(id="nudge", send=Send(template="hello")),
        exit_on=(EventMatch(kind="tag_added", dimension="unsubscribed"),),
    )
    member_id = unique("m")
    await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await at_step(handle, "wait")
        long_ago = await time_skipping_env.get_current_time() - dt.timedelta(days=200)
        for event in (
            MemberEvent(kind="order", subject_id=unique("o"), amount_minor=100, occur_time=long_ago),
            MemberEvent(kind="tag_added", dimension="unsubscribed", occur_time=long_ago),
        ):
            await handle.signal(JourneyWorkflow.event, event)
        funnel = await handle.result()
        await keep_history(handle, "history_ends_no_wait")
    assert (walked(funnel), funnel.state) == (["wait", "nudge"], "completed")


async def test_a_branch_an_own_hour_and_a_wait_that_times_out_in_one_run(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """One run through a branch on a tag (the member holds it), its own send hour (20:00 in
    Shanghai) and a wait for an event that never comes: its history is kept for the replay test."""
    dimension = await strategy_dimension(resources)
    member_id = unique("m")
    await seed_member(resources.tagging, member_id)
    await add_tag(resources.tagging, dimension, "nurtured", [member_id])
    await give_send_hours(resources.tagging, {member_id: 12})
    definition = journey(
        Step(
            id="check",
            branch=Branch(
                condition=Condition(tag=TagCondition(dimension=dimension, values=("nurtured",))),
                if_true="later",
                if_false="skip",
            ),
        ),
        Step(id="later", wait_until_hour=WaitUntilHour(hour=7, preferred=True)),
        Step(
            id="wait",
            wait_for_event=WaitForEvent(
                event=EventMatch(kind="order"), timeout="1d", on_event="skip", on_timeout="nudge"
            ),
        ),
        Step(id="nudge", send=Send(template="hello")),
        Step(id="skip", wait=Wait(duration="1h")),
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        funnel = await handle.result()
        await keep_history(handle, "branch_own_hour_and_wait_timeout")
    assert walked(funnel) == ["check", "later", "wait", "nudge", "skip"]
    assert _local_send_clock(await messages(journeys_db, member_id)) == "20:00"
