"""EraseMember: a member's personal data leaves every table; orders, refunds, events and tags stay
under a pseudonym; the request is audited and idempotent, and a retry finishes what a failed attempt
(a peer down) left."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tagging.v1 import feed_pb2, member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.tagging import server as tagging_server
from tests.conftest import TENANT_UMBRELLA, unique
from tests.erasure_world import METADATA, REGISTERED, Person, audit_row, create_person, erase, traces
from tests.grpc_helpers import failure, field_violations
from tests.tagging.facts_helpers import stamp
from tests.tagging.test_feed import feed_end, read_all

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


@pytest.fixture(scope="module")
def peers(tasks: app.RunningService, journeys: app.RunningService, audience: app.RunningService) -> None:
    """EraseMember calls every peer, so they run."""


async def test_bad_requests_name_their_fields(tagging_stub: Stub) -> None:
    error = await failure(
        tagging_stub.EraseMember(tagging_service_pb2.EraseMemberRequest(), metadata=METADATA)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "member" in field_violations(error)
    request = tagging_service_pb2.EraseMemberRequest(
        member="members/m-1", request_id="r" * 129, operator=" ", reason="x" * 257
    )
    error = await failure(tagging_stub.EraseMember(request, metadata=METADATA))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"request_id", "operator", "reason"}


async def test_an_unknown_member_is_not_found_and_nothing_is_recorded(
    tagging_stub: Stub, db: Database
) -> None:
    request_id = unique("req")
    error = await failure(erase(tagging_stub, unique("nobody"), request_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await audit_row(db, TENANT_UMBRELLA, request_id) is None


async def test_personal_data_leaves_every_table_and_the_business_facts_stay(
    tagging_stub: Stub, db: Database, peers: None
) -> None:
    person = Person()
    facts = await create_person(tagging_stub, person)
    # The scan sees the member where it is, in every place the erasure must reach.
    before = await traces(db, person.needles)
    assert {"tagging.members", "tagging.orders", "tagging.order_lines", "tagging.refunds"} <= set(before)
    assert {"tagging.events", "tagging.feed", "tagging.member_tags", "tagging.event_recency"} <= set(before)
    tags_held = await db.pool.fetchval(
        "SELECT count(*) FROM tagging.member_tags WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        person.member_id,
    )
    start = await feed_end(tagging_stub, METADATA)

    request_id = unique("req")
    erased = await erase(tagging_stub, person.member_id, request_id)

    assert erased.pseudonym.startswith("erased-")
    assert (erased.operator, erased.reason) == ("dpo@acme", "DSR-2026-0042")
    assert await traces(db, person.needles) == {}
    missing = await failure(
        tagging_stub.GetMember(
            tagging_service_pb2.GetMemberRequest(name=f"members/{person.member_id}"), metadata=METADATA
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    # What the business needs stays, under the pseudonym: the member row without identity, the
    # orders (GMV), refunds, events and tag history.
    left = await tagging_stub.GetMember(
        tagging_service_pb2.GetMemberRequest(name=f"members/{erased.pseudonym}"), metadata=METADATA
    )
    assert left.profile == member_pb2.Profile(
        city_tier=member_pb2.CITY_TIER_1,
        register_time=stamp(REGISTERED),
        register_channel="wechat_mini",
        level="gold",
    )
    assert left.contact.phone == left.contact.email == left.contact.time_zone == ""
    assert left.contact.wecom_external_userid == left.contact.wecom_staff_userid == ""
    assert set(left.contact.opted_out_channels) == {1, 2, 3, 4}
    assert not left.attributes.fields
    orders = await db.pool.fetch(
        "SELECT order_id, amount_minor FROM tagging.orders WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        erased.pseudonym,
    )
    assert sorted(o["order_id"] for o in orders) == sorted(facts.order_ids)
    assert sum(o["amount_minor"] for o in orders) == sum(facts.amounts)
    # Tag history stays (the profile's tags end, closed by the pseudonym's refresh, not deleted).
    tags_kept = await db.pool.fetchval(
        "SELECT count(*) FROM tagging.member_tags WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        erased.pseudonym,
    )
    assert tags_kept >= tags_held > 0
    events = await db.pool.fetch(
        "SELECT kind, query FROM tagging.events WHERE tenant_id = $1 AND member_id = $2",
        TENANT_UMBRELLA,
        erased.pseudonym,
    )
    assert len(events) == 2 and {e["query"] for e in events} == {""}

    # Consumers hear of the pseudonym's changed profile and the tags it ended, as entries to keep
    # their state by but react to none (backfilled; no registration), and nothing of the erased id.
    entries, _ = await read_all(tagging_stub, start, METADATA, limit=1000)
    changed_member = [e for e in entries if e.kind == feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED]
    assert [e.member_id for e in changed_member] == [erased.pseudonym]
    assert changed_member[0].member_changed.revision > 1 and changed_member[0].backfilled
    ended = [
        e
        for e in entries
        if e.member_id == erased.pseudonym and e.kind == feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED
    ]
    assert {e.tag_changed.dimension for e in ended} >= {"gender"}
    assert all(e.backfilled for e in ended)
    assert all(e.member_id != person.member_id for e in entries)

    audit = await audit_row(db, TENANT_UMBRELLA, request_id)
    assert (audit["operator"], audit["reason"], audit["pseudonym"]) == (
        "dpo@acme",
        "DSR-2026-0042",
        erased.pseudonym,
    )
    assert audit["member_id"] is None and audit["finish_time"] is not None
    assert audit["erase_time"] == erased.erase_time.ToDatetime(tzinfo=dt.UTC)
    changed = json.loads(audit["changed_rows"])
    assert (
        changed["tagging.members"] == 1 and changed["tagging.orders"] == 2 and changed["tagging.events"] == 2
    )


async def test_a_retry_returns_the_same_erasure_and_another_member_cannot_reuse_its_id(
    tagging_stub: Stub, peers: None
) -> None:
    person, other = Person(), Person()
    await create_person(tagging_stub, person)
    await create_person(tagging_stub, other)
    request_id = unique("req")
    first = await erase(tagging_stub, person.member_id, request_id)
    assert await erase(tagging_stub, person.member_id, request_id) == first

    reused = await failure(erase(tagging_stub, other.member_id, request_id))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    # A new request id for the erased member finds nothing left to erase.
    again = await failure(erase(tagging_stub, person.member_id, unique("req")))
    assert again.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_requests_make_one_erasure(tagging_stub: Stub, db: Database, peers: None) -> None:
    person = Person()
    await create_person(tagging_stub, person)
    request_id, other_id = unique("req"), unique("req")
    answers = await asyncio.gather(
        *(erase(tagging_stub, person.member_id, request_id) for _ in range(4)),
        erase(tagging_stub, person.member_id, other_id),
        return_exceptions=True,
    )
    # A request that comes after another has moved the member away finds it gone (NOT_FOUND); one
    # that comes while another is under way joins it. Either way there is one pseudonym, and the
    # calls of one request id all answer alike.
    erasures = [a for a in answers if isinstance(a, tagging_service_pb2.MemberErasure)]
    gone = [
        a for a in answers if isinstance(a, grpc.aio.AioRpcError) and a.code() == grpc.StatusCode.NOT_FOUND
    ]
    assert erasures and len(erasures) + len(gone) == len(answers), answers
    assert len({e.pseudonym for e in erasures}) == 1
    same = answers[:4]
    assert all(a == same[0] for a in same) or all(a in gone for a in same), answers
    rows = await db.pool.fetch(
        """SELECT member_id, pseudonym FROM tagging.member_erasures
           WHERE tenant_id = $1 AND request_id = ANY($2::text[])""",
        TENANT_UMBRELLA,
        [request_id, other_id],
    )
    assert {r["pseudonym"] for r in rows} == {erasures[0].pseudonym}
    assert all(r["member_id"] is None for r in rows)
    assert await traces(db, person.needles) == {}


@pytest.fixture
async def half_wired(
    settings: Settings, peer_ports: dict[str, int], peers: None
) -> AsyncIterator[tuple[Stub, dict[str, int]]]:
    """A second tagging server whose peers are only those in the dict it yields (a test takes one
    away to have it down, and puts it back)."""
    known = dict(peer_ports)

    def peer_address(peer: str) -> str:
        return f"127.0.0.1:{known[peer]}" if peer in known else ""

    def wire(db: Database | None, tenants: frozenset[str], s: Settings) -> app.Wiring:
        return tagging_server.wire(db, frozenset(), s, peer_address=peer_address)

    definition = dataclasses.replace(tagging_server.DEFINITION, wire=wire)
    running = await app.start(definition, settings, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield tagging_service_pb2_grpc.TaggingServiceStub(channel), known
    finally:
        await running.stop()


async def test_a_retry_finishes_what_a_peer_being_down_left(
    half_wired: tuple[Stub, dict[str, int]], db: Database
) -> None:
    stub, known = half_wired
    journeys_port = known.pop("journeys")
    person = Person()
    await create_person(stub, person)
    request_id = unique("req")

    down = await failure(erase(stub, person.member_id, request_id))
    assert down.code() == grpc.StatusCode.UNAVAILABLE
    owed = await audit_row(db, TENANT_UMBRELLA, request_id)
    assert owed["member_id"] == person.member_id and owed["finish_time"] is None  # needed to resume

    known["journeys"] = journeys_port
    finished = await erase(stub, person.member_id, request_id)
    assert finished.pseudonym == owed["pseudonym"]
    done = await audit_row(db, TENANT_UMBRELLA, request_id)
    assert done["member_id"] is None and done["finish_time"] is not None
    assert await traces(db, person.needles) == {}


# Columns of tagging that hold a member's id under another name than `member_id`, which the
# erasure moves by finding every `member_id` column: none. A table that names a member otherwise
# (an inviter, a list of members) fails here until the erasure handles it. `members.member_no` is
# the member's number for audience's bitmaps, no id the caller knows: the pseudonym's row keeps it
# (test_the_pseudonym_keeps_the_member_number).
OTHER_MEMBER_COLUMNS: set[str] = {"members.member_no"}


async def test_every_member_column_of_tagging_is_one_the_erasure_moves(db: Database) -> None:
    rows = await db.pool.fetch(
        """SELECT table_name || '.' || column_name AS name FROM information_schema.columns
           WHERE table_schema = 'tagging' AND column_name LIKE '%member%' AND column_name <> 'member_id'"""
    )
    assert {row["name"] for row in rows} == OTHER_MEMBER_COLUMNS
