"""An audience rule split for bitmap evaluation (issue 25): what member bitmaps answer, what the
recency summaries' day bitmaps decide for all but a few members, and what only the compiled
statement can say.

The rule's top-level conjunction (nested `all`s and referenced audiences opened, as the compiler
opens them) is split in three:

- *bitmap* conjuncts: tag conditions and (in)equality or (NOT) IN tests of a bucketed profile
  field, and any `all` / `any` / `not` made only of those, are set algebra over the tenant's bitmaps
  (AND, OR and, for NOT, the universe minus the operand). Every condition the compiler emits is
  two-valued (a NULL test is COALESCEd to false before it is combined), so the set algebra is
  exactly its logic.
- *driver* conjuncts: "at least one fact in a window" or "none" that a recency summary answers
  (`compiler.summary_test`); the summary's day bitmaps (`fact_windows`) decide it for every member
  but those whose row lies on a day at the window's edges, and narrow the candidates (AND, or for
  "none" ANDNOT); the statement tests the undecided alone.
- the *residual*: everything else, compiled by the unchanged compiler's predicates into one statement
  over chosen members (`compile_gated`), so its semantics are today's, run only over candidates.
  An `any` conjunct with bitmap branches among others keeps them (`Part.free`): a candidate in
  them passes it without the statement.

Pure: nothing here reads the database; `bitmap_evaluation` runs a plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from memberops.audience.v1 import audience_pb2
from memberops.tagging.v1 import member_pb2, rules_pb2
from pyroaring import BitMap

from services.audience import compiler, fact_windows
from services.tagging import rules

Rule = audience_pb2.AudienceRule
Match = audience_pb2.TagMatch
Op = rules_pb2.Operator
Field = rules_pb2.ProfileField

_EQUALITIES = (Op.OPERATOR_EQ, Op.OPERATOR_IN, Op.OPERATOR_NE, Op.OPERATOR_NOT_IN)
# Enum-valued profile fields: a rule names the value by the enum's name.
_ENUMS: dict[int, Any] = {
    Field.PROFILE_FIELD_GENDER: member_pb2.Gender,
    Field.PROFILE_FIELD_CITY_TIER: member_pb2.CityTier,
}


class Bitmaps(Protocol):
    """What a plan reads of one tenant's bitmaps (`bitmaps.TenantBitmaps`)."""

    @property
    def universe(self) -> BitMap: ...

    def tag(self, dimension: str, values: Sequence[str] | None) -> BitMap: ...

    def profile(self, field: str, values: Sequence[str]) -> BitMap | None: ...


class Expr(Protocol):
    def evaluate(self, bitmaps: Bitmaps) -> BitMap: ...


@dataclass(frozen=True)
class TagSet:
    """Members holding one of `values` of the dimension now (any value when None)."""

    dimension: str
    values: tuple[str, ...] | None

    def evaluate(self, bitmaps: Bitmaps) -> BitMap:
        return bitmaps.tag(self.dimension, self.values)


@dataclass(frozen=True)
class ProfileSet:
    """Members whose bucketed profile field is one of `values`, as the rule gives them."""

    field: str
    values: tuple[str, ...]

    def evaluate(self, bitmaps: Bitmaps) -> BitMap:
        found = bitmaps.profile(self.field, self.values)
        assert found is not None, f"{self.field} was bucketed when the plan was made"
        return found


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Expr, ...]

    def evaluate(self, bitmaps: Bitmaps) -> BitMap:
        if not self.parts:
            return BitMap(bitmaps.universe)
        # Smallest first: every intersection is then at most that big.
        sets = sorted((part.evaluate(bitmaps) for part in self.parts), key=len)
        result = BitMap(sets[0])
        for other in sets[1:]:
            if not result:
                break
            result &= other
        return result


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Expr, ...]

    def evaluate(self, bitmaps: Bitmaps) -> BitMap:
        return BitMap.union(BitMap(), *(part.evaluate(bitmaps) for part in self.parts))


@dataclass(frozen=True)
class NotOf:
    part: Expr

    def evaluate(self, bitmaps: Bitmaps) -> BitMap:
        return BitMap(bitmaps.universe) - self.part.evaluate(bitmaps)


@dataclass(frozen=True)
class Driver:
    """A summary test, answered from the recency summaries' day bitmaps (`fact_windows`):
    `positive`, the rule wants the members with a fact in the window ("carted this fortnight"),
    else it wants everyone else ("bought none in 90 days")."""

    window: fact_windows.Window
    positive: bool


@dataclass(frozen=True)
class Part:
    """A conjunct no bitmap answers whole: `rule` decides it in SQL, unless its members are read
    whole (`driver`), or a member is in `free` (the bitmap branches of an `any`; `rule` is then the
    `any` of its other branches)."""

    rule: Rule
    driver: Driver | None = None
    free: Expr | None = None


@dataclass(frozen=True)
class Plan:
    # The bitmap conjuncts, ANDed; None when there are none (every member is a candidate).
    bitmap: Expr | None
    parts: tuple[Part, ...]
    references: Mapping[str, Rule]
    _gated: list[compiler.Gated] = field(default_factory=list, compare=False, repr=False)

    def candidates(self, bitmaps: Bitmaps) -> BitMap:
        """The members the bitmap conjuncts let through (a new bitmap the caller may change)."""
        if self.bitmap is None:
            return BitMap(bitmaps.universe)
        return BitMap(self.bitmap.evaluate(bitmaps))

    def statement(self) -> compiler.Gated:
        """Every part's rule in one statement, each member tested on the parts it needs (compiled
        once)."""
        if not self._gated:
            self._gated.append(compiler.compile_gated([part.rule for part in self.parts], self.references))
        return self._gated[0]


def plan(rule: Rule, references: Mapping[str, Rule], bucketed: frozenset[str]) -> Plan | None:
    """The rule split as the module doc says, or None when neither bitmaps nor a driver narrow it
    (today's statement is then as good). `bucketed`: the profile fields the index holds buckets of.
    Raises as the compiler does for a reference cycle or a missing referenced audience."""
    state = compiler.CompileState(references)
    bitmap: list[Expr] = []
    parts: list[Part] = []
    for conjunct, stack in compiler.flat_conjuncts(rule, state, ()):
        expr = _expr(conjunct, state, stack, bucketed)
        if expr is not None:
            bitmap.append(expr)
            continue
        driver = _driver(conjunct)
        free = _free(conjunct, state, stack, bucketed) if driver is None else None
        parts.append(free or Part(conjunct, driver))
    if not bitmap and not any(p.driver for p in parts) and parts:
        return None
    # No conjunct at all: every member, which the universe answers.
    whole = bitmap[0] if len(bitmap) == 1 else AllOf(tuple(bitmap)) if bitmap or not parts else None
    return Plan(whole, tuple(parts), references)


def _free(
    rule: Rule, state: compiler.CompileState, stack: tuple[str, ...], bucketed: frozenset[str]
) -> Part | None:
    """An `any` conjunct with bitmap branches and others, as a part whose members in the bitmap
    branches pass without SQL."""
    if rule.WhichOneof("node") != "any":
        return None
    branches = [(child, _expr(child, state, stack, bucketed)) for child in rule.any.rules]
    free = tuple(expr for _, expr in branches if expr is not None)
    others = [child for child, expr in branches if expr is None]
    if not free or not others:
        return None
    rest = Rule(any=audience_pb2.AudienceRuleList(rules=others))
    return Part(rest, free=free[0] if len(free) == 1 else AnyOf(free))


def _expr(
    rule: Rule, state: compiler.CompileState, stack: tuple[str, ...], bucketed: frozenset[str]
) -> Expr | None:
    """The rule as set algebra over bitmaps, or None when some part of it is not a bitmap."""
    node = rule.WhichOneof("node")
    if node == "tag":
        return _tag(rule.tag)
    if node == "condition":
        return _profile(rule.condition, bucketed)
    if node == "not":
        inner = _expr(getattr(rule, "not"), state, stack, bucketed)
        return NotOf(inner) if inner is not None else None
    if node in ("all", "any"):
        parts = [_expr(child, state, stack, bucketed) for child in getattr(rule, node).rules]
        if any(part is None for part in parts):
            return None
        found = tuple(part for part in parts if part is not None)
        return AllOf(found) if node == "all" else AnyOf(found)
    if node == "audience":
        referenced, found_rule = compiler.referenced_rule(rule.audience, state, stack)
        return _expr(found_rule, state, (*stack, referenced), bucketed)
    return None


def _tag(tag: audience_pb2.TagCondition) -> Expr:
    if tag.match == Match.TAG_MATCH_HAS_ANY_VALUE:
        return TagSet(tag.dimension, None)
    held = TagSet(tag.dimension, tuple(tag.values))
    return NotOf(held) if tag.match == Match.TAG_MATCH_NONE_OF else held


def _profile(condition: rules_pb2.Condition, bucketed: frozenset[str]) -> Expr | None:
    """An (in)equality or (NOT) IN test of a bucketed profile field, given the values as the rule
    gives them (an enum field's by name: one not of the enum is left to the statement). Bucketed
    columns are NOT NULL (tagging keeps them so), so "not equal" is exactly everyone else."""
    operand = condition.operand
    op = condition.operator
    if operand.WhichOneof("source") != "field" or op not in _EQUALITIES:
        return None
    name = Field.Name(operand.field).removeprefix("PROFILE_FIELD_").lower()
    if name not in bucketed or not condition.values:
        return None
    if any(value.WhichOneof("kind") != "text" for value in condition.values):
        return None
    texts = [value.text for value in condition.values]
    enum = _ENUMS.get(operand.field)
    if enum is not None:
        names = set(enum.keys())
        if any(text not in names for text in texts):
            return None
    found = ProfileSet(name, tuple(dict.fromkeys(texts)))
    return found if op in (Op.OPERATOR_EQ, Op.OPERATOR_IN) else NotOf(found)


def _driver(rule: Rule) -> Driver | None:
    summary = compiler.summary_test(rule)
    if summary is None:
        return None
    key, positive = summary
    # The same rows and window as the summary's statement (`rules.recency_of`).
    events = rules.of_events(key)
    window = fact_windows.Window(
        source=fact_windows.EVENTS if events else fact_windows.PURCHASES,
        kinds=frozenset(key.event_kinds) if events else frozenset(),
        categories=frozenset(key.categories),
        days=key.window_days or None,
    )
    return Driver(window, positive)
