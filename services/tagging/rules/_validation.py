"""Validation of rules against the language, naming the path of each mistake: what runs before any
rule or condition is compiled."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message
from memberops.tagging.v1 import facts_pb2, rules_pb2

from runtime.errors import Violations
from services.tagging.rules._language import (
    ATTRIBUTE_KEY,
    ENUM_FIELDS,
    EVENT_FUNCTIONS,
    LINE_FUNCTIONS,
    MAX_DEPTH,
    MAX_FILTER,
    MAX_LIST,
    MAX_NODES,
    MAX_WINDOW_DAYS,
    ORDER_FUNCTIONS,
    ORDERING,
    PROFILE_FIELDS,
    Fn,
    Op,
    Type,
    operand_type,
)

_Tree = TypeVar("_Tree", bound=Message)
# Checks one node that is not a combinator: (node, the name of its set `node` field or None when
# none is set, violations, path).
Leaf = Callable[[_Tree, str | None, Violations, str], None]


def validate(rule: rules_pb2.Rule, violations: Violations, path: str) -> None:
    """Adds a violation for every node of `rule` outside the language, named by its path."""
    validate_tree(rule, violations, path, _validate_leaf)


def validate_tree(
    rule: _Tree,
    violations: Violations,
    path: str,
    leaf: Leaf[_Tree],
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> int:
    """Walks the all/any/not combinators that tagging rules and audience rules share, so both
    languages nest, count and name paths alike; `leaf` checks every other node. Returns the number
    of nodes."""
    counter = [0]
    _walk(rule, violations, path, 1, counter, leaf, max_depth)
    if counter[0] > max_nodes:
        violations.add(path, f"has {counter[0]} nodes; at most {max_nodes}")
    return counter[0]


def _walk(
    rule: _Tree, v: Violations, path: str, depth: int, counter: list[int], leaf: Leaf[_Tree], max_depth: int
) -> None:
    counter[0] += 1
    if depth > max_depth:
        v.add(path, f"nests deeper than {max_depth} levels")
        return
    node = rule.WhichOneof("node")
    if node in ("all", "any"):
        for i, child in enumerate(getattr(rule, node).rules):
            _walk(child, v, f"{path}.{node}.rules[{i}]", depth + 1, counter, leaf, max_depth)
    elif node == "not":
        _walk(getattr(rule, "not"), v, f"{path}.not", depth + 1, counter, leaf, max_depth)
    else:
        leaf(rule, node, v, path)


def _validate_leaf(rule: rules_pb2.Rule, node: str | None, v: Violations, path: str) -> None:
    if node is None:
        v.add(path, "is empty: set one of all, any, not, condition, always")
    elif node == "condition":
        _validate_condition(rule.condition, v, f"{path}.condition")
    elif node == "always" and not rule.always:
        v.add(f"{path}.always", "must be true when set")


def validate_condition(condition: rules_pb2.Condition, violations: Violations, path: str) -> None:
    """Adds a violation for every part of one condition outside the language, named by its path."""
    _validate_condition(condition, violations, path)


def _validate_condition(condition: rules_pb2.Condition, v: Violations, path: str) -> None:
    operand, op, values = condition.operand, condition.operator, condition.values
    source = operand.WhichOneof("source")
    if source is None:
        v.add(f"{path}.operand", "is required: a profile field, an attribute or an aggregate")
        return
    if source == "field" and operand.field not in PROFILE_FIELDS:
        v.add(f"{path}.operand.field", f"unknown profile field {operand.field}")
        return
    if source == "attribute" and not ATTRIBUTE_KEY.match(operand.attribute):
        v.add(f"{path}.operand.attribute", "keys are 1-64 characters from A-Z a-z 0-9 _ . -")
    if source == "aggregate":
        _validate_aggregate(operand.aggregate, v, f"{path}.operand.aggregate")
    if op == Op.OPERATOR_UNSPECIFIED or op not in Op.values():
        v.add(f"{path}.operator", "is required and must be a known operator")
        return
    expected = {Op.OPERATOR_IS_SET: (0, 0), Op.OPERATOR_IS_NOT_SET: (0, 0), Op.OPERATOR_BETWEEN: (2, 2),
                Op.OPERATOR_IN: (1, MAX_LIST), Op.OPERATOR_NOT_IN: (1, MAX_LIST)}.get(op, (1, 1))  # fmt: skip
    if not expected[0] <= len(values) <= expected[1]:
        v.add(f"{path}.values", f"{Op.Name(op)} takes {_count_text(expected)} value(s), got {len(values)}")
        return
    if not values:
        return
    kind = operand_type(operand, values)
    if kind is None:
        v.add(f"{path}.values", "values of one condition must all have the same type")
        return
    for i, value in enumerate(values):
        _validate_value(value, kind, operand, v, f"{path}.values[{i}]")
    if op in ORDERING and kind is not Type.NUMBER:
        v.add(f"{path}.operator", f"{Op.Name(op)} compares numbers; the operand is {kind.value}")
    if op == Op.OPERATOR_BETWEEN and kind is Type.NUMBER and values[0].number > values[1].number:
        v.add(f"{path}.values", "BETWEEN needs the lower bound first")


def _count_text(bounds: tuple[int, int]) -> str:
    return str(bounds[0]) if bounds[0] == bounds[1] else f"{bounds[0]}-{bounds[1]}"


def _validate_value(
    value: rules_pb2.Value, kind: Type, operand: rules_pb2.Operand, v: Violations, path: str
) -> None:
    actual = {"number": Type.NUMBER, "text": Type.TEXT, "flag": Type.FLAG}.get(value.WhichOneof("kind") or "")
    if actual is not kind:
        v.add(path, f"must be a {kind.value}")
    elif kind is Type.NUMBER and not math.isfinite(value.number):
        v.add(path, "must be a finite number")
    elif kind is Type.TEXT and len(value.text) > 256:
        v.add(path, "must be at most 256 characters")
    elif operand.WhichOneof("source") == "field" and operand.field in ENUM_FIELDS:
        names = ENUM_FIELDS[operand.field][1]
        if value.text not in names:
            v.add(path, f"must be one of {', '.join(names)}")


def _validate_aggregate(aggregate: rules_pb2.Aggregate, v: Violations, path: str) -> None:
    fn, window, f = aggregate.function, aggregate.window_days, aggregate.filter
    if fn not in ORDER_FUNCTIONS | LINE_FUNCTIONS | EVENT_FUNCTIONS:
        v.add(f"{path}.function", "is required and must be a known aggregate function")
    if not 0 <= window <= MAX_WINDOW_DAYS:
        v.add(f"{path}.window_days", f"must be between 1 and {MAX_WINDOW_DAYS} days, or 0 for all history")
    if fn == Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH and window == 0:
        v.add(f"{path}.window_days", "ORDERS_PER_MONTH needs a window")
    for name in ("categories", "brands", "skus", "event_kinds"):
        items = getattr(f, name)
        if len(items) > MAX_FILTER:
            v.add(f"{path}.filter.{name}", f"at most {MAX_FILTER} entries")
        if name != "event_kinds" and any(not 1 <= len(item) <= 64 for item in items):
            v.add(f"{path}.filter.{name}", "entries are 1-64 characters")
    if f.event_kinds and fn not in EVENT_FUNCTIONS:
        v.add(f"{path}.filter.event_kinds", "only event aggregates filter by event kind")
    valid_kinds = set(facts_pb2.EventKind.values()) - {facts_pb2.EVENT_KIND_UNSPECIFIED}
    if any(kind not in valid_kinds for kind in f.event_kinds):
        v.add(f"{path}.filter.event_kinds", "unknown event kind")
