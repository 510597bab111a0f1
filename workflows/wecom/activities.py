"""The WeCom sync's round (`wecom.round`): with the tenant's connector on, it renames in WeCom what
MemberOps renamed, then either goes on with a running full reconciliation (a page of it) or pushes
the next batch of tagging's feed.

A batch is the feed's TAG_CHANGED and MEMBER_CHANGED entries after the sync's cursor; its members
(in the order they first appear) are pushed one by one (push.py, state-based). Its end and how many
of its members are done are stored before the first and after each member, so an attempt that dies
mid-batch leaves the next one to read the same entries again (the feed never changes what it
answered after a cursor) and go on after the last member stored done: a crash repeats at most the
member in flight, whose repeat changes nothing in WeCom. The cursor moves past the batch in the
transaction that ends it. Changes WeCom made (reason `wecom`, pulled from callbacks) are not pushed
back; a member with such changes only is left alone (no ping-pong).

The reconciliation walks the feed's MEMBER_CHANGED entries from the beginning the same way (its own
cursor, page end and count), taking each member at their latest entry (the entry's revision is the
member's current one), so every member is checked once, and repaired when WeCom holds other tags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from memberops.tagging.v1 import feed_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime import logs
from runtime.db import Database
from workflows.wecom import connector_store, sync_store
from workflows.wecom.api import Credentials, WeComApi, WeComError
from workflows.wecom.connector_store import Connector
from workflows.wecom.library import TagLibrary
from workflows.wecom.payloads import PushCounts, RoundRequest, RoundResult
from workflows.wecom.push import Push
from workflows.wecom.sync_store import SyncState
from workflows.wecom.tagging_reads import MEMBER_CHANGED, TAG_CHANGED, TaggingFailed, TaggingReads

# How often an idle round asks the feed again.
POLL_SECONDS = 0.25
# A wait (WeCom's quota backoff) heartbeats this often, so a minute's block is no silent minute.
HEARTBEAT_SECONDS = 1.0
# How soon a round a worker's shutdown cut off is tried again (on another worker).
RESTART = dt.timedelta(milliseconds=200)
# Changes made from WeCom's callbacks carry this reason (workflows/wecom/pull.py): not pushed back.
PULLED = "wecom"

_log = logs.get_logger("wecom.sync")

Sleep = Callable[[float], Awaitable[None]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Batch:
    """A batch (or a reconciliation page) being worked through."""

    cursor: str
    end: str
    done: int
    entries: Sequence[feed_pb2.FeedEntry]

    def members(self) -> list[str]:
        return list(dict.fromkeys(e.member_id for e in self.entries))


class WeComActivities:
    def __init__(
        self,
        db: Database,
        tagging: TaggingReads,
        api_url: str,
        *,
        sleep: Sleep = asyncio.sleep,
        max_wait_seconds: float = 120.0,
    ) -> None:
        self._db = db
        self._tagging = tagging
        self._api_url = api_url
        self._sleep = sleep
        self._max_wait = max_wait_seconds

    def all(self) -> list[Callable[..., Any]]:
        return [self.round]

    @activity.defn(name="wecom.round")
    async def round(self, request: RoundRequest) -> RoundResult:
        try:
            return await self._round(request)
        except TaggingFailed as error:
            await self._note(request.tenant_id, str(error))
            raise
        except WeComError as error:
            # Noted for GetWeComSync (never the secret or token: WeComError's text has neither),
            # then retried by Temporal with its backoff.
            await self._note(request.tenant_id, f"{error.errcode} {error.errmsg}")
            _log.warning("wecom sync round failed", tenant=request.tenant_id, errcode=error.errcode)
            raise
        except asyncio.CancelledError:
            if activity.is_worker_shutdown():
                # Not the sync failing: retried at once on another worker (no growing backoff).
                raise ApplicationError(
                    "the worker shut down mid-round", type="WorkerShutdown", next_retry_delay=RESTART
                ) from None
            raise

    async def _round(self, request: RoundRequest) -> RoundResult:
        tenant_id = request.tenant_id
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            connector = await connector_store.get(conn)
        if connector is None or not connector.enabled:
            return RoundResult(enabled=False)
        # One HTTP session a round, closed with it (a session kept by the activities' object was
        # never closed: the worker builds its activities once and has no hook to close them).
        async with aiohttp.ClientSession() as http:
            return await self._round_with(request, self._api(http, connector), connector)

    async def _round_with(self, request: RoundRequest, api: WeComApi, connector: Connector) -> RoundResult:
        tenant_id = request.tenant_id
        dimensions = await self._tagging.dimensions(tenant_id, connector.push_dimensions)
        library = TagLibrary(self._db, tenant_id, api, dimensions, _now)
        await library.load()
        # A pushed dimension is its group with a tag per listed value, whoever holds them, so a
        # reconciliation sees staff's use of any of them; values from the data come as held.
        await library.ensure({d.name: d.values for d in dimensions})
        await library.rename()
        push = Push(library, api.mark_tag, api.get_external_contact, connector.pull_dimensions)
        state = await self._state(tenant_id)
        if state.resync_state == "running":
            counts, running = await self._reconcile(request, state, push, library.dimensions)
            result = RoundResult(True, state.cursor, resyncing=running, counts=counts)
        else:
            counts, more, cursor = await self._push(request, state, push, library.dimensions)
            result = RoundResult(True, cursor, more=more, counts=counts)
        extra = PushCounts(created=library.created, renamed=library.renamed)
        return dataclasses.replace(result, counts=result.counts.plus(extra))

    def _api(self, http: aiohttp.ClientSession, connector: Connector) -> WeComApi:
        credentials = Credentials(self._api_url, connector.corp_id, connector.secret)
        return WeComApi(http, credentials, sleep=self._waiting, max_wait_seconds=self._max_wait)

    async def _waiting(self, seconds: float) -> None:
        """WeCom's backoff, heartbeating meanwhile so the wait never looks like a dead worker."""
        left = seconds
        while left > 0:
            step = min(left, HEARTBEAT_SECONDS)
            activity.heartbeat()
            await self._sleep(step)
            left -= step

    async def _state(self, tenant_id: str) -> SyncState:
        """The sync's row, with the push's first cursor taken (the feed's end) and a reconciliation
        started when the callbacks' pull asked for one."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            state = await sync_store.get(conn)
        if state is None or not state.started:
            end = await self._tagging.feed_end(tenant_id)
            async with self._db.transaction(tenant_id) as conn:
                await sync_store.start_cursor(conn, end)
        if state is not None and state.resync_wanted and state.resync_state != "running":
            async with self._db.transaction(tenant_id) as conn:
                await sync_store.start_resync(conn, f"wanted-{_now().isoformat()}", _now())
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await sync_store.get(conn)
        assert found is not None
        return found

    async def _note(self, tenant_id: str, error: str) -> None:
        async with self._db.transaction(tenant_id) as conn:
            await sync_store.note_error(conn, error)

    # --- the push -----------------------------------------------------------------------------

    async def _push(
        self, request: RoundRequest, state: SyncState, push: Push, dimensions: list[str]
    ) -> tuple[PushCounts, bool, str]:
        tenant_id = request.tenant_id
        batch = await self._batch(request, state)
        if batch is None:
            return PushCounts(), False, state.cursor
        pushed = set(dimensions)
        # Members whose pushed tags MemberOps changed (marked), and members otherwise changed
        # (their WeCom identity may be new: read first, marked only when WeCom differs).
        tagged: dict[str, set[str]] = {}
        changed: set[str] = set()
        pulled = 0
        for entry in batch.entries:
            if entry.kind == MEMBER_CHANGED:
                changed.add(entry.member_id)
            elif entry.tag_changed.dimension in pushed:
                if entry.tag_changed.reason == PULLED:
                    pulled += 1
                else:
                    tagged.setdefault(entry.member_id, set()).add(entry.tag_changed.dimension)
        members = batch.members()
        todo = [m for m in members[batch.done :] if m in tagged or m in changed]
        identities = await self._tagging.identities(tenant_id, todo)
        held = await self._tagging.held(tenant_id, todo, dimensions)
        marked = skipped = 0
        for done, member_id in enumerate(members[batch.done :], start=batch.done + 1):
            identity = identities.get(member_id)
            reachable = identity is not None and identity.reachable
            outcome: bool | None = None
            if member_id in tagged and identity is not None and reachable:
                outcome = await push.mark(identity, held.get(member_id, {}), tagged[member_id])
            elif member_id in tagged:
                outcome = None
            elif member_id in changed and identity is not None and reachable:
                outcome = await push.repair(identity, held.get(member_id, {})) or False
            else:
                continue
            # Progress is stored after each member pushed (the others cost nothing to pass again).
            async with self._db.transaction(tenant_id) as conn:
                await sync_store.member_done(
                    conn, batch.end, done, marked=int(outcome is True), skipped=int(outcome is None)
                )
            marked += outcome is True
            skipped += outcome is None
            activity.heartbeat()
        async with self._db.transaction(tenant_id) as conn:
            await sync_store.finish_batch(conn, batch.cursor, batch.end, _now())
        counts = PushCounts(entries=len(batch.entries), marked=marked, skipped=skipped, pulled_changes=pulled)
        return counts, len(batch.entries) >= request.batch_size, batch.end

    async def _batch(self, request: RoundRequest, state: SyncState) -> _Batch | None:
        """The batch in progress, or the next one (waiting up to `idle_seconds` for entries)."""
        tenant_id, cursor = request.tenant_id, state.cursor
        kinds = (TAG_CHANGED, MEMBER_CHANGED)
        if state.pending_end:
            entries = await self._until(tenant_id, cursor, state.pending_end, request.batch_size, kinds)
            return _Batch(cursor, state.pending_end, state.pending_done, entries)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.idle_seconds
        while True:
            reply = await self._tagging.read_feed(tenant_id, cursor, request.batch_size, kinds)
            if reply.entries:
                break
            if loop.time() >= deadline or activity.is_worker_shutdown() or await self._resync_due(tenant_id):
                if reply.next_cursor and reply.next_cursor != cursor:
                    # Past entries of other kinds only: the cursor follows, nothing to push.
                    async with self._db.transaction(tenant_id) as conn:
                        await sync_store.finish_batch(conn, cursor, reply.next_cursor, _now())
                return None
            activity.heartbeat()
            await asyncio.sleep(POLL_SECONDS)
        end = reply.entries[-1].cursor
        async with self._db.transaction(tenant_id) as conn:
            if not await sync_store.begin_batch(conn, cursor, end):
                raise ApplicationError("another round moved the WeCom sync's cursor", type="CursorMoved")
        return _Batch(cursor, end, 0, list(reply.entries))

    async def _resync_due(self, tenant_id: str) -> bool:
        """Whether a reconciliation was asked for since the round began (ResyncWeCom, a connector
        put, the pull): the idle round ends so the next one starts it at once."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await sync_store.get(conn)
        return found is not None and (found.resync_state == "running" or found.resync_wanted)

    async def _until(
        self, tenant_id: str, cursor: str, end: str, limit: int, kinds: Sequence[int]
    ) -> list[feed_pb2.FeedEntry]:
        """The entries after `cursor` through `end`, as the batch's first read answered them."""
        reply = await self._tagging.read_feed(tenant_id, cursor, limit, kinds)
        cursors = [e.cursor for e in reply.entries]
        if end not in cursors:
            # Not what the feed promises; should it happen (cursors rewritten by a migration),
            # the batch is started again rather than the sync stopped.
            async with self._db.transaction(tenant_id) as conn:
                await sync_store.drop_progress(conn)
            raise ApplicationError(
                "the batch in progress is no longer in the feed: starting it again",
                type="BatchGone",
                next_retry_delay=RESTART,
            )
        return list(reply.entries[: cursors.index(end) + 1])

    # --- the full reconciliation --------------------------------------------------------------

    async def _reconcile(
        self, request: RoundRequest, state: SyncState, push: Push, dimensions: list[str]
    ) -> tuple[PushCounts, bool]:
        """One page of the running reconciliation; False once it is done."""
        tenant_id, request_id = request.tenant_id, state.resync_request_id
        cursor = state.resync_cursor
        if state.resync_page_end:
            entries = await self._until(
                tenant_id, cursor, state.resync_page_end, request.batch_size, (MEMBER_CHANGED,)
            )
            page = _Batch(cursor, state.resync_page_end, state.resync_page_done, entries)
        else:
            reply = await self._tagging.read_feed(tenant_id, cursor, request.batch_size, (MEMBER_CHANGED,))
            if not reply.entries:
                async with self._db.transaction(tenant_id) as conn:
                    await sync_store.finish_resync(conn, request_id, "done", _now())
                return PushCounts(), False
            end = reply.entries[-1].cursor
            async with self._db.transaction(tenant_id) as conn:
                if not await sync_store.begin_page(conn, request_id, cursor, end):
                    raise ApplicationError("the reconciliation moved meanwhile", type="CursorMoved")
            page = _Batch(cursor, end, 0, list(reply.entries))
        latest: dict[str, int] = {}
        for entry in page.entries:
            latest[entry.member_id] = max(latest.get(entry.member_id, 0), entry.member_changed.revision)
        members = page.members()
        todo = members[page.done :]
        identities = await self._tagging.identities(tenant_id, todo)
        # A member is taken at their latest entry (revision 0: an entry from before revisions).
        taken = [
            m
            for m in todo
            if m in identities and identities[m].reachable and latest[m] in (0, identities[m].revision)
        ]
        held = await self._tagging.held(tenant_id, taken, dimensions)
        checked = repaired = 0
        for done, member_id in enumerate(todo, start=page.done + 1):
            if member_id not in taken:
                continue
            outcome = await push.repair(identities[member_id], held.get(member_id, {}))
            async with self._db.transaction(tenant_id) as conn:
                await sync_store.page_member_done(
                    conn,
                    request_id,
                    page.end,
                    done,
                    checked=int(outcome is not None),
                    repaired=int(outcome is True),
                )
            checked += outcome is not None
            repaired += outcome is True
            activity.heartbeat()
        async with self._db.transaction(tenant_id) as conn:
            await sync_store.finish_page(conn, request_id, page.cursor, page.end, _now())
        return PushCounts(
            entries=len(page.entries), checked=checked, repaired=repaired, marked=repaired
        ), True
