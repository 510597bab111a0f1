"""ListMemberJourneys: a member's runs (member journeys and broadcast cohorts) with arm, state and
current step as the worker's schema records them, and their messages newest first, paged, with
the subject and body rendered for the member (empty for a send skipped before rendering).

The runs and the message log are seeded in the worker's schema as the worker writes them (the
store's message-log functions; enrolment and cohort rows as its activities insert them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from memberops.journeys.v1 import journeys_service_pb2 as pb

from runtime.db import Database
from tests.conftest import HOOLI, TENANT_HOOLI, unique
from tests.grpc_helpers import bad
from tests.journeys.helpers import simple
from workflows.journeys import message_log, store, templates
from workflows.journeys.definition import Send, Step, Template

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as JourneysStub

T0 = dt.datetime(2025, 6, 1, 2, tzinfo=dt.UTC)
TENANT = TENANT_HOOLI
HELLO = Template(subject="Hello {nickname}", body="Hi {nickname}, your code is {member_id}.")


def rendered(member_id: str) -> tuple[str, str]:
    """The text a send of HELLO renders for the member, as the sender logs it with its claim."""
    return templates.render(HELLO, {"nickname": "Mei", "member_id": member_id})


async def seed(db: Database, member_id: str, other: str) -> tuple[str, str]:
    """A member run (treated, split arm `b`, converted) with three messages, and two broadcast
    cohorts: the member held out at the second step of one, done with all steps of the other."""
    three_steps = dataclasses.replace(
        simple(),
        steps=tuple(Step(id=s, send=Send(template="hello")) for s in ("hello", "nudge", "last")),
        templates={"hello": HELLO},
    )
    member_journey = (await store.put_definition(db, TENANT, three_steps)).definition.key
    broadcast = (
        await store.put_definition(db, TENANT, dataclasses.replace(three_steps, key=unique("b")))
    ).definition.key
    workflow_id = f"journey/{TENANT}/{member_journey}/member/{member_id}"
    async with db.transaction(TENANT) as conn:
        await conn.execute(
            """INSERT INTO journeys.enrolments (tenant_id, journey_key, version, member_id, entry_number,
                   workflow_id, run_id, arm, state, enter_time, split_arms)
               VALUES ($1, $2, 1, $3, 1, $4, $5, 'treated', 'converted', $6, '{split:b}')""",
            TENANT,
            member_journey,
            member_id,
            workflow_id,
            unique("run"),
            T0,
        )
        for i, (who, step, status) in enumerate(
            (
                (member_id, "hello", "sent"),
                (member_id, "nudge", "failed"),
                (other, "hello", "sent"),
                (member_id, "last", "skipped"),
            )
        ):
            run = f"journey/{TENANT}/{member_journey}/member/{who}#1"
            key = message_log.Key(TENANT, run, who, step)
            at = T0 + dt.timedelta(hours=i + 1)
            if status == "skipped":
                await message_log.record(conn, key, status, at, journey_key=member_journey)
            else:
                await message_log.claim(conn, key, member_journey, "sms", at.date(), at, rendered(who))
                await message_log.record(conn, key, status, at)
        cohorts = []
        for snapshot in ("s1", "s2"):
            cohort_id = await conn.fetchval(
                """INSERT INTO journeys.cohorts (tenant_id, journey_key, version, snapshot_id, workflow_id,
                       first_run_id, start_time)
                   VALUES ($1, $2, 1, $3, $4, 'r', $5) RETURNING cohort_id""",
                TENANT,
                broadcast,
                f"{snapshot}-{member_id}",
                f"journey/{broadcast}/snapshot/{snapshot}-{member_id}",
                T0,
            )
            cohorts.append(cohort_id)
        for cohort_id, holdout, position, state, enter in (
            (cohorts[0], True, 1, "active", T0 + dt.timedelta(days=1)),
            (cohorts[1], False, 3, "completed", T0 + dt.timedelta(days=2)),
        ):
            await conn.execute(
                """INSERT INTO journeys.cohort_members (tenant_id, cohort_id, member_id, holdout,
                       snapshot_arm,
                       state, position, due_time, enter_time)
                   VALUES ($1, $2, $3, $4, '', $5, $6, $7, $7)""",
                TENANT,
                cohort_id,
                member_id,
                holdout,
                state,
                position,
                enter,
            )
    return member_journey, broadcast


async def test_runs_and_messages_of_the_member_newest_first(
    journeys_stub: JourneysStub, db: Database
) -> None:
    member_id, other = unique("mj"), unique("mj")
    member_journey, broadcast = await seed(db, member_id, other)
    request = pb.ListMemberJourneysRequest(member=f"members/{member_id}", page_size=2)

    first = await journeys_stub.ListMemberJourneys(request, metadata=HOOLI)

    runs = [(r.journey, r.version, r.arm, r.state, r.current_step, r.broadcast_id) for r in first.runs]
    assert runs == [
        (
            f"journeys/{broadcast}",
            1,
            "treated",
            "completed",
            "",
            f"journey/{broadcast}/snapshot/s2-{member_id}",
        ),
        (
            f"journeys/{broadcast}",
            1,
            "holdout",
            "active",
            "nudge",
            f"journey/{broadcast}/snapshot/s1-{member_id}",
        ),
        (f"journeys/{member_journey}", 1, "b", "converted", "last", ""),
    ]
    assert first.runs[2].enrol_time.ToDatetime(tzinfo=dt.UTC) == T0
    assert [(m.step_id, m.channel, m.outcome, m.subject, m.body) for m in first.messages] == [
        ("last", "", "skipped", "", ""),
        ("nudge", "sms", "failed", "Hello Mei", f"Hi Mei, your code is {member_id}."),
    ]
    assert {m.journey for m in first.messages} == {f"journeys/{member_journey}"}
    assert first.messages[0].send_time.ToDatetime(tzinfo=dt.UTC) == T0 + dt.timedelta(hours=4)
    assert first.next_page_token

    second = await journeys_stub.ListMemberJourneys(
        pb.ListMemberJourneysRequest(member=request.member, page_size=2, page_token=first.next_page_token),
        metadata=HOOLI,
    )
    assert list(second.runs) == []
    assert [(m.step_id, m.outcome, m.subject, m.body) for m in second.messages] == [
        ("hello", "sent", *rendered(member_id))
    ]
    assert second.next_page_token == ""


async def test_a_member_in_nothing_has_an_empty_answer(journeys_stub: JourneysStub) -> None:
    reply = await journeys_stub.ListMemberJourneys(
        pb.ListMemberJourneysRequest(member=f"members/{unique('nobody')}"), metadata=HOOLI
    )
    assert (list(reply.runs), list(reply.messages), reply.next_page_token) == ([], [], "")


async def test_bad_requests_name_their_field(journeys_stub: JourneysStub, db: Database) -> None:
    call = journeys_stub.ListMemberJourneys
    member_id = unique("mj")
    async with db.transaction(TENANT) as conn:
        for step in ("a", "b"):
            key = message_log.Key(TENANT, f"run-{member_id}#1", member_id, step)
            await message_log.record(conn, key, "skipped", T0, journey_key="j")
    member = f"members/{member_id}"
    await bad(call(pb.ListMemberJourneysRequest(member="m-1"), metadata=HOOLI), "member")
    await bad(call(pb.ListMemberJourneysRequest(member=member, page_size=201), metadata=HOOLI), "page_size")
    await bad(
        call(pb.ListMemberJourneysRequest(member=member, page_token="nope"), metadata=HOOLI), "page_token"
    )
    page = await call(pb.ListMemberJourneysRequest(member=member, page_size=1), metadata=HOOLI)
    assert page.next_page_token
    # A token of one member's messages is no token of another's.
    elsewhere = pb.ListMemberJourneysRequest(
        member=f"members/{unique('mj')}", page_token=page.next_page_token
    )
    await bad(call(elsewhere, metadata=HOOLI), "page_token")
