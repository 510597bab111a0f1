"""EraseMemberData in the audience service: the member's snapshot rows (with their arm), dynamic
membership and audience feed entries move to the pseudonym in one transaction, nothing in the
schema names the member afterwards, a repeat changes nothing, duplicates racing have one effect,
and bad requests name their field."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime.db import Database
from services.audience import erasure_store
from tests.audience.helpers import all_of, create, in_batch, member, order
from tests.audience.test_dynamic import ENTERED, bought, create_dynamic, settled_feed
from tests.conftest import ACME, unique
from tests.erasure_helpers import member_tables, pseudonym, rows_naming, value
from tests.grpc_helpers import bad

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


async def erase(stub: AudienceStub, member_id: str, to: str) -> dict[str, int]:
    request = audience_service_pb2.EraseMemberDataRequest(member_id=member_id, pseudonym=to)
    return dict((await stub.EraseMemberData(request, metadata=ACME)).changed_rows)


async def snapshot_of(stub: AudienceStub, batch: str) -> audience_pb2.Snapshot:
    """A snapshot, split in two arms, of the members of `batch`."""
    audience = await create(stub, in_batch(batch))
    request = audience_service_pb2.CreateSnapshotRequest(
        audience=f"audiences/{audience.audience_id}",
        splits=[audience_pb2.SplitArm(name=name, share_percent=50) for name in ("a", "b")],
        request_id=unique("req"),
    )
    return await stub.CreateSnapshot(request, metadata=ACME)


async def arm(db: Database, snapshot: audience_pb2.Snapshot, member_id: str) -> int | None:
    found: int | None = await value(
        db,
        "SELECT arm FROM audience.snapshot_members WHERE snapshot_id = $1 AND member_id = $2",
        snapshot.name.removeprefix("snapshots/"),
        member_id,
    )
    return found


async def members_of(db: Database, snapshot: audience_pb2.Snapshot) -> int:
    counted: int = await value(
        db,
        "SELECT count(*) FROM audience.snapshot_members WHERE snapshot_id = $1",
        snapshot.name.removeprefix("snapshots/"),
    )
    return counted


async def test_snapshots_membership_and_feed_move_to_the_pseudonym(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    buyer, other = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await order(tagging_stub, buyer, 3, [("tea", 1_000)])
    dynamic = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    assert await settled_feed(audience_stub, db, dynamic, [(buyer, ENTERED)]) == [(buyer, ENTERED)]
    snapshot = await snapshot_of(audience_stub, batch)
    armed = await arm(db, snapshot, buyer)
    assert armed is not None and snapshot.member_count == 2
    to = pseudonym()

    changed = await erase(audience_stub, buyer, to)

    assert changed == {"snapshot_members": 1, "dynamic_members": 1, "feed": 1}
    assert await rows_naming(db, "audience", buyer) == {}
    assert await arm(db, snapshot, to) == armed
    assert await members_of(db, snapshot) == 2
    assert await arm(db, snapshot, other) is not None
    moved = await value(
        db,
        "SELECT count(*) FROM audience.dynamic_members WHERE audience_id = $1 AND member_id = $2",
        dynamic,
        to,
    )
    assert moved == 1
    assert await erase(audience_stub, buyer, to) == {}


async def test_duplicate_erasures_racing_have_one_effect(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    erased = await member(tagging_stub, batch)
    snapshots = [await snapshot_of(audience_stub, batch) for _ in range(3)]
    to = pseudonym()

    answers = await asyncio.gather(*(erase(audience_stub, erased, to) for _ in range(5)))

    assert sorted(answers, key=len) == [{}] * 4 + [{"snapshot_members": 3}]
    assert await rows_naming(db, "audience", erased) == {}
    assert [await members_of(db, s) for s in snapshots] == [1, 1, 1]


async def test_a_member_with_nothing_here_changes_nothing(audience_stub: AudienceStub) -> None:
    assert await erase(audience_stub, unique("gone"), pseudonym()) == {}


async def test_bad_requests_name_their_field(audience_stub: AudienceStub) -> None:
    erasing = audience_service_pb2.EraseMemberDataRequest
    for request, field in (
        (erasing(pseudonym=pseudonym()), "member_id"),
        (erasing(member_id="a/b", pseudonym=pseudonym()), "member_id"),
        (erasing(member_id=unique()), "pseudonym"),
        (erasing(member_id=unique(), pseudonym="other-1"), "pseudonym"),
        (erasing(member_id="erased-x", pseudonym="erased-x"), "pseudonym"),
    ):
        await bad(audience_stub.EraseMemberData(request, metadata=ACME), field)


async def test_every_table_with_a_member_column_is_erased(audience_stub: AudienceStub, db: Database) -> None:
    """(The service's fixture: its schema is migrated.)"""
    tables = await member_tables(db, "audience")
    assert tables and tables <= {statement.table for statement in erasure_store.STATEMENTS}
