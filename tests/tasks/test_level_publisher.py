"""Level changes reach tagging (`profile.level`, the built-in `level` tag), through gRPC against
real PostgreSQL: the service's own loop for globex, and round by round for initech, which the
suite's tasks service leaves alone (tests.conftest.tasks_definition)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from memberops.tagging.v1 import tagging_service_pb2
from memberops.tasks.v1 import tasks_service_pb2

from runtime.db import Database
from services.tasks.levels import tasks_feed_store
from services.tasks.levels.publisher import LevelPublisher
from services.tasks.peers import Peers
from tests.conftest import GLOBEX, INITECH, TENANT_INITECH, unique
from tests.tasks.points_helpers import earn
from tests.tasks.task_helpers import member
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members


async def level_in_tagging(tagging: TaggingStub, member_id: str, metadata: Any) -> tuple[str, list[str]]:
    """The member's `profile.level` and `level` tag values, as tagging has them."""
    found = await tagging.GetMember(
        tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"), metadata=metadata
    )
    tags = await tagging.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=metadata
    )
    return found.profile.level, [t.value for t in tags.tags if t.dimension == "level"]


async def settled(stub: TasksStub, changes: set[tuple[str, str]]) -> None:
    """Waits for these (member, new level) entries on initech's tasks feed, so one round sees them."""

    async def all_seen() -> bool:
        seen: set[tuple[str, str]] = set()
        cursor = ""
        while True:
            page = await stub.ReadTasksFeed(
                tasks_service_pb2.ReadTasksFeedRequest(after_cursor=cursor, limit=1000), metadata=INITECH
            )
            seen |= {(e.member_id, e.level_change.to_level) for e in page.entries}
            if page.next_cursor == cursor:
                return changes <= seen
            cursor = page.next_cursor

    await eventually(all_seen, "did the level changes settle")


async def publish_all(publisher: LevelPublisher) -> None:
    while await publisher.publish_once(TENANT_INITECH):
        pass


async def test_the_services_loop_writes_upgrades_to_tagging(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    # Whatever policy the level tests left globex with: its second tier is the upgrade.
    current = await tasks_stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=GLOBEX)
    second = current.tiers[1]
    m = await member(tagging_stub, metadata=GLOBEX, city="Hangzhou")
    await earn(tasks_stub, m, second.min_growth, metadata=GLOBEX)

    async def in_tagging() -> bool:
        return await level_in_tagging(tagging_stub, m, GLOBEX) == (second.code, [second.code])

    await eventually(in_tagging, "did the level reach tagging")
    member_now = await tagging_stub.GetMember(
        tagging_service_pb2.GetMemberRequest(name=f"members/{m}"), metadata=GLOBEX
    )
    assert (member_now.profile.city, member_now.revision) == ("Hangzhou", 2)  # nothing else changed


async def test_rounds_write_each_members_latest_level_once_and_skip_unknown_ones(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    db: Database,
    peers: Peers,
    members: Members,
) -> None:
    publisher = LevelPublisher(db, peers, frozenset({TENANT_INITECH}))
    await publish_all(publisher)
    known, unknown = await member(tagging_stub, metadata=INITECH), unique()
    # Two changes of one member in one round (silver, then gold): the latest is what tagging gets.
    await earn(tasks_stub, known, 1500, metadata=INITECH)
    await earn(tasks_stub, known, 4000, metadata=INITECH)
    # Feed order is commit-id order, not the order of the changes: a member raised to gold by a
    # transaction that took its id first and committed last has that change before the one to
    # silver. Tagging gets the level the member holds, gold.
    reordered = await member(tagging_stub, metadata=INITECH)
    await earn(tasks_stub, reordered, 5000, metadata=INITECH)
    async with db.transaction(TENANT_INITECH) as conn:
        for to_level in ("gold", "silver"):
            change = {"from_level": "bronze", "to_level": to_level, "upgrade": True, "growth": 5000}
            await tasks_feed_store.append_change(conn, TENANT_INITECH, reordered, change)
        # A member tagging does not know, as the ledger wrote them before it required members.
        change = {"from_level": "bronze", "to_level": "silver", "upgrade": True, "growth": 1500}
        await tasks_feed_store.append_change(conn, TENANT_INITECH, unknown, change)
        await conn.execute(
            """INSERT INTO tasks.member_levels (tenant_id, member_id, code, since)
               VALUES ($1, $2, 'silver', now())""",
            TENANT_INITECH,
            unknown,
        )
    await settled(tasks_stub, {(known, "gold"), (reordered, "silver"), (unknown, "silver")})
    # Replicas racing: one takes the round, the other finds nothing after it.
    await asyncio.gather(publish_all(publisher), publish_all(publisher))
    assert await level_in_tagging(tagging_stub, known, INITECH) == ("gold", ["gold"])
    assert await level_in_tagging(tagging_stub, reordered, INITECH) == ("gold", ["gold"])
    revision = (
        await tagging_stub.GetMember(
            tagging_service_pb2.GetMemberRequest(name=f"members/{known}"), metadata=INITECH
        )
    ).revision
    assert revision == 2  # created, then one level written
    assert await publisher.publish_once(TENANT_INITECH) == 0
