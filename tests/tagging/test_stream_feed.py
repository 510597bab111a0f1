"""StreamFeed: the feed followed live, in ReadFeed's order, each entry once, until the caller stops."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import feed_pb2, tagging_service_pb2

from runtime import outbox
from runtime.db import Database
from services.tagging import feed
from tests.conftest import ACME
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_event, an_order, new_member, record_events, record_order
from tests.tagging.test_feed import feed_end, read_all
from tests.test_logs import captured, lines

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

__all__ = ["captured"]  # a fixture, used by name

Entry = feed_pb2.FeedEntry
Response = tagging_service_pb2.StreamFeedResponse


def position(cursor: str) -> tuple[int, int]:
    parsed = outbox.parse_cursor(cursor)
    assert parsed is not None
    return parsed


def facts_of(entries: list[Entry], members: set[str]) -> list[tuple[int, str, str]]:
    """(kind, member, subject) of the members' fact entries; tag changes that real-time dimensions of
    other tests add are not this module's subject."""
    return [
        (e.kind, e.member_id, e.subject_id)
        for e in entries
        if e.member_id in members and e.kind != feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED
    ]


def open_stream(stub: Stub, after: str, batch_size: int = 0, **options: Any) -> Any:
    request = tagging_service_pb2.StreamFeedRequest(after_cursor=after, batch_size=batch_size)
    return stub.StreamFeed(request, metadata=options.pop("metadata", ACME), **options)


async def read_until(
    call: Any, responses: list[Response], done: Callable[[list[Entry]], bool]
) -> list[Entry]:
    """Reads responses into `responses` until `done(all entries so far)`; fails after 15 seconds."""
    entries = [e for r in responses for e in r.entries]
    async with asyncio.timeout(15):
        while not done(entries):
            message = await call.read()
            assert message is not grpc.aio.EOF, "the stream ended"
            responses.append(message)
            entries.extend(message.entries)
    return entries


async def test_existing_then_new_entries_arrive_in_order_once(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    first = await new_member(tagging_stub)
    order = await record_order(tagging_stub, an_order(first))
    events = [an_event(first), an_event(first)]
    await record_events(tagging_stub, events)
    before = [
        (feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, first, ""),
        (feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED, first, order.order_id),
    ]
    event_entries = sorted((feed_pb2.FEED_ENTRY_KIND_EVENT_RECORDED, first, e.event_id) for e in events)

    call = open_stream(tagging_stub, start, batch_size=2, timeout=60)
    responses: list[Response] = []
    entries = await read_until(call, responses, lambda got: len(facts_of(got, {first})) >= 4)
    mine = facts_of(entries, {first})
    assert mine[:2] == before
    assert sorted(mine[2:]) == event_entries

    # Written while the stream is open: they follow, after what came before.
    second = await new_member(tagging_stub)
    later_order = await record_order(tagging_stub, an_order(second))
    later = [
        (feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, second, ""),
        (feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED, second, later_order.order_id),
    ]
    entries = await read_until(call, responses, lambda got: len(facts_of(got, {first, second})) >= 6)
    call.cancel()
    assert facts_of(entries, {first, second})[4:] == later

    for response in responses:
        assert 1 <= len(response.entries) <= 2
        assert response.next_cursor == response.entries[-1].cursor
    cursors = [position(e.cursor) for e in entries]
    assert cursors == sorted(set(cursors)), "in feed order, no entry twice"
    if start:
        assert cursors[0] > position(start)
    # The same entries, in the same order, as ReadFeed gives from the same cursor.
    paged, _ = await read_all(tagging_stub, start, limit=1000)
    assert [e.cursor for e in paged[: len(entries)]] == [e.cursor for e in entries]


async def test_waiting_holds_no_transaction_open(tagging_stub: Stub, db: Database) -> None:
    """A caught-up stream polls with short transactions: no feed read stays open for long. Only
    sessions whose last statement read the feed are looked at: the services' other background work
    (a history correction's read-only evaluation, say) may rightly hold a longer transaction."""
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    call = open_stream(tagging_stub, start, timeout=60)
    await read_until(call, [], lambda got: member_id in {e.member_id for e in got})
    async with db.pool.acquire() as conn:  # the login role sees every session's state
        for _ in range(8):
            await asyncio.sleep(feed.POLL_INTERVAL_SECONDS / 2)
            open_long = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'memberops' AND pid <> pg_backend_pid()
                     AND query LIKE '%tagging.feed%'
                     AND xact_start < clock_timestamp() - interval '150 milliseconds'"""
            )
            assert open_long == 0
    call.cancel()


async def test_cancel_ends_the_call_on_the_server(tagging_stub: Stub, captured: io.StringIO) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    call = open_stream(tagging_stub, start, batch_size=1, metadata=(*ACME, ("x-request-id", "follow-1")))
    await read_until(call, [], lambda got: member_id in {e.member_id for e in got})
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert call.cancelled()

    async def server_logged_end() -> list[dict[str, object]]:
        while True:
            ended = [e for e in lines(captured) if e.get("request_id") == "follow-1" and e["event"] == "rpc"]
            if ended:
                return ended
            await asyncio.sleep(0.05)

    (entry,) = await asyncio.wait_for(server_logged_end(), timeout=5)
    assert entry["code"] == "CANCELLED"
    # The service goes on serving streams.
    again = open_stream(tagging_stub, start, batch_size=1, timeout=30)
    await read_until(again, [], lambda got: member_id in {e.member_id for e in got})
    again.cancel()


async def test_the_deadline_ends_the_stream(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    call = open_stream(tagging_stub, start, timeout=0.7)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            assert response.entries, "never an empty response"
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_cursor": "not-a-cursor"}, "after_cursor"),
        ({"after_cursor": "12"}, "after_cursor"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": 1001}, "batch_size"),
    ],
)
async def test_bad_cursor_or_batch_size_is_invalid_argument(
    tagging_stub: Stub, request_fields: dict[str, Any], field: str
) -> None:
    call = tagging_stub.StreamFeed(
        tagging_service_pb2.StreamFeedRequest(**request_fields), metadata=ACME, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
