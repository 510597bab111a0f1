"""EraseMember across the services: after it, no table of any schema holds the member's id, phone,
e-mail, nickname or any attribute of theirs, while what the business counts stays whole under the
pseudonym (GMV in tagging, the points balance in tasks, the snapshot's size and arms in audience).

The journeys' part here is a message log row written the way the worker writes one, its provider's
detail naming the member's phone; a real journey run being stopped is tests/journeys/
test_erase_member_data.py's."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tasks.v1 import points_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from runtime import app
from runtime.db import Database
from tests.audience.helpers import create, in_batch
from tests.conftest import TENANT_UMBRELLA, unique
from tests.erasure_world import METADATA, Person, audit_row, create_person, erase, traces
from workflows.journeys import message_log
from workflows.wecom import callback_store

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


@pytest.fixture(scope="module")
async def stubs(
    tasks: app.RunningService, audience: app.RunningService
) -> AsyncIterator[tuple[TasksStub, AudienceStub]]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{tasks.port}") as to_tasks,
        grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as to_audience,
    ):
        yield (
            tasks_service_pb2_grpc.TasksServiceStub(to_tasks),
            audience_service_pb2_grpc.AudienceServiceStub(to_audience),
        )


async def balance(stub: TasksStub, member_id: str) -> tuple[int, int]:
    found = await stub.GetBalance(tasks_service_pb2.GetBalanceRequest(member_id=member_id), metadata=METADATA)
    return found.available, found.pending


async def snapshot_arms(db: Database, snapshot_id: str) -> list[int]:
    rows = await db.pool.fetch(
        "SELECT arm FROM audience.snapshot_members WHERE tenant_id = $1 AND snapshot_id = $2 ORDER BY arm",
        TENANT_UMBRELLA,
        snapshot_id,
    )
    return [row["arm"] for row in rows]


async def test_nothing_of_the_member_is_left_in_any_table(
    tagging_stub: Stub,
    stubs: tuple[TasksStub, AudienceStub],
    journeys: app.RunningService,
    db: Database,
) -> None:
    tasks_stub, audience_stub = stubs
    person = Person()
    facts = await create_person(tagging_stub, person)
    for order_id, amount in zip(facts.order_ids, facts.amounts, strict=True):
        earn = tasks_service_pb2.EarnPointsRequest(
            member_id=person.member_id,
            amount=amount // 100,
            reason=points_pb2.REASON_ORDER,
            reference=order_id,
            expiry_policy=points_pb2.EXPIRY_POLICY_NEVER,
            request_id=unique("earn"),
        )
        await tasks_stub.EarnPoints(earn, metadata=METADATA)
    points = await balance(tasks_stub, person.member_id)
    audience = await create(audience_stub, in_batch(person.batch), metadata=METADATA)
    snapshot = await audience_stub.CreateSnapshot(
        audience_service_pb2.CreateSnapshotRequest(
            audience=f"audiences/{audience.audience_id}",
            splits=[audience_pb2.SplitArm(name=name, share_percent=50) for name in ("a", "b")],
            request_id=unique("req"),
        ),
        metadata=METADATA,
    )
    snapshot_id = snapshot.name.removeprefix("snapshots/")
    arms = await snapshot_arms(db, snapshot_id)
    assert len(arms) == 1
    async with db.transaction(TENANT_UMBRELLA) as conn:
        key = message_log.Key(
            TENANT_UMBRELLA,
            f"journey/{TENANT_UMBRELLA}/welcome/member/{person.member_id}#1",
            person.member_id,
            "hello",
        )
        await message_log.record(
            conn,
            key,
            "sent",
            dt.datetime.now(dt.UTC),
            detail=f"accepted for {person.phone}",
            journey_key="welcome",
        )
        # A WeCom callback about the member, as the pull leaves it (resolved to the member).
        fields = {"Event": "change_external_contact", "ExternalUserID": person.wecom_external_userid}
        digest = unique("digest")
        await callback_store.insert(conn, TENANT_UMBRELLA, digest, fields)
        stored = await conn.fetchval("SELECT id FROM journeys.wecom_callbacks WHERE digest = $1", digest)
        await callback_store.mark_processed(conn, stored, "pulled", person.member_id)
        await callback_store.save_seen(
            conn, TENANT_UMBRELLA, person.wecom_external_userid, "staff", person.member_id, {"d": {"v"}}
        )
    before = await traces(db, person.needles)
    assert {
        "tasks.accounts",
        "audience.snapshot_members",
        "journeys.messages",
        "journeys.wecom_callbacks",
        "journeys.wecom_seen_tags",
        "tagging.members",
    } <= set(before)

    request_id = unique("req")
    erased = await erase(tagging_stub, person.member_id, request_id)

    assert await traces(db, person.needles) == {}
    gmv = await db.pool.fetchval(
        "SELECT sum(amount_minor) FROM tagging.orders WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        erased.pseudonym,
    )
    assert gmv == sum(facts.amounts)
    assert await balance(tasks_stub, erased.pseudonym) == points
    assert await snapshot_arms(db, snapshot_id) == arms
    sent = await db.pool.fetchrow(
        "SELECT status, detail FROM journeys.messages WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        erased.pseudonym,
    )
    assert sent is not None and sent["status"] == "sent"
    # The tasks process knew the member from the earnings above; it must not take the erased id
    # for a member still: an earning for it is refused and leaves no trace.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.EarnPoints(
            tasks_service_pb2.EarnPointsRequest(
                member_id=person.member_id,
                amount=1,
                reason=points_pb2.REASON_ORDER,
                reference=unique("order"),
                expiry_policy=points_pb2.EXPIRY_POLICY_NEVER,
                request_id=unique("earn"),
            ),
            metadata=METADATA,
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
    assert await traces(db, person.needles) == {}
    audit = await audit_row(db, TENANT_UMBRELLA, request_id)
    changed = json.loads(audit["changed_rows"])
    assert {
        "tagging.members",
        "tasks.accounts",
        "audience.snapshot_members",
        "journeys.messages",
        "journeys.wecom_callbacks",
        "journeys.wecom_seen_tags",
    } <= set(changed)
