"""Existence tests answered from the recency summaries (migration 0012) instead of the raw facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.tagging.rules._language import EVENT_FUNCTIONS, LINE_FUNCTIONS

if TYPE_CHECKING:
    from services.tagging.rules._compiler import AggregateKey, Builder


@dataclass(frozen=True)
class Recency:
    """An existence test answered from a recency summary row `r` (one per member, kind and
    category): there is a fact in the window exactly when a matching row's last time is in it, or,
    for a row whose last time is after the evaluation time (a fact dated in the future hides those
    before it), when the raw facts say so."""

    # `FROM <summary> r WHERE <kind and category filters>`
    source: str
    # The row's last time is in the window and not after the evaluation time.
    recent: str
    # The row's last time is after the evaluation time and a raw fact of it is in the window.
    future: str

    def exists(self, member: str) -> str:
        """`SELECT 1` of the rows that put `member` in."""
        return f"SELECT 1 {self.source} AND r.member_id = {member} AND (({self.recent}) OR ({self.future}))"

    def members(self) -> str:
        """`SELECT member_id` of every member it puts in (a member may come more than once)."""
        return (
            f"SELECT r.member_id {self.source} AND {self.recent} "
            f"UNION ALL SELECT r.member_id {self.source} AND {self.future}"
        )

    def distinct_members(self) -> str:
        """The members of its recent rows, once each: a statement to estimate how many members it
        puts in (a member has a row per kind and category; rows dated ahead are normally none)."""
        return f"SELECT DISTINCT r.member_id {self.source} AND {self.recent}"

    def none(self, member: str) -> str:
        """That nothing puts `member` in, as two NOT EXISTS: one over the recent rows the planner can
        estimate and anti-join, one over the (normally no) rows dated after the evaluation time."""
        return (
            f"(NOT EXISTS (SELECT 1 {self.source} AND r.member_id = {member} AND {self.recent}) "
            f"AND NOT EXISTS (SELECT 1 {self.source} AND r.member_id = {member} AND {self.future}))"
        )


def summarised(key: AggregateKey) -> bool:
    """Whether a summary holds what an existence test of `key` asks: events by kind and category,
    kept order lines by category; not brands or skus, and not orders as a whole (an order without
    lines, or refunded by amount, counts differently there)."""
    if key.brands or key.skus:
        return False
    return key.function in EVENT_FUNCTIONS | LINE_FUNCTIONS or key.has_line_filter


def of_events(key: AggregateKey) -> bool:
    """Whether the events' summary (by kind and category) answers a summarised `key`, rather than
    the purchases' (by category)."""
    return key.function in EVENT_FUNCTIONS


def recency_of(key: AggregateKey, b: Builder, now: str) -> Recency | None:
    """The summary form of an existence test of `key`, or None when no summary holds it."""
    if not summarised(key):
        return None
    if of_events(key):
        table, last = b.relations.event_recency, "r.last_time"
        raw_from, raw_time = f"{b.relations.events} e", "e.occur_time"
        raw_match = ["e.member_id = r.member_id", "e.kind = r.kind", "e.category = r.category"]
        filters = [f"r.kind = ANY({b.param(list(key.event_kinds), 'smallint[]')})"] if key.event_kinds else []
    else:
        table, last = b.relations.purchase_recency, "r.last_paid_time"
        raw_from, raw_time = f"{b.relations.order_lines} l", "l.paid_time"
        raw_match = [
            "l.member_id = r.member_id",
            "l.category = r.category",
            "l.quantity > l.refunded_quantity",
        ]
        filters = []
    if key.categories:
        filters.append(f"r.category = ANY({b.param(list(key.categories), 'text[]')})")
    # One parameter for both windows, so the recent part alone is a statement with no unused one.
    days = b.param(key.window_days, "int") if key.window_days else None
    raw = f"SELECT 1 FROM {raw_from} WHERE {' AND '.join(raw_match + window_of(raw_time, now, days))}"
    return Recency(
        source=f"FROM {table} r WHERE {' AND '.join(filters) or 'true'}",
        recent=" AND ".join(window_of(last, now, days)),
        future=f"{last} > {now} AND EXISTS ({raw})",
    )


def window_of(column: str, now: str, days: str | None) -> list[str]:
    """The conditions that put `column` at or before `now` and, given `days`, within that many days
    of it; shared with the aggregates so a summary and the raw facts agree on every window."""
    where = [f"{column} <= {now}"]
    if days is not None:
        where.append(f"{column} > {now} - make_interval(days => {days})")
    return where
