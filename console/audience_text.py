"""An audience rule as an outline an operator reads: `all of` / `any of` / `not` with their children
indented under them, and each leaf in one line (`lifecycle any of new, active`,
`city = "Hangzhou"`, `order_count(window_days=30) ≥ 2`, `in audience vip`).

Conditions over facts are written as tagging's rule language is (console/rule_text.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from memberops.audience.v1 import audience_pb2

from console.rule_text import condition_text, enum_name


@dataclass(frozen=True)
class Line:
    """One node: its words (an i18n key for the combinators, else the leaf's text) and children."""

    text: str
    children: tuple[Line, ...] = ()
    combinator: bool = False


def tag_text(tag: audience_pb2.TagCondition) -> str:
    match = enum_name(audience_pb2.TagMatch, tag.match, "TAG_MATCH_").replace("_", " ")
    values = ", ".join(tag.values)
    return f"{tag.dimension} {match}" + (f" {values}" if values else "")


def describe(rule: audience_pb2.AudienceRule) -> Line:
    node = rule.WhichOneof("node")
    if node in ("all", "any"):
        children = tuple(describe(child) for child in getattr(rule, node).rules)
        return Line(f"audiences.rule_{node}", children, combinator=True)
    if node == "not":
        return Line("audiences.rule_not", (describe(getattr(rule, "not")),), combinator=True)
    if node == "tag":
        return Line(tag_text(rule.tag))
    if node == "condition":
        return Line(condition_text(rule.condition))
    if node == "audience":
        return Line(rule.audience)
    return Line("?")
