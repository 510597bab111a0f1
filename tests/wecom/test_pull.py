"""The pull, end to end: a staff member edits a customer's tags in the local WeCom, which sends the
real encrypted callback to the journeys service's endpoint; the pull activity (as the worker runs
it) turns it into the member's manual tags in the real tagging service."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tags_pb2
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from deploy.wecom_local import LocalWeCom
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import WECOM_PULL, unique
from tests.tagging.test_catalog import dimension
from tests.wecom.callbacks_world import (
    AES_KEY,
    CORP_ID,
    SECRET,
    TENANT,
    TOKEN,
    clear_resync,
    counters,
    manual_dimension,
    put_connector,
    serving_callbacks,
)
from tests.wecom.conftest import running_local_wecom
from workflows.wecom import tag_map_store
from workflows.wecom.pull import PullResult
from workflows.wecom.pull_activities import WeComPullActivities

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

STAFF = "zhangsan"
VALUES = ("vip", "wholesale", "complained")


@dataclasses.dataclass(frozen=True)
class World:
    wecom: LocalWeCom
    dimension: str
    # value -> WeCom tag id
    tags: dict[str, str]
    group_id: str


@pytest.fixture(scope="module")
async def world(
    tasks_settings: Settings, dev_server_env: WorkflowEnvironment, db: Database, tagging_stub: Stub
) -> AsyncIterator[World]:
    """The local WeCom with the tenant's corp, the endpoint as its callback URL, a MANUAL dimension
    pulled from WeCom whose group and tags exist there and are recorded as the sync records them."""
    async with (
        running_local_wecom(corp_id=CORP_ID, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY) as wecom,
        serving_callbacks(tasks_settings, dev_server_env, db) as url,
    ):
        wecom.set_callback_url(url)
        wecom.add_staff(STAFF)
        wecom.add_staff("lisi")
        name = dimension()
        await manual_dimension(tagging_stub, name, dict.fromkeys(VALUES, ""))
        group = wecom.corp.add_corp_tag({"group_name": name, "tag": [{"name": v} for v in VALUES]})
        group_id = group["tag_group"]["group_id"]
        tags = {tag["name"]: tag["id"] for tag in group["tag_group"]["tag"]}
        async with db.transaction(TENANT) as conn:
            await tag_map_store.save(
                conn,
                TENANT,
                [
                    tag_map_store.TagRow(name, tag_map_store.GROUP, group_id, "", name),
                    *(tag_map_store.TagRow(name, v, group_id, tags[v], v) for v in VALUES),
                ],
                dt.datetime.now(dt.UTC),
            )
        await put_connector(db, pull_dimensions=(name,))
        # Callbacks other tests of the tenant left are pulled first, so each test sees its own.
        while (await pull(db, tagging_stub, tasks_settings, wecom)).more:
            pass
        yield World(wecom, name, tags, group_id)


async def customer(stub: Stub, wecom: LocalWeCom, owner: str = STAFF) -> tuple[str, str]:
    """A member who is a WeCom customer of `owner` (their relationship's owner) and of lisi:
    (member id, external_userid)."""
    member_id, external_userid = unique("wc"), unique("wmext")
    wecom.add_customer(external_userid, follow_users=[owner, "lisi"])
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(
                member_id=member_id,
                contact=member_pb2.Contact(wecom_external_userid=external_userid, wecom_staff_userid=owner),
            )
        ),
        metadata=WECOM_PULL,
    )
    return member_id, external_userid


async def pull(db: Database, tagging_stub: Stub, settings: Settings, wecom: LocalWeCom) -> PullResult:
    """One pull, as the worker runs the activity."""
    activities = WeComPullActivities(db, tagging_stub, settings.token_for_tenant, wecom.url)
    result: PullResult = await ActivityEnvironment().run(activities.pull, TENANT)
    return result


async def operator_complaint(stub: Stub, world: World, member_id: str) -> None:
    """An operator tags the member in MemberOps (the push would take it to WeCom later)."""
    request = tagging_service_pb2.AddMemberTagsRequest(
        dimension=world.dimension,
        value="complained",
        member_ids=[member_id],
        operator="alice@ops",
        reason="called the hotline",
    )
    await stub.AddMemberTags(request, metadata=WECOM_PULL)


async def held(stub: Stub, member_id: str, name: str) -> list[tuple[str, str, str]]:
    """(value, set_by, reason) of the member's current values of `name`."""
    answer = await stub.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=WECOM_PULL
    )
    return sorted(
        (t.value, t.set_by, t.reason)
        for t in answer.tags
        if t.dimension == name and not t.HasField("valid_to")
    )


async def outcomes(db: Database, external_userid: str) -> list[str]:
    async with db.transaction(TENANT, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT outcome FROM journeys.wecom_callbacks WHERE external_userid = $1 ORDER BY id",
            external_userid,
        )
    return [row["outcome"] for row in rows]


async def test_a_tag_staff_set_in_wecom_becomes_the_members_manual_tag_and_its_removal_removes_it(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    member_id, external_userid = await customer(tagging_stub, world.wecom)
    _, _, pulled_before = await counters(db)

    sent = await world.wecom.staff_edit_tags(STAFF, external_userid, add=[world.tags["vip"]])
    assert sent is not None and (sent.status, sent.answer) == (200, "success")
    # WeCom's retry of the same callback is stored once.
    assert (await world.wecom.redeliver(sent)).status == 200
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert (result.processed, result.tags_pulled, result.resync_wanted) == (1, 1, False)
    assert await held(tagging_stub, member_id, world.dimension) == [("vip", STAFF, "wecom")]
    assert await outcomes(db, external_userid) == ["pulled"]

    await world.wecom.staff_edit_tags(
        STAFF, external_userid, add=[world.tags["wholesale"]], remove=[world.tags["vip"]]
    )
    assert (await pull(db, tagging_stub, settings, world.wecom)).tags_pulled == 2
    assert await held(tagging_stub, member_id, world.dimension) == [("wholesale", STAFF, "wecom")]
    history = await tagging_stub.ListTagChanges(
        tagging_service_pb2.ListTagChangesRequest(member=f"members/{member_id}", dimension=world.dimension),
        metadata=WECOM_PULL,
    )
    (ended,) = [c for c in history.changes if c.value == "vip"]
    assert (ended.removed_by, ended.removed_reason) == (STAFF, "wecom")
    assert (await counters(db))[2] == pulled_before + 3
    # Pulling again finds nothing waiting and changes nothing.
    assert await pull(db, tagging_stub, settings, world.wecom) == PullResult()


async def test_a_change_memberops_made_itself_comes_back_equal_and_writes_nothing(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    member_id, external_userid = await customer(tagging_stub, world.wecom)
    await operator_complaint(tagging_stub, world, member_id)
    # The push's mark_tag, and the callback WeCom may send for it (the worst case).
    world.wecom.corp.mark_tag(
        {"userid": STAFF, "external_userid": external_userid, "add_tag": [world.tags["complained"]]}
    )
    await world.wecom.send_event(
        {
            "Event": "change_external_contact",
            "ChangeType": "edit_external_contact",
            "UserID": STAFF,
            "ExternalUserID": external_userid,
        }
    )
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert (result.processed, result.tags_pulled) == (1, 0)
    assert await held(tagging_stub, member_id, world.dimension) == [
        ("complained", "alice@ops", "called the hotline")
    ]
    assert await outcomes(db, external_userid) == ["unchanged"]


async def test_another_staff_members_tags_do_not_move_the_owners_member(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    member_id, external_userid = await customer(tagging_stub, world.wecom)
    await world.wecom.staff_edit_tags("lisi", external_userid, add=[world.tags["vip"]])
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert (result.processed, result.tags_pulled) == (1, 0)
    assert await held(tagging_stub, member_id, world.dimension) == []
    assert await outcomes(db, external_userid) == ["other_staff"]


async def test_a_shuffle_or_an_unknown_change_asks_for_a_full_reconciliation(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    await world.wecom.send_event({"Event": "change_external_tag", "Id": "", "ChangeType": "shuffle"})
    result = await pull(db, tagging_stub, settings, world.wecom)
    assert (result.processed, result.resync_wanted) == (1, True)
    assert await clear_resync(db)

    await world.wecom.send_event(
        {"Event": "change_external_contact", "ChangeType": "a_change_added_later", "UserID": STAFF}
    )
    assert (await pull(db, tagging_stub, settings, world.wecom)).resync_wanted
    assert await clear_resync(db)


async def test_a_mapped_tag_deleted_in_wecom_is_forgotten_and_a_reconciliation_asked_for(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    # A value of its own, so the other tests' tags stay.
    tag_id, _ = await world.wecom.staff_add_tag(world.dimension, "seasonal")
    async with db.transaction(TENANT) as conn:
        row = tag_map_store.TagRow(world.dimension, "seasonal", world.group_id, tag_id, "seasonal")
        await tag_map_store.save(conn, TENANT, [row], dt.datetime.now(dt.UTC))
    assert (await pull(db, tagging_stub, settings, world.wecom)).resync_wanted is False  # a create

    await world.wecom.staff_delete_tag(tag_id)
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert (result.processed, result.resync_wanted) == (1, True)
    assert await clear_resync(db)
    async with db.transaction(TENANT, readonly=True) as conn:
        assert await tag_map_store.value_of(conn, tag_id) is None
        assert await tag_map_store.value_of(conn, world.tags["vip"]) == (world.dimension, "vip")


async def test_the_same_message_again_after_its_pull_is_pulled_again(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    """Two edits of one customer by one staff member within a second are one message (WeCom's
    event names no tags): the second must not be taken for a repeat of the first once that was
    pulled."""
    member_id, external_userid = await customer(tagging_stub, world.wecom)
    first = await world.wecom.staff_edit_tags(STAFF, external_userid, add=[world.tags["vip"]])
    assert first is not None
    await pull(db, tagging_stub, settings, world.wecom)
    assert await held(tagging_stub, member_id, world.dimension) == [("vip", STAFF, "wecom")]

    world.wecom.corp.staff_edit_tags(STAFF, external_userid, add=[], remove=[world.tags["vip"]])
    assert (await world.wecom.redeliver(first)).answer == "success"
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert (result.processed, result.tags_pulled) == (1, 1)
    assert await held(tagging_stub, member_id, world.dimension) == []
    assert await outcomes(db, external_userid) == ["pulled", "pulled"]


async def test_a_staff_edit_never_undoes_a_memberops_change_wecom_was_not_given(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    """The dimension is pulled only: an operator's change in MemberOps never reaches WeCom, and a
    later staff edit of the customer (of another tag, or of a remark) must leave it."""
    member_id, external_userid = await customer(tagging_stub, world.wecom)
    await world.wecom.staff_edit_tags(STAFF, external_userid, add=[world.tags["vip"]])
    await pull(db, tagging_stub, settings, world.wecom)
    await operator_complaint(tagging_stub, world, member_id)
    await tagging_stub.RemoveMemberTags(
        tagging_service_pb2.RemoveMemberTagsRequest(
            dimension=world.dimension,
            value="vip",
            member_ids=[member_id],
            operator="bob@ops",
            reason="lapsed",
        ),
        metadata=WECOM_PULL,
    )

    await world.wecom.staff_edit_tags(STAFF, external_userid, add=[world.tags["wholesale"]])
    result = await pull(db, tagging_stub, settings, world.wecom)

    assert result.tags_pulled == 1
    assert await held(tagging_stub, member_id, world.dimension) == [
        ("complained", "alice@ops", "called the hotline"),
        ("wholesale", STAFF, "wecom"),
    ]


async def test_a_pulled_dimension_is_offered_in_wecom_for_staff_to_choose(
    world: World, db: Database, tagging_stub: Stub, settings: Settings
) -> None:
    name = dimension()
    display = f"Care {name[-6:]}"
    await manual_dimension(
        tagging_stub,
        name,
        {"gold": "Gold care", "plain": "Plain care"},
        display_name=display,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
    )
    await put_connector(db, pull_dimensions=(world.dimension, name))
    try:
        # No callback waits: the pull offers the dimension anyway.
        assert await pull(db, tagging_stub, settings, world.wecom) == PullResult()
        gold = world.wecom.tag_id(display, "Gold care")
        assert gold is not None and world.wecom.tag_id(display, "Plain care") is not None
        member_id, external_userid = await customer(tagging_stub, world.wecom)

        await world.wecom.staff_edit_tags(STAFF, external_userid, add=[gold])
        assert (await pull(db, tagging_stub, settings, world.wecom)).tags_pulled == 1

        assert await held(tagging_stub, member_id, name) == [("gold", STAFF, "wecom")]
        # Offered once: a later pull asks WeCom nothing more about the library.
        created = len(world.wecom.calls("externalcontact/add_corp_tag"))
        await pull(db, tagging_stub, settings, world.wecom)
        assert len(world.wecom.calls("externalcontact/add_corp_tag")) == created
    finally:
        await put_connector(db, pull_dimensions=(world.dimension,))
