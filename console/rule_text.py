"""A tag value's rule as one line an operator reads, e.g.
`order_count(window_days=90) ≥ 2 AND NOT (city_tier = "1")`, and a model's parameters as
`lifecycle(new_days=30, active_days=90, churn_days=180)`.

Enum names lose their prefix and go lower-case (`AGGREGATE_FUNCTION_ORDER_COUNT` → `order_count`),
the way ExplainTags names its figures; unknown or unset parts show as `?` rather than failing.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from memberops.tagging.v1 import facts_pb2, rules_pb2, tags_pb2

OPERATORS = {
    rules_pb2.OPERATOR_EQ: "=",
    rules_pb2.OPERATOR_NE: "≠",
    rules_pb2.OPERATOR_LT: "<",
    rules_pb2.OPERATOR_LE: "≤",
    rules_pb2.OPERATOR_GT: ">",
    rules_pb2.OPERATOR_GE: "≥",
    rules_pb2.OPERATOR_IN: "in",
    rules_pb2.OPERATOR_NOT_IN: "not in",
}


def enum_name(enum: object, number: int, prefix: str) -> str:
    try:
        name: str = enum.Name(number)  # type: ignore[attr-defined]
    except ValueError:
        return "?"
    return name.removeprefix(prefix).lower()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def value_text(value: rules_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return _number(value.number)
    if kind == "text":
        return f'"{value.text}"'
    if kind == "flag":
        return "true" if value.flag else "false"
    return "?"


def operand_text(operand: rules_pb2.Operand) -> str:
    source = operand.WhichOneof("source")
    if source == "field":
        return enum_name(rules_pb2.ProfileField, operand.field, "PROFILE_FIELD_")
    if source == "attribute":
        return f"attributes.{operand.attribute}"
    if source == "aggregate":
        aggregate = operand.aggregate
        found = aggregate.filter
        arguments = [f"window_days={aggregate.window_days}"] if aggregate.window_days else []
        for name, items in (
            ("categories", list(found.categories)),
            ("brands", list(found.brands)),
            ("skus", list(found.skus)),
            ("event_kinds", [enum_name(facts_pb2.EventKind, k, "EVENT_KIND_") for k in found.event_kinds]),
        ):
            if items:
                arguments.append(f"{name}=[{', '.join(items)}]")
        function = enum_name(rules_pb2.AggregateFunction, aggregate.function, "AGGREGATE_FUNCTION_")
        return f"{function}({', '.join(arguments)})"
    return "?"


def condition_text(condition: rules_pb2.Condition) -> str:
    operand = operand_text(condition.operand)
    values = [value_text(v) for v in condition.values]
    operator = condition.operator
    if operator == rules_pb2.OPERATOR_IS_SET:
        return f"{operand} is set"
    if operator == rules_pb2.OPERATOR_IS_NOT_SET:
        return f"{operand} is not set"
    if operator == rules_pb2.OPERATOR_BETWEEN:
        return f"{operand} between {' and '.join(values)}"
    if operator in (rules_pb2.OPERATOR_IN, rules_pb2.OPERATOR_NOT_IN):
        return f"{operand} {OPERATORS[operator]} [{', '.join(values)}]"
    return f"{operand} {OPERATORS.get(operator, '?')} {', '.join(values)}"


def rule_text(rule: rules_pb2.Rule, *, nested: bool = False) -> str:
    """The rule in one line; a nested AND/OR is parenthesised."""
    node = rule.WhichOneof("node")
    if node in ("all", "any"):
        parts = [rule_text(r, nested=True) for r in getattr(rule, node).rules]
        joined = (" AND " if node == "all" else " OR ").join(parts)
        return f"({joined})" if nested and len(parts) > 1 else joined
    if node == "not":
        return f"NOT ({rule_text(getattr(rule, 'not'))})"
    if node == "condition":
        return condition_text(rule.condition)
    if node == "always":
        return "always"
    return ""


def _parameter_text(message: Message, field: FieldDescriptor) -> str:
    """A model parameter: numbers and text as they are, event kinds by their short names."""
    value = getattr(message, field.name)
    if isinstance(value, str):
        return f'"{value}"'
    if field.enum_type is None:
        return str(value)
    if isinstance(value, int):
        return enum_name(facts_pb2.EventKind, value, "EVENT_KIND_")
    return f"[{', '.join(enum_name(facts_pb2.EventKind, k, 'EVENT_KIND_') for k in value)}]"


def model_text(definition: tags_pb2.TagDefinition) -> str:
    """`model(parameter=value, ...)` of a MODEL dimension (parameters left at 0 mean their
    defaults and are left out); empty for the other kinds."""
    which = definition.model.WhichOneof("model") if definition.HasField("model") else None
    if which is None:
        return ""
    parameters: Message = getattr(definition.model, which)
    arguments = [f"{field.name}={_parameter_text(parameters, field)}" for field, _ in parameters.ListFields()]
    return f"{which}({', '.join(arguments)})"
