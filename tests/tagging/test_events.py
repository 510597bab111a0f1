"""RecordEvents: batches, duplicates dropped by event id, a bad batch rejected whole."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2

from runtime.db import Database
from services.tagging.domain import FeedKind
from tests.conftest import TENANT_ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_event, new_member, record_events, stamp

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def stored_events(db: Database, member_id: str) -> int:
    async with db.transaction(TENANT_ACME) as conn:
        value: int = await conn.fetchval(
            "SELECT count(*) FROM tagging.events WHERE member_id = $1", member_id
        )
        return value


async def test_a_batch_is_recorded_and_a_retry_records_nothing(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    kinds = [facts_pb2.EVENT_KIND_VIEW, facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_FAVOURITE]
    batch = [an_event(member_id, kind=kind) for kind in kinds]
    first = await record_events(tagging_stub, batch)
    assert (first.recorded_count, first.duplicate_count) == (3, 0)
    again = await record_events(tagging_stub, batch)
    assert (again.recorded_count, again.duplicate_count) == (0, 3)
    assert await stored_events(db, member_id) == 3


async def test_an_event_id_twice_in_one_batch_counts_once(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    event = an_event(member_id)
    reply = await record_events(tagging_stub, [event, event, an_event(member_id)])
    assert (reply.recorded_count, reply.duplicate_count) == (2, 1)
    assert await stored_events(db, member_id) == 2


async def test_concurrent_duplicate_batches_take_effect_once(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    batch = [an_event(member_id) for _ in range(50)]
    replies = await asyncio.gather(*(record_events(tagging_stub, batch) for _ in range(8)))
    assert sum(r.recorded_count for r in replies) == 50
    assert sum(r.duplicate_count for r in replies) == 50 * 7
    assert await stored_events(db, member_id) == 50
    async with db.transaction(TENANT_ACME) as conn:
        feed_entries = await conn.fetchval(
            "SELECT count(*) FROM tagging.feed WHERE member_id = $1 AND kind = $2",
            member_id,
            int(FeedKind.EVENT_RECORDED),
        )
    assert feed_entries == 50


async def test_a_batch_with_an_unknown_member_is_rejected_whole(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    batch = [an_event(member_id), an_event(unique("ghost")), an_event(member_id)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_events(tagging_stub, batch)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].member_id" in field_violations(caught.value)
    assert await stored_events(db, member_id) == 0


BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("no kind", {"kind": facts_pb2.EVENT_KIND_UNSPECIFIED}, "events[0].kind"),
    ("unknown kind", {"kind": 99}, "events[0].kind"),
    ("no time", {"occur_time": None}, "events[0].occur_time"),
    (
        "next week",
        {"occur_time": stamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=7))},
        "events[0].occur_time",
    ),
    ("bad event id", {"event_id": ""}, "events[0].event_id"),
    ("long query", {"query": "q" * 257}, "events[0].query"),
    ("long category", {"category": "c" * 65}, "events[0].category"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
async def test_a_bad_event_is_rejected_naming_the_field(
    tagging_stub: Stub, db: Database, case: str, change: dict[str, Any], field: str
) -> None:
    member_id = await new_member(tagging_stub)
    event = an_event(member_id)
    for name, value in change.items():
        event.ClearField(name)  # type: ignore[arg-type]
        if value is None:
            continue
        if hasattr(value, "CopyFrom"):
            getattr(event, name).CopyFrom(value)
        else:
            setattr(event, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_events(tagging_stub, [event])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    assert await stored_events(db, member_id) == 0


@pytest.mark.parametrize("size", [0, 1001])
async def test_empty_and_oversized_batches_are_rejected(tagging_stub: Stub, size: int) -> None:
    member_id = await new_member(tagging_stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_events(tagging_stub, [an_event(member_id) for _ in range(size)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in field_violations(caught.value)


async def test_a_thousand_bad_events_still_get_invalid_argument(tagging_stub: Stub) -> None:
    """The violations are cut to fit the status trailers; unbounded, the client saw RESOURCE_EXHAUSTED."""
    events = [an_event("no-such-member", kind=facts_pb2.EVENT_KIND_UNSPECIFIED) for _ in range(1000)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_events(tagging_stub, events)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert "events[0].kind" in violations
    assert any("more violations not listed" in text for text in violations.values())
