"""Both ways through the real sync: a worker runs the tenant's WeComSync workflow (push rounds and
the pull) against the local WeCom; a staff member's tag comes back as the member's manual tag by
the callback, the endpoint's signal and a round's pull, and is not pushed back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deploy.wecom_local import LocalWeCom
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import WECOM_PULL, unique
from tests.tagging.test_catalog import dimension
from tests.waiting import eventually
from tests.wecom.callbacks_world import (
    AES_KEY,
    CORP_ID,
    SECRET,
    TASK_QUEUE,
    TENANT,
    TOKEN,
    clear_resync,
    manual_dimension,
    put_connector,
    serving_callbacks,
)
from tests.wecom.conftest import running_local_wecom
from workflows.wecom import client as sync_client
from workflows.wecom.activities import WeComActivities
from workflows.wecom.payloads import WeComSyncInput
from workflows.wecom.pull_activities import WeComPullActivities
from workflows.wecom.tagging_reads import TaggingReads
from workflows.wecom.workflow import WeComSyncWorkflow

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

STAFF = "wangwu"
MARK_TAG = "externalcontact/mark_tag"


async def end_sync(client: Client) -> None:
    """Terminates the tenant's sync if one runs (the other modules' endpoint started it)."""
    with contextlib.suppress(RPCError):
        await client.get_workflow_handle(sync_client.workflow_id(TENANT)).terminate()


@pytest.fixture
async def wecom() -> AsyncIterator[LocalWeCom]:
    async with running_local_wecom(
        corp_id=CORP_ID, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY
    ) as local:
        local.add_staff(STAFF)
        yield local


async def member_of(stub: Stub, wecom: LocalWeCom) -> tuple[str, str]:
    member_id, external_userid = unique("rt"), unique("wmrt")
    wecom.add_customer(external_userid, follow_users=[STAFF])
    contact = member_pb2.Contact(wecom_external_userid=external_userid, wecom_staff_userid=STAFF)
    member = member_pb2.Member(member_id=member_id, contact=contact)
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=WECOM_PULL)
    return member_id, external_userid


async def test_a_staff_tag_comes_back_through_the_sync_and_is_not_pushed_back(
    tasks_settings: Settings,
    dev_server_env: WorkflowEnvironment,
    db: Database,
    tagging_stub: Stub,
    wecom: LocalWeCom,
    settings: Settings,
) -> None:
    client = dev_server_env.client
    await end_sync(client)
    # No full reconciliation left asked for by the other modules' callbacks (it would set WeCom to
    # MemberOps' tags, staff's not pulled yet included: the sync's rule for a reconciliation).
    await clear_resync(db)
    name = dimension()
    display = f"Care {name[-6:]}"
    await manual_dimension(tagging_stub, name, {"vip": "VIP", "quiet": "Quiet"}, display_name=display)
    sync = WeComActivities(db, TaggingReads(tagging_stub, settings.token_for_tenant), wecom.url)
    pull = WeComPullActivities(db, tagging_stub, settings.token_for_tenant, wecom.url)
    async with (
        serving_callbacks(tasks_settings, dev_server_env, db) as url,
        Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[WeComSyncWorkflow],
            activities=[*sync.all(), *pull.all()],
        ),
    ):
        wecom.set_callback_url(url)
        await put_connector(db, push_dimensions=(name,), pull_dimensions=(name,))
        await client.start_workflow(
            WeComSyncWorkflow.run,
            WeComSyncInput(TENANT, idle_seconds=0.2),
            id=sync_client.workflow_id(TENANT),
            task_queue=TASK_QUEUE,
        )
        try:
            # The pulled dimension's group and tags exist in WeCom for staff to choose.
            async def vip_tag() -> str | None:
                return wecom.tag_id(display, "VIP")

            vip = await eventually(vip_tag, "the VIP tag in WeCom")
            member_id, external_userid = await member_of(tagging_stub, wecom)

            await wecom.staff_edit_tags(STAFF, external_userid, add=[vip])

            async def pulled() -> list[tuple[str, str, str]]:
                request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
                answer = await tagging_stub.GetMemberTags(request, metadata=WECOM_PULL)
                return [(t.value, t.set_by, t.reason) for t in answer.tags if t.dimension == name]

            assert await eventually(pulled, "the staff tag came back") == [("vip", STAFF, "wecom")]
            # A change MemberOps makes after it goes out; once it is in WeCom, the pulled one was
            # passed over by the same push (feed order), and never marked back.
            other_id, other_external = await member_of(tagging_stub, wecom)
            await tagging_stub.AddMemberTags(
                tagging_service_pb2.AddMemberTagsRequest(
                    dimension=name, value="quiet", member_ids=[other_id], operator="ops@test", reason="test"
                ),
                metadata=WECOM_PULL,
            )

            async def pushed() -> bool:
                return any(t.tag_name == "Quiet" for t in wecom.customer_tags(other_external, STAFF))

            await eventually(pushed, "the operator's tag pushed")
            marked = [c for c in wecom.calls(MARK_TAG) if c.body.get("external_userid") == external_userid]
            assert marked == []
        finally:
            await end_sync(client)
