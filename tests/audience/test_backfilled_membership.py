"""Back-filled facts (issue 20) still move dynamic audiences: membership describes the member's
state, history included. Orders loaded by ImportOrders, and the tag changes the import's refresh
makes, enter members into the audiences whose rules they make true; each entry is dated by the
facts' own time and marked `backfilled`, so no journey entered by the audience enrols on it, while
an entry a live order causes is news.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime.db import Database
from tests.audience.helpers import all_of, check, in_batch, member, now, tag
from tests.audience.test_dynamic import ENTERED, bought, create_dynamic, settled_feed
from tests.backfill_helpers import import_orders, paid_order, record
from tests.conftest import ACME, unique
from tests.tagging.test_catalog import create as create_dimension
from tests.tagging.test_catalog import dimension
from tests.waiting import eventually
from tests.workflows.test_event_time import buyer_dimension

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

DAY = dt.timedelta(days=1)


async def _entries(stub: AudienceStub, audience_id: str) -> dict[str, tuple[dt.datetime, bool]]:
    """Each member's entry into the audience: when its feed says it happened, and whether it is
    history an import loaded."""
    request = audience_service_pb2.ReadAudienceFeedRequest(limit=100, audience=f"audiences/{audience_id}")
    page = await stub.ReadAudienceFeed(request, metadata=ACME)
    return {
        e.member_id: (e.occur_time.ToDatetime(tzinfo=dt.UTC), e.backfilled)
        for e in page.entries
        if e.change == audience_service_pb2.AUDIENCE_CHANGE_ENTERED
    }


async def test_imported_orders_and_their_tag_changes_move_dynamic_audiences(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    buyers = dimension()
    await create_dimension(tagging_stub, buyer_dimension(buyers))
    twice, once = await member(tagging_stub, batch), await member(tagging_stub, batch)
    repeat = await create_dynamic(audience_stub, all_of(in_batch(batch), bought(2)))
    tagged = await create_dynamic(
        audience_stub, all_of(in_batch(batch), tag(buyers, audience_pb2.TAG_MATCH_ANY_OF, "buyer"))
    )
    # Evaluated whole while nobody qualifies: the entries below come from following the feed.
    assert await settled_feed(audience_stub, db, repeat, []) == []
    assert await settled_feed(audience_stub, db, tagged, []) == []

    paid = now().replace(microsecond=0)
    latest = paid - 30 * DAY
    await import_orders(
        tagging_stub,
        [
            paid_order(twice, 1_000, paid - 90 * DAY),
            paid_order(twice, 2_000, latest),
            paid_order(once, 3_000, paid - 60 * DAY),
        ],
        ACME,
    )
    assert await settled_feed(audience_stub, db, repeat, [(twice, ENTERED)]) == [(twice, ENTERED)]
    expected = [(once, ENTERED), (twice, ENTERED)]
    assert sorted(await settled_feed(audience_stub, db, tagged, expected)) == sorted(expected)

    # CheckMembership answers a dynamic audience from the membership index, which applies the
    # audience feed within a refresh of it: the entry above reaches it a moment later.
    async def answered() -> bool:
        return await check(audience_stub, repeat, twice) and not await check(audience_stub, repeat, once)

    await eventually(answered, "the membership index answering the entries")
    # Dated by the facts, not by the import, and marked as history.
    assert await _entries(audience_stub, repeat) == {twice: (latest, True)}

    # A live order makes `once` a repeat buyer: news.
    live = now().replace(microsecond=0)
    await record(tagging_stub, paid_order(once, 4_000, live))
    expected = [(twice, ENTERED), (once, ENTERED)]
    assert await settled_feed(audience_stub, db, repeat, expected) == expected
    assert await _entries(audience_stub, repeat) == {twice: (latest, True), once: (live, False)}
