"""Purchase, event, visit and profile tasks, invite triggers and refunds of orders that earned
points learn from tagging's feed.

The backend reports an order once, to tagging; tasks follows tagging's feed through tagging's own
ReadFeed RPC with the tenant's token, like any consumer, rather than reading tagging's tables or a
published view: the feed's payloads (order lines with category, brand and sku; refund lines) are
what purchase tasks count, and only ReadFeed carries them. It asks for fact entries only, so
bursts of tag changes (millions after a first recompute) are skipped in tagging's database.

Each round, per tenant: read the next batch after the stored cursor (outside any transaction),
then in one transaction lock the cursor row, check no other replica moved it meanwhile, apply
every entry and store the cursor ReadFeed gave to continue from. Effects and cursor commit
together, so after a crash the batch is read again and applied once; any number of replicas can
run the loop.

Back-filled entries (history an import loaded, `FeedEntry.backfilled`) reward nothing: they
neither trigger invites nor count for profile, visit or event tasks, and count for a purchase task
only when its definition says `reward_backfilled_orders`. Their refunds still take back what the
order really earned (nothing, unless a task counted it or the backend paid points for it).

Orders also earn by the tenant's order earning rule (live orders only) and use the coupons whose
codes they carry (coupons/writeoff.py, history included: using a coupon is state, not a reaction);
a full refund restores those coupons and may take back an invite (economy/feed_rules.py).

Locks are taken in one order for the whole batch before anything is paid: member_facts rows of
the batch's members, pending invites, then the accounts of every member who may be paid (sorted),
the ledger's rule, and only then progress, completions and task rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime import metrics
from runtime.db import Connection, Database, savepoint
from runtime.errors import ResourceExhausted
from runtime.logs import get_logger
from runtime.tagging_feed import (
    EventRecorded,
    FeedKind,
    MemberChanged,
    OrderRecorded,
    RefundRecorded,
)
from services.tasks.allowance import allowance
from services.tasks.coupons import writeoff
from services.tasks.economy.feed_rules import Economy
from services.tasks.feed import cursor_store
from services.tasks.feed.source import FACT_KINDS, FeedEntry, FeedSource
from services.tasks.points import ledger, ledger_store
from services.tasks.tasks import (
    completion_store,
    completions,
    definition_store,
    enrolment_store,
    invite_store,
    invites,
    progress_store,
)
from services.tasks.tasks.completions import Grant
from services.tasks.tasks.definitions import (
    EventSpec,
    InviteSpec,
    InviteTrigger,
    Kind,
    ProfileField,
    ProfileSpec,
    PurchaseSpec,
    State,
    Task,
    VisitSpec,
    task_from_row,
)
from services.tasks.tasks.participation import Directory, Participation
from services.tasks.tasks.progress import (
    CountedOrder,
    completions_change,
    event_counts,
    matching_lines,
    order_measure,
    profile_complete,
    refunded,
    visits,
)

log = get_logger("memberops.tasks.feed")

POLL_SECONDS = 0.5
BATCH = 1000
FED_KINDS = (Kind.PURCHASE, Kind.PROFILE, Kind.VISIT, Kind.EVENT)


@dataclass
class Round:
    entries: int = 0
    granted: int = 0
    reversed: int = 0


@dataclass
class _Batch:
    """What one transaction applies: the tasks as of now and what was read for the batch."""

    tasks: list[Task]
    profiles: Mapping[str, frozenset[ProfileField]]
    enrolled: dict[tuple[str, str], enrolment_store.EnrolmentRow] = field(default_factory=dict)
    # (member, order) of the batch's refunds whose order earned points.
    earned_points: set[tuple[str, str]] = field(default_factory=set)
    done: Round = field(default_factory=Round)
    # The order earning rule and invite clawbacks (services/tasks/economy).
    economy: Economy = field(default_factory=Economy)
    # Task budgets the batch touched, each held whole from its first touch: the round may take
    # from and give back to one budget many times (services/tasks/allowance/).
    budgets: allowance.Holding = field(default_factory=allowance.Holding)

    def of(self, kind: Kind) -> list[Task]:
        return [t for t in self.tasks if t.definition.kind is kind]


def _windowed(task: Task) -> bool:
    """A purchase task counted from each member's enrolment."""
    spec = task.definition.spec
    return isinstance(spec, PurchaseSpec) and spec.window_days > 0


def _refunded(entry: FeedEntry, refund: RefundRecorded) -> ledger.Refunded | None:
    """The refund with its order's standing; None for entries written before tagging reported it."""
    standing = refund.order_standing
    if standing is None:
        return None
    return ledger.Refunded(
        member_id=entry.member_id,
        order_id=refund.order_id,
        refund_id=entry.subject_id,
        order_amount=standing.amount_minor,
        refunded_amount=standing.refunded_amount_minor,
        in_full=standing.refunded_in_full,
    )


def _counts(task: Task, entry: FeedEntry) -> bool:
    """Whether a purchase task counts the order entry: a live one always, history only when the
    task asks for it (`reward_backfilled_orders`)."""
    spec = task.definition.spec
    return not entry.backfilled or (isinstance(spec, PurchaseSpec) and spec.reward_backfilled_orders)


def _counted_at(entry: FeedEntry) -> dt.datetime:
    """The moment whose calendar day a completion counts against: when the entry reached tagging,
    but an imported order's own paid time (a year of history is not one day's purchases)."""
    if entry.backfilled and isinstance(entry.payload, OrderRecorded) and entry.payload.paid_time:
        return entry.payload.paid_time
    return entry.create_time


def _registered(entry: FeedEntry) -> bool:
    """Whether the entry is a member's first stored revision: its registration."""
    return isinstance(entry.payload, MemberChanged) and entry.payload.registered


def _refunded_order(entry: FeedEntry) -> str:
    return entry.payload.order_id if isinstance(entry.payload, RefundRecorded) else ""


class FeedFollower:
    def __init__(
        self,
        db: Database,
        feed: FeedSource,
        directory: Directory,
        tenants: frozenset[str],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._db = db
        self._feed = feed
        self._directory = directory
        self._participation = Participation(directory)
        self._tenants = tenants
        self._clock = clock

    async def run(self) -> None:
        """Follows every tenant's feed until cancelled; a failed round (a peer down, a task changed
        mid-round) is logged and tried again, never the end of the loop."""
        metrics.FEED.watch("tasks", "tagging", self._tenants)
        while True:
            busy = False
            for tenant_id in sorted(self._tenants):
                try:
                    done = await self.follow_once(tenant_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("tasks feed round failed", tenant=tenant_id)
                    continue
                busy = busy or done.entries == BATCH
            if not busy:
                await asyncio.sleep(POLL_SECONDS)

    async def follow_once(self, tenant_id: str) -> Round:
        """Reads and applies the next batch of the tenant's feed; an empty Round when there is none
        or another replica applied it first."""
        started = time.monotonic()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            cursor = await cursor_store.cursor(conn)
            rows = await definition_store.active_tasks(conn, FED_KINDS)
        entries, next_cursor = await self._feed.read_feed(tenant_id, cursor, BATCH)
        if next_cursor == cursor:
            metrics.FEED.round("tasks", "tagging", tenant_id, started, 0, at_head=True)
            return Round()
        tasks = [task_from_row(r) for r in rows]
        profiles = await self._profiles(tenant_id, tasks, entries)
        async with self._db.transaction(tenant_id) as conn:
            if await cursor_store.lock_cursor(conn, tenant_id) != cursor:
                return Round()
            # The definitions as they are now that the cursor is ours (one may have changed).
            batch = _Batch(
                [task_from_row(r) for r in await definition_store.active_tasks(conn, FED_KINDS)], profiles
            )
            await self._apply(conn, tenant_id, entries, batch)
            await cursor_store.save_cursor(conn, next_cursor)
        batch.done.entries = len(entries)
        metrics.FEED.round("tasks", "tagging", tenant_id, started, len(entries), len(entries) < BATCH)
        if batch.done.granted or batch.done.reversed:
            log.info(
                "tasks feed applied",
                tenant=tenant_id,
                granted=batch.done.granted,
                reversed=batch.done.reversed,
            )
        return batch.done

    async def _profiles(
        self, tenant_id: str, tasks: Sequence[Task], entries: Sequence[FeedEntry]
    ) -> dict[str, frozenset[ProfileField]]:
        """The filled-in profile fields of members whose data changed, when a profile task is open."""
        if not any(t.definition.kind is Kind.PROFILE for t in tasks):
            return {}
        members = sorted({e.member_id for e in entries if e.kind == FeedKind.MEMBER_CHANGED})
        found = await asyncio.gather(*(self._directory.profile_fields(tenant_id, m) for m in members))
        return {m: fields for m, fields in zip(members, found, strict=True) if fields is not None}

    async def _apply(
        self, conn: Connection, tenant_id: str, entries: Sequence[FeedEntry], batch: _Batch
    ) -> None:
        facts = [e for e in entries if e.kind in FACT_KINDS]
        # Members whose registration or first order the batch may hold: their facts rows are the
        # lock invites share with the follower.
        triggering = [
            e.member_id for e in facts if e.kind in (FeedKind.MEMBER_CHANGED, FeedKind.ORDER_RECORDED)
        ]
        await invite_store.lock_member_facts(conn, tenant_id, triggering)
        registered: dict[str, dt.datetime] = {}
        first_orders: dict[str, invite_store.FirstOrder] = {}
        for e in facts:
            if e.backfilled:
                # History is no trigger: an invite waits for what the invitee does from now on.
                continue
            if e.kind == FeedKind.MEMBER_CHANGED and _registered(e):
                registered.setdefault(e.member_id, e.create_time)
            elif e.kind == FeedKind.ORDER_RECORDED and isinstance(e.payload, OrderRecorded):
                paid = e.payload.paid_time or e.create_time
                first_orders.setdefault(
                    e.member_id, invite_store.FirstOrder(e.create_time, e.payload.order_id, paid)
                )
        await invite_store.record_facts(conn, registered, first_orders)
        pending = await invite_store.pending_invites(conn, triggering)
        refunds = [e for e in facts if e.kind == FeedKind.REFUND_RECORDED]
        refunded_orders = [_refunded_order(e) for e in refunds]
        counted = await progress_store.counted_orders(conn, refunded_orders)
        batch.economy = await Economy.read(conn, facts)
        payable = {
            *(e.member_id for e in facts if self._may_pay(e, batch, counted)),
            *(member for i in pending for member in (i.inviter_member_id, i.invitee_member_id)),
            # A refund may take back order points: whether the order earned any is read once the
            # account is locked, so an earning committing meanwhile is not missed.
            *(e.member_id for e in refunds),
            *batch.economy.members(facts),
        }
        if payable:
            await ledger_store.lock_accounts_creating(conn, tenant_id, sorted(payable))
        batch.earned_points = await ledger_store.orders_with_points(
            conn, tenant_id, [(e.member_id, o) for e, o in zip(refunds, refunded_orders, strict=True)]
        )
        windowed = [t.task_id for t in batch.of(Kind.PURCHASE) if _windowed(t)]
        if windowed:
            batch.enrolled = await enrolment_store.enrolments_of(conn, sorted(payable), windowed)
        waiting = {i.invitee_member_id: i for i in pending}
        for entry in facts:
            if entry.kind == FeedKind.MEMBER_CHANGED:
                await self._member_changed(conn, tenant_id, entry, batch, waiting)
            elif entry.kind == FeedKind.ORDER_RECORDED:
                await self._order(conn, tenant_id, entry, batch, waiting)
            elif entry.kind == FeedKind.REFUND_RECORDED:
                await self._refund(conn, tenant_id, entry, batch)
            else:
                await self._event(conn, tenant_id, entry, batch)

    def _may_pay(self, entry: FeedEntry, batch: _Batch, counted_orders: set[str]) -> bool:
        """Whether the entry can move a counted task (so its member's account is locked first)."""
        if entry.backfilled and entry.kind in (FeedKind.MEMBER_CHANGED, FeedKind.EVENT_RECORDED):
            return False
        if entry.kind == FeedKind.MEMBER_CHANGED:
            return entry.member_id in batch.profiles
        if entry.kind == FeedKind.ORDER_RECORDED:
            return any(_counts(t, entry) for t in batch.of(Kind.PURCHASE))
        if entry.kind == FeedKind.REFUND_RECORDED:
            return _refunded_order(entry) in counted_orders
        return bool(batch.of(Kind.VISIT) or batch.of(Kind.EVENT))

    # --- entries -------------------------------------------------------------------------------

    async def _member_changed(
        self,
        conn: Connection,
        tenant_id: str,
        entry: FeedEntry,
        batch: _Batch,
        waiting: dict[str, invite_store.InviteRow],
    ) -> None:
        if entry.backfilled:
            return
        if _registered(entry):
            await self._trigger_invite(conn, tenant_id, entry, waiting, InviteTrigger.REGISTER, batch)
        filled = batch.profiles.get(entry.member_id)
        if filled is None:
            return
        for task in batch.of(Kind.PROFILE):
            spec = task.definition.spec
            assert isinstance(spec, ProfileSpec)
            if task.definition.valid_at(entry.create_time) and profile_complete(spec, filled):
                await self._count(
                    conn, tenant_id, task, entry.member_id, None, 1, entry, "profile complete", batch
                )

    async def _order(
        self,
        conn: Connection,
        tenant_id: str,
        entry: FeedEntry,
        batch: _Batch,
        waiting: dict[str, invite_store.InviteRow],
    ) -> None:
        if not entry.backfilled:
            await self._trigger_invite(conn, tenant_id, entry, waiting, InviteTrigger.FIRST_ORDER, batch)
        order = entry.payload
        if not isinstance(order, OrderRecorded):
            return
        # Coupon codes are written off for history too: a coupon used then is not usable again.
        await writeoff.order_entry(conn, tenant_id, entry)
        if await batch.economy.order(conn, tenant_id, entry):
            batch.earned_points.add((entry.member_id, order.order_id))
        paid = order.paid_time or entry.create_time
        for task in batch.of(Kind.PURCHASE):
            spec = task.definition.spec
            assert isinstance(spec, PurchaseSpec)
            if not _counts(task, entry) or not self._in_window(task, spec, entry.member_id, paid, batch):
                continue
            lines = matching_lines(spec, order.lines)
            if not lines:
                continue
            amount = order.amount_minor
            cycle_start = task.definition.cycle_of(task.definition.day(_counted_at(entry)))[0]
            if not await progress_store.insert_purchase(
                conn,
                tenant_id,
                task.task_id,
                entry.member_id,
                entry.subject_id,
                paid,
                amount,
                lines,
                cycle_start,
            ):
                continue
            added = order_measure(spec, CountedOrder(amount, 0, lines))
            await self._count(
                conn,
                tenant_id,
                task,
                entry.member_id,
                added,
                None,
                entry,
                f"order {entry.subject_id}",
                batch,
            )

    def _in_window(
        self, task: Task, spec: PurchaseSpec, member_id: str, paid: dt.datetime, batch: _Batch
    ) -> bool:
        if not task.definition.valid_at(paid):
            return False
        if not spec.window_days:
            return True
        enrolment = batch.enrolled.get((task.task_id, member_id))
        return enrolment is not None and enrolment.enrol_time <= paid < enrolment.window_end_time

    async def _refund(self, conn: Connection, tenant_id: str, entry: FeedEntry, batch: _Batch) -> None:
        refund = entry.payload
        if not isinstance(refund, RefundRecorded):
            return
        await writeoff.refund_entry(conn, entry)
        order_id = refund.order_id
        share = _refunded(entry, refund)
        earned = (entry.member_id, order_id) in batch.earned_points
        if earned and share is not None and await ledger.reverse_refund(conn, tenant_id, share):
            batch.done.reversed += 1
        if await batch.economy.refund(conn, tenant_id, entry, batch.budgets):
            batch.done.reversed += 1
        lines = {line.line_id: line.quantity for line in refund.lines}
        amount = refund.amount_minor
        for purchase in await progress_store.purchases_of(conn, order_id):
            row = await definition_store.task(conn, purchase.task_id)
            assert row is not None
            task = task_from_row(row)
            spec = task.definition.spec
            assert isinstance(spec, PurchaseSpec)
            after = refunded(purchase.order, lines, amount)
            await progress_store.save_refunded(conn, purchase.task_id, order_id, after)
            taken = order_measure(spec, purchase.order) - order_measure(spec, after)
            if taken:
                await self._count(
                    conn,
                    tenant_id,
                    task,
                    purchase.member_id,
                    -taken,
                    None,
                    entry,
                    f"refund {entry.subject_id}",
                    batch,
                    cycle_day=purchase.cycle_start,
                )

    async def _event(self, conn: Connection, tenant_id: str, entry: FeedEntry, batch: _Batch) -> None:
        event = entry.payload
        if entry.backfilled or not isinstance(event, EventRecorded):
            return
        occurred = event.occur_time or entry.create_time
        for task in batch.tasks:
            spec = task.definition.spec
            if not task.definition.valid_at(occurred):
                continue
            if isinstance(spec, VisitSpec) and visits(spec, event):
                await self._count(
                    conn, tenant_id, task, entry.member_id, None, 1, entry, f"visit {spec.page}", batch
                )
            elif isinstance(spec, EventSpec) and event_counts(spec, event):
                await self._count(
                    conn,
                    tenant_id,
                    task,
                    entry.member_id,
                    1,
                    None,
                    entry,
                    f"event {entry.subject_id}",
                    batch,
                )

    # --- effects -------------------------------------------------------------------------------

    async def _count(
        self,
        conn: Connection,
        tenant_id: str,
        task: Task,
        member_id: str,
        add: int | None,
        at_least: int | None,
        entry: FeedEntry,
        source: str,
        batch: _Batch,
        cycle_day: dt.date | None = None,
    ) -> None:
        """Moves the member's measure (by `add`, or up to `at_least`) and grants or takes back the
        completions the new measure supports, in the task's cycle of the entry's day (of
        `cycle_day`: a refund's order's). Refunds only take back."""
        d = task.definition
        day = d.day(_counted_at(entry))
        cycle = d.cycle_of(cycle_day or day)
        if add is not None:
            measure = await progress_store.add_measure(
                conn, tenant_id, task.task_id, member_id, cycle[0], add
            )
        else:
            assert at_least is not None
            measure = await progress_store.raise_measure(conn, tenant_id, task.task_id, member_id, at_least)
        counts = await completion_store.counts(conn, task.task_id, member_id, day, cycle)
        change = completions_change(
            measure, d.target(), d.total_limit(), d.limits.per_day, counts.total, counts.today
        )
        if add is not None and add < 0:
            change = min(change, 0)
        budget = definition_store.budget_owner(task.task_id)
        if change < 0:
            await batch.budgets.hold(conn, budget)
            for completion in await completion_store.latest_live_completions(
                conn, task.task_id, member_id, -change, cycle
            ):
                await completions.reverse(conn, tenant_id, completion, source)
                batch.done.reversed += 1
            return
        if change == 0 or task.state is not State.ACTIVE:
            return
        if not await self._participation.in_audience(tenant_id, task, member_id):
            return
        await batch.budgets.hold(conn, budget)  # outside the savepoint, which may roll back
        for _ in range(change):
            try:
                async with savepoint(conn):  # a refused grant leaves nothing behind
                    await completions.grant(
                        conn, tenant_id, task, Grant(member_id, d.reward_points, source, day), self._clock()
                    )
            except ResourceExhausted:
                return
            batch.done.granted += 1

    async def _trigger_invite(
        self,
        conn: Connection,
        tenant_id: str,
        entry: FeedEntry,
        waiting: dict[str, invite_store.InviteRow],
        trigger: int,
        batch: _Batch,
    ) -> None:
        invite = waiting.get(entry.member_id)
        if invite is None:
            return
        row = await definition_store.task(conn, invite.task_id)
        assert row is not None
        task = task_from_row(row)
        spec = task.definition.spec
        assert isinstance(spec, InviteSpec)
        if spec.trigger != trigger:
            return
        del waiting[entry.member_id]
        open_then = task.state is State.ACTIVE and task.definition.valid_at(entry.create_time)
        if not open_then or not await self._participation.in_audience(
            tenant_id, task, invite.inviter_member_id
        ):
            await invites.unpaid(conn, invite)
            return
        await batch.budgets.hold(conn, definition_store.budget_owner(task.task_id))
        try:
            await invites.complete(conn, tenant_id, task, invite, entry.create_time, self._clock())
        except ResourceExhausted:
            await invites.unpaid(conn, invite)
