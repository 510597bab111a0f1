"""The bitmap index: a tenant's tag and profile member sets as bitmaps, equal to what the database
holds after a load and after each kind of change the feed carries.

Each test drives an index of its own over the suite's database (refreshed by hand); tagging's
sequencer positions the entries in the background, so a test waits (`eventually`) until the index
caught up with the feed equals the database. Other tests write to the same tenants, so a comparison
after changes is restricted to the test's own members; a load is compared whole, in one snapshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2
from prometheus_client import REGISTRY
from pyroaring import BitMap

from runtime import app
from runtime.db import Connection, Database
from runtime.feed_sequencer import FeedSequencer
from services.audience import bitmap_store, bitmaps, fact_windows
from services.audience.bitmaps import BitmapIndex, MemberIds, TenantBitmaps
from services.tagging import feed_store, member_store
from services.tagging.domain import FeedKind, MemberInput, Profile
from tests.audience.helpers import give, import_batch, manual_dimension, member
from tests.conftest import ACME, TENANT_ACME, TENANT_GLOBEX, TENANT_UMBRELLA, unique
from tests.erasure_world import Person, create_person, erase
from tests.tagging.facts_helpers import stamp
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

State = dict[str, Any]
_ENUM_NAMES = {
    "gender": {int(n): name for name, n in member_pb2.Gender.items()},
    "city_tier": {int(n): name for name, n in member_pb2.CityTier.items()},
}


async def database_state(conn: Connection, member_ids: Sequence[str] | None = None) -> State:
    """The members (all, or those of `member_ids`) as tagging's tables hold them, by number."""
    rows = await conn.fetch(
        """SELECT member_no, member_id, gender, city_tier, level, register_channel, city
           FROM tagging.members WHERE $1::text[] IS NULL OR member_id = ANY($1::text[])""",
        member_ids,
    )
    tags = await conn.fetch(
        """SELECT t.dimension, t.value, m.member_no FROM tagging.member_tags t
           JOIN tagging.members m ON m.tenant_id = t.tenant_id AND m.member_id = t.member_id
           WHERE t.valid_to IS NULL AND ($1::text[] IS NULL OR t.member_id = ANY($1::text[]))""",
        member_ids,
    )
    profile: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        for field in bitmaps.BUCKETED_FIELDS:
            value = row[field]
            text = _ENUM_NAMES[field][value] if field in _ENUM_NAMES else value
            profile.setdefault((field, text), set()).add(row["member_no"])
    held: dict[tuple[str, str], set[int]] = {}
    for row in tags:
        held.setdefault((row["dimension"], row["value"]), set()).add(row["member_no"])
    facts = await conn.fetch(
        """SELECT 'event' AS source, r.kind, r.category, r.last_time AS at, m.member_no
           FROM tagging.event_recency r JOIN tagging.members m USING (tenant_id, member_id)
           WHERE $1::text[] IS NULL OR r.member_id = ANY($1::text[])
           UNION ALL
           SELECT 'purchase', 0, r.category, r.last_paid_time, m.member_no
           FROM tagging.purchase_recency r JOIN tagging.members m USING (tenant_id, member_id)
           WHERE $1::text[] IS NULL OR r.member_id = ANY($1::text[])""",
        member_ids,
    )
    days: dict[tuple[str, int, str, int], set[int]] = {}
    for row in facts:
        key = (row["source"], row["kind"], row["category"], fact_windows.day_of(row["at"]))
        days.setdefault(key, set()).add(row["member_no"])
    return {
        "ids": {row["member_no"]: row["member_id"] for row in rows},
        "tags": {key: frozenset(numbers) for key, numbers in held.items()},
        "profile": {key: frozenset(numbers) for key, numbers in profile.items()},
        "facts": {key: frozenset(numbers) for key, numbers in days.items()},
    }


def indexed_state(held: TenantBitmaps, numbers: BitMap | None = None) -> State:
    """The same from the index (all its members, or those of `numbers`), asked as callers ask it."""
    within = held.universe if numbers is None else held.universe & numbers
    tags = {
        (dimension, value): frozenset(held.tag(dimension, [value]) & within)
        for dimension, values in held.dimensions().items()
        for value in values
    }
    profile: dict[tuple[str, str], frozenset[int]] = {}
    for field in held.bucketed_fields:
        for value in held.profile_values(field):
            profile[field, value] = frozenset(bucket(held, field, value) & within)
    days = {(*key, day): frozenset(numbers & within) for key, day, numbers in held.facts.days()}
    return {
        "ids": dict(zip(within, held.member_ids(within), strict=True)),
        "tags": {key: numbers for key, numbers in tags.items() if numbers},
        "profile": {key: numbers for key, numbers in profile.items() if numbers},
        "facts": {key: numbers for key, numbers in days.items() if numbers},
    }


BOOKS = fact_windows.Window(fact_windows.EVENTS, frozenset(), frozenset({"books"}), 30)


def bucket(held: TenantBitmaps, field: str, value: str) -> BitMap:
    found = held.profile(field, [value])
    assert found is not None, f"{field} is bucketed"
    return found


async def numbers_of(db: Database, tenant_id: str, member_ids: Sequence[str]) -> BitMap:
    async with db.transaction(tenant_id, readonly=True) as conn:
        return BitMap((await BitmapIndex(db, frozenset()).numbers(conn, member_ids)).values())


def equal_when_caught_up(
    index: BitmapIndex,
    db: Database,
    tenant_id: str,
    member_ids: Sequence[str],
    also: Callable[[TenantBitmaps], bool] = lambda _: True,
) -> Callable[[], Awaitable[State | None]]:
    """A probe for `eventually`: the index caught up, restricted to `member_ids`, equals the
    database, and `also` holds (what tagging's background refresh is still to write, when it has)."""

    async def probe() -> State | None:
        held = await index.caught_up(tenant_id)
        async with db.transaction(tenant_id, readonly=True) as conn:
            expected = await database_state(conn, member_ids)
        assert held is not None
        found = indexed_state(held, BitMap(expected["ids"]))
        done = found == expected and len(found["ids"]) == len(set(member_ids)) and also(held)
        return found if done else None

    return probe


async def test_a_load_equals_the_database_in_its_snapshot(tagging_stub: TaggingStub, db: Database) -> None:
    batch = unique("bmload")
    ids = await import_batch(tagging_stub, batch, 50)
    name = await manual_dimension(tagging_stub, ["red", "blue"])
    await give(tagging_stub, name, "red", ids[:20])
    await member(tagging_stub, batch, gender=member_pb2.GENDER_FEMALE, city="Ningbo", level="gold")
    async with db.transaction(TENANT_ACME, readonly=True, snapshot=True) as conn:
        held = await bitmaps.load(conn)
        expected = await database_state(conn)
    assert indexed_state(held) == expected
    assert held.tag(name, None) == held.tag(name, ["red"]) == await numbers_of(db, TENANT_ACME, ids[:20])
    # Memory: at least the ids themselves, and no more than a few hundred bytes a member.
    members, id_bytes = len(expected["ids"]), sum(len(i) for i in expected["ids"].values())
    assert id_bytes < held.memory_bytes() < 300 * members + 200 * (len(expected["tags"]) + 100)


async def test_the_index_follows_members_profiles_and_tags_and_leaves_other_tenants_alone(
    tagging_stub: TaggingStub, db: Database
) -> None:
    index = BitmapIndex(db, frozenset({TENANT_ACME, TENANT_GLOBEX}))
    await index.refresh(TENANT_ACME)
    await index.refresh(TENANT_GLOBEX)
    loaded = index.current(TENANT_ACME)
    assert loaded is not None and index.current(TENANT_GLOBEX) is not None

    batch = unique("bmfollow")
    name = await manual_dimension(tagging_stub, ["red", "blue"])
    # New members, one by one and imported, and tags added: each change is followed on its own
    # (the index catches up between them), so moving out of a bucket or a tag is exercised.
    first = await member(tagging_stub, batch, gender=member_pb2.GENDER_MALE, city="Hangzhou", level="silver")
    imported = await import_batch(tagging_stub, batch, 30)
    everyone = [first, *imported]
    await give(tagging_stub, name, "red", everyone[:20])
    await give(tagging_stub, name, "blue", everyone[10:25])
    (n_first,) = await numbers_of(db, TENANT_ACME, [first])
    await eventually(
        equal_when_caught_up(
            index,
            db,
            TENANT_ACME,
            everyone,
            lambda held: n_first in held.tag(name, ["red"]),
        ),
        "the new members and their tags followed",
    )
    hangzhou = bucket(loaded, "city", "Hangzhou")
    assert hangzhou is not None and n_first in hangzhou

    # Facts: events, an order and its refund move members between the recency summaries' days.
    now = dt.datetime.now(dt.UTC)
    await tagging_stub.RecordEvents(
        tagging_service_pb2.RecordEventsRequest(
            events=[
                facts_pb2.BehaviorEvent(
                    event_id=unique("ev"),
                    member_id=member_id,
                    kind=facts_pb2.EVENT_KIND_CART,
                    occur_time=stamp(now - dt.timedelta(days=days)),
                    sku="sku-1",
                    category="books",
                )
                for member_id, days in ((first, 3), (imported[0], 40), (imported[0], 2), (imported[1], 9))
            ]
        ),
        metadata=ACME,
    )
    order_id = unique("order")
    lines = [
        facts_pb2.OrderLine(line_id=str(i), sku=f"sku-{i}", category=c, quantity=1, unit_price_minor=500)
        for i, c in enumerate(["books", "shoes"])
    ]
    await tagging_stub.RecordOrder(
        tagging_service_pb2.RecordOrderRequest(
            order=facts_pb2.Order(
                order_id=order_id,
                member_id=first,
                paid_time=stamp(now - dt.timedelta(days=5)),
                amount_minor=1000,
                lines=lines,
            )
        ),
        metadata=ACME,
    )
    await eventually(
        equal_when_caught_up(
            index, db, TENANT_ACME, everyone, lambda held: bool(held.facts.split(BOOKS, now)[0])
        ),
        "the events and the order followed",
    )
    await tagging_stub.RecordRefund(
        tagging_service_pb2.RecordRefundRequest(
            refund=facts_pb2.Refund(
                refund_id=unique("refund"),
                order_id=order_id,
                refund_time=stamp(now - dt.timedelta(days=1)),
                amount_minor=500,
                lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
            )
        ),
        metadata=ACME,
    )
    shoes = fact_windows.Window(fact_windows.PURCHASES, frozenset(), frozenset({"shoes"}), 30)
    await eventually(
        equal_when_caught_up(
            index, db, TENANT_ACME, everyone, lambda held: n_first not in held.facts.split(shoes, now)[0]
        ),
        "the refund followed: the shoes returned, the books kept",
    )

    # Tags removed, a profile moved to other buckets.
    await tagging_stub.RemoveMemberTags(
        tagging_service_pb2.RemoveMemberTagsRequest(
            dimension=name, value="red", member_ids=everyone[:5], operator="ops@test", reason="test"
        ),
        metadata=ACME,
    )
    await member(
        tagging_stub,
        batch,
        member_id=first,
        gender=member_pb2.GENDER_FEMALE,
        city="Suzhou",
        level="gold",
        city_tier=member_pb2.CITY_TIER_2,
    )
    await eventually(
        equal_when_caught_up(
            index, db, TENANT_ACME, everyone, lambda held: n_first not in held.tag(name, ["red"])
        ),
        "the removals and the profile change followed",
    )

    held = index.current(TENANT_ACME)
    assert held is loaded  # followed, not loaded again
    numbers = await numbers_of(db, TENANT_ACME, everyone)
    assert held.tag(name, ["red"]) & numbers == await numbers_of(db, TENANT_ACME, everyone[5:20])
    assert held.tag(name, ["red", "blue"]) & numbers == await numbers_of(db, TENANT_ACME, everyone[5:25])
    assert n_first in bucket(held, "city", "Suzhou") and n_first not in bucket(held, "city", "Hangzhou")
    assert n_first in bucket(held, "gender", "GENDER_FEMALE") and held.profile("age", ["30"]) is None
    assert sorted(held.member_ids(numbers)) == sorted(everyone)

    # Another tenant's bitmaps hold none of these numbers.
    globex = index.current(TENANT_GLOBEX)
    assert globex is not None and not globex.universe & numbers
    assert all(not globex.tag(d, None) & numbers for d in globex.dimensions())

    # A restart (a new index, loaded) holds the same.
    restarted = BitmapIndex(db, frozenset({TENANT_ACME}))
    await restarted.refresh(TENANT_ACME)
    again = await restarted.caught_up(TENANT_ACME)
    followed = await index.caught_up(TENANT_ACME)
    assert again is not None and followed is not None
    assert indexed_state(again, numbers) == indexed_state(followed, numbers)
    assert restarted.memory_bytes() > 0 and index.memory_bytes() > restarted.memory_bytes() // 2
    assert (REGISTRY.get_sample_value("memberops_audience_bitmap_bytes", {"tenant": TENANT_ACME}) or 0) > 0


async def test_an_erased_member_is_followed_under_its_pseudonym(
    tagging_stub: TaggingStub,
    db: Database,
    tasks: app.RunningService,
    journeys: app.RunningService,
    audience: app.RunningService,
) -> None:
    """EraseMember calls every peer, so they run."""
    index = BitmapIndex(db, frozenset({TENANT_UMBRELLA}))
    person = Person()
    await create_person(tagging_stub, person)
    await index.refresh(TENANT_UMBRELLA)
    (number,) = await numbers_of(db, TENANT_UMBRELLA, [person.member_id])
    tagged = equal_when_caught_up(
        index, db, TENANT_UMBRELLA, [person.member_id], lambda held: number in held.tag("gender", None)
    )
    await eventually(tagged, "the member and its gender tag in")
    held = index.current(TENANT_UMBRELLA)
    assert held is not None and number in bucket(held, "gender", "GENDER_FEMALE")

    erased = await erase(tagging_stub, person.member_id, unique("req"))
    untagged = equal_when_caught_up(
        index, db, TENANT_UMBRELLA, [erased.pseudonym], lambda held: number not in held.tag("gender", None)
    )
    await eventually(untagged, "the pseudonym in, its gender tag ended")
    assert held.member_ids(BitMap([number])) == [erased.pseudonym]
    assert number not in bucket(held, "gender", "GENDER_FEMALE") and number not in held.tag("gender", None)
    assert number in bucket(held, "level", "gold")  # kept, as tagging keeps it


async def write_member(conn: Connection, tenant_id: str, member_id: str, dimension: str, value: str) -> int:
    """A member holding one tag, written as tagging writes them, with their feed entries."""
    await member_store.upsert_member(
        conn, tenant_id, MemberInput(member_id, Profile(city="Ningbo", level="gold"))
    )
    await feed_store.append_feed(conn, tenant_id, FeedKind.MEMBER_CHANGED, member_id, "", {"revision": 1})
    await conn.execute(
        """INSERT INTO tagging.member_tags (tenant_id, member_id, dimension, value, definition_version,
                                           source, exclusive, valid_from)
           VALUES ($1, $2, $3, $4, 1, 1, true, now())""",
        tenant_id,
        member_id,
        dimension,
        value,
    )
    change = {"dimension": dimension, "value": value, "change": "added"}
    await feed_store.append_feed(conn, tenant_id, FeedKind.TAG_CHANGED, member_id, dimension, change)
    number: int = await conn.fetchval("SELECT member_no FROM tagging.members WHERE member_id = $1", member_id)
    return number


async def test_a_count_sees_writes_committed_before_the_sequencer_gave_them_positions(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-your-writes: a tenant no service sequences, rounds run by hand, so the writes below
    are committed and still without a position when the index is asked."""
    tenant = f"bm{uuid.uuid4().hex[:12]}"
    sequencer = FeedSequencer(db, "tagging", frozenset({tenant}))
    async with db.transaction(tenant) as conn:
        first = await write_member(conn, tenant, "first", "tier", "a")
    await sequencer.sequence()
    index = BitmapIndex(db, frozenset({tenant}))
    await index.refresh(tenant)
    loaded = index.current(tenant)
    assert loaded is not None and loaded.tag("tier", ["a"]) == BitMap([first]) == loaded.universe
    position = loaded.position

    # Committed after the last round (it began after that round's snapshot).
    async with db.transaction(tenant) as conn:
        second = await write_member(conn, tenant, "second", "tier", "b")
    # Running while a round ran (in that round's snapshot as running), committed after it.
    async with db.transaction(tenant) as conn:
        third = await write_member(conn, tenant, "third", "tier", "b")
        await sequencer.sequence()  # positions `second`, not this one
        await conn.execute("SELECT 1")
    held = await index.caught_up(tenant)
    assert held is loaded and held.position != position
    assert held.tag("tier", ["b"]) == BitMap([second, third]) and len(held.universe) == 3
    async with db.transaction(tenant, readonly=True) as conn:
        waiting = await bitmap_store.unpositioned_changes(conn)
    assert {row["member_id"] for row in waiting} == {"third"}

    await sequencer.sequence()  # now `third` has its position: applied again, nothing changes
    again = await index.caught_up(tenant)
    assert again is not None and indexed_state(again) == indexed_state(held)
    assert held.member_ids(held.universe) == ["first", "second", "third"]

    # Too much missing for a caller to wait for: it is told to evaluate in SQL, the background
    # refresh catches up.
    monkeypatch.setattr(bitmaps, "CALL_ENTRIES", 3)
    async with db.transaction(tenant) as conn:
        await write_member(conn, tenant, "fourth", "tier", "c")
        await write_member(conn, tenant, "fifth", "tier", "c")
    assert await index.caught_up(tenant) is None  # four entries waiting for a position
    await sequencer.sequence()
    assert await index.caught_up(tenant) is None  # four entries after the position
    await index.refresh(tenant)
    done = await index.caught_up(tenant)
    assert done is not None and len(done.tag("tier", ["c"])) == 2 and len(done.universe) == 5


async def test_callers_never_wait_behind_a_refresh_and_share_one_catching_up(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"bm{uuid.uuid4().hex[:12]}"
    sequencer = FeedSequencer(db, "tagging", frozenset({tenant}))
    async with db.transaction(tenant) as conn:
        await write_member(conn, tenant, "first", "tier", "a")
    await sequencer.sequence()
    index = BitmapIndex(db, frozenset({tenant}))
    await index.refresh(tenant)
    # While a refresh applies entries (it holds the tenant's lock for up to PAGES_PER_REFRESH
    # pages), a caller is told to evaluate in SQL at once instead of waiting behind it.
    async with db.transaction(tenant) as conn:
        await write_member(conn, tenant, "second", "tier", "d")
    async with index._lock(tenant):
        assert await index.caught_up(tenant) is None
    caught = await index.caught_up(tenant)
    assert caught is not None and len(caught.universe) == 2

    # Callers arriving together share one catching up (the first alone, the rest the next one).
    calls = 0
    alone = index._caught_up_now

    async def counted(tenant_id: str) -> bitmaps.TenantBitmaps | None:
        nonlocal calls
        calls += 1
        return await alone(tenant_id)

    monkeypatch.setattr(index, "_caught_up_now", counted)
    answers = await asyncio.gather(*(index.caught_up(tenant) for _ in range(50)))
    assert calls == 2 and all(answer is caught for answer in answers)


def test_the_id_store_answers_small_and_large_selections_alike() -> None:
    ids = MemberIds()
    ids.extend(list(range(10, 330, 2)), [f"m{n}" for n in range(10, 330, 2)])
    for chosen in (BitMap([12, 14, 99, 328, 400]), BitMap(range(0, 400, 3))):
        assert ids.ids(chosen) == [f"m{n}" for n in chosen if n % 2 == 0 and 10 <= n < 330]


def test_the_id_store_keeps_numbers_new_renamed_late_and_folded() -> None:
    ids = MemberIds()
    ids.extend([3, 5, 9], ["m3", "m55", "z"])
    ids.extend([12], ["m12"])
    assert ids.ids(BitMap([3, 4, 5, 9, 12])) == ["m3", "m55", "z", "m12"]
    ids.put(5, "pseudonym")  # renamed
    ids.put(7, "late")  # committed out of number order
    for n in range(14, 200_000, 2):  # new members, appended
        ids.put(n, f"n{n}")
    assert ids.ids([5, 7, 12, 14, 199_998, 199_999]) == ["pseudonym", "late", "m12", "n14", "n199998"]
    for n in range(15, 15_000, 2):  # enough late ones to be folded into the arrays
        ids.put(n, f"late{n}")
    assert ids.get(7) == "late" and ids.get(5) == "pseudonym" and ids.get(14_999) == "late14999"
    assert ids.ids(BitMap([5, 7, 12, 14, 15, 199_998])) == [
        "pseudonym",
        "late",
        "m12",
        "n14",
        "late15",
        "n199998",
    ]
