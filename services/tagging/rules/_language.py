"""The rule language's vocabulary: the profile fields, aggregate functions and operators a rule may
use, with their limits and types. Validation checks a rule against it; compilation translates it."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from memberops.tagging.v1 import member_pb2, rules_pb2

MAX_DEPTH = 10
MAX_NODES = 200
MAX_LIST = 1000
MAX_FILTER = 100
MAX_WINDOW_DAYS = 3650
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


Op = rules_pb2.Operator
Fn = rules_pb2.AggregateFunction
Field = rules_pb2.ProfileField


class Type(enum.Enum):
    NUMBER = "number"
    TEXT = "text"
    FLAG = "flag"


# Enum-valued profile fields are compared by the enum value's name.
_GENDERS: dict[str, int] = {name: int(number) for name, number in member_pb2.Gender.items()}
_CITY_TIERS: dict[str, int] = {name: int(number) for name, number in member_pb2.CityTier.items()}
ENUM_FIELDS: dict[int, tuple[str, dict[str, int]]] = {
    Field.PROFILE_FIELD_GENDER: ("m.gender", _GENDERS),
    Field.PROFILE_FIELD_CITY_TIER: ("m.city_tier", _CITY_TIERS),
}
PROFILE_FIELDS: dict[int, tuple[str, Type]] = {
    Field.PROFILE_FIELD_GENDER: ("m.gender", Type.TEXT),
    Field.PROFILE_FIELD_AGE: ("date_part('year', age({now}::date, m.birthday))", Type.NUMBER),
    Field.PROFILE_FIELD_CITY: ("m.city", Type.TEXT),
    Field.PROFILE_FIELD_CITY_TIER: ("m.city_tier", Type.TEXT),
    Field.PROFILE_FIELD_DAYS_SINCE_REGISTRATION: (
        "floor(extract(epoch FROM {now} - m.register_time) / 86400)",
        Type.NUMBER,
    ),
    Field.PROFILE_FIELD_REGISTER_CHANNEL: ("m.register_channel", Type.TEXT),
    Field.PROFILE_FIELD_LEVEL: ("m.level", Type.TEXT),
}
ORDER_FUNCTIONS = {
    Fn.AGGREGATE_FUNCTION_ORDER_COUNT,
    Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM,
    Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_AVG,
    Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_MAX,
    Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_ORDER,
    Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH,
}
LINE_FUNCTIONS = {Fn.AGGREGATE_FUNCTION_ITEM_COUNT, Fn.AGGREGATE_FUNCTION_DISTINCT_CATEGORIES}
EVENT_FUNCTIONS = {Fn.AGGREGATE_FUNCTION_EVENT_COUNT, Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_EVENT}
# Counts and sums are 0 for a member with no facts; the others are unset.
ZERO_WHEN_EMPTY = {
    Fn.AGGREGATE_FUNCTION_ORDER_COUNT,
    Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM,
    Fn.AGGREGATE_FUNCTION_ITEM_COUNT,
    Fn.AGGREGATE_FUNCTION_DISTINCT_CATEGORIES,
    Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH,
    Fn.AGGREGATE_FUNCTION_EVENT_COUNT,
}
COMPARISONS = {Op.OPERATOR_EQ: "=", Op.OPERATOR_NE: "<>", Op.OPERATOR_LT: "<", Op.OPERATOR_LE: "<=",
                Op.OPERATOR_GT: ">", Op.OPERATOR_GE: ">="}  # fmt: skip
ORDERING = {Op.OPERATOR_LT, Op.OPERATOR_LE, Op.OPERATOR_GT, Op.OPERATOR_GE, Op.OPERATOR_BETWEEN}


def operand_type(operand: rules_pb2.Operand, values: Sequence[rules_pb2.Value]) -> Type | None:
    source = operand.WhichOneof("source")
    if source == "field":
        known = PROFILE_FIELDS.get(operand.field)
        return known[1] if known else None
    if source == "aggregate":
        return Type.NUMBER
    if source == "attribute":
        kinds = {value.WhichOneof("kind") or "" for value in values}
        return (
            {"number": Type.NUMBER, "text": Type.TEXT, "flag": Type.FLAG}.get(kinds.pop())
            if len(kinds) == 1
            else None
        )
    return None
