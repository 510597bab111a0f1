"""Dynamic audiences: membership follows facts and definition changes; the audience feed has each
entry and exit exactly once, in order, across maintainers.

The service's maintainer loop runs in the background; the tests wait for the feed to show what
they expect (a deadline, not a timing threshold), then let a few more rounds pass and check that
nothing else appeared.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime import outbox
from runtime.db import Database
from services.audience import dynamic
from services.audience.evaluation import Evaluator
from tests.audience.helpers import all_of, fact, in_batch, member, member_of, now, order, order_count
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad
from tests.tagging.facts_helpers import a_refund, record_refund, stamp
from tests.tagging.rule_builders import Op
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

ENTERED = audience_service_pb2.AUDIENCE_CHANGE_ENTERED
EXITED = audience_service_pb2.AUDIENCE_CHANGE_EXITED
QUIET_ROUNDS = 4


def bought(times: int = 1) -> audience_pb2.AudienceRule:
    return fact(order_count(), Op.OPERATOR_GE, times)


async def feed(stub: AudienceStub, audience_id: str) -> list[tuple[str, int]]:
    """Every (member, change) of one audience's feed, in feed order, paging with cursors."""
    changes: list[tuple[str, int]] = []
    cursor = ""
    while True:
        request = audience_service_pb2.ReadAudienceFeedRequest(
            after_cursor=cursor, limit=2, audience=f"audiences/{audience_id}"
        )
        page = await stub.ReadAudienceFeed(request, metadata=ACME)
        changes += [(e.member_id, e.change) for e in page.entries]
        if not page.entries:
            return changes
        cursor = page.next_cursor


async def settled_feed(
    stub: AudienceStub, db: Database, audience_id: str, expected: Sequence[tuple[str, int]]
) -> list[tuple[str, int]]:
    """The feed once it holds as many entries as expected and then a few whole rounds, run here
    (a round of the service's loop or of this maintainer, whichever holds the tenant), added
    nothing: what a round would still change would be on the feed by then."""

    async def enough() -> bool:
        return len(await feed(stub, audience_id)) >= len(expected)

    await eventually(enough, f"did {len(expected)} changes reach the feed")
    rounds = dynamic.Memberships(db, Evaluator(db), frozenset({TENANT_ACME}), now)
    done = 0

    async def quiet_rounds_run() -> bool:
        nonlocal done
        done += await rounds.maintain(TENANT_ACME) is not None
        return done >= QUIET_ROUNDS

    await eventually(quiet_rounds_run, f"did {QUIET_ROUNDS} rounds run", interval=0.01)
    return await feed(stub, audience_id)


async def create_dynamic(stub: AudienceStub, rule: audience_pb2.AudienceRule) -> str:
    audience = audience_pb2.Audience(audience_id=unique("dyn"), rule=rule, dynamic=True)
    created = await stub.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(audience=audience), metadata=ACME
    )
    assert created.dynamic
    return created.audience_id


async def test_members_enter_and_exit_as_their_facts_change(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    first, second = await member(tagging_stub, batch), await member(tagging_stub, batch)
    order_id = unique("o")
    await order(tagging_stub, first, 3, [("tea", 1_000)], order_id=order_id)
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    assert await settled_feed(audience_stub, db, audience_id, [(first, ENTERED)]) == [(first, ENTERED)]

    await order(tagging_stub, second, 1, [("tea", 2_000)])
    await record_refund(tagging_stub, a_refund(order_id, refund_time=stamp(now())))
    expected = [(first, ENTERED), (second, ENTERED), (first, EXITED)]
    got = await settled_feed(audience_stub, db, audience_id, expected)
    assert sorted(got[1:]) == sorted(expected[1:]) and got[0] == expected[0]


async def test_a_new_definition_or_a_delete_moves_members_once(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    once, twice = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await order(tagging_stub, once, 5, [("tea", 1_000)])
    for days in (5, 6):
        await order(tagging_stub, twice, days, [("tea", 1_000)])
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    assert sorted(await settled_feed(audience_stub, db, audience_id, [("", 0)] * 2)) == sorted(
        [(once, ENTERED), (twice, ENTERED)]
    )

    stricter = audience_pb2.Audience(
        audience_id=audience_id, rule=all_of(in_batch(batch), bought(2)), dynamic=True
    )
    await audience_stub.UpdateAudience(
        audience_service_pb2.UpdateAudienceRequest(audience=stricter), metadata=ACME
    )
    after_update = await settled_feed(audience_stub, db, audience_id, [("", 0)] * 3)
    assert after_update[2:] == [(once, EXITED)]

    await audience_stub.DeleteAudience(
        audience_service_pb2.DeleteAudienceRequest(name=f"audiences/{audience_id}"), metadata=ACME
    )
    after_delete = await settled_feed(audience_stub, db, audience_id, [("", 0)] * 4)
    assert after_delete[3:] == [(twice, EXITED)]


async def test_a_change_to_a_referenced_audience_moves_the_members_at_once(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """A dynamic audience's stored membership was evaluated with the audiences it references as they
    were; one of them changing makes it stale, as a change of its own would (not 15 minutes later)."""
    batch = unique("batch")
    once, twice = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await order(tagging_stub, once, 5, [("tea", 1_000)])
    for days in (5, 6):
        await order(tagging_stub, twice, days, [("tea", 1_000)])
    buyers = unique("buyers")
    await audience_stub.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=buyers, rule=bought())
        ),
        metadata=ACME,
    )
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), member_of(buyers)))
    assert sorted(await settled_feed(audience_stub, db, audience_id, [("", 0)] * 2)) == sorted(
        [(once, ENTERED), (twice, ENTERED)]
    )
    await audience_stub.UpdateAudience(
        audience_service_pb2.UpdateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=buyers, rule=bought(2))
        ),
        metadata=ACME,
    )
    assert (await settled_feed(audience_stub, db, audience_id, [("", 0)] * 3))[2:] == [(once, EXITED)]


async def test_a_second_maintainer_continues_without_repeating(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """As after a restart, or with another replica: the stored cursor and the per-tenant lock keep
    every change exactly once while both run."""
    batch = unique("batch")
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    other = dynamic.Memberships(db, Evaluator(db), frozenset({TENANT_ACME}), now)
    members = [await member(tagging_stub, batch) for _ in range(6)]

    async def rounds() -> None:
        for _ in range(20):
            await other.maintain(TENANT_ACME)
            await asyncio.sleep(0.05)

    async def shopping() -> None:
        for member_id in members:
            await order(tagging_stub, member_id, 1, [("tea", 500)])

    await asyncio.gather(rounds(), shopping())
    got = await settled_feed(audience_stub, db, audience_id, [("", 0)] * len(members))
    assert sorted(got) == sorted((m, ENTERED) for m in members)


async def test_dynamic_is_part_of_the_definition(audience_stub: AudienceStub) -> None:
    audience_id = await create_dynamic(audience_stub, in_batch(unique("batch")))
    got = await audience_stub.GetAudience(
        audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience_id}"), metadata=ACME
    )
    assert got.dynamic and got.version == 1
    static = audience_pb2.Audience(audience_id=audience_id, rule=got.rule, dynamic=False)
    updated = await audience_stub.UpdateAudience(
        audience_service_pb2.UpdateAudienceRequest(audience=static), metadata=ACME
    )
    assert not updated.dynamic and updated.version == 2


async def test_skip_to_end_starts_a_consumer_now_without_losing_what_follows(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    cursor = ""
    while True:  # the whole feed of the tenant, to its current end
        page = await audience_stub.ReadAudienceFeed(
            audience_service_pb2.ReadAudienceFeedRequest(after_cursor=cursor, limit=1000), metadata=ACME
        )
        if not page.entries:
            break
        cursor = page.next_cursor
    skipped = await audience_stub.ReadAudienceFeed(
        audience_service_pb2.ReadAudienceFeedRequest(skip_to_end=True, audience="audiences/x"), metadata=ACME
    )
    assert list(skipped.entries) == []
    end, skip = outbox.parse_cursor(cursor), outbox.parse_cursor(skipped.next_cursor)
    assert end is None or (skip is not None and skip >= end)
    batch = unique("batch")
    joiner = await member(tagging_stub, batch)
    audience_id = await create_dynamic(audience_stub, in_batch(batch))
    await settled_feed(audience_stub, db, audience_id, [(joiner, ENTERED)])
    page = await audience_stub.ReadAudienceFeed(
        audience_service_pb2.ReadAudienceFeedRequest(
            after_cursor=skipped.next_cursor, limit=1000, audience=f"audiences/{audience_id}"
        ),
        metadata=ACME,
    )
    assert [(e.member_id, e.change) for e in page.entries] == [(joiner, ENTERED)]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_cursor": "not-a-cursor"}, "after_cursor"),
        ({"limit": 5000}, "limit"),
        ({"limit": -1}, "limit"),
        ({"audience": "segments/x"}, "audience"),
    ],
)
async def test_bad_feed_reads_name_the_field(
    audience_stub: AudienceStub, request_fields: dict[str, Any], field: str
) -> None:
    await bad(
        audience_stub.ReadAudienceFeed(
            audience_service_pb2.ReadAudienceFeedRequest(**request_fields), metadata=ACME
        ),
        field,
    )


async def test_an_entry_happened_when_the_facts_that_moved_the_member_did(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """A member moved by an order paid months ago entered months ago (history, no news to a
    journey); one moved by an order paid now entered now (issue 19)."""
    batch = unique("batch")
    joined = stamp(now() - dt.timedelta(days=400))
    old, fresh = [await member(tagging_stub, batch, register_time=joined) for _ in range(2)]
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    assert await settled_feed(audience_stub, db, audience_id, []) == []
    await order(tagging_stub, old, 200, [("tea", 1_000)])
    before = now()
    await order(tagging_stub, fresh, 0, [("tea", 1_000)])
    await settled_feed(audience_stub, db, audience_id, [("", 0)] * 2)
    page = await audience_stub.ReadAudienceFeed(
        audience_service_pb2.ReadAudienceFeedRequest(audience=f"audiences/{audience_id}", limit=10),
        metadata=ACME,
    )
    happened = {e.member_id: e.occur_time.ToDatetime(tzinfo=dt.UTC) for e in page.entries}
    assert happened.keys() == {old, fresh}
    assert happened[old] < before - dt.timedelta(days=199)
    assert happened[fresh] >= before


async def entry_times(stub: AudienceStub, audience_id: str) -> dict[tuple[str, int], dt.datetime]:
    page = await stub.ReadAudienceFeed(
        audience_service_pb2.ReadAudienceFeedRequest(audience=f"audiences/{audience_id}", limit=100),
        metadata=ACME,
    )
    return {(e.member_id, e.change): e.occur_time.ToDatetime(tzinfo=dt.UTC) for e in page.entries}


async def test_a_new_definition_enters_members_when_their_latest_fact_happened(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """A new version that widens the rule finds members who qualified long ago: a member whose
    only order was paid 200 days ago entered then (no news to a journey); one whose order was paid
    just now entered now (review B item 2)."""
    batch = unique("batch")
    joined = stamp(now() - dt.timedelta(days=400))
    old, fresh = [await member(tagging_stub, batch, register_time=joined) for _ in range(2)]
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought(2)))
    await order(tagging_stub, old, 200, [("tea", 1_000)])
    before = now()
    await order(tagging_stub, fresh, 0, [("tea", 1_000)])
    assert await settled_feed(audience_stub, db, audience_id, []) == []
    widened = audience_pb2.Audience(
        audience_id=audience_id, rule=all_of(in_batch(batch), bought(1)), dynamic=True
    )
    await audience_stub.UpdateAudience(
        audience_service_pb2.UpdateAudienceRequest(audience=widened), metadata=ACME
    )
    await settled_feed(audience_stub, db, audience_id, [("", 0)] * 2)
    happened = await entry_times(audience_stub, audience_id)
    assert happened.keys() == {(old, ENTERED), (fresh, ENTERED)}
    assert happened[old, ENTERED] < before - dt.timedelta(days=199)
    assert before <= happened[fresh, ENTERED] <= now()


async def test_time_alone_moves_a_member_at_the_evaluations_as_of(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """The periodic whole evaluation of an unchanged audience finds moves time alone made ("an order
    in the last 30 days", 40 days on): they happen at its as_of, news to a journey."""
    batch = unique("batch")
    buyer = await member(tagging_stub, batch, register_time=stamp(now() - dt.timedelta(days=400)))
    audience_id = await create_dynamic(
        audience_stub, all_of(in_batch(batch), fact(order_count(30), Op.OPERATOR_GE, 1))
    )
    await order(tagging_stub, buyer, 20, [("tea", 1_000)])
    await settled_feed(audience_stub, db, audience_id, [(buyer, ENTERED)])
    later = now() + dt.timedelta(days=40)
    aged = dynamic.Memberships(db, Evaluator(db), frozenset({TENANT_ACME}), lambda: later)

    async def exited() -> bool:
        await aged.maintain(TENANT_ACME)
        return (buyer, EXITED) in await entry_times(audience_stub, audience_id)

    await eventually(exited, "did the member leave 40 days on")
    assert (await entry_times(audience_stub, audience_id))[buyer, EXITED] == later
