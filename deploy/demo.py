"""What `make up` runs once the stack is ready, to show it working end to end.

A demo member and one order of theirs go to tagging over gRPC; their real-time tags are read back
as soon as the refresh after the order's commit has made them visible; a Temporal workflow reads
the member through an activity. Every call is idempotent (natural keys, a fixed order for the
day), so `make up` can run any number of times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from runtime.config import Settings
from workflows.journeys.client import workflow_id
from workflows.journeys.shipped import NEW_CUSTOMER
from workflows.journeys.workflow import JourneyWorkflow
from workflows.member_lookup.payloads import MemberLookupInput, MemberSummary
from workflows.member_lookup.workflow import MemberLookupWorkflow

DEMO_MEMBER = "demo-1"
# A real-time tag is visible within about a tenth of a second of RecordOrder returning.
TAGS_VISIBLE_WITHIN_SECONDS = 5.0
# The dispatcher starts a journey within about a second of the order once it runs; just after
# `make up` the worker and the dispatcher may still be starting on a loaded machine.
JOURNEY_WITHIN_SECONDS = 30.0


@dataclass(frozen=True)
class DemoResult:
    order_id: str
    tags: list[str]  # `dimension=value`, sorted
    summary: MemberSummary
    # The member's new-customer run, started by the dispatcher on their first order ('' if none).
    journey: str = ""


async def run(
    settings: Settings, tenant_id: str, token: str, contact: member_pb2.Contact | None = None
) -> DemoResult:
    """`contact`: how the demo member is reached (the local WeCom's customer, when it runs)."""
    auth = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(settings.tagging_address) as channel:
        stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        await stub.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(member=_member(contact)), metadata=auth, timeout=10
        )
        order = _todays_order(dt.datetime.now(dt.UTC))
        await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=auth, timeout=10)
        tags = await _tags_after_order(stub, auth)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    # TERMINATE_EXISTING: a run left over from an earlier `up` (say, still retrying) never blocks this one.
    summary = await client.execute_workflow(
        MemberLookupWorkflow.run,
        MemberLookupInput(tenant_id=tenant_id, member_id=DEMO_MEMBER),
        id=f"member-lookup-{DEMO_MEMBER}",
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
    )
    return DemoResult(order.order_id, tags, summary, await _journey(client, tenant_id))


async def _journey(client: Client, tenant_id: str) -> str:
    """The state of the demo member's new-customer run, which the tenant's dispatcher starts on
    their first order; '' when there is none (their first order came before the dispatcher did)."""
    handle = client.get_workflow_handle_for(
        JourneyWorkflow.run, workflow_id(tenant_id, NEW_CUSTOMER.key, DEMO_MEMBER)
    )
    deadline = asyncio.get_running_loop().time() + JOURNEY_WITHIN_SECONDS
    shown = ""
    while True:
        try:
            funnel = await handle.query(JourneyWorkflow.funnel)
            shown = f"{handle.id}: {funnel.state}, arm {funnel.arm}, step {funnel.current_step or '-'}"
            # Just started, the run has not taken its arm and first step yet: show it once it has.
            if funnel.state != "enrolling":
                return shown
        except (RPCError, WorkflowQueryFailedError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            return shown
        await asyncio.sleep(0.2)


def _member(contact: member_pb2.Contact | None) -> member_pb2.Member:
    return member_pb2.Member(
        member_id=DEMO_MEMBER,
        profile=member_pb2.Profile(
            city="Hangzhou", city_tier=member_pb2.CITY_TIER_NEW_1, register_channel="app", nickname="Xiao Li"
        ),
        contact=contact,
    )


def _todays_order(now: dt.datetime) -> facts_pb2.Order:
    """One order a day, paid at midnight UTC: the same content all day, so a retry is a no-op."""
    midnight = dt.datetime.combine(now.date(), dt.time(), tzinfo=dt.UTC)
    paid = Timestamp()
    paid.FromDatetime(midnight)
    line = facts_pb2.OrderLine(
        line_id="1", sku="tea-100g", category="tea", brand="westlake", quantity=2, unit_price_minor=4_900
    )
    return facts_pb2.Order(
        order_id=f"demo-{now.date():%Y%m%d}",
        member_id=DEMO_MEMBER,
        paid_time=paid,
        amount_minor=9_800,
        store="app",
        payment_method="alipay",
        lines=[line],
    )


async def _tags_after_order(
    stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub, auth: tuple[tuple[str, str], ...]
) -> list[str]:
    """The member's tags once the order's real-time refresh shows (categories_bought holds `tea`)."""
    request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{DEMO_MEMBER}")
    deadline = asyncio.get_running_loop().time() + TAGS_VISIBLE_WITHIN_SECONDS
    while True:
        reply = await stub.GetMemberTags(request, metadata=auth, timeout=10)
        tags = sorted(f"{t.dimension}={t.value}" for t in reply.tags)
        if "categories_bought=tea" in tags:
            return tags
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"the order's real-time tags did not show within 5 s; tags now: {tags}")
        await asyncio.sleep(0.1)


def describe(result: DemoResult) -> str:
    return (
        f"demo: UpsertMember stored {DEMO_MEMBER}; RecordOrder {result.order_id};"
        " GetMemberTags right after:\n"
        f"      {', '.join(result.tags)}\n"
        f"      workflow member-lookup-{DEMO_MEMBER} read the member back:\n"
        f"      {result.summary}\n"
        + (
            f"      the dispatcher enrolled {DEMO_MEMBER} on their first order: {result.journey}"
            if result.journey
            else f"      {DEMO_MEMBER} is in no new-customer run (first order before the dispatcher)"
        )
    )
