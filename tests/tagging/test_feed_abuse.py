"""Many StreamFeed callers that never read: the service keeps answering, and a tenant's cap holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from runtime import app
from runtime.db import Database
from services.tagging import feed
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique
from tests.tagging.facts_helpers import new_member
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

STREAMS = 500
# A hang check, not a latency threshold.
DEADLINE_SECONDS = 10


async def first_response(call: Any) -> grpc.StatusCode:
    """OK once the stream has sent a response (then it is left unread), else the code it ended with."""
    try:
        await call.read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def open_unread(
    stub: Stub, count: int, metadata: Any = ACME
) -> tuple[list[Any], list[grpc.StatusCode]]:
    calls = [
        stub.StreamFeed(tagging_service_pb2.StreamFeedRequest(), metadata=metadata, timeout=120)
        for _ in range(count)
    ]
    async with asyncio.timeout(DEADLINE_SECONDS * 3):
        codes = await asyncio.gather(*(first_response(call) for call in calls))
    return calls, codes


async def idle_in_transaction(db: Database) -> int:
    async with db.pool.acquire() as conn:  # the login role sees every session's state
        count: int = await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE application_name = 'memberops' AND pid <> pg_backend_pid()
                 AND state = 'idle in transaction'
                 AND state_change < clock_timestamp() - interval '150 milliseconds'"""
        )
    return count


async def test_unread_streams_leave_get_member_answering_and_the_tenant_cap_refuses_the_rest(
    tagging: app.RunningService, tagging_stub: Stub, db: Database
) -> None:
    member_id = await new_member(tagging_stub)  # the feeds have something to send
    await new_member(tagging_stub, GLOBEX)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}") as channel:
        stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        calls, codes = await open_unread(stub, STREAMS)
        opened = codes.count(grpc.StatusCode.OK)
        assert 0 < opened <= feed.MAX_STREAMS_PER_TENANT
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == STREAMS - opened
        # Other tenants and other calls are served meanwhile, and no stream keeps a transaction
        # open while its client does not read.
        fetched = await tagging_stub.GetMember(
            tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"),
            metadata=ACME,
            timeout=DEADLINE_SECONDS,
        )
        assert fetched.member_id == member_id
        other_calls, other_codes = await open_unread(stub, 1, GLOBEX)
        assert other_codes == [grpc.StatusCode.OK]
        assert await idle_in_transaction(db) == 0
        for call in [*calls, *other_calls]:
            call.cancel()

        # Cancelled streams give their slots back: the tenant can open as many again.

        async def all_open_again() -> bool:
            again, codes = await open_unread(stub, opened)
            for call in again:
                call.cancel()
            return codes.count(grpc.StatusCode.OK) == opened

        await eventually(all_open_again, "did the cancelled streams give their slots back", interval=0.1)


async def feed_of_at_least(stub: Stub, count: int) -> None:
    members = [member_pb2.Member(member_id=unique()) for _ in range(count)]
    await stub.ImportMembers(
        iter([tagging_service_pb2.ImportMembersRequest(members=members)]), metadata=ACME, timeout=60
    )


async def test_a_stream_sends_at_most_stream_read_rows_entries_a_response(tagging_stub: Stub) -> None:
    """What a stream holds for a client that does not read is one response of a bounded size."""
    await feed_of_at_least(tagging_stub, feed.STREAM_READ_ROWS + 1)
    call = tagging_stub.StreamFeed(
        tagging_service_pb2.StreamFeedRequest(batch_size=1000), metadata=ACME, timeout=30
    )
    response: Any = await call.read()
    call.cancel()
    assert len(response.entries) == feed.STREAM_READ_ROWS


class CountingDatabase:
    """The suite's database, counting the transactions open at once."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.open = self.most = self.total = 0

    @contextlib.asynccontextmanager
    async def transaction(self, tenant_id: str, **options: Any) -> AsyncIterator[Any]:
        self.open += 1
        self.total += 1
        self.most = max(self.most, self.open)
        try:
            async with self._db.transaction(tenant_id, **options) as conn:
                await asyncio.sleep(0.01)  # long enough for every follower to ask at once
                yield conn
        finally:
            self.open -= 1


async def test_followers_share_a_few_connections_however_many_there_are(
    tagging_stub: Stub, db: Database
) -> None:
    await new_member(tagging_stub)
    counting = CountingDatabase(db)
    followers = feed.Feed(cast(Database, counting))
    streams = [followers.follow(TENANT_ACME, "", 10, len) for _ in range(20)]
    async with asyncio.timeout(DEADLINE_SECONDS):
        sizes = await asyncio.gather(*(anext(stream) for stream in streams))
    assert all(1 <= size <= 10 for size in sizes)
    assert counting.most == feed.STREAM_READERS
    assert followers.open_streams(TENANT_ACME) == 20
    for stream in streams:
        await stream.aclose()
    assert followers.open_streams(TENANT_ACME) == 0


async def test_caught_up_followers_of_a_tenant_share_one_poll(tagging_stub: Stub, db: Database) -> None:
    end = await tagging_stub.ReadFeed(tagging_service_pb2.ReadFeedRequest(skip_to_end=True), metadata=ACME)
    counting = CountingDatabase(db)
    followers = feed.Feed(cast(Database, counting))
    streams = [followers.follow(TENANT_ACME, end.next_cursor, 10, len) for _ in range(20)]
    waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]

    async def five_more_transactions() -> bool:
        return counting.total >= len(streams) + 5

    await eventually(five_more_transactions, "did the followers poll again")
    # Each follower read once and found nothing; since then, one poll an interval for all of them
    # (five so far), not one each (twenty an interval).
    assert not any(w.done() for w in waiting)
    assert counting.total - len(streams) < len(streams)
    await new_member(tagging_stub)
    async with asyncio.timeout(DEADLINE_SECONDS):
        sizes = await asyncio.gather(*waiting)
    assert all(size >= 1 for size in sizes)
    for stream in streams:
        await stream.aclose()
    assert followers.open_streams(TENANT_ACME) == 0
