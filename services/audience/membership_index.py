"""Dynamic audiences' stored membership, held in memory, so CheckMembership answers from it.

A check that evaluates a member costs a database round trip and a statement; on the hot path of
coupon claims and group entry that is most of the call. A dynamic audience's membership is already
kept current by the maintainer (`dynamic.py`), so a check of one is a set lookup, as current as that
membership (it follows facts and tags within a round, and time windows within FULL_EVERY).

Per tenant, the index loads every stored membership once, with the audience feed's position, in one
snapshot; then, every REFRESH_SECONDS, it applies the feed's entries after that position
(entries set a member in or out, so one already reflected by the load is harmless to apply again)
and re-reads which audiences it may answer for: dynamic, not deleted, membership evaluated at the
current version by a transaction whose entries are all among those applied. Any other
audience, a tenant not loaded yet, or an index not refreshed for MAX_AGE_SECONDS (the database may
be unreachable) gives no answer, and the check evaluates instead. An update or delete made through
this process stops the answers for that audience at once; one made elsewhere, within a refresh.

Memory is bounded by `limit` memberships over all tenants. A load holds the smallest audiences
first, as many as fit; when the feed grows those held past the limit, the largest are let go. An
audience not held is left to evaluated checks until the service restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from runtime import outbox
from runtime.db import Database
from runtime.logs import get_logger
from services.audience import store

log = get_logger("memberops.audience.index")

REFRESH_SECONDS = 0.1
MAX_AGE_SECONDS = 5.0
FEED_PAGE = 10_000
# Feed pages applied per refresh, so one tenant's burst does not hold up the others.
PAGES_PER_REFRESH = 20


@dataclass
class _Tenant:
    position: outbox.Position | None
    members: dict[str, set[str]]
    # audience id -> version, of the audiences the index answers for.
    answerable: dict[str, int]
    refreshed: float
    # audience id -> when it was forgotten (monotonic): a refresh that began earlier read the
    # audience before the change, so it may not make the audience answerable again.
    forgotten: dict[str, float] = field(default_factory=dict)
    # Audiences whose membership is not held, to keep within the limit.
    let_go: set[str] = field(default_factory=set)


def fitting(sizes: Mapping[str, int], room: int) -> set[str]:
    """The audiences to hold within `room` memberships: smallest first (most audiences answered
    from memory), ties by id so the choice is the same every time."""
    held: set[str] = set()
    for audience_id, size in sorted(sizes.items(), key=lambda item: (item[1], item[0])):
        if size > room:
            break
        held.add(audience_id)
        room -= size
    return held


class MembershipIndex:
    def __init__(
        self,
        db: Database,
        tenants: frozenset[str],
        clock: Callable[[], float] = time.monotonic,
        *,
        limit: int = 5_000_000,
    ):
        self._db = db
        self._tenants = tenants
        self._clock = clock
        self._limit = limit
        self._loaded: dict[str, _Tenant] = {}

    def held(self) -> int:
        """Memberships held in memory, over all tenants."""
        return sum(len(m) for t in self._loaded.values() for m in t.members.values())

    def answer(self, tenant_id: str, audience_id: str, member_id: str) -> tuple[bool, int] | None:
        """(is member, version) from the stored membership, or None when the index cannot say."""
        held = self._loaded.get(tenant_id)
        if held is None or self._clock() - held.refreshed > MAX_AGE_SECONDS:
            return None
        version = held.answerable.get(audience_id)
        if version is None:
            return None
        return member_id in held.members.get(audience_id, ()), version

    def forget(self, tenant_id: str, audience_id: str) -> None:
        """No answers for the audience until a refresh that began after this call says otherwise."""
        held = self._loaded.get(tenant_id)
        if held is not None:
            held.answerable.pop(audience_id, None)
            held.forgotten[audience_id] = self._clock()

    async def run(self) -> None:
        """Refreshes every tenant until cancelled; a failed refresh is logged and tried again."""
        while True:
            for tenant_id in sorted(self._tenants):
                try:
                    await self.refresh(tenant_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("membership index refresh failed", tenant=tenant_id)
            await asyncio.sleep(REFRESH_SECONDS)

    async def refresh(self, tenant_id: str) -> None:
        began = self._clock()
        held = self._loaded.get(tenant_id)
        caught_up = True
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
            if held is None:
                cursor = await store.last_audience_cursor(conn)
                members: dict[str, set[str]] = {}
                for row in await store.dynamic_members(conn):
                    members.setdefault(row["audience_id"], set()).add(row["member_id"])
                keep = fitting({a: len(m) for a, m in members.items()}, self._limit - self.held())
                held = _Tenant(outbox.parse_cursor(cursor or ""), members, {}, began)
                held.let_go = set(members) - keep
                held.members = {a: m for a, m in members.items() if a in keep}
            else:
                for _ in range(PAGES_PER_REFRESH):
                    entries = await store.read_audience_feed(conn, held.position, FEED_PAGE, None)
                    for entry in entries:
                        if entry["audience_id"] in held.let_go:
                            continue
                        joined = held.members.setdefault(entry["audience_id"], set())
                        if entry["kind"] == store.ENTERED:
                            joined.add(entry["member_id"])
                        else:
                            joined.discard(entry["member_id"])
                    if entries:
                        held.position = outbox.parse_cursor(outbox.cursor_of(entries[-1]))
                    if len(entries) < FEED_PAGE:
                        break
                else:
                    caught_up = False
            answerable = await store.indexable_audiences(conn, held.position)
        if not caught_up:
            # Entries of an evaluation this snapshot sees may be among those not read yet:
            # only audiences already answered for, at the same version, go on being answered.
            answerable = {a: v for a, v in answerable.items() if held.answerable.get(a) == v}
        held.members = {a: m for a, m in held.members.items() if m}
        self._loaded[tenant_id] = held
        self._let_go_past_limit(held)
        held.forgotten = {a: t for a, t in held.forgotten.items() if t >= began}
        held.answerable = {
            a: v for a, v in answerable.items() if a not in held.forgotten and a not in held.let_go
        }
        held.refreshed = began

    def _let_go_past_limit(self, held: _Tenant) -> None:
        """Lets this tenant's largest audiences go while the index holds more than its limit."""
        excess = self.held() - self._limit
        while excess > 0 and held.members:
            largest = max(held.members, key=lambda a: (len(held.members[a]), a))
            excess -= len(held.members.pop(largest))
            held.let_go.add(largest)
            log.warning("membership index full: audience left to evaluated checks", audience=largest)
