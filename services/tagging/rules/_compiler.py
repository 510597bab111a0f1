"""Compilation of validated rules to parameterised SQL: a dimension's rules to one set-based query
over every member (or a member filter), or one condition to a predicate over any `Relations`."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memberops.tagging.v1 import facts_pb2, rules_pb2

from services.tagging.rules._language import (
    COMPARISONS,
    ENUM_FIELDS,
    EVENT_FUNCTIONS,
    LINE_FUNCTIONS,
    PROFILE_FIELDS,
    ZERO_WHEN_EMPTY,
    Field,
    Fn,
    Op,
    Type,
    operand_type,
)
from services.tagging.rules._recency import recency_of, window_of

_TYPED_PLACEHOLDER = re.compile(r"\$([0-9]+)::")


@dataclass(frozen=True)
class AggregateKey:
    function: int
    window_days: int
    categories: tuple[str, ...]
    brands: tuple[str, ...]
    skus: tuple[str, ...]
    event_kinds: tuple[int, ...]

    @classmethod
    def of(cls, aggregate: rules_pb2.Aggregate) -> AggregateKey:
        f = aggregate.filter
        return cls(
            aggregate.function,
            aggregate.window_days,
            tuple(sorted(set(f.categories))),
            tuple(sorted(set(f.brands))),
            tuple(sorted(set(f.skus))),
            tuple(sorted(set(f.event_kinds))),
        )

    @property
    def label(self) -> str:
        """A readable name for explanations, e.g. `order_count(window_days=30, categories=[a])`."""
        name = Fn.Name(Fn.ValueType(self.function)).removeprefix("AGGREGATE_FUNCTION_").lower()
        parts = [f"window_days={self.window_days}"] if self.window_days else []
        for attr in ("categories", "brands", "skus"):
            if getattr(self, attr):
                parts.append(f"{attr}=[{', '.join(getattr(self, attr))}]")
        if self.event_kinds:
            kinds = ", ".join(
                facts_pb2.EventKind.Name(facts_pb2.EventKind.ValueType(k)).removeprefix("EVENT_KIND_").lower()
                for k in self.event_kinds
            )
            parts.append(f"event_kinds=[{kinds}]")
        return f"{name}({', '.join(parts)})"

    @property
    def has_line_filter(self) -> bool:
        return bool(self.categories or self.brands or self.skus)


class Input(enum.Enum):
    """The facts a dimension reads: a write of one of them makes its real-time values stale."""

    PROFILE = "profile"
    ORDERS = "orders"
    EVENTS = "events"


@dataclass(frozen=True)
class CompiledDimension:
    """One query: `SELECT member_id, tag_values text[], fig_0, fig_1, ... FROM ...`, a row per member.

    Rule dimensions and built-in models compile to this one shape, so recompute, the real-time
    refresh and explanations treat them alike.
    """

    sql: str
    params: tuple[Any, ...]
    # Column name -> readable label of each figure the rules look at, in rule order.
    figures: dict[str, str]
    # The placeholder of the member filter (`$2::text[]`), or "" when every member is evaluated.
    member_filter: str = ""
    inputs: frozenset[Input] = frozenset()

    def __post_init__(self) -> None:
        untyped = untyped_parameters(self.sql, len(self.params))
        assert not untyped, f"parameters {untyped} are never named with a type in the statement"

    def args(self, now: dt.datetime, member_ids: Sequence[str] | None = None) -> list[Any]:
        """The query's arguments for an evaluation at `now` ($1), for other members if given ($2)."""
        args = [now, *self.params[1:]]
        if member_ids is not None:
            assert self.member_filter, "compiled without a member filter"
            args[1] = list(member_ids)
        return args


def untyped_parameters(sql: str, count: int) -> list[int]:
    """The parameters of 1..`count` that `sql` never names as `$n::type`. PostgreSQL infers the
    type of a parameter from where it is used, so it cannot prepare a statement given one it does
    not use (`could not determine data type of parameter`)."""
    typed = {int(number) for number in _TYPED_PLACEHOLDER.findall(sql)}
    return [n for n in range(1, count + 1) if n not in typed]


@dataclass(frozen=True)
class Relations:
    """The relations compiled SQL reads, each with the columns of tagging's table of that name.

    Tagging evaluates over its own tables; the audience service compiles the same conditions over
    the published read-only views (`tagging_read.*`, migration 0009), so each operand has one
    implementation whichever side reads it.
    """

    members: str = "tagging.members"
    orders: str = "tagging.orders"
    order_lines: str = "tagging.order_lines"
    events: str = "tagging.events"
    # The recency summaries (migration 0012): last time per (member, event kind, category), and
    # last purchase per (member, category).
    event_recency: str = "tagging.event_recency"
    purchase_recency: str = "tagging.purchase_recency"


TAGGING_TABLES = Relations()


@dataclass
class Builder:
    """The state of one compilation: bound parameters, the aggregates met so far, figures."""

    relations: Relations = TAGGING_TABLES
    params: list[Any] = field(default_factory=list)
    aggregates: dict[AggregateKey, str] = field(default_factory=dict)
    # label -> (column, expression)
    figures: dict[str, tuple[str, str]] = field(default_factory=dict)
    member_filter: str = ""
    inputs: set[Input] = field(default_factory=set)
    # Aggregates as subqueries correlated with the member row `m` (and existence tests as EXISTS)
    # rather than grouped over every member and joined: what a selection wants, where the planner
    # then evaluates an aggregate only for the members the cheaper conditions let through.
    correlated: bool = False

    def param(self, value: Any, cast: str) -> str:
        self.params.append(value)
        return f"${len(self.params)}::{cast}"

    def figure(self, label: str, expr: str) -> None:
        self.figures.setdefault(label, (f"fig_{len(self.figures)}", expr))


def compile_dimension(
    values: Sequence[tuple[str, rules_pb2.Rule | None]], *, single: bool, filtered: bool
) -> CompiledDimension:
    """Compiles the rules of a dimension's (value, rule) pairs, in order, into one query.

    `$1` is the evaluation time; when `filtered`, `$2` lists the only members to evaluate.
    """
    b = Builder()
    now = b.param(None, "timestamptz")
    if filtered:
        b.member_filter = b.param([], "text[]")
    cases = [
        (
            f"COALESCE({_predicate(rule, b, now)}, false)" if rule is not None else "false",
            b.param(name, "text"),
        )
        for name, rule in values
    ]
    if single:
        whens = " ".join(f"WHEN {p} THEN {name}" for p, name in cases)
        value = f"array_remove(ARRAY[CASE {whens} END], NULL)" if cases else "ARRAY[]::text[]"
    else:
        value = "array_remove(ARRAY[{}], NULL)".format(
            ", ".join(f"CASE WHEN {p} THEN {name} END" for p, name in cases)
        ) if cases else "ARRAY[]::text[]"  # fmt: skip
    joins = aggregate_joins(b, now)
    figure_columns = "".join(f", {expr} AS {column}" for column, expr in b.figures.values())
    where = f"WHERE m.member_id = ANY({b.member_filter})" if b.member_filter else ""
    # The evaluation time as a column too: rules of the profile alone never read it, and the
    # statement must still type it to be prepared with it.
    sql = (
        f"SELECT m.member_id, {value} AS tag_values, {now} AS evaluated_at{figure_columns}\n"
        f"FROM {b.relations.members} m\n{joins}\n{where}"
    )
    figures = {column: label for label, (column, _) in b.figures.items()}
    # Rules that read no fact at all (`always`) hold whatever changed.
    inputs = frozenset(b.inputs) or frozenset(Input)
    return CompiledDimension(sql, tuple(b.params), figures, b.member_filter, inputs)


def aggregate_joins(b: Builder, now: str) -> str:
    """`LEFT JOIN (grouped subquery) AS agg_N ON agg_N.member_id = m.member_id` for every aggregate
    the conditions compiled so far with `b` mention; call it after them."""
    return "\n".join(
        f"LEFT JOIN ({_aggregate_sql(key, b, now)}) AS {alias} ON {alias}.member_id = m.member_id"
        for key, alias in b.aggregates.items()
    )


def condition_predicate(condition: rules_pb2.Condition, b: Builder, now: str) -> str:
    """The SQL of one validated condition over the member row `m` (and `aggregate_joins`); NULL
    when its operand is unset, so callers combine it under COALESCE as the rule compiler does."""
    return _condition(condition, b, now)


def _predicate(rule: rules_pb2.Rule, b: Builder, now: str) -> str:
    node = rule.WhichOneof("node")
    if node == "all":
        parts = [f"COALESCE({_predicate(r, b, now)}, false)" for r in rule.all.rules]
        return "(" + " AND ".join(parts) + ")" if parts else "true"
    if node == "any":
        parts = [f"COALESCE({_predicate(r, b, now)}, false)" for r in rule.any.rules]
        return "(" + " OR ".join(parts) + ")" if parts else "false"
    if node == "not":
        return f"(NOT COALESCE({_predicate(getattr(rule, 'not'), b, now)}, false))"
    if node == "always":
        return "true"
    assert node == "condition", "validate() runs before compile"
    return _condition(rule.condition, b, now)


def _operand_sql(operand: rules_pb2.Operand, kind: Type, b: Builder, now: str) -> tuple[str, str]:
    """The SQL of an operand and its readable label."""
    source = operand.WhichOneof("source")
    if source != "aggregate":
        b.inputs.add(Input.PROFILE)
    if source == "field":
        expr, _ = PROFILE_FIELDS[operand.field]
        return expr.format(now=now), Field.Name(operand.field).removeprefix("PROFILE_FIELD_").lower()
    if source == "attribute":
        name = b.param(operand.attribute, "text")
        label = f"attributes.{operand.attribute}"
        if kind is Type.NUMBER:
            return (f"(CASE WHEN jsonb_typeof(m.attributes -> {name}) = 'number' "
                    f"THEN (m.attributes ->> {name})::numeric END)", label)  # fmt: skip
        if kind is Type.FLAG:
            return (f"(CASE WHEN jsonb_typeof(m.attributes -> {name}) = 'boolean' "
                    f"THEN (m.attributes ->> {name})::boolean END)", label)  # fmt: skip
        return f"(m.attributes ->> {name})", label
    aggregate = AggregateKey.of(operand.aggregate)
    b.inputs.add(Input.EVENTS if aggregate.function in EVENT_FUNCTIONS else Input.ORDERS)
    empty = "0" if aggregate.function in ZERO_WHEN_EMPTY else "NULL"
    if b.correlated:
        return f"COALESCE(({_aggregate_sql(aggregate, b, now)}), {empty})", aggregate.label
    alias = b.aggregates.setdefault(aggregate, f"agg_{len(b.aggregates)}")
    return f"COALESCE({alias}.value, {empty})", aggregate.label


def _condition(condition: rules_pb2.Condition, b: Builder, now: str) -> str:
    op, values, operand = condition.operator, list(condition.values), condition.operand
    exists = existence(condition) if b.correlated else None
    if exists is not None:
        key = AggregateKey.of(operand.aggregate)
        b.inputs.add(Input.EVENTS if key.function in EVENT_FUNCTIONS else Input.ORDERS)
        test = f"EXISTS ({_existence_sql(key, b, now)})"
        return test if exists else f"(NOT {test})"
    kind = operand_type(operand, values) or Type.TEXT
    if op in (Op.OPERATOR_IS_SET, Op.OPERATOR_IS_NOT_SET) and operand.WhichOneof("source") == "attribute":
        # Presence, whatever the type: the raw JSON value.
        b.inputs.add(Input.PROFILE)
        expr, label = (
            f"(m.attributes -> {b.param(operand.attribute, 'text')})",
            f"attributes.{operand.attribute}",
        )
    else:
        expr, label = _operand_sql(operand, kind, b, now)
    b.figure(label, expr)
    if op in (Op.OPERATOR_IS_SET, Op.OPERATOR_IS_NOT_SET):
        return f"({expr} IS {'NOT ' if op == Op.OPERATOR_IS_SET else ''}NULL)"
    literals = [_literal(value, operand) for value in values]
    cast = {Type.NUMBER: "numeric", Type.TEXT: "text", Type.FLAG: "boolean"}[kind]
    if operand.WhichOneof("source") == "field" and operand.field in ENUM_FIELDS:
        cast = "smallint"
    if op == Op.OPERATOR_BETWEEN:
        return f"({expr} BETWEEN {b.param(literals[0], cast)} AND {b.param(literals[1], cast)})"
    if op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        test = f"{expr} = ANY({b.param(literals, cast + '[]')})"
        return f"({test})" if op == Op.OPERATOR_IN else f"(NOT ({test}))"
    return f"({expr} {COMPARISONS[op]} {b.param(literals[0], cast)})"


def _literal(value: rules_pb2.Value, operand: rules_pb2.Operand) -> Any:
    kind = value.WhichOneof("kind")
    if operand.WhichOneof("source") == "field" and operand.field in ENUM_FIELDS:
        return ENUM_FIELDS[operand.field][1][value.text]
    return getattr(value, kind) if kind else None


def _member_clause(b: Builder, table: str) -> str:
    """Restricts a fact table to the member row `m` (correlated) or to the member filter, if any."""
    if b.correlated:
        return f" AND {table}.member_id = m.member_id"
    return f" AND {table}.member_id = ANY({b.member_filter})" if b.member_filter else ""


def _window(key: AggregateKey, b: Builder, now: str, column: str) -> list[str]:
    return window_of(column, now, b.param(key.window_days, "int") if key.window_days else None)


def _event_where(key: AggregateKey, b: Builder, now: str) -> list[str]:
    where = _window(key, b, now, "e.occur_time")
    if key.event_kinds:
        where.append(f"e.kind = ANY({b.param(list(key.event_kinds), 'smallint[]')})")
    return where + _line_filters(key, b, "e")


def _kept_line_where(key: AggregateKey, b: Builder, now: str) -> list[str]:
    """Lines in the window matching the filters with something not returned."""
    return (
        _window(key, b, now, "l.paid_time")
        + _line_filters(key, b, "l")
        + ["l.quantity > l.refunded_quantity"]
    )


_COUNTED_ORDER = "NOT (o.amount_minor > 0 AND o.refunded_amount_minor >= o.amount_minor)"


def _aggregate_sql(key: AggregateKey, b: Builder, now: str) -> str:
    """One aggregate: grouped `(member_id, value)` over every (filtered) member, or, correlated, the
    value of the member row `m` alone."""
    fn = key.function
    if fn in EVENT_FUNCTIONS:
        value = ("count(*)" if fn == Fn.AGGREGATE_FUNCTION_EVENT_COUNT
                 else f"floor(extract(epoch FROM {now} - max(e.occur_time)) / 86400)")  # fmt: skip
        source = f"FROM {b.relations.events} e WHERE {' AND '.join(_event_where(key, b, now))}"
        return _shaped(b, "e", value, source + _member_clause(b, "e"))
    if fn in LINE_FUNCTIONS:
        value = ("sum(l.quantity - l.refunded_quantity)" if fn == Fn.AGGREGATE_FUNCTION_ITEM_COUNT
                 else "count(DISTINCT l.category) FILTER (WHERE l.category <> '')")  # fmt: skip
        source = f"FROM {b.relations.order_lines} l WHERE {' AND '.join(_kept_line_where(key, b, now))}"
        return _shaped(b, "l", value, source + _member_clause(b, "l"))
    # Order functions see one row per counted order: (member_id, paid_time, net amount).
    if key.has_line_filter:
        where = _window(key, b, now, "l.paid_time") + _line_filters(key, b, "l")
        orders = (f"SELECT l.member_id, l.order_id, max(l.paid_time) AS paid_time, "
                  f"sum((l.quantity - l.refunded_quantity) * l.unit_price_minor) AS net "
                  f"FROM {b.relations.order_lines} l WHERE {' AND '.join(where)}{_member_clause(b, 'l')} "
                  f"GROUP BY l.member_id, l.order_id "
                  f"HAVING sum(l.quantity - l.refunded_quantity) > 0")  # fmt: skip
    else:
        where = [*_window(key, b, now, "o.paid_time"), _COUNTED_ORDER]
        orders = (f"SELECT o.member_id, o.order_id, o.paid_time, "
                  f"o.amount_minor - o.refunded_amount_minor AS net FROM {b.relations.orders} o "
                  f"WHERE {' AND '.join(where)}{_member_clause(b, 'o')}")  # fmt: skip
    functions: dict[int, str] = {
        Fn.AGGREGATE_FUNCTION_ORDER_COUNT: "count(*)",
        Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM: "sum(c.net)",
        Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_AVG: "avg(c.net)",
        Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_MAX: "max(c.net)",
        Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_ORDER: (
            f"floor(extract(epoch FROM {now} - max(c.paid_time)) / 86400)"
        ),
        Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH: f"count(*) * 30.0 / {max(key.window_days, 1)}",
    }
    return _shaped(b, "c", functions[fn], f"FROM ({orders}) AS c")


def _shaped(b: Builder, table: str, value: str, source: str) -> str:
    if b.correlated:
        return f"SELECT {value} {source}"
    return f"SELECT {table}.member_id, {value} AS value {source} GROUP BY {table}.member_id"


_COUNT_FUNCTIONS = {
    Fn.AGGREGATE_FUNCTION_EVENT_COUNT,
    Fn.AGGREGATE_FUNCTION_ORDER_COUNT,
    Fn.AGGREGATE_FUNCTION_ITEM_COUNT,
}


def existence(condition: rules_pb2.Condition) -> bool | None:
    """True when a validated condition says "at least one" of a count (`count >= 1`, `> 0`), False
    when it says "none" (`< 1`, `= 0`), None otherwise. Counts are whole numbers, so those are
    exactly the conditions an (NOT) EXISTS answers."""
    operand, values = condition.operand, condition.values
    if operand.WhichOneof("source") != "aggregate" or operand.aggregate.function not in _COUNT_FUNCTIONS:
        return None
    if len(values) != 1 or values[0].WhichOneof("kind") != "number":
        return None
    v, op = values[0].number, condition.operator
    if (op == Op.OPERATOR_GE and 0 < v <= 1) or (op == Op.OPERATOR_GT and 0 <= v < 1):
        return True
    if op == Op.OPERATOR_NE and v == 0:
        return True
    if (op == Op.OPERATOR_LT and 0 < v <= 1) or (op == Op.OPERATOR_LE and 0 <= v < 1):
        return False
    if op == Op.OPERATOR_EQ and v == 0:
        return False
    return None


def _existence_sql(key: AggregateKey, b: Builder, now: str) -> str:
    """`SELECT 1` of the member row `m`'s facts that make a count at least one. An order counts when
    a matching line of it is not wholly returned (its net quantity, a sum of non-negative terms, is
    then positive); an item count is at least one exactly then too."""
    recency = recency_of(key, b, now)
    if recency is not None:
        return recency.exists("m.member_id")
    if key.function in EVENT_FUNCTIONS:
        where = _event_where(key, b, now)
        return f"SELECT 1 FROM {b.relations.events} e WHERE {' AND '.join(where)}{_member_clause(b, 'e')}"
    if key.function == Fn.AGGREGATE_FUNCTION_ORDER_COUNT and not key.has_line_filter:
        where = [*_window(key, b, now, "o.paid_time"), _COUNTED_ORDER]
        return f"SELECT 1 FROM {b.relations.orders} o WHERE {' AND '.join(where)}{_member_clause(b, 'o')}"
    where = _kept_line_where(key, b, now)
    return f"SELECT 1 FROM {b.relations.order_lines} l WHERE {' AND '.join(where)}{_member_clause(b, 'l')}"


def _line_filters(key: AggregateKey, b: Builder, table: str) -> list[str]:
    return [
        f"{table}.{column} = ANY({b.param(list(wanted), 'text[]')})"
        for column, wanted in (("category", key.categories), ("brand", key.brands), ("sku", key.skus))
        if wanted
    ]
