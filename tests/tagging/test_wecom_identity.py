"""A member's WeCom identity (issue 24): the external_userid and the owning staff userid on the
contact, set by UpsertMember, UpdateMember and ImportMembers, one member's per tenant, found by
SearchMembers. (EraseMember clearing them: tests/tagging/test_erase_member.py and
tests/test_erasure_everywhere.py, whose person has both.)"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique
from tests.grpc_helpers import failure, field_violations
from tests.tagging.test_import import import_members
from tests.tagging.test_members import a_member, get, update, upsert

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def wecom_member(member_id: str, external: str, staff: str = "") -> member_pb2.Member:
    member = a_member(member_id)
    member.contact.wecom_external_userid = external
    member.contact.wecom_staff_userid = staff
    return member


def external_id() -> str:
    """An external_userid in WeCom's shape ("wm" and letters, digits, _ -) no other test uses."""
    return unique("wmA_1").replace("-", "_")


async def held_by(db: Database, external: str) -> list[str]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT member_id FROM tagging.members WHERE wecom_external_userid = $1 ORDER BY member_id",
            external,
        )
    return [row["member_id"] for row in rows]


async def test_the_identity_round_trips_and_finds_the_member(tagging_stub: Stub) -> None:
    member_id, external = unique(), external_id()
    stored = await upsert(tagging_stub, wecom_member(member_id, external, "zhang.wei@shop"))
    fetched = await get(tagging_stub, member_id)
    assert fetched == stored
    assert (fetched.contact.wecom_external_userid, fetched.contact.wecom_staff_userid) == (
        external,
        "zhang.wei@shop",
    )
    found = await tagging_stub.SearchMembers(
        tagging_service_pb2.SearchMembersRequest(query=f" {external} "), metadata=ACME
    )
    assert [m.member_id for m in found.members] == [member_id]
    assert found.members[0].contact.wecom_external_userid == external
    # Exact, not contained; and another tenant's search does not see it.
    partial = await tagging_stub.SearchMembers(
        tagging_service_pb2.SearchMembersRequest(query=external[:-1]), metadata=ACME
    )
    assert member_id not in [m.member_id for m in partial.members]
    elsewhere = await tagging_stub.SearchMembers(
        tagging_service_pb2.SearchMembersRequest(query=external), metadata=GLOBEX
    )
    assert list(elsewhere.members) == []


@pytest.mark.parametrize(
    ("external", "staff", "field"),
    [
        ("wm has space", "", "member.contact.wecom_external_userid"),
        ("w" * 65, "", "member.contact.wecom_external_userid"),
        ("wm.dotted", "", "member.contact.wecom_external_userid"),
        ("wmOk", "staff/slash", "member.contact.wecom_staff_userid"),
        ("wmOk", "s" * 65, "member.contact.wecom_staff_userid"),
        ("", "lonely.staff", "member.contact.wecom_staff_userid"),
    ],
    ids=["space", "too long", "dot", "staff slash", "staff too long", "staff without contact"],
)
async def test_bad_identities_are_refused_naming_the_field(
    tagging_stub: Stub, db: Database, external: str, staff: str, field: str
) -> None:
    member = wecom_member(unique(), external, staff)
    error = await failure(upsert(tagging_stub, member))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)
    batch = await failure(import_members(tagging_stub, [[a_member(unique()), member]]))
    assert batch.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"requests[0].members[1].{field.removeprefix('member.')}" in field_violations(batch)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        assert not await conn.fetchval(
            "SELECT count(*) FROM tagging.members WHERE member_id = $1", member.member_id
        )


async def test_update_sets_and_clears_the_identity_by_mask_path(tagging_stub: Stub) -> None:
    member_id, external = unique(), external_id()
    await upsert(tagging_stub, a_member(member_id))
    given = member_pb2.Member(
        member_id=member_id,
        contact=member_pb2.Contact(wecom_external_userid=external, wecom_staff_userid="li.na"),
    )
    both = await update(tagging_stub, given, "contact.wecom_external_userid", "contact.wecom_staff_userid")
    assert (both.contact.wecom_external_userid, both.contact.wecom_staff_userid, both.revision) == (
        external,
        "li.na",
        2,
    )
    assert both.profile.city == "Hangzhou"  # not the mask's
    # The staff member alone changes, checked against the stored contact (given has none).
    moved = await update(
        tagging_stub,
        member_pb2.Member(member_id=member_id, contact=member_pb2.Contact(wecom_staff_userid="wang.fang")),
        "contact.wecom_staff_userid",
    )
    assert (moved.contact.wecom_external_userid, moved.contact.wecom_staff_userid) == (external, "wang.fang")
    # Clearing the contact but keeping its owner is refused; clearing both is not.
    cleared = member_pb2.Member(member_id=member_id)
    error = await failure(update(tagging_stub, cleared, "contact.wecom_external_userid"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "member.contact.wecom_staff_userid" in field_violations(error)
    gone = await update(tagging_stub, cleared, "contact.wecom_external_userid", "contact.wecom_staff_userid")
    assert (gone.contact.wecom_external_userid, gone.contact.wecom_staff_userid) == ("", "")
    # A bad value is named whether or not the mask selects it.
    error = await failure(
        update(
            tagging_stub,
            member_pb2.Member(member_id=member_id, contact=member_pb2.Contact(wecom_external_userid="a b")),
            "contact.wecom_external_userid",
        )
    )
    assert "member.contact.wecom_external_userid" in field_violations(error)


async def test_an_external_contact_is_one_members(tagging_stub: Stub, db: Database) -> None:
    external = external_id()
    owner, other = unique(), unique()
    await upsert(tagging_stub, wecom_member(owner, external, "li.na"))
    error = await failure(upsert(tagging_stub, wecom_member(other, external)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "member.contact.wecom_external_userid" in (error.details() or "")
    assert f"members/{owner}" in (error.details() or "")
    await upsert(tagging_stub, a_member(other))
    error = await failure(
        update(
            tagging_stub,
            member_pb2.Member(member_id=other, contact=member_pb2.Contact(wecom_external_userid=external)),
            "contact.wecom_external_userid",
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await held_by(db, external) == [owner]
    # The same member again is no clash (nothing changes), and the id is free in another tenant.
    assert (await upsert(tagging_stub, wecom_member(owner, external, "li.na"))).revision == 1
    await tagging_stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=wecom_member(other, external)), metadata=GLOBEX
    )


async def test_concurrent_upserts_claiming_one_contact_leave_it_one_members(
    tagging_stub: Stub, db: Database
) -> None:
    external = external_id()
    claimants = [unique() for _ in range(8)]
    results = await asyncio.gather(
        *(upsert(tagging_stub, wecom_member(m, external)) for m in claimants), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, member_pb2.Member)]
    lost = [(m, r) for m, r in zip(claimants, results, strict=True) if not isinstance(r, member_pb2.Member)]
    assert len(won) == 1
    assert all(isinstance(r, grpc.aio.AioRpcError) for _, r in lost)
    # Two exclusion checks of one value made at once each wait for the other's row, and PostgreSQL
    # ends the deadlock by rolling one back: that loser hears ABORTED (retry), and its retry, alone,
    # ALREADY_EXISTS (seen once in a full run); nobody hears anything else.
    codes = {r.code() for _, r in lost if isinstance(r, grpc.aio.AioRpcError)}
    assert codes <= {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED}
    for member_id, refusal in lost:
        if isinstance(refusal, grpc.aio.AioRpcError) and refusal.code() == grpc.StatusCode.ABORTED:
            again = await failure(upsert(tagging_stub, wecom_member(member_id, external)))
            assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await held_by(db, external) == [won[0].member_id]


async def test_import_names_the_row_of_a_clash(tagging_stub: Stub, db: Database) -> None:
    taken, free = external_id(), external_id()
    owner = unique()
    await upsert(tagging_stub, wecom_member(owner, taken))
    # Twice in one batch: the batch's INVALID_ARGUMENT names the repeat.
    a, b, c = unique(), unique(), unique()
    twice = await failure(
        import_members(tagging_stub, [[wecom_member(a, free), a_member(b), wecom_member(c, free, "li.na")]])
    )
    assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[0].members[2].contact.wecom_external_userid" in field_violations(twice)
    # Another member's: ALREADY_EXISTS naming the batch's row and the holder; nothing of the batch is stored.
    error = await failure(
        import_members(
            tagging_stub,
            [[wecom_member(a, free)], [a_member(b), wecom_member(c, taken)]],
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "requests[1].members[1].contact.wecom_external_userid" in (error.details() or "")
    assert f"members/{owner}" in (error.details() or "")
    assert await held_by(db, taken) == [owner]
    assert await held_by(db, free) == [a]  # the first batch was stored before
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        assert not await conn.fetchval(
            "SELECT count(*) FROM tagging.members WHERE member_id = ANY($1::text[])", [b, c]
        )


async def test_import_may_move_contacts_between_its_members(tagging_stub: Stub, db: Database) -> None:
    """The rows are checked as the statement leaves them: A taking B's contact while B takes A's
    (or B's moving to a member new in the batch) is no clash."""
    first, second = external_id(), external_id()
    a, b, c = unique(), unique(), unique()
    await import_members(tagging_stub, [[wecom_member(a, first), wecom_member(b, second)]])
    await import_members(tagging_stub, [[wecom_member(a, second), wecom_member(b, first)]])
    assert (await held_by(db, first), await held_by(db, second)) == ([b], [a])
    await import_members(tagging_stub, [[a_member(a), wecom_member(c, second)]])
    assert await held_by(db, second) == [c]
