"""The rule editor's draft: an audience rule held in a form's fields (so a GET URL holds it), turned
into the AudienceRule the service counts, and the service's field violations placed back at the
form field they name.

A draft is `all` or `any` of flat conditions, each one of three kinds:
- tag: a dimension of the catalog, a match and its values (`c0.dimension`, `c0.match`, `c0.values`);
- profile: a profile field, an operator and a value (`c0.field`, `c0.operator`, `c0.value`);
- window: orders, spend or behaviour events in the last N days compared with a number
  (`c0.measure`, `c0.days`, `c0.operator`, `c0.value`); spend is entered in the currency's units
  and sent in minor units.
Lists of values are comma-separated (Chinese commas and 、 too). The `add` and `remove` buttons are
form fields as well: every change is one submit, and the page re-renders with the new count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from memberops.audience.v1 import audience_pb2
from memberops.tagging.v1 import rules_pb2

KINDS = ("tag", "profile", "window")
COMBINATIONS = ("all", "any")
MAX_CONDITIONS = 20
MATCHES = {
    "any_of": audience_pb2.TAG_MATCH_ANY_OF,
    "none_of": audience_pb2.TAG_MATCH_NONE_OF,
    "has_value": audience_pb2.TAG_MATCH_HAS_VALUE,
    "has_any_value": audience_pb2.TAG_MATCH_HAS_ANY_VALUE,
}
FIELDS = {
    name.removeprefix("PROFILE_FIELD_").lower(): number
    for name, number in rules_pb2.ProfileField.items()
    if number != rules_pb2.PROFILE_FIELD_UNSPECIFIED
}
NUMBER_FIELDS = {"age", "days_since_registration"}
OPERATORS = {
    name.removeprefix("OPERATOR_").lower(): number
    for name, number in rules_pb2.Operator.items()
    if number != rules_pb2.OPERATOR_UNSPECIFIED
}
# The comparisons a window's figure takes (it is always a number).
WINDOW_OPERATORS = ("ge", "gt", "le", "lt", "eq", "between")
MEASURES = {
    "orders": rules_pb2.AGGREGATE_FUNCTION_ORDER_COUNT,
    "spend": rules_pb2.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM,
    "events": rules_pb2.AGGREGATE_FUNCTION_EVENT_COUNT,
}
MAX_TEXT = 1000
_SEPARATORS = re.compile("[,\uff0c\u3001]")  # , and the Chinese comma and enumeration comma
_CONDITION_PATH = re.compile(r"^(?:audience\.)?rule\.(?:all|any)\.rules\[(\d+)\](.*)$")


@dataclass(frozen=True)
class Condition:
    kind: str = "tag"
    dimension: str = ""
    match: str = "any_of"
    values: str = ""
    field: str = "city"
    operator: str = "eq"
    value: str = ""
    measure: str = "orders"
    days: str = "30"


@dataclass(frozen=True)
class Draft:
    combine: str = "all"
    conditions: tuple[Condition, ...] = ()

    def query(self) -> list[tuple[str, str]]:
        """The draft as form fields (the editor's URL, and the save form's hidden copy)."""
        pairs = [("combine", self.combine)]
        for i, c in enumerate(self.conditions):
            pairs.append((f"c{i}.kind", c.kind))
            if c.kind == "tag":
                pairs += [
                    (f"c{i}.dimension", c.dimension),
                    (f"c{i}.match", c.match),
                    (f"c{i}.values", c.values),
                ]
            elif c.kind == "profile":
                pairs += [(f"c{i}.field", c.field), (f"c{i}.operator", c.operator), (f"c{i}.value", c.value)]
            else:
                pairs += [
                    (f"c{i}.measure", c.measure),
                    (f"c{i}.days", c.days),
                    (f"c{i}.operator", c.operator),
                    (f"c{i}.value", c.value),
                ]
        return pairs


def _pick(raw: str, allowed: object, default: str) -> str:
    return raw if raw in allowed else default  # type: ignore[operator]


def parse(form: Mapping[str, str]) -> Draft:
    """The draft a submitted form holds, after its `add` or `remove` button (unknown choices fall
    back to defaults; free text is kept as typed, for the service to judge)."""
    conditions: list[Condition] = []
    for i in range(MAX_CONDITIONS):
        kind = form.get(f"c{i}.kind")
        if kind not in KINDS:
            continue

        def text(name: str, default: str = "", i: int = i) -> str:
            return form.get(f"c{i}.{name}", default).strip()[:MAX_TEXT]

        operators = WINDOW_OPERATORS if kind == "window" else OPERATORS
        conditions.append(
            Condition(
                kind=kind,
                dimension=text("dimension"),
                match=_pick(text("match"), MATCHES, "any_of"),
                values=text("values"),
                field=_pick(text("field"), FIELDS, "city"),
                operator=_pick(text("operator"), operators, "ge" if kind == "window" else "eq"),
                value=text("value"),
                measure=_pick(text("measure"), MEASURES, "orders"),
                days=text("days", "30"),
            )
        )
    removed = form.get("remove", "")
    if removed.isdigit() and int(removed) < len(conditions):
        del conditions[int(removed)]
    added = form.get("add", "")
    if added in KINDS and len(conditions) < MAX_CONDITIONS:
        conditions.append(Condition(kind=added, operator="ge" if added == "window" else "eq"))
    return Draft(_pick(form.get("combine", ""), COMBINATIONS, "all"), tuple(conditions))


@dataclass
class Built:
    """The rule of a draft, or the fields the console itself found wrong (by form field name)."""

    rule: audience_pb2.AudienceRule
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


def _split(text: str) -> list[str]:
    return [part.strip() for part in _SEPARATORS.split(text) if part.strip()]


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and abs(number) < 1e15 else None


def build(draft: Draft) -> Built:
    """The AudienceRule of the draft: `all`/`any` of one node per condition (so the service's
    paths `rule.all.rules[i]...` name condition i). A number the console cannot read is reported
    at its field here; everything else is the service's to judge."""
    built = Built(audience_pb2.AudienceRule())
    combined = getattr(built.rule, draft.combine)
    combined.SetInParent()  # an empty `all` is everyone, and must still be set
    nodes = combined.rules
    for i, c in enumerate(draft.conditions):
        if c.kind == "tag":
            values = [] if c.match == "has_any_value" else _split(c.values)
            nodes.add(
                tag=audience_pb2.TagCondition(dimension=c.dimension, match=MATCHES[c.match], values=values)
            )
            continue
        condition = rules_pb2.Condition(operator=OPERATORS[c.operator])
        if c.kind == "profile":
            condition.operand.field = FIELDS[c.field]
        else:
            days = c.days if c.days.isdigit() and len(c.days) < 6 else ""
            if not days:
                built.add(f"c{i}.days", "not a whole number of days")
            condition.operand.aggregate.function = MEASURES[c.measure]
            condition.operand.aggregate.window_days = int(days or 0)
        numeric = c.kind == "window" or c.field in NUMBER_FIELDS
        texts = (
            []
            if c.operator in ("is_set", "is_not_set")
            else _split(c.value)
            if c.operator in ("in", "not_in", "between")
            else [c.value]
        )
        for text in texts:
            if not numeric:
                condition.values.add(text=text)
                continue
            number = _number(text)
            if number is None:
                built.add(f"c{i}.value", f"{text!r} is not a number")
                continue
            condition.values.add(
                number=round(number * 100) if c.measure == "spend" and c.kind == "window" else number
            )
        nodes.add(condition=condition)
    return built


def _field_of(condition: Condition, rest: str) -> str:
    """The form field of condition `i` a violation's path (after `rules[i]`) names."""
    if rest.startswith(".tag."):
        return (
            "dimension"
            if rest.startswith(".tag.dimension")
            else "match"
            if rest.startswith(".tag.match")
            else "values"
        )
    if "window_days" in rest:
        return "days"
    if ".operand" in rest:
        return "measure" if condition.kind == "window" else "field"
    if ".operator" in rest:
        return "operator"
    if ".values" in rest:
        return "value"
    return ""


def place(draft: Draft, violations: tuple[tuple[str, str], ...], errors: dict[str, list[str]]) -> list[str]:
    """Puts each violation at the form field it names (`c{i}.{field}`, or `c{i}` for the whole
    condition) in `errors`; returns those naming no condition (`field: description`)."""
    elsewhere: list[str] = []
    for path, description in violations:
        found = _CONDITION_PATH.match(path)
        index = int(found.group(1)) if found else -1
        if found is None or index >= len(draft.conditions):
            elsewhere.append(f"{path}: {description}")
            continue
        name = _field_of(draft.conditions[index], found.group(2))
        errors.setdefault(f"c{index}.{name}" if name else f"c{index}", []).append(description)
    return elsewhere
