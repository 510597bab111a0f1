"""Terse builders for rule trees in tests."""

from __future__ import annotations

from typing import Any

from memberops.tagging.v1 import rules_pb2

Op = rules_pb2.Operator
Fn = rules_pb2.AggregateFunction
Field = rules_pb2.ProfileField


def value(v: Any) -> rules_pb2.Value:
    if isinstance(v, bool):
        return rules_pb2.Value(flag=v)
    if isinstance(v, int | float):
        return rules_pb2.Value(number=float(v))
    return rules_pb2.Value(text=v)


def cond(operand: rules_pb2.Operand, op: int, *values: Any) -> rules_pb2.Rule:
    return rules_pb2.Rule(
        condition=rules_pb2.Condition(operand=operand, operator=op, values=[value(v) for v in values])  # type: ignore[arg-type]
    )


def field(f: int) -> rules_pb2.Operand:
    return rules_pb2.Operand(field=f)  # type: ignore[arg-type]


def attribute(key: str) -> rules_pb2.Operand:
    return rules_pb2.Operand(attribute=key)


def agg(fn: int, window_days: int = 0, **filters: Any) -> rules_pb2.Operand:
    function = rules_pb2.AggregateFunction.ValueType(fn)
    aggregate = rules_pb2.Aggregate(
        function=function, window_days=window_days, filter=rules_pb2.FactFilter(**filters)
    )
    return rules_pb2.Operand(aggregate=aggregate)


def all_of(*rules: rules_pb2.Rule) -> rules_pb2.Rule:
    return rules_pb2.Rule(all=rules_pb2.RuleList(rules=rules))


def any_of(*rules: rules_pb2.Rule) -> rules_pb2.Rule:
    return rules_pb2.Rule(any=rules_pb2.RuleList(rules=rules))


def not_(rule: rules_pb2.Rule) -> rules_pb2.Rule:
    negation = rules_pb2.Rule()
    getattr(negation, "not").CopyFrom(rule)  # `not` is a Python keyword
    return negation


ALWAYS = rules_pb2.Rule(always=True)
