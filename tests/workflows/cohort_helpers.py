"""Building blocks of the broadcast tests: a population in tagging, its snapshot in audience, a
broadcast definition stored and started, and what the database says the cohort did."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.audience.helpers import in_batch
from tests.conftest import ACME, TENANT_ACME, unique
from tests.waiting import eventually
from tests.workflows.journey_helpers import activate, member_message
from workflows.journeys import client, store
from workflows.journeys.cohort.payloads import CohortFunnel, CohortInput
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import Broadcast, Entry, JourneyDefinition, Step, Template
from workflows.worker import Resources


async def population(
    channel: grpc.aio.Channel,
    count: int,
    *,
    preferred: str = "sms",
    time_zone: str = "Asia/Shanghai",
    opted_out: tuple[str, ...] = (),
) -> tuple[str, list[str]]:
    """`count` members of a batch of their own (one ImportMembers call per 10000), reachable by
    SMS at phone_of(member) and by e-mail; returns the batch and the member ids."""
    batch = unique("batch")
    ids = [f"{batch}-{n:05d}" for n in range(count)]
    members = []
    for member_id in ids:
        message = member_message(
            member_id,
            preferred=preferred,
            opted_out=opted_out,
            time_zone=time_zone,
            nickname=f"N{member_id[-5:]}",
        )
        message.attributes.update({"batch": batch})
        members.append(message)

    async def requests() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        for i in range(0, len(members), 10_000):
            yield tagging_service_pb2.ImportMembersRequest(members=members[i : i + 10_000])

    await tagging_service_pb2_grpc.TaggingServiceStub(channel).ImportMembers(
        requests(), metadata=ACME, timeout=120
    )
    return batch, ids


async def snapshot_of(
    channel: grpc.aio.Channel, batch: str, splits: tuple[tuple[str, int], ...] = ()
) -> tuple[str, audience_pb2.Snapshot]:
    """An audience of the batch and a snapshot of it: (audience id, snapshot)."""
    stub = audience_service_pb2_grpc.AudienceServiceStub(channel)
    audience_id = unique("aud")
    await stub.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=audience_id, rule=in_batch(batch))
        ),
        metadata=ACME,
    )
    frozen = await stub.CreateSnapshot(
        audience_service_pb2.CreateSnapshotRequest(
            audience=f"audiences/{audience_id}",
            splits=[audience_pb2.SplitArm(name=name, share_percent=share) for name, share in splits],
            request_id=unique("req"),
        ),
        metadata=ACME,
        timeout=60,
    )
    return audience_id, frozen


async def snapshot_population(
    resources: Resources, count: int, splits: tuple[tuple[str, int], ...] = (), **contact: Any
) -> tuple[list[str], str, audience_pb2.Snapshot]:
    """`count` new members (see `population`), an audience of them and its snapshot:
    (member ids, audience id, snapshot)."""
    batch, ids = await population(resources.tagging, count, **contact)
    audience_id, frozen = await snapshot_of(resources.audience, batch, splits)
    return ids, audience_id, frozen


def broadcast(audience_id: str, *steps: Step, **changes: Any) -> JourneyDefinition:
    """A broadcast definition to snapshots of the audience, with a fresh key and a `hello` template."""
    base = JourneyDefinition(
        key=unique("b"),
        name="test broadcast",
        entry=Entry(broadcast=Broadcast(audience=audience_id)),
        steps=steps,
        templates={
            "hello": Template(subject="Hello {nickname}", body="Hi {nickname}, our sale starts today.")
        },
        frequency_cap=5,
    )
    return dataclasses.replace(base, **changes)


async def start(
    env: WorkflowEnvironment,
    settings: Settings,
    db: Database,
    definition: JourneyDefinition,
    snapshot: str,
    **tuning: Any,
) -> WorkflowHandle[CohortJourneyWorkflow, CohortFunnel]:
    stored = await store.put_definition(db, TENANT_ACME, definition)
    await activate(db, TENANT_ACME, definition.key, stored.version)
    return await client.start_broadcast(
        env.client,
        settings.temporal_task_queue,
        CohortInput(tenant_id=TENANT_ACME, journey_key=definition.key, snapshot=snapshot, **tuning),
    )


async def until(
    handle: WorkflowHandle[Any, Any], what: str, holds: Callable[[CohortFunnel], bool]
) -> CohortFunnel:
    """Queries the funnel until `holds` (a bounded wait for the worker, no clock in the assertions)."""

    async def reached() -> CohortFunnel | None:
        funnel: CohortFunnel = await handle.query(CohortJourneyWorkflow.funnel)
        return funnel if holds(funnel) else None

    return await eventually(reached, f"did the cohort get to {what}")


# The history events that close an activity call or a timer.
_ACTIVITY_CLOSED = (
    "activity_task_completed_event_attributes",
    "activity_task_failed_event_attributes",
    "activity_task_timed_out_event_attributes",
    "activity_task_canceled_event_attributes",
)
_TIMER_CLOSED = ("timer_fired_event_attributes", "timer_canceled_event_attributes")


async def asleep(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the run (the one the handle names) waits on a timer with no activity call open:
    nothing happens in it then until the timer fires, a signal comes or it is cancelled."""
    calls: set[int] = set()
    timers: set[str] = set()
    for event in (await handle.fetch_history()).events:
        kind = event.WhichOneof("attributes")
        if kind == "activity_task_scheduled_event_attributes":
            calls.add(event.event_id)
        elif kind in _ACTIVITY_CLOSED:
            calls.discard(getattr(event, kind).scheduled_event_id)
        elif kind == "timer_started_event_attributes":
            timers.add(event.timer_started_event_attributes.timer_id)
        elif kind in _TIMER_CLOSED:
            timers.discard(getattr(event, kind).timer_id)
    return bool(timers) and not calls


async def until_asleep(handle: WorkflowHandle[Any, Any], what: str) -> None:
    """Waits (bounded) until the run is `asleep`. Cancel a broadcast on the time-skipping test
    server only then: that server mishandles a cancellation that meets a running activity call.
    When the call completes while the workflow task that cancels it is out, the server refuses the
    task's completion (ACTIVITY_UNKNOWN) and the run stays stuck with the task open, holding its
    time-skipping lock; when the call was scheduled but not yet taken, the server drops it without
    releasing the call's lock. Either way time stops skipping for the rest of the test (each test
    has a test server of its own). (A real server takes both; see
    test_cancelling_during_a_batch_waits_for_it_on_a_real_server.)"""
    await eventually(lambda: asleep(handle), f"did the cohort fall asleep in {what}")


def step(funnel: CohortFunnel, step_id: str) -> dict[str, Any]:
    """The step's non-zero figures ({} before the cohort is open)."""
    found = [s for s in funnel.steps if s.step_id == step_id]
    assert len(found) <= 1 and (found or not funnel.steps), (step_id, funnel.steps)
    return {k: v for k, v in dataclasses.asdict(found[0]).items() if v and k != "step_id"} if found else {}


async def messages(db: Database, cohort_id: int) -> list[dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, step_id, channel, status, attempts, update_time, subject, body
               FROM journeys.messages
               WHERE tenant_id = $1 AND journey_run = $2 ORDER BY member_id, step_id""",
            TENANT_ACME,
            f"cohort/{cohort_id}",
        )
    return [dict(row) for row in rows]


async def members(db: Database, cohort_id: int) -> dict[str, dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, holdout, snapshot_arm, state, position, gmv_minor
               FROM journeys.cohort_members WHERE tenant_id = $1 AND cohort_id = $2""",
            TENANT_ACME,
            cohort_id,
        )
    return {row["member_id"]: dict(row) for row in rows}


def statuses(rows: list[dict[str, Any]], step_id: str) -> Counter[str]:
    return Counter(row["status"] for row in rows if row["step_id"] == step_id)
