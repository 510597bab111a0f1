"""The tasks service over real gRPC against the session's PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from memberops.tasks.v1 import tasks_service_pb2_grpc

from runtime import app, outbox
from runtime.config import Settings
from runtime.db import Database
from runtime.feed_sequencer import FeedSequencer
from services.tasks.feed.follower import FeedFollower, Round
from services.tasks.peers import Peers

# The audience service's client, for tasks with an eligibility audience.
from tests.audience.conftest import audience_channel, audience_stub  # noqa: F401
from tests.conftest import ACME, TENANT_INITECH, tasks_definition, unique
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


@pytest.fixture(scope="session")
async def tasks_channel(tasks: app.RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tasks.port}") as channel:
        yield channel


class Members:
    """New members known to tagging, which the ledger and the member calls require."""

    def __init__(self, tagging: TaggingStub) -> None:
        self._tagging = tagging

    async def new(self, metadata: Any = ACME, prefix: str = "m") -> str:
        member_id = unique(prefix)
        message = member_pb2.Member(member_id=member_id)
        await self._tagging.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(member=message), metadata=metadata
        )
        return member_id

    async def noted(self, db: Database) -> str:
        """A new member, once the service's feed follower has noted its registration: a test that
        erases the member in tasks alone (tagging is not erased) must wait for it, or a follower
        still behind writes the member's facts row after the erasure (in production tagging erases
        first and its feed names the pseudonym)."""
        member = await self.new()

        async def noted() -> int:
            found: int = await db.pool.fetchval(
                "SELECT count(*) FROM tasks.member_facts WHERE member_id = $1", member
            )
            return found

        await eventually(noted, f"did the follower note {member}")
        return member

    async def followed(self, db: Database) -> None:
        """Waits until the service's feed follower has applied every entry of acme's tagging feed
        committed before the call (once the sequencer has positioned them): a test that erases a
        member in tasks alone must, or an entry still ahead (the level a sign-in raised, published
        to tagging and back) writes the member's rows again after the erasure."""

        async def positioned() -> int | None:
            row = await db.pool.fetchrow(
                """SELECT (SELECT count(*) FROM tagging.feed f
                           WHERE f.tenant_id = 'acme' AND NOT EXISTS (
                               SELECT 1 FROM tagging.feed_positions p
                               WHERE p.tenant_id = 'acme' AND p.txid = f.txid)),
                          (SELECT max(position) FROM tagging.feed_positions WHERE tenant_id = 'acme')"""
            )
            assert row is not None
            waiting, end = row
            return None if waiting or end is None else int(end)

        end = await eventually(positioned, "the sequencer positioned acme's committed feed entries")

        async def applied() -> bool:
            cursor = await db.pool.fetchval(
                "SELECT cursor FROM tasks.feed_cursors WHERE tenant_id = 'acme' AND source = 'tagging'"
            )
            position = outbox.parse_cursor(cursor or "")
            return position is not None and not isinstance(position, outbox.Legacy) and position[0] >= end

        await eventually(applied, "the follower applied acme's feed")

    async def many(self, count: int, metadata: Any = ACME) -> list[str]:
        """`count` new members, imported in one call."""
        return await self.known([unique() for _ in range(count)], metadata)

    async def known(self, ids: list[str], metadata: Any = ACME) -> list[str]:
        """Makes these member ids known to tagging, in one call; returns them."""
        count = len(ids)

        async def batches() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
            for i in range(0, count, 1000):
                chunk = [member_pb2.Member(member_id=m) for m in ids[i : i + 1000]]
                yield tagging_service_pb2.ImportMembersRequest(members=chunk)

        await self._tagging.ImportMembers(batches(), metadata=metadata)
        return ids


@pytest.fixture(scope="session")
def members(tagging_stub: TaggingStub) -> Members:
    return Members(tagging_stub)


@pytest.fixture(scope="session")
def tasks_stub(tasks_channel: grpc.aio.Channel) -> tasks_service_pb2_grpc.TasksServiceAsyncStub:
    return tasks_service_pb2_grpc.TasksServiceStub(tasks_channel)


class Clock:
    """The time a second tasks server reads, moved by tests (return windows, expiry)."""

    def __init__(self) -> None:
        self.time = dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return self.time

    def advance(self, **delta: float) -> None:
        self.time += dt.timedelta(**delta)

    def set(self, at: dt.datetime) -> None:
        """Moves the clock to `at` (sign-in tests walk chosen calendar days)."""
        self.time = at


@pytest.fixture(scope="session")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
async def clocked_stub(
    tasks_settings: Settings, tasks: app.RunningService, clock: Clock
) -> AsyncIterator[tasks_service_pb2_grpc.TasksServiceAsyncStub]:
    """A second tasks server on the same database whose clock the tests move."""
    running = await app.start(tasks_definition(clock.now), tasks_settings, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield tasks_service_pb2_grpc.TasksServiceStub(channel)
    await running.stop()


@pytest.fixture(scope="session")
async def peers(tasks_settings: Settings) -> AsyncIterator[Peers]:
    made = Peers(tasks_settings)
    yield made
    await made.close()


class SequencedFollower(FeedFollower):
    """A follower whose every round first runs one round of tagging's feed sequencer here
    (runtime/feed_sequencer.py): an entry committed before the round then has its position and is
    read by it, as it would be within 50 ms through the tagging service's own sequencer. So a test
    that writes and then drains (reads until nothing is left) reads what it wrote."""

    def __init__(self, db: Database, peers: Peers) -> None:
        super().__init__(db, peers, peers, frozenset({TENANT_INITECH}), lambda: dt.datetime.now(dt.UTC))
        self._sequencer = FeedSequencer(db, "tagging", frozenset({TENANT_INITECH}))

    async def follow_once(self, tenant_id: str) -> Round:
        await self._sequencer.sequence()
        return await super().follow_once(tenant_id)


@pytest.fixture(scope="session")
def follower(db: Database, peers: Peers, tasks: app.RunningService) -> FeedFollower:
    """A follower of initech's feed that the tests run round by round (no background loop
    follows initech, see tests.conftest.tasks_definition)."""
    return SequencedFollower(db, peers)
