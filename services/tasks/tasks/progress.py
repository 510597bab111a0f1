"""Counted tasks (purchase, event, visit, profile): what a fact adds to a member's measure, and
how many completions a measure supports.

A member's completions of a counted task follow from the measure alone: floor(measure / target),
at most the task's total limit. When a fact raises the measure, the missing completions are
granted (at most the daily limit's remainder on the fact's day; the rest wait for the next fact);
when a refund lowers it, the newest completions beyond what it supports are taken back. The
measure of a purchase is recomputed from the lines the task counted, so a refund takes back
exactly what its order added and nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.tagging_feed import EventKind, EventRecorded, OrderLine
from services.tasks.tasks.definitions import (
    EventSpec,
    Measure,
    ProfileField,
    ProfileSpec,
    PurchaseSpec,
    VisitSpec,
)


@dataclass(frozen=True)
class CountedLine:
    line_id: str
    quantity: int
    refunded: int
    unit_price_minor: int

    @property
    def net(self) -> int:
        return self.quantity - self.refunded


@dataclass(frozen=True)
class CountedOrder:
    """An order as one purchase task counts it: its amounts and the lines matching the filters."""

    amount_minor: int
    refunded_minor: int
    lines: tuple[CountedLine, ...]


def order_measure(spec: PurchaseSpec, order: CountedOrder) -> int:
    """What the order adds: its matching items net of returns, 1 while one of them is not wholly
    returned, or the amount net of refunds (the matching lines' value when filtered)."""
    items = sum(line.net for line in order.lines)
    if spec.measure == Measure.ITEMS:
        return items
    if spec.measure == Measure.ORDERS:
        return 1 if items > 0 else 0
    if spec.filtered:
        return sum(line.net * line.unit_price_minor for line in order.lines)
    return max(order.amount_minor - order.refunded_minor, 0)


def matching_lines(spec: PurchaseSpec, lines: Sequence[OrderLine]) -> tuple[CountedLine, ...]:
    """The lines of an order as tagging's feed gives them that the task counts."""
    return tuple(
        CountedLine(line.line_id, line.quantity, 0, line.unit_price_minor)
        for line in lines
        if spec.matches(line.category, line.brand, line.sku)
    )


def refunded(order: CountedOrder, refund_lines: Mapping[str, int], amount_minor: int) -> CountedOrder:
    """The order after a refund of `refund_lines` (line id to quantity) and `amount_minor`; lines
    the task did not count are ignored, and nothing is refunded beyond what was bought."""
    lines = tuple(
        CountedLine(
            line.line_id,
            line.quantity,
            min(line.quantity, line.refunded + refund_lines.get(line.line_id, 0)),
            line.unit_price_minor,
        )
        for line in order.lines
    )
    return CountedOrder(
        order.amount_minor, min(order.amount_minor, order.refunded_minor + amount_minor), lines
    )


def event_counts(spec: EventSpec, event: EventRecorded) -> bool:
    """Whether a behaviour event (as in tagging's feed) counts for an event task."""
    return event.kind == spec.event_kind and all(
        not wanted or got == wanted
        for got, wanted in (
            (event.sku, spec.sku),
            (event.category, spec.category),
            (event.brand, spec.brand),
            (event.channel, spec.channel),
        )
    )


def visits(spec: VisitSpec, event: EventRecorded) -> bool:
    """A visit is a VIEW event whose channel is the page."""
    return event.kind == EventKind.VIEW and event.channel == spec.page


def profile_complete(spec: ProfileSpec, filled: frozenset[ProfileField]) -> bool:
    return all(field in filled for field in spec.required_fields)


def completions_change(
    measure: int, target: int, total_limit: int, per_day: int, granted: int, granted_today: int
) -> int:
    """Completions to grant (positive) or take back (negative) for `measure`, given those granted
    (in all and on the fact's day) and the limits (0: none)."""
    due = measure // target
    if total_limit:
        due = min(due, total_limit)
    change = due - granted
    if change > 0 and per_day:
        change = min(change, max(per_day - granted_today, 0))
    return change
