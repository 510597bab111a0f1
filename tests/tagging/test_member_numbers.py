"""Dense member numbers (migration 0024): every way a member is written gets one, keeps it, and an
erasure hands it to the pseudonym; audience reads it as the last column of tagging_read.members."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import app
from runtime.db import Database
from tests.conftest import TENANT_ACME, TENANT_UMBRELLA, unique
from tests.erasure_world import Person, create_person, erase
from tests.tagging.test_import import import_members, members
from tests.tagging.test_members import a_member, update, upsert

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def numbers(db: Database, tenant_id: str, member_ids: list[str]) -> dict[str, int]:
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT member_id, member_no FROM tagging_read.members WHERE member_id = ANY($1::text[])",
            member_ids,
        )
    return {row["member_id"]: row["member_no"] for row in rows}


async def drawn(db: Database) -> int:
    """The sequence's last number drawn (no test of the session writes members meanwhile)."""
    value: int = await db.pool.fetchval("SELECT last_value FROM tagging.member_numbers")
    return value


async def test_the_view_publishes_the_number_as_its_last_column(db: Database) -> None:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        columns = await conn.fetch(
            """SELECT column_name FROM information_schema.columns
               WHERE table_schema = 'tagging_read' AND table_name = 'members' ORDER BY ordinal_position"""
        )
    assert columns[-1]["column_name"] == "member_no"


async def test_upserts_number_new_members_once_and_keep_the_number(tagging_stub: Stub, db: Database) -> None:
    first, second = unique("num"), unique("num")
    await upsert(tagging_stub, a_member(first))
    await upsert(tagging_stub, a_member(second))
    given = await numbers(db, TENANT_ACME, [first, second])
    assert len(set(given.values())) == 2 and all(1 <= n < 2**32 for n in given.values())

    before = await drawn(db)
    await upsert(tagging_stub, a_member(first))  # the same content: nothing changes
    await upsert(tagging_stub, a_member(first, city="Ningbo"))
    await update(tagging_stub, a_member(second, level="gold"), "profile.level")
    # An existing member draws no number: a re-sync of every member must not spend them.
    assert await drawn(db) == before
    assert await numbers(db, TENANT_ACME, [first, second]) == given


async def test_imports_number_new_members_in_id_order_and_keep_existing_numbers(
    tagging_stub: Stub, db: Database
) -> None:
    prefix = unique("numimp")
    await import_members(tagging_stub, [members(prefix, 3)])
    ids = [m.member_id for m in members(prefix, 6)]
    old = await numbers(db, TENANT_ACME, ids[:3])

    before = await drawn(db)
    # The three old ones again (one changed), three new ones, in reverse order within the batch.
    batch = list(reversed(members(prefix, 6)))
    batch[-1].profile.city = "Suzhou"
    await import_members(tagging_stub, [batch])
    now = await numbers(db, TENANT_ACME, ids)
    assert {i: now[i] for i in ids[:3]} == old
    new = [now[i] for i in ids[3:]]
    assert new == sorted(new) and len(set(now.values())) == 6
    assert await drawn(db) - before == 3


async def test_the_pseudonym_keeps_the_member_number(
    tagging_stub: Stub,
    db: Database,
    tasks: app.RunningService,
    journeys: app.RunningService,
    audience: app.RunningService,
) -> None:
    """EraseMember calls every peer, so they run."""
    person = Person()
    await create_person(tagging_stub, person)
    held = await numbers(db, TENANT_UMBRELLA, [person.member_id])
    erased = await erase(tagging_stub, person.member_id, unique("req"))
    assert await numbers(db, TENANT_UMBRELLA, [person.member_id, erased.pseudonym]) == {
        erased.pseudonym: held[person.member_id]
    }
