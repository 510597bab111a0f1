"""The `wecom` channel against the local WeCom server (deploy/wecom_local): a journey's send step
delivers with add_msg_template from the member's staff member to the member as a customer; a member
without a WeCom identity, or a tenant without an enabled connector, falls back to the next channel;
a customer WeCom lists in fail_list is `failed`; quota answers are `retry`; an attempt whose answer
was lost is `unknown` and its retry sends nothing; the customers' results are read back."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from deploy.wecom_local import LocalWeCom
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, TENANT_ACME, TENANT_WECOM_SEND, WECOM_SEND, unique
from tests.ports import free_port
from tests.waiting import eventually
from tests.wecom.conftest import AES_KEY, running_local_wecom
from tests.workflows import cohort_helpers
from tests.workflows.journey_helpers import figures, journey, member_message, running, start
from tests.workflows.test_sending import attempt
from workflows.journeys.activities import JourneyActivities
from workflows.journeys.channels import registry, wecom_results
from workflows.journeys.channels.wecom import WeComChannel
from workflows.journeys.definition import ChannelPolicy, Send, Step, Template
from workflows.journeys.payloads import SendOutcome, SendRequest
from workflows.journeys.sending import Sender
from workflows.wecom import client as sync_client
from workflows.wecom import connector_store
from workflows.wecom.payloads import WeComSyncInput
from workflows.wecom.workflow import WeComSyncWorkflow
from workflows.worker import Resources, services_of

TENANT = TENANT_WECOM_SEND
ADD_MSG_TEMPLATE = "externalcontact/add_msg_template"


@pytest.fixture(scope="module")
async def wecom() -> AsyncIterator[LocalWeCom]:
    async with running_local_wecom() as local:
        yield local


async def put_connector(
    db: Database, wecom: LocalWeCom, *, enabled: bool = True, tenant_id: str = TENANT
) -> None:
    async with db.transaction(tenant_id) as conn:
        current = await connector_store.get(conn, for_update=True)
        await connector_store.put(
            conn,
            tenant_id,
            corp_id=wecom.corp.corp_id,
            secret=wecom.corp.secret,
            callback_token=unique("token"),
            encoding_aes_key=AES_KEY,
            push_dimensions=(),
            pull_dimensions=(),
            enabled=enabled,
            version=(current.version + 1) if current else 1,
            now=dt.datetime.now(dt.UTC),
        )


@pytest.fixture
async def connector(journeys_db: Database, wecom: LocalWeCom) -> None:
    """The tenant's connector to the local WeCom, enabled."""
    await put_connector(journeys_db, wecom)


async def seed(
    resources: Resources, member_id: str, external: str = "", staff: str = "", preferred: str = "wecom"
) -> None:
    member = member_message(member_id, preferred=preferred)
    member.contact.wecom_external_userid = external
    member.contact.wecom_staff_userid = staff
    await tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging).UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=member), metadata=WECOM_SEND
    )


def customer(wecom: LocalWeCom, *, friend: bool = True) -> tuple[str, str]:
    """(external_userid, staff userid) of a new customer of a new staff member (a friend of theirs
    unless not `friend`)."""
    staff, external = unique("staff"), unique("wm").replace("-", "_")
    wecom.add_staff(staff)
    wecom.add_customer(external, follow_users=[staff] if friend else [])
    return external, staff


def activities(resources: Resources, settings: Settings, channel: WeComChannel) -> JourneyActivities:
    channels = resources.channels
    sender = Sender(resources.db, registry.build(channels), channels, {"wecom": channel})
    return JourneyActivities(resources.db, services_of(resources, settings), sender, channels)


def request_for(member_id: str, body: str = "Hi {nickname}, 新品到了") -> SendRequest:
    return SendRequest(
        tenant_id=TENANT,
        journey_key="wecom",
        journey_run=f"journey/wecom/member/{member_id}#1",
        member_id=member_id,
        step_id="hello",
        template=Template(subject="ignored by WeCom", body=body),
        channel="wecom",
        channels=ChannelPolicy(fallback=("sms",)),
        frequency_cap=5,
    )


async def rows(db: Database, member_id: str) -> list[dict[str, object]]:
    async with db.transaction(TENANT, readonly=True) as conn:
        found = await conn.fetch(
            """SELECT channel, status, detail, provider_id, attempts, wecom_result FROM journeys.messages
               WHERE member_id = $1 ORDER BY step_id""",
            member_id,
        )
    return [dict(row) for row in found]


def sent_to(wecom: LocalWeCom, external: str) -> list[tuple[str, str, str]]:
    """(msgid, sender, content) of the messages sent to the customer."""
    return [(m.msgid, m.sender, m.content) for m in wecom.messages() if external in m.results]


NOON = dt.datetime.now(dt.UTC).replace(hour=4)  # 12:00 in Shanghai: outside any quiet hours


async def test_a_journeys_send_step_delivers_through_wecom(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    external, staff = customer(wecom)
    member_id = unique()
    await seed(resources, member_id, external, staff)
    definition = journey(Step(id="hello", send=Send(template="hello")))
    settings = dataclasses.replace(worker_settings, wecom_api_url=wecom.url)
    async with running(time_skipping_env, settings, resources):
        funnel = await (
            await start(time_skipping_env, settings, journeys_db, definition, member_id, TENANT)
        ).result()
    assert figures(funnel, "hello") == {"entered": 1, "sent": 1}
    ((msgid, sender, content),) = sent_to(wecom, external)
    assert (sender, content) == (staff, "Hi Lin, welcome.")
    (row,) = await rows(journeys_db, member_id)
    assert (row["channel"], row["status"], row["provider_id"]) == ("wecom", "sent", f"{msgid}/{staff}")
    (call,) = [c for c in wecom.calls(ADD_MSG_TEMPLATE) if c.body["external_userid"] == [external]]
    assert call.body["chat_type"] == "single" and call.body["sender"] == staff


async def test_without_a_wecom_identity_or_connector_the_send_falls_back(
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    channel = WeComChannel(journeys_db, wecom.url)
    acts = activities(resources, worker_settings, channel)
    nobody, contact_only = unique(), unique()
    await seed(resources, nobody)
    external, _ = customer(wecom)
    await seed(resources, contact_only, external)  # no staff member owning the contact: no sender
    for member_id in (nobody, contact_only):
        outcome = await attempt(NOON, 1).run(acts.send, request_for(member_id))
        assert outcome == SendOutcome("sent", "sms"), member_id
    # A member with both, while the tenant's connector is off (read afresh by a new channel).
    both, (both_external, both_staff) = unique(), customer(wecom)
    await seed(resources, both, both_external, both_staff)
    await put_connector(journeys_db, wecom, enabled=False)
    try:
        off = activities(resources, worker_settings, WeComChannel(journeys_db, wecom.url))
        assert await attempt(NOON, 1).run(off.send, request_for(both)) == SendOutcome("sent", "sms")
    finally:
        await put_connector(journeys_db, wecom)
    assert sent_to(wecom, external) == sent_to(wecom, both_external) == []
    assert [r["channel"] for m in (nobody, contact_only, both) for r in await rows(journeys_db, m)] == [
        "sms"
    ] * 3


async def test_a_customer_in_fail_list_is_failed_and_quota_is_retried(
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    acts = activities(resources, worker_settings, WeComChannel(journeys_db, wecom.url))
    unknown, staff = unique("wm").replace("-", "_"), unique("staff")
    wecom.add_staff(staff)  # the customer is none of the corp's: WeCom lists them in fail_list
    member_id = unique()
    await seed(resources, member_id, unknown, staff)
    outcome = await attempt(NOON, 1).run(acts.send, request_for(member_id))
    assert (outcome.status, outcome.channel) == ("failed", "wecom")
    assert "fail_list" in outcome.detail
    # 45009 (the API's minute quota) past the channel's wait: not taken, the row says retry.
    busy = activities(resources, worker_settings, WeComChannel(journeys_db, wecom.url, max_wait_seconds=0))
    other = unique()
    external, staff = customer(wecom)
    await seed(resources, other, external, staff)
    wecom.storm(45009, 1, api=ADD_MSG_TEMPLATE)
    with pytest.raises(Exception, match="busy"):
        await attempt(NOON, 1).run(busy.send, request_for(other))
    assert [(r["status"], r["channel"]) for r in await rows(journeys_db, other)] == [("retry", "wecom")]
    again = await attempt(NOON + dt.timedelta(seconds=30), 2).run(busy.send, request_for(other))
    assert again == SendOutcome("sent", "wecom")
    assert len(sent_to(wecom, external)) == 1


async def test_a_wecom_not_reached_is_retried_not_unknown(
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    """No connection (nothing listens where WeCom should be): the message never left, so the row
    says retry and a later attempt sends it once."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = activities(resources, worker_settings, WeComChannel(journeys_db, nowhere))
    external, staff = customer(wecom)
    member_id = unique()
    await seed(resources, member_id, external, staff)
    with pytest.raises(Exception, match="not reached"):
        await attempt(NOON, 1).run(down.send, request_for(member_id))
    assert [r["status"] for r in await rows(journeys_db, member_id)] == ["retry"]
    up = activities(resources, worker_settings, WeComChannel(journeys_db, wecom.url))
    assert await attempt(NOON, 2).run(up.send, request_for(member_id)) == SendOutcome("sent", "wecom")
    assert len(sent_to(wecom, external)) == 1


@pytest.fixture
async def dropping_proxy(wecom: LocalWeCom) -> AsyncIterator[str]:
    """A proxy to the local WeCom that hands add_msg_template on and then drops the connection
    without answering: WeCom took the message, the caller never learns it."""
    async with aiohttp.ClientSession() as upstream:

        async def forward(request: web.Request) -> web.StreamResponse:
            async with upstream.request(
                request.method,
                f"{wecom.url}{request.path_qs}",
                data=await request.read(),
                headers={"Content-Type": "application/json"},
            ) as answer:
                body = await answer.read()
            if request.path.endswith(ADD_MSG_TEMPLATE) and request.transport is not None:
                request.transport.abort()
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


async def test_a_send_whose_answer_was_lost_is_unknown_and_never_sent_again(
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
    dropping_proxy: str,
) -> None:
    acts = activities(resources, worker_settings, WeComChannel(journeys_db, dropping_proxy))
    external, staff = customer(wecom)
    member_id = unique()
    await seed(resources, member_id, external, staff)
    first = await attempt(NOON, 1).run(acts.send, request_for(member_id))
    assert (first.status, first.channel) == ("unknown", "wecom")
    assert len(sent_to(wecom, external)) == 1  # WeCom took it; the answer never came back
    retried = await attempt(NOON + dt.timedelta(minutes=1), 2).run(acts.send, request_for(member_id))
    assert retried == first
    calls = [c for c in wecom.calls(ADD_MSG_TEMPLATE) if c.body["external_userid"] == [external]]
    assert len(calls) == 1 and len(sent_to(wecom, external)) == 1  # the retry called nothing
    assert [r["status"] for r in await rows(journeys_db, member_id)] == ["unknown"]


async def test_the_customers_results_are_read_back(
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    channel = WeComChannel(journeys_db, wecom.url)
    acts = activities(resources, worker_settings, channel)
    friend, stranger, gone = unique(), unique(), unique()
    await seed(resources, friend, *customer(wecom))
    await seed(resources, stranger, *customer(wecom, friend=False))  # not the staff's contact (any more)
    await seed(resources, gone, unique("wm").replace("-", "_"), unique("staff"))  # WeCom refuses it
    for member_id in (friend, stranger, gone):
        await attempt(NOON, 1).run(acts.send, request_for(member_id))
    # Each read takes a batch of the tenant's unread messages: read until none is left.
    now = dt.datetime.now(dt.UTC)
    while await wecom_results.read_results(journeys_db, channel, TENANT, now):
        pass
    results = {
        m: [(r["status"], r["wecom_result"]) for r in await rows(journeys_db, m)]
        for m in (friend, stranger, gone)
    }
    assert results == {
        friend: [("sent", "delivered")],
        stranger: [("sent", "not_friend")],
        gone: [("failed", "none")],
    }
    # Read again: nothing changes, nothing is asked of WeCom.
    asked = len(wecom.calls("externalcontact/get_groupmsg_send_result"))
    assert await wecom_results.read_results(journeys_db, channel, TENANT, now) == 0
    assert len(wecom.calls("externalcontact/get_groupmsg_send_result")) == asked


async def test_a_broadcast_sends_each_member_once_from_their_staff_member(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
) -> None:
    """A cohort's sends go one message at a time (WeCom takes no idempotency key: `queued` rows,
    each moved to `sending` before its call). The cohort helpers work in acme, whose connector this
    test puts and removes again (no other test's member there has a WeCom identity)."""
    batch = unique("batch")
    people = {f"{batch}-{n:02d}": customer(wecom) for n in range(12)}
    members = []
    for member_id, (external, staff) in people.items():
        member = member_message(member_id, preferred="wecom")
        member.contact.wecom_external_userid, member.contact.wecom_staff_userid = external, staff
        member.attributes.update({"batch": batch})
        members.append(member)
    await tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging).ImportMembers(
        iter([tagging_service_pb2.ImportMembersRequest(members=members)]), metadata=ACME
    )
    audience_id, frozen = await cohort_helpers.snapshot_of(resources.audience, batch)
    definition = cohort_helpers.broadcast(
        audience_id, Step(id="hello", send=Send(template="hello", channel="wecom")), holdout_percent=0
    )
    settings = dataclasses.replace(worker_settings, wecom_api_url=wecom.url)
    await put_connector(journeys_db, wecom, tenant_id=TENANT_ACME)
    try:
        async with running(time_skipping_env, settings, resources):
            handle = await cohort_helpers.start(
                time_skipping_env, settings, journeys_db, definition, frozen.name
            )
            funnel = await handle.result()
    finally:
        async with journeys_db.transaction(TENANT_ACME) as conn:
            await conn.execute("DELETE FROM journeys.wecom_connectors")
            await conn.execute("DELETE FROM journeys.wecom_sync")
    assert cohort_helpers.step(funnel, "hello") == {"entered": 12, "sent": 12}
    for member_id, (external, staff) in people.items():
        ((_, sender, content),) = sent_to(wecom, external)
        assert (sender, content) == (staff, "Hi Lin, our sale starts today."), member_id
    rows = await cohort_helpers.messages(journeys_db, funnel.cohort_id)
    assert {(r["channel"], r["status"]) for r in rows} == {("wecom", "sent")} and len(rows) == 12


async def test_the_tenants_wecom_sync_reads_the_results_back(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    wecom: LocalWeCom,
    connector: None,
) -> None:
    """The worker's WeComSync rounds call `wecom.read_results` while the connector is on."""
    acts = activities(resources, worker_settings, WeComChannel(journeys_db, wecom.url))
    member_id = unique()
    await seed(resources, member_id, *customer(wecom))
    assert (await attempt(NOON, 1).run(acts.send, request_for(member_id))).status == "sent"
    settings = dataclasses.replace(worker_settings, wecom_api_url=wecom.url)

    async def result() -> str:
        ((row,),) = [await rows(journeys_db, member_id)]
        return str(row["wecom_result"])

    async with running(time_skipping_env, settings, resources):
        handle = await time_skipping_env.client.start_workflow(
            WeComSyncWorkflow.run,
            WeComSyncInput(TENANT, idle_seconds=1.0),
            id=sync_client.workflow_id(TENANT),
            task_queue=settings.temporal_task_queue,
        )
        try:
            assert await eventually(result, "the message's result read back") == "delivered"
        finally:
            await handle.terminate()
