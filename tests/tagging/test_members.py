"""UpsertMember and GetMember end to end over gRPC against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.type import date_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique
from tests.grpc_helpers import failure, field_violations

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def a_member(member_id: str, **profile: Any) -> member_pb2.Member:
    attributes = struct_pb2.Struct()
    attributes.update({"vip": True, "source": "campaign-42", "children": 2})
    register_time = timestamp_pb2.Timestamp()
    register_time.FromDatetime(dt.datetime(2024, 3, 1, 8, 30, tzinfo=dt.UTC))
    fields: dict[str, Any] = {
        "gender": member_pb2.GENDER_FEMALE,
        "birthday": date_pb2.Date(year=1992, month=5, day=17),
        "city": "Hangzhou",
        "city_tier": member_pb2.CITY_TIER_NEW_1,
        "register_time": register_time,
        "register_channel": "mini_program",
    }
    fields.update(profile)
    return member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(**fields), attributes=attributes)


async def upsert(stub: Stub, member: member_pb2.Member) -> member_pb2.Member:
    return await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)


async def get(stub: Stub, member_id: str) -> member_pb2.Member:
    return await stub.GetMember(
        tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"), metadata=ACME
    )


async def test_upsert_then_get_returns_what_was_stored(tagging_stub: Stub) -> None:
    member_id = unique()
    created = await upsert(tagging_stub, a_member(member_id))
    fetched = await get(tagging_stub, member_id)

    assert fetched == created
    assert fetched.name == f"members/{member_id}"
    assert fetched.profile.city == "Hangzhou"
    assert fetched.profile.city_tier == member_pb2.CITY_TIER_NEW_1
    assert fetched.profile.birthday == date_pb2.Date(year=1992, month=5, day=17)
    assert fetched.profile.register_time.ToDatetime(dt.UTC) == dt.datetime(2024, 3, 1, 8, 30, tzinfo=dt.UTC)
    assert dict(fetched.attributes) == {"vip": True, "source": "campaign-42", "children": 2.0}
    assert fetched.revision == 1
    assert fetched.create_time.seconds > 0


async def test_reach_data_round_trips(tagging_stub: Stub) -> None:
    member = a_member(unique(), nickname="Lin", level="gold")
    member.contact.CopyFrom(
        member_pb2.Contact(
            phone="+8613800000000",
            email="lin@example.com",
            preferred_channel=member_pb2.CHANNEL_WECOM,
            opted_out_channels=[member_pb2.CHANNEL_SMS, member_pb2.CHANNEL_EMAIL],
            time_zone="Asia/Shanghai",
        )
    )
    stored = await upsert(tagging_stub, member)
    fetched = await get(tagging_stub, member.member_id)
    assert fetched == stored
    assert fetched.contact == member.contact
    assert (fetched.profile.nickname, fetched.profile.level) == ("Lin", "gold")


async def test_upsert_replaces_profile_and_counts_revisions(tagging_stub: Stub) -> None:
    member_id = unique()
    await upsert(tagging_stub, a_member(member_id))
    changed = await upsert(tagging_stub, a_member(member_id, city="Chengdu"))

    assert changed.profile.city == "Chengdu"
    assert changed.revision == 2
    assert (await get(tagging_stub, member_id)).profile.city == "Chengdu"


async def test_identical_upsert_changes_nothing(tagging_stub: Stub) -> None:
    member_id = unique()
    first = await upsert(tagging_stub, a_member(member_id))
    again = await upsert(tagging_stub, a_member(member_id))

    assert again.revision == first.revision == 1
    assert again.update_time == first.update_time


async def test_concurrent_duplicate_upserts_take_effect_once(tagging_stub: Stub, db: Database) -> None:
    member_id = unique()
    results = await asyncio.gather(*(upsert(tagging_stub, a_member(member_id)) for _ in range(32)))

    assert {r.revision for r in results} == {1}
    async with db.transaction(TENANT_ACME) as conn:
        rows = await conn.fetchval("SELECT count(*) FROM tagging.members WHERE member_id = $1", member_id)
    assert rows == 1


async def update(stub: Stub, member: member_pb2.Member, *paths: str) -> member_pb2.Member:
    request = tagging_service_pb2.UpdateMemberRequest(
        member=member, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    return await stub.UpdateMember(request, metadata=ACME)


async def test_update_changes_only_the_masked_fields(tagging_stub: Stub) -> None:
    member_id = unique()
    await upsert(tagging_stub, a_member(member_id, level="bronze"))
    # The message's other fields (an empty city, no attributes) are not the mask's and stay.
    only_level = member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(level="silver"))
    changed = await update(tagging_stub, only_level, "profile.level")
    assert (changed.profile.level, changed.profile.city, changed.revision) == ("silver", "Hangzhou", 2)
    tags = await tagging_stub.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=ACME
    )
    assert [t.value for t in tags.tags if t.dimension == "level"] == ["silver"]  # built in, real time
    assert dict(changed.attributes) == {"vip": True, "source": "campaign-42", "children": 2.0}
    # Copies of one update racing: one revision.
    copies = await asyncio.gather(*(update(tagging_stub, only_level, "profile.level") for _ in range(16)))
    assert {copy.revision for copy in copies} == {2}
    moved = member_pb2.Member(member_id=member_id, contact=member_pb2.Contact(email="lin@example.com"))
    moved.attributes.update({"vip": False})
    both = await update(tagging_stub, moved, "contact", "attributes")
    assert (both.contact.email, dict(both.attributes), both.profile.level) == (
        "lin@example.com",
        {"vip": False},
        "silver",
    )
    assert await get(tagging_stub, member_id) == both


async def test_an_upsert_without_a_level_keeps_the_stored_one(tagging_stub: Stub) -> None:
    """The level may be the tasks service's (written with UpdateMember): a backend replacing the
    rest of the member without it leaves it, by UpsertMember and by ImportMembers."""
    member_id = unique()
    await upsert(tagging_stub, a_member(member_id, level="gold"))
    same = await upsert(tagging_stub, a_member(member_id))
    assert (same.profile.level, same.revision) == ("gold", 1)  # nothing else changed either
    moved = await upsert(tagging_stub, a_member(member_id, city="Ningbo"))
    assert (moved.profile.level, moved.profile.city, moved.revision) == ("gold", "Ningbo", 2)

    async def batches() -> Any:
        yield tagging_service_pb2.ImportMembersRequest(members=[a_member(member_id, city="Suzhou")])

    await tagging_stub.ImportMembers(batches(), metadata=ACME)
    imported = await get(tagging_stub, member_id)
    assert (imported.profile.level, imported.profile.city, imported.revision) == ("gold", "Suzhou", 3)
    assert (await upsert(tagging_stub, a_member(member_id, level="silver"))).profile.level == "silver"


async def test_update_refuses_bad_masks_and_unknown_members(tagging_stub: Stub) -> None:
    member_id = unique()
    await upsert(tagging_stub, a_member(member_id))
    member = member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(level="x" * 40))
    for paths, field in [
        ((), "update_mask.paths"),
        (("profile.shoe_size",), "update_mask.paths[0]"),
        (("profile.level", "revision"), "update_mask.paths[1]"),
        (("profile.level",), "member.profile.level"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await update(tagging_stub, member, *paths)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(tagging_stub, member_pb2.Member(member_id=unique()), "profile.level")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await get(tagging_stub, member_id)).revision == 1


async def test_get_unknown_member_is_not_found(tagging_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(tagging_stub, unique())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "name",
    ["", "m-1", "members/", "users/m-1", "members/has space", "members/" + "x" * 65],
)
async def test_get_with_bad_name_is_invalid_argument(tagging_stub: Stub, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.GetMember(tagging_service_pb2.GetMemberRequest(name=name), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in field_violations(caught.value)


def _future(days: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return stamp


def _at(year: int, month: int, day: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime(year, month, day, tzinfo=dt.UTC))
    return stamp


def _many_attributes(count: int) -> struct_pb2.Struct:
    attributes = struct_pb2.Struct()
    attributes.update({f"k{i}": i for i in range(count)})
    return attributes


def _attribute(key: str, value: Any) -> struct_pb2.Struct:
    attributes = struct_pb2.Struct()
    attributes.update({key: value})
    return attributes


BAD_MEMBERS: list[tuple[str, dict[str, Any], str]] = [
    ("empty id", {"member_id": ""}, "member.member_id"),
    ("id with space", {"member_id": "bad id"}, "member.member_id"),
    ("id too long", {"member_id": "x" * 65}, "member.member_id"),
    ("unknown gender", {"profile": {"gender": 9}}, "member.profile.gender"),
    ("unknown city tier", {"profile": {"city_tier": 42}}, "member.profile.city_tier"),
    (
        "month 13",
        {"profile": {"birthday": date_pb2.Date(year=1990, month=13, day=1)}},
        "member.profile.birthday",
    ),
    (
        "year-less birthday",
        {"profile": {"birthday": date_pb2.Date(month=5, day=1)}},
        "member.profile.birthday",
    ),
    (
        "born in 1850",
        {"profile": {"birthday": date_pb2.Date(year=1850, month=1, day=1)}},
        "member.profile.birthday",
    ),
    (
        "born tomorrow",
        {"profile": {"birthday": date_pb2.Date(year=2999, month=1, day=1)}},
        "member.profile.birthday",
    ),
    ("registered next week", {"profile": {"register_time": _future(7)}}, "member.profile.register_time"),
    ("city too long", {"profile": {"city": "c" * 65}}, "member.profile.city"),
    ("channel too long", {"profile": {"register_channel": "c" * 65}}, "member.profile.register_channel"),
    ("too many attributes", {"attributes": _many_attributes(65)}, "member.attributes"),
    ("attribute key", {"attributes": _attribute("bad key!", 1)}, "member.attributes.bad key!"),
    ("attributes too big", {"attributes": _attribute("blob", "x" * 9000)}, "member.attributes"),
    ("nickname too long", {"profile": {"nickname": "n" * 65}}, "member.profile.nickname"),
    ("level too long", {"profile": {"level": "l" * 33}}, "member.profile.level"),
    ("phone not E.164", {"contact": {"phone": "13800000000"}}, "member.contact.phone"),
    ("email without domain", {"contact": {"email": "someone@"}}, "member.contact.email"),
    ("unknown time zone", {"contact": {"time_zone": "Mars/Olympus"}}, "member.contact.time_zone"),
    ("unknown channel", {"contact": {"preferred_channel": 9}}, "member.contact.preferred_channel"),
    ("opt out of nothing", {"contact": {"opted_out_channels": [0]}}, "member.contact.opted_out_channels[0]"),
    (
        "opt out of no channel there is",
        {"contact": {"opted_out_channels": [1, 999]}},
        "member.contact.opted_out_channels[1]",
    ),
    ("registered in year 1", {"profile": {"register_time": _at(1, 1, 1)}}, "member.profile.register_time"),
    ("registered in 1999", {"profile": {"register_time": _at(1999, 12, 31)}}, "member.profile.register_time"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_MEMBERS, ids=[c[0] for c in BAD_MEMBERS])
async def test_bad_member_is_rejected_naming_the_field_and_writes_nothing(
    tagging_stub: Stub, db: Database, case: str, change: dict[str, Any], field: str
) -> None:
    member = a_member(unique())
    if "member_id" in change:
        member.member_id = change["member_id"]
    for name, value in change.get("profile", {}).items():
        target = getattr(member.profile, name)
        if hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(member.profile, name, value)
    for name, value in change.get("contact", {}).items():
        if isinstance(value, list):
            getattr(member.contact, name).extend(value)
        else:
            setattr(member.contact, name, value)
    if "attributes" in change:
        member.attributes.Clear()
        member.attributes.CopyFrom(change["attributes"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upsert(tagging_stub, member)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert field in violations, violations
    assert field in (caught.value.details() or "")
    async with db.transaction(TENANT_ACME) as conn:
        written = await conn.fetchval(
            "SELECT count(*) FROM tagging.members WHERE member_id = $1", member.member_id
        )
    assert written == 0


async def test_every_violation_is_reported_at_once(tagging_stub: Stub) -> None:
    member = a_member("bad id", gender=7, city="c" * 80)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upsert(tagging_stub, member)
    assert set(field_violations(caught.value)) == {
        "member.member_id",
        "member.profile.gender",
        "member.profile.city",
    }


async def test_missing_member_is_invalid_argument(tagging_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"member": "is required"}


async def batch_get(
    stub: Stub, names: list[str], allow_missing: bool = False, metadata: Any = ACME
) -> list[member_pb2.Member]:
    request = tagging_service_pb2.BatchGetMembersRequest(names=names, allow_missing=allow_missing)
    return list((await stub.BatchGetMembers(request, metadata=metadata)).members)


async def test_batch_get_returns_members_in_the_order_asked(tagging_stub: Stub) -> None:
    ids = [unique() for _ in range(5)]
    stored = {member_id: await upsert(tagging_stub, a_member(member_id)) for member_id in ids}
    asked = [ids[3], ids[0], ids[4], ids[1], ids[2]]
    got = await batch_get(tagging_stub, [f"members/{m}" for m in asked])
    assert got == [stored[m] for m in asked]

    missing = unique()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch_get(tagging_stub, [f"members/{ids[0]}", f"members/{missing}"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and missing in str(caught.value.details())
    lenient = await batch_get(tagging_stub, [f"members/{missing}", f"members/{ids[1]}"], allow_missing=True)
    assert lenient == [stored[ids[1]]]
    # Another tenant's members are unknown here.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch_get(tagging_stub, [f"members/{ids[0]}"], metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_batch_get_names_each_bad_name(tagging_stub: Stub) -> None:
    member_id = unique()
    for names, path in (
        ([], "names"),
        ([f"members/{member_id}", f"members/{member_id}"], "names[1]"),
        ([f"members/{member_id}", "member_id"], "names[1]"),
        ([f"members/{member_id}", "members/bad id"], "names[1]"),
        ([f"members/{n}" for n in range(10_001)], "names"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await batch_get(tagging_stub, names)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert path in field_violations(caught.value), (names[:3], field_violations(caught.value))


async def test_batch_get_returns_only_the_masked_fields(tagging_stub: Stub) -> None:
    member_id = unique()
    message = a_member(member_id, nickname="Mei", level="gold")
    message.contact.CopyFrom(
        member_pb2.Contact(
            phone="+8613800000001", preferred_channel=member_pb2.CHANNEL_SMS, time_zone="Asia/Shanghai"
        )
    )
    stored = await upsert(tagging_stub, message)

    async def masked(*paths: str) -> member_pb2.Member:
        request = tagging_service_pb2.BatchGetMembersRequest(
            names=[f"members/{member_id}"], read_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        (found,) = (await tagging_stub.BatchGetMembers(request, metadata=ACME)).members
        return found

    lean = await masked("contact", "profile.nickname", "profile.level")
    assert lean == member_pb2.Member(
        name=stored.name,
        member_id=member_id,
        profile=member_pb2.Profile(nickname="Mei", level="gold"),
        contact=stored.contact,
    )
    full = await masked("profile", "create_time", "revision")
    assert (full.profile, full.create_time, full.revision) == (
        stored.profile,
        stored.create_time,
        stored.revision,
    )
    assert not full.HasField("contact") and not full.HasField("attributes")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await masked("contact", "profile.shoe_size")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "read_mask.paths[1]" in field_violations(caught.value)


@pytest.mark.parametrize(
    ("contact", "register_time", "field"),
    [
        (member_pb2.Contact(opted_out_channels=[999]), None, "contact.opted_out_channels[0]"),  # type: ignore[list-item]
        (None, _at(1, 1, 1), "profile.register_time"),
    ],
    ids=["channel 999", "year 1"],
)
async def test_update_and_import_refuse_what_upsert_refuses(
    tagging_stub: Stub,
    contact: member_pb2.Contact | None,
    register_time: timestamp_pb2.Timestamp | None,
    field: str,
) -> None:
    member = a_member(unique())
    await upsert(tagging_stub, member)
    if contact is not None:
        member.contact.CopyFrom(contact)
    if register_time is not None:
        member.profile.register_time.CopyFrom(register_time)
    mask = field_mask_pb2.FieldMask(paths=[field.partition("[")[0]])
    updated = await failure(
        tagging_stub.UpdateMember(
            tagging_service_pb2.UpdateMemberRequest(member=member, update_mask=mask), metadata=ACME
        )
    )
    assert updated.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"member.{field}" in field_violations(updated)
    imported = await failure(
        tagging_stub.ImportMembers(
            iter([tagging_service_pb2.ImportMembersRequest(members=[member])]), metadata=ACME
        )
    )
    assert imported.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"requests[0].members[0].{field}" in field_violations(imported)
