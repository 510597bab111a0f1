"""The WeCom sync against a local WeCom, the real services and Temporal's dev server: a pushed
dimension's members end with the same tags in WeCom as in MemberOps (those there before the
connector through its first reconciliation, later changes through the feed); a renamed value keeps
its WeCom tag in step; an expired token, a 45009 storm and a quota's minute are waited out without a
change lost; a worker dying mid-batch leaves the next to go on with no member missed or marked
twice; ResyncWeCom repairs a tag removed behind MemberOps' back.

The sync follows tagging's feed in wall-clock time, so these tests wait for a state with a deadline
(tests/waiting.py); none compares a duration. WeCom's backoff runs on the local server's clock
(`push_world.fast_sleep`)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.journeys.v1 import journeys_service_pb2_grpc, wecom_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from deploy.wecom_local import LocalWeCom
from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.journeys import server as journeys_server
from tests.conftest import WECOM_PUSH, unique
from tests.waiting import eventually
from tests.wecom import push_world as world
from tests.wecom.conftest import running_local_wecom
from tests.wecom.push_world import STAFF, Customer
from tests.workflows.journey_helpers import keep_history
from workflows.wecom import client as sync_client

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub


@dataclasses.dataclass(frozen=True)
class Stack:
    wecom: LocalWeCom
    keys: dict[str, str]
    journeys: JourneyServiceAsyncStub
    tagging: TaggingServiceAsyncStub
    settings: Settings
    env: WorkflowEnvironment
    db: Database

    def syncing(self, **options: Any) -> Any:
        return world.syncing(self.env.client, self.settings, self.db, self.tagging, self.wecom, **options)

    async def push(self, *dimensions: str) -> None:
        """Pushes `dimensions` (the connector's first reconciliation of them runs), then waits
        until the sync has taken every change the feed holds."""
        await world.put_connector(self.journeys, self.wecom, self.keys, dimensions)
        await self.caught_up()

    async def caught_up(self) -> None:
        await eventually(lambda: world.caught_up(self.db, self.tagging), "the sync at the feed's end")


@pytest.fixture(scope="module")
async def stack(
    tasks_settings: Settings,
    tasks: app.RunningService,
    dev_server_env: WorkflowEnvironment,
    db: Database,
) -> AsyncIterator[Stack]:
    """A local WeCom, and a journeys service of the module's own starting the sync on its queue."""
    settings = dataclasses.replace(
        tasks_settings,
        tasks_address=f"127.0.0.1:{tasks.port}",
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=world.TASK_QUEUE,
    )
    keys = world.corp_keys()
    await world.end_sync(dev_server_env.client)
    await world.start_sync(dev_server_env.client)
    async with running_local_wecom(**keys) as wecom:
        wecom.add_staff(STAFF)
        service = await app.start(journeys_server.DEFINITION, settings, "127.0.0.1:0")
        try:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as to_journeys,
                grpc.aio.insecure_channel(settings.tagging_address) as to_tagging,
            ):
                yield Stack(
                    wecom,
                    keys,
                    journeys_service_pb2_grpc.JourneyServiceStub(to_journeys),
                    tagging_service_pb2_grpc.TaggingServiceStub(to_tagging),
                    settings,
                    dev_server_env,
                    db,
                )
        finally:
            await world.end_sync(dev_server_env.client)
            await service.stop()


async def sync_of(stack: Stack) -> wecom_pb2.WeComSync:
    answer: wecom_pb2.WeComSync = await stack.journeys.GetWeComSync(
        wecom_pb2.GetWeComSyncRequest(), metadata=WECOM_PUSH
    )
    return answer


async def reconciled(stack: Stack, request_id: str = "") -> wecom_pb2.WeComReconciliation:
    """The reconciliation (of `request_id`, else the latest) once it is done."""

    async def probe() -> wecom_pb2.WeComReconciliation | None:
        found = (await sync_of(stack)).reconciliation
        done = found.state == "done" and (not request_id or found.request_id == request_id)
        return found if done else None

    return await eventually(probe, f"reconciliation {request_id} done")


async def test_a_dimension_and_its_members_are_pushed_and_kept_in_step(stack: Stack) -> None:
    wecom, tagging = stack.wecom, stack.tagging
    name, group = await world.dimension(tagging, {"gold": "Gold", "silver": "Silver", "bronze": "Bronze"})
    first, second, third = await world.customers(tagging, wecom, 3)
    nobody = unique("wm-none")  # a member without a WeCom identity
    member = member_pb2.Member(member_id=nobody, profile=member_pb2.Profile(nickname="Nobody"))
    await tagging.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=WECOM_PUSH)
    await world.give(tagging, name, "gold", [first.member_id, second.member_id, nobody])
    await world.give(tagging, name, "silver", [second.member_id])
    async with stack.syncing():
        # Tags held before the dimension was pushed: the connector's first reconciliation.
        await stack.push(name)
        want: dict[Customer, set[str]] = {first: {"Gold"}, second: {"Gold", "Silver"}, third: set()}
        await eventually(world.holding(wecom, want, group), "the tags held before in WeCom")
        # Changes from then on: through the feed, each member in one mark_tag.
        before = world.marks(wecom)
        await world.take(tagging, name, "gold", [second.member_id])
        await world.give(tagging, name, "bronze", [third.member_id, nobody])
        want = {first: {"Gold"}, second: {"Silver"}, third: {"Bronze"}}
        await eventually(world.holding(wecom, want, group), "the changes in WeCom")
        # The dimension and a value renamed in MemberOps: the same WeCom group and tag, renamed.
        gold = wecom.tag_id(group, "Gold")
        group, old_group = f"{group} new", group
        await world.rename(tagging, name, "gold", "Gold VIP", group)

        async def renamed() -> bool:
            return wecom.tag_id(group, "Gold VIP") == gold

        await eventually(renamed, "the WeCom group and tag renamed")
        assert world.held(wecom, first, group) == {"Gold VIP"}
        assert world.held(wecom, first, old_group) == set()
        # A change made from WeCom (a pulled one, reason `wecom`) is not pushed back; the change
        # after it is (so the sync read past it).
        await world.give(tagging, name, "silver", [first.member_id], reason="wecom")
        await world.give(tagging, name, "gold", [third.member_id])
        await eventually(
            world.holding(wecom, {third: {"Bronze", "Gold VIP"}}, group), "the change after the pulled one"
        )
        await stack.caught_up()
    after = world.marks(wecom) - before
    assert after == {second.external_userid: 1, third.external_userid: 2}
    assert world.held(wecom, first, group) == {"Gold VIP"}
    sync = await sync_of(stack)
    # Every mark_tag WeCom took is counted (the module's local WeCom is this connector's alone).
    assert sync.members_marked == sum(world.marks(wecom).values())
    assert sync.cursor and sync.last_error == ""
    assert (await world.state(stack.db)).members_skipped >= 1  # `nobody`, twice


async def test_an_expired_token_a_45009_storm_and_a_quota_minute_lose_nothing(stack: Stack) -> None:
    wecom, tagging = stack.wecom, stack.tagging
    name, group = await world.dimension(tagging, {"a": "A", "b": "B"})
    members = await world.customers(tagging, wecom, 4)
    ids = [m.member_id for m in members]
    async with stack.syncing():
        await stack.push(name)
        before = world.marks(wecom)
        wecom.expire_tokens()
        wecom.storm(45009, 3, api=world.MARK_TAG)
        wecom.set_quota(world.MARK_TAG, 2)
        await world.give(tagging, name, "a", ids)
        await eventually(world.holding(wecom, {m: {"A"} for m in members}, group), "every member in WeCom")
    wecom.set_quota(world.MARK_TAG, 10_000)
    assert world.marks(wecom) - before == {m.external_userid: 1 for m in members}
    assert any(c.errcode == 42001 for c in wecom.calls())
    # The storm's three, and the quota's refusals past two calls a minute.
    assert sum(world.marks(wecom, errcode=45009).values()) >= 3 + 1


async def test_a_worker_dying_mid_batch_leaves_no_member_missed_or_marked_twice(stack: Stack) -> None:
    wecom, tagging = stack.wecom, stack.tagging
    name, group = await world.dimension(tagging, {"vip": "VIP"})
    members = await world.customers(tagging, wecom, 8)
    stuck = asyncio.Event()

    async def blocked(_: float) -> None:
        """The quota's backoff never ends: the worker dies waiting in it."""
        stuck.set()
        await asyncio.Event().wait()

    async with stack.syncing():
        await stack.push(name)
    before = world.marks(wecom)
    # A fresh minute of the local clock with three mark_tag calls to spend.
    wecom.advance(60)
    wecom.set_quota(world.MARK_TAG, 3)
    async with stack.syncing(sleep=blocked):
        # All eight in one transaction: one feed batch.
        await world.give(tagging, name, "vip", [m.member_id for m in members])
        await eventually(_set(stuck), "the round blocked by the quota")
    progress = await world.state(stack.db)
    assert progress.pending_end and 0 < progress.pending_done < len(members)
    wecom.set_quota(world.MARK_TAG, 10_000)
    async with stack.syncing():
        await eventually(world.holding(wecom, {m: {"VIP"} for m in members}, group), "every member in WeCom")
        await eventually(lambda: _batch_done(stack), "the batch ended")
    # Three marked before the worker died, the fourth refused (45009) then, so not applied: each
    # member marked exactly once.
    assert world.marks(wecom) - before == {m.external_userid: 1 for m in members}


def _set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return event.is_set()

    return probe


async def _batch_done(stack: Stack) -> bool:
    return (await world.state(stack.db)).pending_end == ""


async def test_resync_repairs_a_tag_removed_behind_memberops_back(stack: Stack) -> None:
    wecom, tagging = stack.wecom, stack.tagging
    name, group = await world.dimension(tagging, {"on": "On", "off": "Off"})
    kept, drifted = await world.customers(tagging, wecom, 2)
    await world.give(tagging, name, "on", [kept.member_id, drifted.member_id])
    async with stack.syncing():
        await stack.push(name)
        want = {kept: {"On"}, drifted: {"On"}}
        assert await world.holding(wecom, want, group)()
        # Staff take the tag off one customer and put another of the group on.
        on, off = wecom.tag_id(group, "On"), wecom.tag_id(group, "Off")
        assert on and off
        await wecom.staff_edit_tags(STAFF, drifted.external_userid, remove=[on], add=[off])
        assert world.held(wecom, drifted, group) == {"Off"}
        request_id = unique("resync")
        request = wecom_pb2.ResyncWeComRequest(request_id=request_id)
        started = await stack.journeys.ResyncWeCom(request, metadata=WECOM_PUSH)
        assert started.reconciliation.state == "running"
        done = await reconciled(stack, request_id)
        await eventually(world.holding(wecom, want, group), "the drift repaired")
    assert done.members_repaired >= 1 and done.members_checked >= 2
    again = await stack.journeys.ResyncWeCom(request, metadata=WECOM_PUSH)
    assert again.reconciliation == done
    # The module's sync: rounds, pulls, reads of message results, reconciliations, rounds lost with
    # their workers and done again (the replay test's `wecom_sync_reading_results`; its
    # `wecom_sync_rounds_lost_and_redone` was recorded before the `wecom-read-results` patch).
    handle = stack.env.client.get_workflow_handle(sync_client.workflow_id(world.TENANT))
    await keep_history(handle, "wecom_sync_reading_results")
