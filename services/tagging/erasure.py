"""Erasing a member (EraseMember, PIPL / GDPR): what an erasure is, in which order it happens and
how a retry finishes one. Plain Python over the stores; the peers are behind `PeerEraser`.

The order, each step idempotent so a retry with the same request id re-runs what is left:
1. record the request (request id -> a fresh pseudonym) and commit: from then on the erasure is
   owed, whatever fails later;
2. in one tagging transaction, move every tagging row of the member to the pseudonym, clear its
   personal data, end the tags the cleared profile held (gender, age band) and note the change on
   the feed under the pseudonym, marked backfilled: consumers update their state (an audience
   over gender drops the pseudonym) but react to nothing (no journey enrols, no task rewards);
3. ask each peer (tasks, journeys, audience) to do the same with its rows;
4. mark the request finished, which forgets the member id it held.

Tagging goes before the peers so that a feed consumer lagging behind meets the pseudonym in the
entries it has still to read: with the peers first, it could write rows under the member id after
its own service had erased them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from runtime import checks
from runtime.db import Connection, Database
from runtime.errors import AlreadyExists, NotFound, Violations
from services.tagging import erasure_store, feed_store, member_store
from services.tagging.domain import Channel, FeedKind
from services.tagging.evaluation import Tagger
from services.tagging.realtime import input_bits
from services.tagging.rules import Input

MAX_REQUEST_ID = 128
MAX_OPERATOR = 64
MAX_REASON = 256
PSEUDONYM_PREFIX = "erased-"
# The pseudonym's row is opted out of every channel: nothing may message what is left of a person.
ALL_CHANNELS = tuple(int(c) for c in Channel if c is not Channel.UNSPECIFIED)
# The move runs again when it deadlocks with a concurrent writer of the member (a refresh).
ATTEMPTS = 3


@dataclass(frozen=True)
class ErasureRequest:
    member_id: str
    request_id: str
    operator: str
    reason: str


@dataclass(frozen=True)
class Erasure:
    """An erasure as audited."""

    pseudonym: str
    operator: str
    reason: str
    erase_time: dt.datetime


class PeerEraser(Protocol):
    async def erase(self, tenant_id: str, member_id: str, pseudonym: str) -> Mapping[str, int]:
        """Moves the member's rows in every peer to `pseudonym`; rows changed per "peer.table"."""


@dataclass(frozen=True)
class _Started:
    erasure: Erasure
    # The member id while the erasure is unfinished; None once it is finished.
    member_id: str | None


def validate(request: ErasureRequest, member_path: str = "member") -> None:
    violations = Violations()
    checks.natural_id(request.member_id, violations, member_path)
    for name, limit in (("request_id", MAX_REQUEST_ID), ("operator", MAX_OPERATOR), ("reason", MAX_REASON)):
        value = getattr(request, name)
        if not value.strip():
            violations.add(name, "is required")
        checks.text(value, limit, violations, name)
    violations.raise_if_any()


def new_pseudonym() -> str:
    return f"{PSEUDONYM_PREFIX}{uuid.uuid4().hex}"


class Erasures:
    def __init__(self, db: Database, tagger: Tagger, peers: PeerEraser) -> None:
        self._db = db
        self._tagger = tagger
        self._peers = peers

    async def erase(self, tenant_id: str, request: ErasureRequest, now: dt.datetime) -> Erasure:
        validate(request)
        started = await self._start(tenant_id, request, now)
        member_id = started.member_id
        if member_id is None:
            return started.erasure
        pseudonym = started.erasure.pseudonym
        await self._move(tenant_id, request.request_id, member_id, pseudonym, now)
        changed = await self._peers.erase(tenant_id, member_id, pseudonym)
        async with self._db.transaction(tenant_id) as conn:
            await erasure_store.finish(conn, request.request_id, member_id, pseudonym, changed, now)
        return started.erasure

    async def _start(self, tenant_id: str, request: ErasureRequest, now: dt.datetime) -> _Started:
        """Records the request, or finds it recorded by an earlier attempt."""
        async with self._db.transaction(tenant_id) as conn:
            row = await erasure_store.lock_request(conn, request.request_id)
            if row is None:
                # Waits for a concurrent erasure of the member; then a concurrent attempt of this
                # very request may have recorded it (and even moved the member away) meanwhile.
                member = await member_store.lock_member(conn, request.member_id)
                row = await erasure_store.lock_request(conn, request.request_id)
                if row is None:
                    if member is None:
                        raise NotFound(f"members/{request.member_id} not found")
                    pseudonym = await erasure_store.unfinished_pseudonym(conn, request.member_id)
                    row = await erasure_store.insert_request(
                        conn,
                        tenant_id,
                        request.request_id,
                        request.member_id,
                        pseudonym or new_pseudonym(),
                        request.operator,
                        request.reason,
                        now,
                    )
            return await _resumed(conn, row, request)

    async def _move(
        self, tenant_id: str, request_id: str, member_id: str, pseudonym: str, now: dt.datetime
    ) -> None:
        """Step 2; nothing when tagging holds nothing of the member any more (an earlier attempt)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._db.transaction(tenant_id, plans="custom") as conn:
                    member = await member_store.lock_member(conn, member_id)
                    if member is None:
                        return
                    changed, revision = await erasure_store.move_member(
                        conn, tenant_id, member_id, pseudonym, ALL_CHANNELS, now
                    )
                    await feed_store.append_feed(
                        conn,
                        tenant_id,
                        FeedKind.MEMBER_CHANGED,
                        pseudonym,
                        "",
                        # Not 1: the pseudonym is no member registering (nothing welcomes it).
                        {"revision": revision, "occur_time": now.isoformat(), "backfilled": True},
                    )
                    await self._tagger.refresh_owed(
                        conn, tenant_id, {pseudonym: input_bits(Input.PROFILE)}, now, backfilled=True
                    )
                    await erasure_store.add_changes(conn, request_id, changed)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == ATTEMPTS:
                    raise


async def _resumed(conn: Connection, row: asyncpg.Record, request: ErasureRequest) -> _Started:
    """The recorded erasure of `row` for a request naming `request.member_id`.

    An unfinished one knows its member, so another member is ALREADY_EXISTS. A finished one has
    forgotten it: the request is taken as the same one unless the member it names exists now (then
    it cannot be the member erased, unless recreated since; either way this request id is spent)."""
    erasure = Erasure(row["pseudonym"], row["operator"], row["reason"], row["erase_time"])
    spent = AlreadyExists(f"request_id {request.request_id!r} was used for another erasure")
    if row["member_id"] is not None:
        if row["member_id"] != request.member_id:
            raise spent
        return _Started(erasure, row["member_id"])
    if await erasure_store.member_exists(conn, request.member_id):
        raise spent
    return _Started(erasure, None)
