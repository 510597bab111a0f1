"""The points ledger's rules, free of SQL and gRPC.

Points live in lots: each earning (or positive adjustment) makes one lot with the time it becomes
available (later than now for order points inside a return window) and the time it expires. A
member's balance is the sum of what is left in the lots; spending draws from the soonest-expiring
available lot first (never-expiring lots last, older first among equals). `Ledger` runs each rule
in one tenant transaction that first locks the member's account row, so writes of one member
serialise and a balance can never be overdrawn.
"""

from __future__ import annotations

import calendar
import datetime as dt
import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from runtime import checks, page_tokens
from runtime.batching import KeyedBatcher
from runtime.db import Connection, Database
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Violations
from services.tasks import time_span
from services.tasks.points import ledger_store
from services.tasks.points.ledger_store import Entry, OpenLot

MAX_AMOUNT = 100_000_000
MAX_ID = 128
MAX_NOTE = 1024
MAX_EXPIRY_DAYS = 3650
MAX_RETURN_WINDOW_DAYS = 365
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_EXPIRING_DAYS = 30
EXPIRY_BATCH = 500
# Earnings of concurrent calls are written together (runtime/batching.py): at most this
# many statements at once, each with up to this many earnings. One at a time measured best on two
# cores: the batches are larger, and fewer backends contend for the same index pages (docs/decisions.md).
EARNING_BATCHES_IN_FLIGHT = 1
MAX_EARNING_BATCH = 64


class Reason(enum.IntEnum):
    """The numbers of memberops.tasks.v1.Reason, stored as they are."""

    TASK = 1
    ORDER = 2
    OPERATOR = 3
    REDEMPTION = 4
    EXPIRY = 5
    ORDER_REVERSAL = 6
    TASK_REVERSAL = 7


class ExpiryPolicy(enum.IntEnum):
    """The numbers of memberops.tasks.v1.ExpiryPolicy."""

    NEVER = 1
    ROLLING_DAYS = 2
    END_OF_MONTH = 3
    END_OF_YEAR = 4


@dataclass(frozen=True)
class Expiry:
    policy: ExpiryPolicy
    days: int = 0

    def expire_time(self, available: dt.datetime) -> dt.datetime | None:
        """When points that become available at `available` expire (UTC calendar for month/year)."""
        at = available.astimezone(dt.UTC)
        if self.policy is ExpiryPolicy.NEVER:
            return None
        if self.policy is ExpiryPolicy.ROLLING_DAYS:
            return at + dt.timedelta(days=self.days)
        if self.policy is ExpiryPolicy.END_OF_MONTH:
            last = calendar.monthrange(at.year, at.month)[1]
            return dt.datetime(at.year, at.month, last, tzinfo=dt.UTC) + dt.timedelta(days=1)
        return dt.datetime(at.year + 1, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Earn:
    member_id: str
    amount: int
    reason: Reason
    reference: str
    expiry: Expiry
    return_window_days: int
    request_id: str


@dataclass(frozen=True)
class Spend:
    member_id: str
    amount: int
    reference: str
    request_id: str
    reason: Reason = Reason.REDEMPTION


@dataclass(frozen=True)
class Adjust:
    member_id: str
    delta: int
    operator: str
    note: str
    expiry: Expiry
    request_id: str


@dataclass(frozen=True)
class Balance:
    member_id: str
    available: int
    pending: int
    expiring: int
    next_expire_time: dt.datetime | None


@dataclass(frozen=True)
class ExpiryRun:
    lots: int
    points: int


# --- validation ----------------------------------------------------------------------------------


def check_id(v: Violations, field: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            v.add(field, "is required")
    elif len(value) > MAX_ID:
        v.add(field, f"must be at most {MAX_ID} characters")
    elif not value.isprintable():
        v.add(field, "must be printable text")


def check_member_id(v: Violations, field: str, value: str, *, required: bool = True) -> None:
    """A member id by tagging's rule (`checks.natural_id`): an id tagging refuses names no member,
    and asking tagging about it would only fail."""
    if not value:
        if required:
            v.add(field, "is required")
    else:
        checks.natural_id(value, v, field)


def check_amount(v: Violations, field: str, amount: int) -> None:
    if amount <= 0:
        v.add(field, "must be positive")
    elif amount > MAX_AMOUNT:
        v.add(field, f"must be at most {MAX_AMOUNT:,}")


def expiry(
    v: Violations, policy: int, days: int, *, default: ExpiryPolicy | None = None, prefix: str = ""
) -> Expiry:
    """The expiry of a request's `expiry_policy`/`expiry_days`; violations name those fields (after
    `prefix`, e.g. `task.`)."""
    if policy == 0 and default is not None:
        policy = default
    if policy not in ExpiryPolicy.__members__.values():
        v.add(f"{prefix}expiry_policy", "must be NEVER, ROLLING_DAYS, END_OF_MONTH or END_OF_YEAR")
        return Expiry(ExpiryPolicy.NEVER)
    chosen = ExpiryPolicy(policy)
    if chosen is ExpiryPolicy.ROLLING_DAYS:
        if not 1 <= days <= MAX_EXPIRY_DAYS:
            v.add(f"{prefix}expiry_days", f"must be 1-{MAX_EXPIRY_DAYS} for ROLLING_DAYS")
    elif days != 0:
        v.add(f"{prefix}expiry_days", "is only for ROLLING_DAYS")
    return Expiry(chosen, days)


def validate_earn(earn: Earn) -> None:
    v = Violations()
    check_member_id(v, "member_id", earn.member_id)
    check_amount(v, "amount", earn.amount)
    check_id(v, "reference", earn.reference)
    if earn.return_window_days and earn.reason is not Reason.ORDER:
        v.add("return_window_days", "is only for REASON_ORDER")
    elif not 0 <= earn.return_window_days <= MAX_RETURN_WINDOW_DAYS:
        v.add("return_window_days", f"must be 0-{MAX_RETURN_WINDOW_DAYS}")
    check_id(v, "request_id", earn.request_id)
    v.raise_if_any()


def earn_reason(v: Violations, value: int) -> Reason:
    """What an earning is for: a task or an order."""
    if value not in (Reason.TASK, Reason.ORDER):
        v.add("reason", "must be REASON_TASK or REASON_ORDER")
        return Reason.TASK
    return Reason(value)


def validate_spend(spend: Spend) -> None:
    v = Violations()
    check_member_id(v, "member_id", spend.member_id)
    check_amount(v, "amount", spend.amount)
    check_id(v, "reference", spend.reference)
    check_id(v, "request_id", spend.request_id)
    v.raise_if_any()


def validate_adjust(adjust: Adjust) -> None:
    v = Violations()
    check_member_id(v, "member_id", adjust.member_id)
    if adjust.delta == 0:
        v.add("delta", "must not be zero")
    elif abs(adjust.delta) > MAX_AMOUNT:
        v.add("delta", f"must be at most {MAX_AMOUNT:,} either way")
    check_id(v, "operator", adjust.operator)
    if not adjust.note:
        v.add("note", "is required: say why")
    elif len(adjust.note) > MAX_NOTE:
        v.add("note", f"must be at most {MAX_NOTE} characters")
    check_id(v, "request_id", adjust.request_id)
    v.raise_if_any()


def content_hash(*parts: object) -> str:
    """What a request asked for, so a reused request id with other content is recognised."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()


# --- spending ------------------------------------------------------------------------------------


def draw(lots: Sequence[OpenLot], amount: int) -> list[tuple[int, int]]:
    """(lot id, points taken) drawing `amount` from `lots` in the order given (soonest expiry first).

    FAILED_PRECONDITION when the lots hold less than `amount`.
    """
    taken: list[tuple[int, int]] = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        take = min(lot.remaining, left)
        taken.append((lot.lot_id, take))
        left -= take
    if left:
        available = amount - left
        raise FailedPrecondition(f"insufficient points: {available} available, {amount} asked")
    return taken


# --- paging --------------------------------------------------------------------------------------


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 1-{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
    return value


# --- earnings written with other changes ---------------------------------------------------------


def task_earning(
    member_id: str, points: int, task_id: str, note: str, expiry: Expiry, now: dt.datetime
) -> ledger_store.NewEntry:
    """The entry paying a task completion: reason TASK, the task id as reference and the completion
    in the note. It carries no request id: the completion row, written in the same transaction,
    is what makes it happen once."""
    return ledger_store.NewEntry(
        member_id=member_id,
        delta=points,
        reason=Reason.TASK,
        reference=task_id,
        note=note,
        available_time=now,
        expire_time=expiry.expire_time(now),
    )


async def earn_within(conn: Connection, tenant_id: str, entry: ledger_store.NewEntry) -> Entry:
    """Writes an earning and its lot inside the caller's transaction, through the same function
    EarnPoints uses (which locks the member's account first)."""
    written = await ledger_store.add_earning(conn, tenant_id, entry, None)
    assert written is not None, "an earning that is not for an order is never refused"
    return written


# --- the ledger ----------------------------------------------------------------------------------


Earning = tuple[ledger_store.NewEntry, str | None]  # the entry, and the order it is for


@dataclass(frozen=True)
class Refunded:
    """A refund as tagging's feed reports it, with where its order stands after it."""

    member_id: str
    order_id: str
    refund_id: str
    order_amount: int
    refunded_amount: int
    in_full: bool


def refunds_claim(earned: int, refunded: Refunded) -> int:
    """The points an order's refunds so far take back of the `earned`: all of them once the order
    is refunded in full, else the refunded share of its amount, rounded down (so several partial
    refunds add up to what one refund of their sum would take)."""
    if refunded.in_full:
        return earned
    if refunded.order_amount <= 0:
        return 0
    return earned * min(refunded.refunded_amount, refunded.order_amount) // refunded.order_amount


async def reverse_refund(conn: Connection, tenant_id: str, refunded: Refunded) -> Entry | None:
    """Takes back the refund's share of what its order earned the member, in the caller's
    transaction, which holds the member's account lock. Nothing when the order earned nothing,
    was reversed whole, or this refund was applied already; what is spent or expired is shortfall."""
    member_id, order_id = refunded.member_id, refunded.order_id
    note = f"refund {refunded.refund_id}"
    if await ledger_store.reversal(conn, tenant_id, member_id, order_id) is not None:
        return None
    if await ledger_store.reversal(conn, tenant_id, member_id, order_id, note) is not None:
        return None
    points = await ledger_store.order_points(conn, tenant_id, member_id, order_id)
    claim = refunds_claim(points.earned, refunded) - points.claimed
    if claim <= 0:
        return None
    taken = await ledger_store.take_from_order_lots(conn, tenant_id, member_id, order_id, claim)
    return await ledger_store.insert_entry(
        conn,
        tenant_id,
        ledger_store.NewEntry(
            member_id=member_id,
            delta=-taken,
            reason=Reason.ORDER_REVERSAL,
            reference=order_id,
            note=note,
            shortfall=claim - taken,
        ),
    )


class Members(Protocol):
    async def require_member(self, tenant_id: str, member_id: str) -> None:
        """NOT_FOUND unless tagging knows the member."""
        ...


class Ledger:
    """Points of members tagging knows: a write for an unknown member is NOT_FOUND, not an account."""

    def __init__(self, db: Database, members: Members) -> None:
        self._db = db
        self._members = members
        self._earnings = KeyedBatcher(
            self._write_earnings, in_flight=EARNING_BATCHES_IN_FLIGHT, max_size=MAX_EARNING_BATCH
        )

    async def earn(self, tenant_id: str, earn: Earn, now: dt.datetime) -> Entry:
        validate_earn(earn)
        await self._members.require_member(tenant_id, earn.member_id)
        digest = content_hash(
            "earn",
            earn.member_id,
            earn.amount,
            earn.reason,
            earn.reference,
            earn.expiry,
            earn.return_window_days,
        )
        available = now + dt.timedelta(days=earn.return_window_days)
        order_id = earn.reference if earn.reason is Reason.ORDER else None

        entry = ledger_store.NewEntry(
            member_id=earn.member_id,
            delta=earn.amount,
            reason=earn.reason,
            reference=earn.reference,
            request_id=earn.request_id,
            content_hash=digest,
            available_time=available,
            expire_time=earn.expiry.expire_time(available),
        )
        return await _once(lambda: self._add(tenant_id, entry, order_id))

    async def spend(self, tenant_id: str, spend: Spend, now: dt.datetime) -> Entry:
        validate_spend(spend)
        await self._members.require_member(tenant_id, spend.member_id)
        digest = content_hash("spend", spend.member_id, spend.amount, spend.reference)
        entry = ledger_store.NewEntry(
            member_id=spend.member_id,
            delta=-spend.amount,
            reason=spend.reason,
            reference=spend.reference,
            request_id=spend.request_id,
            content_hash=digest,
        )
        return await _once(lambda: self._draw(tenant_id, entry, now))

    async def adjust(self, tenant_id: str, adjust: Adjust, now: dt.datetime) -> Entry:
        validate_adjust(adjust)
        await self._members.require_member(tenant_id, adjust.member_id)
        digest = content_hash(
            "adjust", adjust.member_id, adjust.delta, adjust.operator, adjust.note, adjust.expiry
        )
        entry = ledger_store.NewEntry(
            member_id=adjust.member_id,
            delta=adjust.delta,
            reason=Reason.OPERATOR,
            operator=adjust.operator,
            note=adjust.note,
            request_id=adjust.request_id,
            content_hash=digest,
            available_time=now if adjust.delta > 0 else None,
            expire_time=adjust.expiry.expire_time(now) if adjust.delta > 0 else None,
        )
        if adjust.delta < 0:
            return await _once(lambda: self._draw(tenant_id, entry, now))
        return await _once(lambda: self._add(tenant_id, entry, None))

    async def _add(self, tenant_id: str, entry: ledger_store.NewEntry, order_id: str | None) -> Entry:
        """Writes an earning and its lot, unless its request id was seen or its order reversed."""
        written = await self._earnings.submit(tenant_id, (entry, order_id))
        if written is None:
            raise FailedPrecondition(f"order {order_id!r} was reversed; it earns no more points")
        return _first_result(written, entry.content_hash, entry.request_id)

    async def _write_earnings(self, tenant_id: str, earnings: Sequence[Earning]) -> Sequence[Entry | None]:
        """Writes a batch in member-id order (the lock order). When the statement fails, every
        earning in it fails with that error; on a request id another process took first (a unique
        violation), `_once` writes each again, which then finds the entry that won."""
        if len(earnings) == 1:
            return [await ledger_store.add_earning(self._db.pool, tenant_id, *earnings[0])]
        order = sorted(range(len(earnings)), key=lambda i: earnings[i][0].member_id)
        written = await ledger_store.add_earnings(self._db.pool, tenant_id, [earnings[i] for i in order])
        outcomes: list[Entry | None] = [None] * len(earnings)
        for i, outcome in zip(order, written, strict=True):
            outcomes[i] = outcome
        return outcomes

    async def _draw(self, tenant_id: str, entry: ledger_store.NewEntry, now: dt.datetime) -> Entry:
        """Spends `-entry.delta` points from the soonest-expiring available lots."""
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, entry.member_id)
            first = await ledger_store.entry_by_request(conn, tenant_id, entry.request_id)
            if first is not None:
                return _first_result(first, entry.content_hash, entry.request_id)
            lots = await ledger_store.spendable_lots(conn, tenant_id, entry.member_id, now)
            taken = draw(lots, -entry.delta)
            return await ledger_store.insert_draw(conn, tenant_id, entry, taken)

    async def reverse_order(self, tenant_id: str, member_id: str, order_id: str) -> Entry:
        v = Violations()
        check_member_id(v, "member_id", member_id)
        check_id(v, "order_id", order_id)
        v.raise_if_any()
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, member_id)
            first = await ledger_store.reversal(conn, tenant_id, member_id, order_id)
            if first is not None:
                return first
            points = await ledger_store.order_points(conn, tenant_id, member_id, order_id)
            if points.earned == 0:
                raise NotFound(f"order {order_id!r} earned member {member_id!r} no points")
            _, left = await ledger_store.take_order_lots(conn, tenant_id, member_id, order_id)
            return await ledger_store.insert_entry(
                conn,
                tenant_id,
                ledger_store.NewEntry(
                    member_id=member_id,
                    delta=-left,
                    reason=Reason.ORDER_REVERSAL,
                    reference=order_id,
                    # What refunds took back before is not missing.
                    shortfall=max(points.earned - points.claimed - left, 0),
                ),
            )

    async def balance(self, tenant_id: str, member_id: str, within_days: int, now: dt.datetime) -> Balance:
        v = Violations()
        check_member_id(v, "member_id", member_id)
        if not 0 <= within_days <= MAX_EXPIRY_DAYS:
            v.add("expiring_within_days", f"must be 0-{MAX_EXPIRY_DAYS}")
        v.raise_if_any()
        horizon = now + dt.timedelta(days=within_days or DEFAULT_EXPIRING_DAYS)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await ledger_store.balance(conn, tenant_id, member_id, now, horizon)
        return Balance(member_id, row.available, row.pending, row.expiring, row.next_expire_time)

    async def entries(self, tenant_id: str, member_id: str, size: int, token: str) -> tuple[list[Entry], str]:
        v = Violations()
        check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        limit = page_size(size)
        before = page_tokens.decode_one(token, f"entries/{member_id}", int)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            page = await ledger_store.entries(conn, tenant_id, member_id, before, limit + 1)
        if len(page) > limit:
            return page[:limit], page_tokens.encode(f"entries/{member_id}", page[limit - 1].entry_id)
        return page, ""

    async def expire(self, tenant_id: str, asked: dt.datetime | None, now: dt.datetime) -> ExpiryRun:
        """Expires every lot due at `asked` (default `now`, never ahead of it: expiry cannot be
        undone), a batch of members per transaction, each member locked."""
        v = Violations()
        as_of = time_span.as_of(asked, now, v)
        v.raise_if_any()
        lots = points = 0
        while True:
            async with self._db.transaction(tenant_id) as conn:
                members = await ledger_store.members_with_expired_lots(conn, tenant_id, as_of, EXPIRY_BATCH)
                if not members:
                    return ExpiryRun(lots, points)
                await ledger_store.lock_accounts(conn, tenant_id, members)
                expired = await ledger_store.expire_lots(conn, tenant_id, members, as_of)
            lots += len(expired)
            points += sum(expired)


def _first_result(entry: Entry, digest: str, request_id: str) -> Entry:
    if entry.content_hash != digest:
        raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
    return entry


async def _once(write: ledger_store.Write) -> Entry:
    """Runs a write; when another member's write took the same request id first, runs it again,
    which then finds that entry and answers ALREADY_EXISTS (or its result, if the content agrees)."""
    try:
        return await write()
    except asyncpg.UniqueViolationError:
        return await write()
