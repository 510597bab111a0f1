"""Points for orders by rule (`OrderEarningRule`), so the backend sends only the order to tagging.

The rule is data, versioned per tenant and off until enabled. The tasks feed follower applies it
to every live order in the transaction that moves its cursor (`earn`): back-filled history earns
nothing, and neither does an order paid before the rule was last switched on (facts at their own
time, as a purchase task counts only orders paid while it is valid). An order earns
floor(amount / minor_units_per_point) points times the multiplier of the level the member holds
when the order is applied (tasks keeps no level history), rounded down, as a REASON_ORDER
earning whose reference is the order id and whose request id is derived from it, so the order
earns once however often the feed is read. Its return window runs from the order's paid time.
Refunds take the points back through the ledger's refund reversal, as for any order earning.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection, Database
from runtime.errors import Aborted, Violations
from runtime.tagging_feed import FeedKind, OrderRecorded
from services.tasks.economy import order_earning_store
from services.tasks.feed.source import FeedEntry
from services.tasks.points import ledger, ledger_store
from services.tasks.points.ledger import Expiry, ExpiryPolicy, Reason

MAX_MINOR_UNITS_PER_POINT = 1_000_000
NEVER = Expiry(ExpiryPolicy.NEVER)
DEFAULT_MINOR_UNITS_PER_POINT = 100
REQUEST_PREFIX = "orderEarningRule/orders/"


@dataclass(frozen=True)
class Rule:
    enabled: bool = False
    minor_units_per_point: int = DEFAULT_MINOR_UNITS_PER_POINT
    expiry: Expiry = NEVER
    return_window_days: int = 0
    version: int = 0
    update_time: dt.datetime | None = None
    # When the current run of enabled versions began (None while off).
    enabled_since: dt.datetime | None = None

    def content_hash(self) -> str:
        return ledger.content_hash(
            "order-earning-rule",
            self.enabled,
            self.minor_units_per_point,
            int(self.expiry.policy),
            self.expiry.days,
            self.return_window_days,
        )

    def points(self, amount_minor: int, multiplier_percent: int) -> int:
        """What an order of `amount_minor` earns at a level's multiplier (0 means 100), capped at
        the ledger's largest earning."""
        base = max(amount_minor, 0) // self.minor_units_per_point
        return min(base * (multiplier_percent or 100) // 100, ledger.MAX_AMOUNT)


def validate(rule: Rule, expected_version: int) -> None:
    """Violations name `rule.…` (the expiry's are added where the message is read)."""
    v = Violations()
    if not 1 <= rule.minor_units_per_point <= MAX_MINOR_UNITS_PER_POINT:
        v.add("rule.minor_units_per_point", f"must be 1 to {MAX_MINOR_UNITS_PER_POINT:,}")
    if not 0 <= rule.return_window_days <= ledger.MAX_RETURN_WINDOW_DAYS:
        v.add("rule.return_window_days", f"must be 0-{ledger.MAX_RETURN_WINDOW_DAYS}")
    if expected_version < 0:
        v.add("expected_version", "must be 0 (any) or a version number")
    v.raise_if_any()


def _rule(row: asyncpg.Record | None) -> Rule:
    if row is None:
        return Rule()
    return Rule(
        enabled=row["enabled"],
        minor_units_per_point=row["minor_units_per_point"],
        expiry=Expiry(ExpiryPolicy(row["expiry_policy"]), row["expiry_days"]),
        return_window_days=row["return_window_days"],
        version=row["version"],
        update_time=row["update_time"],
        enabled_since=row["enabled_since"],
    )


async def enabled_rule(conn: Connection) -> Rule | None:
    """The rule the follower applies in this transaction, None while it is off."""
    rule = _rule(await order_earning_store.current(conn))
    return rule if rule.enabled else None


def earning_members(rule: Rule | None, entries: Sequence[FeedEntry]) -> list[str]:
    """Members whose orders in `entries` may earn (their accounts are locked first)."""
    if rule is None:
        return []
    return [e.member_id for e in entries if _earns(rule, e) is not None]


def _earns(rule: Rule, entry: FeedEntry) -> OrderRecorded | None:
    """The entry's order when the rule applies to it: live, and paid since the rule was enabled."""
    order = entry.payload
    if entry.kind != FeedKind.ORDER_RECORDED or entry.backfilled or not isinstance(order, OrderRecorded):
        return None
    paid = order.paid_time or entry.create_time
    assert rule.enabled_since is not None
    return order if paid >= rule.enabled_since else None


async def earn(conn: Connection, tenant_id: str, rule: Rule | None, entry: FeedEntry) -> bool:
    """Pays the entry's order under the rule (the member's account locked by the caller); whether
    the order holds the rule's points now (earned here or on an earlier read of the feed)."""
    order = None if rule is None else _earns(rule, entry)
    if rule is None or order is None:
        return False
    points = rule.points(
        order.amount_minor, await order_earning_store.multiplier_percent(conn, entry.member_id)
    )
    if points <= 0:
        return False
    available = (order.paid_time or entry.create_time) + dt.timedelta(days=rule.return_window_days)
    written = await ledger_store.add_earning(
        conn,
        tenant_id,
        ledger_store.NewEntry(
            member_id=entry.member_id,
            delta=points,
            reason=Reason.ORDER,
            reference=order.order_id,
            note=f"order earning rule v{rule.version}",
            request_id=REQUEST_PREFIX + order.order_id,
            content_hash=ledger.content_hash("order-earning", entry.member_id, order.order_id),
            available_time=available,
            expire_time=rule.expiry.expire_time(available),
        ),
        order.order_id,
    )
    return written is not None


class OrderEarningRules:
    """GetOrderEarningRule and UpdateOrderEarningRule."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def rule(self, tenant_id: str) -> Rule:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return _rule(await order_earning_store.current(conn))

    async def update(self, tenant_id: str, rule: Rule, expected_version: int, now: dt.datetime) -> Rule:
        """Stores the rule as a new version unless it equals the current one. Two first versions
        written at once meet on the primary key: the loser runs again and sees the winner."""
        validate(rule, expected_version)
        try:
            return await self._update(tenant_id, rule, expected_version, now)
        except asyncpg.UniqueViolationError:
            return await self._update(tenant_id, rule, expected_version, now)

    async def _update(self, tenant_id: str, rule: Rule, expected_version: int, now: dt.datetime) -> Rule:
        digest = rule.content_hash()
        async with self._db.transaction(tenant_id) as conn:
            current = _rule(await order_earning_store.current(conn, lock=True))
            if current.version and digest == current.content_hash():
                return current
            if expected_version and expected_version != current.version:
                raise Aborted(
                    f"the order earning rule is at version {current.version}, not {expected_version}"
                )
            since = None
            if rule.enabled:
                since = current.enabled_since if current.enabled else now
            row = await order_earning_store.insert(
                conn,
                tenant_id,
                current.version + 1,
                rule.enabled,
                rule.minor_units_per_point,
                int(rule.expiry.policy),
                rule.expiry.days,
                rule.return_window_days,
                since,
                digest,
            )
        return _rule(row)
