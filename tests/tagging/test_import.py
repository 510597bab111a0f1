"""ImportMembers: batches stored whole with UpsertMember's rules, so a re-sent stream changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.type import date_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tags_pb2

from runtime.db import Database
from services.tagging import member_store
from services.tagging.domain import FeedKind
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from tests.grpc_helpers import field_violations
from tests.tagging.rule_builders import ALWAYS, Field, Op, cond, field
from tests.tagging.test_catalog import create, dimension
from tests.tagging.test_member_tags import tags_of
from tests.tagging.test_members import a_member, get, upsert

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

CITIES = ("Hangzhou", "Ningbo", "Shanghai", "Chengdu")


def members(prefix: str, count: int, start: int = 0) -> list[member_pb2.Member]:
    """`count` members with ids `{prefix}-{n}` and some variety in profile and attributes."""
    batch = []
    for n in range(start, start + count):
        member = member_pb2.Member(
            member_id=f"{prefix}-{n:05d}",
            profile=member_pb2.Profile(
                gender=member_pb2.GENDER_FEMALE if n % 2 else member_pb2.GENDER_MALE,
                city=CITIES[n % len(CITIES)],
                birthday=date_pb2.Date(year=1970 + n % 40, month=1 + n % 12, day=1 + n % 28),
            ),
        )
        member.attributes.update({"n": n, "vip": n % 7 == 0})
        batch.append(member)
    return batch


async def requests_of(batches: Sequence[Sequence[member_pb2.Member]]) -> AsyncIterator[Any]:
    for batch in batches:
        yield tagging_service_pb2.ImportMembersRequest(members=batch)


async def import_members(
    stub: Stub, batches: Sequence[Sequence[member_pb2.Member]], metadata: Any = ACME
) -> tagging_service_pb2.ImportMembersResponse:
    return await stub.ImportMembers(requests_of(batches), metadata=metadata, timeout=120)


async def import_error(stub: Stub, batches: Sequence[Sequence[member_pb2.Member]]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await import_members(stub, batches)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


async def stored(db: Database, tenant_id: str, prefix: str) -> dict[str, tuple[int, Any]]:
    """member_id -> (revision, update_time) of the members whose id starts with `prefix`."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT member_id, revision, update_time FROM tagging.members WHERE starts_with(member_id, $1)",
            prefix,
        )
    return {r["member_id"]: (r["revision"], r["update_time"]) for r in rows}


async def member_changes(db: Database, tenant_id: str, prefix: str) -> list[tuple[str, int]]:
    """(member_id, revision) of the MEMBER_CHANGED feed entries of those members, in feed order."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, (payload->>'revision')::int AS revision FROM tagging.feed
               WHERE kind = 1 AND starts_with(member_id, $1) ORDER BY txid, seq""",
            prefix,
        )
    return [(r["member_id"], r["revision"]) for r in rows]


async def test_twenty_thousand_members_then_a_resend_changes_nothing(
    tagging_stub: Stub, db: Database
) -> None:
    # In globex: the shared acme tenant stays small for the suite's full recomputes.
    prefix = unique("imp")
    batches = [members(prefix, 10_000), members(prefix, 9_000, 10_000), members(prefix, 1_000, 19_000)]

    reply = await import_members(tagging_stub, batches, GLOBEX)
    assert (reply.received_count, reply.changed_count) == (20_000, 20_000)
    first = await stored(db, TENANT_GLOBEX, prefix)
    assert len(first) == 20_000
    assert {revision for revision, _ in first.values()} == {1}
    changes = await member_changes(db, TENANT_GLOBEX, prefix)
    assert sorted(changes) == sorted((member_id, 1) for member_id in first)

    again = await import_members(tagging_stub, batches, GLOBEX)
    assert (again.received_count, again.changed_count) == (20_000, 0)
    assert await stored(db, TENANT_GLOBEX, prefix) == first  # revisions and update times untouched
    assert await member_changes(db, TENANT_GLOBEX, prefix) == changes

    changed = batches[1][123]
    changed.profile.city = "Suzhou"
    third = await import_members(tagging_stub, batches, GLOBEX)
    assert (third.received_count, third.changed_count) == (20_000, 1)
    after = await stored(db, TENANT_GLOBEX, prefix)
    assert after.pop(changed.member_id)[0] == 2
    assert after == {k: v for k, v in first.items() if k != changed.member_id}
    assert await member_changes(db, TENANT_GLOBEX, prefix) == [*changes, (changed.member_id, 2)]


async def test_import_and_upsert_store_members_alike(tagging_stub: Stub) -> None:
    """The same content through either RPC is the same member: the other one then changes nothing."""
    full = a_member(unique(), nickname="Lin", level="gold")
    full.contact.CopyFrom(
        member_pb2.Contact(
            phone="+8613800000000",
            email="lin@example.com",
            preferred_channel=member_pb2.CHANNEL_WECOM,
            opted_out_channels=[member_pb2.CHANNEL_SMS, member_pb2.CHANNEL_EMAIL],
            time_zone="Asia/Shanghai",
        )
    )
    upserted_first = a_member(unique())
    await upsert(tagging_stub, upserted_first)

    reply = await import_members(tagging_stub, [[full, upserted_first]])
    assert reply.changed_count == 1
    imported = await get(tagging_stub, full.member_id)
    assert (imported.revision, imported.contact, imported.profile) == (1, full.contact, full.profile)
    assert dict(imported.attributes) == dict(full.attributes)
    assert await upsert(tagging_stub, full) == imported  # unchanged: same revision and update time

    full.attributes.update({"children": 3})
    assert (await import_members(tagging_stub, [[full]])).changed_count == 1
    assert (await get(tagging_stub, full.member_id)).revision == 2


async def test_changed_members_get_their_real_time_tags_at_once(tagging_stub: Stub) -> None:
    name = dimension()
    await create(
        tagging_stub,
        tags_pb2.TagDefinition(
            dimension=name,
            category=tags_pb2.TAG_CATEGORY_CROWD,
            kind=tags_pb2.TAG_KIND_FACT,
            refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME,
            cardinality=tags_pb2.CARDINALITY_SINGLE,
            values=[
                tags_pb2.TagValue(
                    value="hangzhou", rule=cond(field(Field.PROFILE_FIELD_CITY), Op.OPERATOR_EQ, "Hangzhou")
                ),
                tags_pb2.TagValue(value="elsewhere", rule=ALWAYS),
            ],
        ),
    )
    batch = members(unique("rt"), 4)  # cities: Hangzhou, Ningbo, Shanghai, Chengdu
    await import_members(tagging_stub, [batch])
    assert [await tags_of(tagging_stub, m.member_id, name) for m in batch] == [
        ["hangzhou"],
        ["elsewhere"],
        ["elsewhere"],
        ["elsewhere"],
    ]
    batch[1].profile.city = "Hangzhou"
    await import_members(tagging_stub, [batch])
    assert await tags_of(tagging_stub, batch[1].member_id, name) == ["hangzhou"]


async def marks(db: Database, tenant_id: str, member_id: str) -> list[tuple[int, bool]]:
    """(kind, backfilled) of the member's feed entries, in feed order."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT kind, coalesce((payload->>'backfilled')::boolean, false) AS backfilled
               FROM tagging.feed WHERE member_id = $1 ORDER BY txid, seq""",
            member_id,
        )
    return [(r["kind"], r["backfilled"]) for r in rows]


async def test_imported_members_and_their_tag_changes_are_marked_history(
    tagging_stub: Stub, db: Database
) -> None:
    """An import loads the shop's existing members: their entries and the tag changes their refresh
    makes are backfilled, so nothing greets them as news (decision 122); an upsert's are not."""
    (imported, upserted) = members(unique("hist"), 2)
    await import_members(tagging_stub, [[imported]])
    await upsert(tagging_stub, upserted)
    changed, tag_changed = int(FeedKind.MEMBER_CHANGED), int(FeedKind.TAG_CHANGED)
    imported_marks = await marks(db, TENANT_ACME, imported.member_id)
    upserted_marks = await marks(db, TENANT_ACME, upserted.member_id)
    # Both get their entry and profile tags (gender, city tier...); only the import's are marked.
    assert imported_marks[0] == (changed, True) and (tag_changed, True) in imported_marks
    assert {marked for _, marked in imported_marks} == {True}
    assert upserted_marks[0] == (changed, False) and (tag_changed, False) in upserted_marks
    assert {marked for _, marked in upserted_marks} == {False}


@pytest.mark.parametrize(
    ("spoil", "bad_field"),
    [
        (lambda m: setattr(m, "member_id", "no spaces"), "member_id"),
        (lambda m: setattr(m.contact, "phone", "12345"), "contact.phone"),
        (lambda m: m.profile.birthday.CopyFrom(date_pb2.Date(month=5, day=17)), "profile.birthday"),
    ],
)
async def test_a_bad_member_rejects_its_batch_and_keeps_the_earlier_ones(
    tagging_stub: Stub, db: Database, spoil: Any, bad_field: str
) -> None:
    prefix = unique("bad")
    batches = [members(prefix, 3), members(prefix, 5, 3), members(prefix, 2, 8)]
    spoil(batches[1][4])
    error = await import_error(tagging_stub, batches)
    assert list(field_violations(error)) == [f"requests[1].members[4].{bad_field}"]
    assert sorted(await stored(db, TENANT_ACME, prefix)) == [m.member_id for m in batches[0]]


async def test_a_member_twice_in_a_batch_is_rejected(tagging_stub: Stub, db: Database) -> None:
    prefix = unique("dup")
    batch = members(prefix, 3)
    batch.append(members(prefix, 1, 1)[0])
    batch[3].profile.city = "Xiamen"  # even with other content: which one would win?
    error = await import_error(tagging_stub, [batch])
    assert list(field_violations(error)) == ["requests[0].members[3].member_id"]
    assert await stored(db, TENANT_ACME, prefix) == {}


async def test_an_empty_or_oversized_batch_is_rejected(tagging_stub: Stub, db: Database) -> None:
    prefix = unique("size")
    error = await import_error(tagging_stub, [members(prefix, 2), []])
    assert list(field_violations(error)) == ["requests[1].members"]
    assert len(await stored(db, TENANT_ACME, prefix)) == 2

    error = await import_error(tagging_stub, [members(prefix, 10_001, 100)])
    assert list(field_violations(error)) == ["requests[0].members"]
    assert len(await stored(db, TENANT_ACME, prefix)) == 2


@pytest.mark.parametrize(
    "spoil",
    [
        lambda m: setattr(m.contact, "phone", "12345"),  # invalid in the domain
        lambda m: m.profile.birthday.CopyFrom(date_pb2.Date(month=5, day=17)),  # not even convertible
        lambda m: m.attributes.update({"k" * 190 + m.member_id: 1}),  # long field paths
    ],
)
async def test_many_bad_members_are_listed_as_far_as_trailers_allow(tagging_stub: Stub, spoil: Any) -> None:
    """Listing all 5,000 would overflow the trailers (RESOURCE_EXHAUSTED); the caller gets the first
    ones and how many more there are."""
    batch = members(unique("many"), 5_000)
    for member in batch:
        spoil(member)
    error = await import_error(tagging_stub, [batch])
    violations = field_violations(error)
    assert next(iter(violations)).startswith("requests[0].members[0].")
    assert violations["requests[0].members"].endswith("more violations not listed")


async def test_no_batches_store_nothing(tagging_stub: Stub) -> None:
    reply = await import_members(tagging_stub, [])
    assert (reply.received_count, reply.changed_count) == (0, 0)


async def test_two_identical_imports_at_once_store_each_member_once(tagging_stub: Stub, db: Database) -> None:
    prefix = unique("race")
    batches = [members(prefix, 2_000), members(prefix, 2_000, 2_000)]
    replies = await asyncio.gather(*(import_members(tagging_stub, batches) for _ in range(2)))
    assert [r.received_count for r in replies] == [4_000, 4_000]
    assert sum(r.changed_count for r in replies) == 4_000
    rows = await stored(db, TENANT_ACME, prefix)
    assert len(rows) == 4_000
    assert {revision for revision, _ in rows.values()} == {1}
    assert sorted(await member_changes(db, TENANT_ACME, prefix)) == sorted((m, 1) for m in rows)


async def test_a_batch_that_grows_the_members_table_has_it_analysed_first(db: Database) -> None:
    """The real-time refresh after a large import is planned on fresh statistics, not on those of
    the table before it grew."""

    async def analysed() -> object:
        return await db.pool.fetchval(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relid = 'tagging.members'::regclass"
        )

    before = await analysed()
    assert not await member_store.analyze_members_if_grown(db.pool, member_store.ANALYZE_AFTER_ROWS - 1)
    assert await analysed() == before
    assert await member_store.analyze_members_if_grown(db.pool, 10**9)
    assert await analysed() not in (None, before)
