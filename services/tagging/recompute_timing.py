"""When a dimension's value can change by time alone, read from its rules or model.

The incremental recompute (evaluation.py) evaluates a member again only when their facts changed
or when time may have moved their value. Time reaches a rule in few ways: a fact enters the
evaluation when its time comes (facts after `now` are ignored) and leaves a window `N` days later; a
"days since" figure crosses a compared number `c` at the fact's time plus `c` days; an age changes
at a birthday. So a dimension's `Timing` lists, per kind of time (orders, events, registration),
the day offsets after which a member's value may change; each member's next moment is the earliest
fact time plus offset still ahead. due_store.py finds the members whose moment came since the
previous recompute: by the facts' own times for fact offsets, from stored moments for the rest.

The offsets may over-approximate (a filter is ignored, any fact stands for the last one): a member
evaluated early only costs an evaluation. They must never miss a moment, so a model this module
does not know is a population model, evaluated for every member every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from memberops.tagging.v1 import facts_pb2, models_pb2, rules_pb2

from services.tagging import catalog, models

Fn = rules_pb2.AggregateFunction
Field = rules_pb2.ProfileField
_EVENT_FUNCTIONS = {Fn.AGGREGATE_FUNCTION_EVENT_COUNT, Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_EVENT}
# Functions of the count of counted orders in the window (no line filter), as the factor from the
# compared number to a count (rules/_compiler.py: ORDERS_PER_MONTH is count * 30 / window).
_ORDER_COUNTS: dict[int, Callable[[int], float]] = {
    Fn.AGGREGATE_FUNCTION_ORDER_COUNT: lambda window: 1.0,
    Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH: lambda window: max(window, 1) / 30.0,
}
_DAYS_SINCE = {Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_ORDER, Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_EVENT}


@dataclass(frozen=True)
class Repurchase:
    """The repurchase-due model's own moment: the last order plus the member's mean gap between
    orders times `tolerance_percent` / 100, for members with `min_orders` counted orders."""

    min_orders: int
    tolerance_percent: int
    window_days: int


@dataclass(frozen=True)
class Timing:
    """Day offsets after each order's paid time, each event's time and the registration at which
    a member's value may change; `birthday`: an age is compared. Empty: only facts change it."""

    population: bool = False
    orders: frozenset[int] = frozenset()
    events: frozenset[int] = frozenset()
    # The only event kinds read (a click-only model is not moved by views); None: every kind.
    event_kinds: frozenset[int] | None = None
    # Day offsets after the member's latest counted order (paid by now, not wholly refunded) only:
    # a threshold on the days since it (lifecycle), which no earlier order can cross.
    latest_order: frozenset[int] = frozenset()
    registration: frozenset[int] = frozenset()
    birthday: bool = False
    repurchase: Repurchase | None = None
    # Counts of counted orders in an N-day window, read only through comparisons with numbers:
    # (N, counts m such that the window's count falling from m to m - 1 may change the value). An
    # order leaving the window changes nothing unless it makes the count fall through one of them.
    order_counts: frozenset[tuple[int, frozenset[int]]] = frozenset()
    # Windows of days over which the categories bought are read (categories_bought): a category
    # leaves only with its latest kept line.
    category_exits: frozenset[int] = frozenset()

    @property
    def kept(self) -> bool:
        """Whether a member's next moment must be kept (due_store.store_due): one that depends on
        all of their facts (the latest order, the mean gap, a count, a category's latest line) or on
        their profile. A fact's own time plus an offset needs none: the next recompute finds the
        facts whose moment passed since the previous one by their time alone (due_store.due_members)."""
        return bool(
            self.latest_order
            or self.registration
            or self.birthday
            or self.repurchase
            or self.order_counts
            or self.category_exits
        )

    @property
    def timeless(self) -> bool:
        return not (self.orders or self.events or self.kept)


def of(spec: catalog.DefinitionInput) -> Timing:
    """The timing of an evaluated dimension's current definition."""
    if spec.kind == catalog.Kind.MODEL:
        return _model(spec.model)
    t = _Collect()
    for value in spec.values:
        if value.rule is not None:
            t.rule(value.rule)
    return t.timing()


def _facts(window_days: int) -> frozenset[int]:
    """A fact read over a window: its time (a future fact enters) and when it leaves the window."""
    return frozenset({0, window_days} if window_days else {0})


def _model(model: models_pb2.Model | None) -> Timing:
    which = model.WhichOneof("model") if model is not None else None
    if model is None or which is None:
        return Timing(population=True)
    params = getattr(model, which)
    known = models.INFO.get(which)
    if known is not None and known.population:
        # The population's thresholds are recomputed every time (models.KeptFigures); a member's
        # own figures move when an order enters or leaves the window.
        return Timing(population=True, orders=_facts(params.window_days))
    if which == "lifecycle":
        # Every order enters when paid (0); the thresholds count from the latest counted one.
        return Timing(
            orders=frozenset({0}),
            latest_order=frozenset({params.new_days, params.active_days, params.churn_days}),
            registration=frozenset({0, params.new_days}),
        )
    if which == "categories_bought" and params.window_days:
        # A category is bought while any kept line of it is in the window: it leaves with the
        # latest one, whatever leaves before.
        return Timing(orders=frozenset({0}), category_exits=frozenset({params.window_days}))
    if which in ("categories_bought", "category_preference"):
        return Timing(orders=_facts(params.window_days))
    if which == "interest":
        kinds = frozenset(int(k) for k in params.event_kinds)
        return Timing(orders=_facts(params.window_days), events=_facts(params.window_days), event_kinds=kinds)
    if which == "preferred_send_hour":
        clicks = frozenset({int(facts_pb2.EVENT_KIND_CLICK)})
        return Timing(
            orders=_facts(params.window_days), events=_facts(params.window_days), event_kinds=clicks
        )
    if which == "repurchase_due":
        return Timing(
            orders=_facts(params.window_days),
            repurchase=Repurchase(params.min_orders, params.tolerance_percent, params.window_days),
        )
    return Timing(population=True)


def _counts(values: Iterable[rules_pb2.Value], per: float) -> set[int]:
    """The counts m from which a fall to m - 1 may change a comparison of `count / per` with these
    numbers: those with v in [m - 1, m], v = number * per, so m in [v, v + 1]; from floor(v) to
    ceil(v) + 1 against the rounding of a scaled number. Always 1: the last order leaving takes the
    aggregate's row away."""
    found = {1}
    for value in values:
        if value.WhichOneof("kind") == "number" and math.isfinite(value.number):
            v = value.number * per
            found |= {m for m in range(math.floor(v), math.ceil(v) + 2) if m >= 1}
    return found


def _crossings(values: Iterable[rules_pb2.Value]) -> set[int]:
    """The whole day counts at which a comparison of a day count with these numbers may change."""
    found: set[int] = set()
    for value in values:
        if value.WhichOneof("kind") == "number" and math.isfinite(value.number):
            found |= {math.floor(value.number), math.floor(value.number) + 1, math.ceil(value.number)}
    return found


class _Collect:
    def __init__(self) -> None:
        self.orders: set[int] = set()
        self.events: set[int] = set()
        self.registration: set[int] = set()
        self.birthday = False
        # Per window, the counts through which an order count read only by comparison may fall.
        self.order_counts: dict[int, set[int]] = {}
        # The event kinds the event aggregates filter on; None once one reads every kind.
        self.event_kinds: set[int] | None = set()

    def timing(self) -> Timing:
        # A window whose every exit is a moment already (another aggregate reads it) needs no count.
        counts = frozenset(
            (days, frozenset(found)) for days, found in self.order_counts.items() if days not in self.orders
        )
        return Timing(
            order_counts=counts,
            orders=frozenset(self.orders),
            events=frozenset(self.events),
            registration=frozenset(self.registration),
            birthday=self.birthday,
            event_kinds=frozenset(self.event_kinds) if self.event_kinds is not None else None,
        )

    def rule(self, rule: rules_pb2.Rule) -> None:
        node = rule.WhichOneof("node")
        if node in ("all", "any"):
            for child in getattr(rule, node).rules:
                self.rule(child)
        elif node == "not":
            self.rule(getattr(rule, "not"))
        elif node == "condition":
            self.condition(rule.condition)

    def condition(self, condition: rules_pb2.Condition) -> None:
        operand = condition.operand
        source = operand.WhichOneof("source")
        if source == "field":
            if operand.field == Field.PROFILE_FIELD_AGE:
                self.birthday = True
            elif operand.field == Field.PROFILE_FIELD_DAYS_SINCE_REGISTRATION:
                self.registration |= {0, *_crossings(condition.values)}
        elif source == "aggregate":
            aggregate = operand.aggregate
            per = _ORDER_COUNTS.get(aggregate.function)
            f = aggregate.filter
            if per is not None and aggregate.window_days and not (f.categories or f.brands or f.skus):
                # Orders enter when paid; leaving, they move the value only through a count.
                self.orders.add(0)
                window = aggregate.window_days
                found_counts = self.order_counts.setdefault(window, set())
                found_counts |= _counts(condition.values, per(window))
                return
            found = self.events if aggregate.function in _EVENT_FUNCTIONS else self.orders
            if aggregate.function in _EVENT_FUNCTIONS and self.event_kinds is not None:
                kinds = aggregate.filter.event_kinds
                self.event_kinds = self.event_kinds | {int(k) for k in kinds} if kinds else None
            found |= _facts(aggregate.window_days)
            if aggregate.function in _DAYS_SINCE:
                found |= _crossings(condition.values)
