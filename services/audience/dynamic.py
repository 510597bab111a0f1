"""Dynamic audiences: membership kept current, every entry and exit published on the audience feed.

A maintainer loop runs beside the service. Each round, per tenant, in one transaction:

1. audiences created, changed, deleted or made (non-)dynamic since the last round, those whose
   referenced audiences changed, and every dynamic audience not fully evaluated for FULL_EVERY
   (time alone moves members across windows: "no order in 30 days"), are evaluated whole and the
   stored membership is made equal to it;
2. tagging's feed (through its published view) is followed from the stored cursor: the members
   whose facts or tags changed are re-evaluated in every dynamic audience;
3. the cursor advances in the same transaction as the changes it caused, so a crash or restart
   neither loses nor repeats an entry, and a per-tenant advisory lock lets any number of replicas
   run the loop. A tenant without dynamic audiences only moves its cursor to the feed's end.

Changes are differences: evaluating again what is already stored writes nothing. Back-filled
tagging entries (history an import loaded) move members like any other; an entry or exit only they
caused is marked `backfilled` on the audience feed, so no journey enrols on it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from runtime import metrics, outbox, rounds
from runtime.db import Connection, Database
from runtime.errors import NotFound
from runtime.logs import get_logger
from services.audience import store
from services.audience.evaluation import Evaluator

log = get_logger("memberops.audience.dynamic")

POLL_SECONDS = 0.5
FULL_EVERY = dt.timedelta(minutes=15)
FEED_BATCH = 1000


@dataclass(frozen=True)
class FeedEntry:
    cursor: str
    entered: bool
    audience_id: str
    member_id: str
    version: int
    create_time: dt.datetime
    occur_time: dt.datetime
    backfilled: bool = False


@dataclass(frozen=True)
class Round:
    entered: int = 0
    exited: int = 0
    followed: int = 0  # tagging feed entries read


def fact_times(changes: Sequence[asyncpg.Record]) -> dict[str, dt.datetime]:
    """Each member's latest fact time among tagging feed entries (`member_id, occur_time`)."""
    latest: dict[str, dt.datetime] = {}
    for row in changes:
        member_id, time = row["member_id"], row["occur_time"]
        latest[member_id] = max(latest.get(member_id, time), time)
    return latest


def history_only(changes: Sequence[asyncpg.Record]) -> list[str]:
    """Members all of whose tagging feed entries (`member_id, backfilled`) an import loaded: what
    moves them is history (one live entry among them makes it news)."""
    live = {row["member_id"] for row in changes if not row["backfilled"]}
    return sorted({row["member_id"] for row in changes} - live)


class Memberships:
    def __init__(
        self, db: Database, evaluator: Evaluator, tenants: frozenset[str], clock: Callable[[], dt.datetime]
    ) -> None:
        self._db = db
        self._evaluator = evaluator
        self._tenants = tenants
        self._clock = clock

    async def run(self) -> None:
        """Maintains every tenant's dynamic audiences until cancelled (a failed round is retried)."""
        metrics.FEED.watch("audience", "tagging", self._tenants)
        await rounds.every_tenant(
            self._tenants, self._more, POLL_SECONDS, log, "dynamic audience round failed"
        )

    async def _more(self, tenant_id: str) -> bool:
        """One round; True when it read a whole batch of the feed, so more may be waiting."""
        started = time.monotonic()
        done = await self.maintain(tenant_id)
        if done is not None:
            metrics.FEED.round(
                "audience", "tagging", tenant_id, started, done.followed, done.followed < FEED_BATCH
            )
        return done is not None and done.followed == FEED_BATCH

    async def maintain(self, tenant_id: str) -> Round | None:
        """One round for one tenant (see the module docstring); None when another replica holds it."""
        now = self._clock()
        entered = exited = 0
        async with self._evaluator.transaction(tenant_id, readonly=False) as conn:
            if not await store.try_lock_maintenance(conn, tenant_id):
                return None
            audiences = await store.dynamic_audiences(conn)
            cursor = await store.tagging_cursor(conn, tenant_id)
            position = await outbox.resolve(conn, "tagging_read.feed", outbox.parse_cursor(cursor))
            live = any(row["dynamic"] and not row["deleted"] for row in audiences)
            changes = await store.changed_members(conn, position, FEED_BATCH) if live else []
            # When each member's facts happened: the entries and exits they cause are dated by it.
            # A whole evaluation dates its own (see store.apply_membership) by every entry after
            # the cursor, of which these are the first.
            times = fact_times(changes)
            history = history_only(changes)
            current: list[str] = []
            for row in audiences:
                audience_id, version = row["audience_id"], row["current_version"]
                if not row["dynamic"] or row["deleted"]:
                    exited += await store.clear_membership(conn, tenant_id, audience_id, version, now)
                    continue
                stale = row["membership_time"] is None or row["membership_time"] < now - FULL_EVERY
                new = row["membership_version"] != version or row["references_changed"]
                if new or stale:
                    e, x, read = await self._apply(
                        conn, tenant_id, audience_id, now, None, {}, position, new_definition=new
                    )
                    references = {ref: v for ref, v in read if ref != audience_id}
                    await store.mark_evaluated(conn, audience_id, version, now, references)
                    entered, exited = entered + e, exited + x
                # Even just evaluated whole: a fact committed after that statement's snapshot may be
                # among the feed entries read below.
                current.append(audience_id)
            followed = 0
            if not current:
                # Nothing to keep current: skip to the end, as a dynamic audience created later starts
                # with a whole evaluation, which sees everything up to then.
                last = await store.last_tagging_cursor(conn)
                if last is not None and last != cursor:
                    await store.save_tagging_cursor(conn, tenant_id, last)
            elif changes:
                followed = len(changes)
                members = sorted(times)
                for audience_id in current:
                    e, x, _ = await self._apply(
                        conn, tenant_id, audience_id, now, members, times, history=history
                    )
                    entered, exited = entered + e, exited + x
                await store.save_tagging_cursor(conn, tenant_id, outbox.cursor_of(changes[-1]))
        if entered or exited:
            log.info("dynamic audiences updated", tenant=tenant_id, entered=entered, exited=exited)
        return Round(entered, exited, followed)

    async def _apply(
        self,
        conn: Connection,
        tenant_id: str,
        audience_id: str,
        now: dt.datetime,
        members: list[str] | None,
        times: Mapping[str, dt.datetime],
        followed: outbox.Position | None = None,
        *,
        new_definition: bool = False,
        history: Sequence[str] = (),
    ) -> tuple[int, int, tuple[tuple[str, int], ...]]:
        """(entered, exited, the (audience, version) pairs evaluated: it and what it references)."""
        try:
            loaded = await self._evaluator.load(
                conn, tenant_id, audience_id, None, filtered=members is not None, now=now
            )
        except NotFound:  # deleted since the list was read: the next round clears it
            return 0, 0, ()
        c = loaded.compiled
        entered, exited = await store.apply_membership(
            conn,
            c.members_sql(),
            c.args(now, members),
            tenant_id,
            audience_id,
            loaded.version,
            members,
            now,
            times,
            followed,
            new_definition,
            history,
        )
        return entered, exited, loaded.versions

    async def read_feed(
        self,
        tenant_id: str,
        after_cursor: str,
        limit: int,
        audience_id: str | None,
        skip_to_end: bool = False,
    ) -> tuple[list[FeedEntry], str]:
        position = outbox.parse_cursor(after_cursor)
        size = outbox.page_size(limit, "limit")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            if skip_to_end:
                return [], await outbox.last_settled(conn, "audience.feed") or ""
            rows = await store.read_audience_feed(conn, position, size, audience_id)
        entries = [
            FeedEntry(
                cursor=outbox.cursor_of(row),
                entered=row["kind"] == store.ENTERED,
                audience_id=row["audience_id"],
                member_id=row["member_id"],
                version=row["version"],
                create_time=row["create_time"],
                occur_time=row["occur_time"],
                backfilled=row["backfilled"],
            )
            for row in rows
        ]
        return entries, entries[-1].cursor if entries else after_cursor
