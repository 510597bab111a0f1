"""Building blocks of the step tests: members with an own send hour, strategy tags, audiences of
chosen members, and what a member journey recorded for the report."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from runtime.db import Database
from tests.audience.helpers import in_batch
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.facts_helpers import an_order, record_order, stamp
from workflows.journeys.local_time import PREFERRED_SEND_HOUR


async def give_send_hours(channel: grpc.aio.Channel, utc_hours: Mapping[str, int]) -> None:
    """Gives each member a `preferred_send_hour`: three orders paid at that UTC hour, days ago,
    then the model recomputed (it is scheduled, not real-time)."""
    stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
    now = dt.datetime.now(dt.UTC)
    for member_id, hour in utc_hours.items():
        for days in (3, 4, 5):
            paid = (now - dt.timedelta(days=days)).replace(hour=hour, minute=30, second=0, microsecond=0)
            await record_order(stub, an_order(member_id, paid_time=stamp(paid)))
    await stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=[PREFERRED_SEND_HOUR]), metadata=ACME, timeout=120
    )


async def send_hours(channel: grpc.aio.Channel, member_ids: Sequence[str]) -> dict[str, str]:
    """The members' `preferred_send_hour` values, as tagging has them."""
    stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
    reply = await stub.BatchGetMemberTags(
        tagging_service_pb2.BatchGetMemberTagsRequest(
            members=[f"members/{m}" for m in member_ids], dimensions=[PREFERRED_SEND_HOUR]
        ),
        metadata=ACME,
    )
    return {t.member_id: t.value for t in reply.tags}


async def audience_of(channel: grpc.aio.Channel, batch: str) -> str:
    """An audience of the members whose `batch` attribute is `batch`; its id."""
    audience_id = unique("aud")
    await audience_service_pb2_grpc.AudienceServiceStub(channel).CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=audience_id, rule=in_batch(batch))
        ),
        metadata=ACME,
    )
    return audience_id


async def add_tag(channel: grpc.aio.Channel, dimension: str, value: str, member_ids: Sequence[str]) -> None:
    await tagging_service_pb2_grpc.TaggingServiceStub(channel).AddMemberTags(
        tagging_service_pb2.AddMemberTagsRequest(
            dimension=dimension, value=value, member_ids=list(member_ids), operator="test", reason="test"
        ),
        metadata=ACME,
    )


async def recorded(db: Database, journey_key: str, member_id: str) -> dict[str, Any]:
    """The member's enrolment as the report reads it: state, split arms, step figures."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        row = await conn.fetchrow(
            """SELECT state, split_arms, step_figures::text AS step_figures FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = $2 AND member_id = $3""",
            TENANT_ACME,
            journey_key,
            member_id,
        )
    assert row is not None
    return {
        "state": row["state"],
        "split_arms": list(row["split_arms"]),
        "step_figures": json.loads(row["step_figures"]),
    }


async def snapshot(channel: grpc.aio.Channel, audience_id: str) -> audience_pb2.Snapshot:
    return await audience_service_pb2_grpc.AudienceServiceStub(channel).CreateSnapshot(
        audience_service_pb2.CreateSnapshotRequest(
            audience=f"audiences/{audience_id}", request_id=unique("req")
        ),
        metadata=ACME,
        timeout=60,
    )


async def sends(db: Database, journey_key: str, *, cohort: bool) -> list[dict[str, Any]]:
    """The journey's message rows, of its cohorts or of its member journeys."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT journey_run, member_id, step_id, status, update_time FROM journeys.messages
               WHERE tenant_id = $1 AND journey_key = $2 AND (journey_run LIKE 'cohort/%') = $3""",
            TENANT_ACME,
            journey_key,
            cohort,
        )
    return [dict(row) for row in rows]
