"""The split of a rule for bitmap evaluation, and its set algebra against a tiny in-memory index."""

from __future__ import annotations

import random
from collections.abc import Sequence

from memberops.audience.v1 import audience_pb2
from pyroaring import BitMap

from services.audience import bitmap_plan, fact_windows
from tests.audience.helpers import (
    CART,
    Match,
    Rule,
    all_of,
    any_of,
    event_count,
    fact,
    member_of,
    not_,
    order_count,
    tag,
)
from tests.tagging.rule_builders import Field, Op, field

BUCKETED = frozenset({"gender", "city_tier", "level", "register_channel", "city"})
MEMBERS = range(1, 41)
DIMENSIONS = {"color": ("red", "green", "blue"), "size": ("s", "m")}
CITIES = ("Hangzhou", "Shanghai", "")


class FakeBitmaps:
    """Tags and profile buckets of a few members, held as plain sets as well as bitmaps."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.universe = BitMap(MEMBERS)
        self.tags = {
            (dimension, value): {m for m in MEMBERS if rng.random() < 0.3}
            for dimension, values in DIMENSIONS.items()
            for value in values
        }
        self.city = {m: rng.choice(CITIES) for m in MEMBERS}
        self.gender = {m: rng.choice(("GENDER_FEMALE", "GENDER_MALE")) for m in MEMBERS}

    def tag(self, dimension: str, values: Sequence[str] | None) -> BitMap:
        wanted = DIMENSIONS[dimension] if values is None else values
        return BitMap(m for (d, v), held in self.tags.items() if d == dimension and v in wanted for m in held)

    def profile(self, name: str, values: Sequence[str]) -> BitMap | None:
        column = {"city": self.city, "gender": self.gender}.get(name)
        if column is None:
            return BitMap()
        return BitMap(m for m, v in column.items() if v in values)

    def holds(self, member: int, rule: Rule) -> bool:
        """The rule for one member, by the rule language's meaning (no bitmaps)."""
        node = rule.WhichOneof("node")
        if node == "all":
            return all(self.holds(member, r) for r in rule.all.rules)
        if node == "any":
            return any(self.holds(member, r) for r in rule.any.rules)
        if node == "not":
            return not self.holds(member, getattr(rule, "not"))
        if node == "tag":
            t = rule.tag
            values = DIMENSIONS[t.dimension] if t.match == Match.TAG_MATCH_HAS_ANY_VALUE else t.values
            held = any(member in self.tags[(t.dimension, v)] for v in values)
            return not held if t.match == Match.TAG_MATCH_NONE_OF else held
        c = rule.condition
        column = self.city if c.operand.field == Field.PROFILE_FIELD_CITY else self.gender
        found = column[member] in [v.text for v in c.values]
        return not found if c.operator in (Op.OPERATOR_NE, Op.OPERATOR_NOT_IN) else found


def city(op: int, *cities: str) -> Rule:
    return fact(field(Field.PROFILE_FIELD_CITY), op, *cities)


def random_rule(rng: random.Random, depth: int = 0) -> Rule:
    roll = rng.random()
    if depth < 3 and roll < 0.35:
        children = [random_rule(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return all_of(*children) if rng.random() < 0.5 else any_of(*children)
    if depth < 3 and roll < 0.45:
        return not_(random_rule(rng, depth + 1))
    if roll < 0.65:
        wanted = rng.sample(CITIES, rng.randint(1, 2))
        if len(wanted) == 1 and rng.random() < 0.5:
            return city(rng.choice((Op.OPERATOR_EQ, Op.OPERATOR_NE)), wanted[0])
        return city(rng.choice((Op.OPERATOR_IN, Op.OPERATOR_NOT_IN)), *wanted)
    if roll < 0.72:
        return fact(field(Field.PROFILE_FIELD_GENDER), Op.OPERATOR_EQ, "GENDER_MALE")
    dimension = rng.choice(sorted(DIMENSIONS))
    match = rng.choice([Match.TAG_MATCH_ANY_OF, Match.TAG_MATCH_NONE_OF, Match.TAG_MATCH_HAS_ANY_VALUE])
    values = () if match == Match.TAG_MATCH_HAS_ANY_VALUE else rng.sample(DIMENSIONS[dimension], 2)
    return tag(dimension, match, *values)


def test_random_bitmap_rules_select_exactly_the_members_they_describe() -> None:
    rng = random.Random(25)
    for seed in range(200):
        bitmaps = FakeBitmaps(seed)
        rule = random_rule(rng)
        plan = bitmap_plan.plan(rule, {}, BUCKETED)
        assert plan is not None and not plan.parts, rule
        expected = BitMap(m for m in MEMBERS if bitmaps.holds(m, rule))
        assert plan.candidates(bitmaps) == expected, rule


def test_the_bench_rule_splits_into_a_tag_a_driver_and_a_residual() -> None:
    carted = fact(event_count(14, event_kinds=[CART], categories=["skincare"]), Op.OPERATOR_GE, 1)
    bought = not_(fact(order_count(90, categories=["skincare"]), Op.OPERATOR_GE, 1))
    valuable = any_of(tag("rfm", Match.TAG_MATCH_ANY_OF, "a"), fact(order_count(90), Op.OPERATOR_GE, 3))
    rule = all_of(tag("lifecycle", Match.TAG_MATCH_ANY_OF, "active"), valuable, carted, bought)
    plan = bitmap_plan.plan(rule, {}, BUCKETED)
    assert plan is not None
    assert plan.bitmap == bitmap_plan.TagSet("lifecycle", ("active",))
    either, cart, purchase = plan.parts
    # The any's tag branch passes a member without SQL; the statement is its other branch alone.
    assert either.free == bitmap_plan.TagSet("rfm", ("a",)) and either.driver is None
    assert either.rule == any_of(fact(order_count(90), Op.OPERATOR_GE, 3))
    assert cart.driver == bitmap_plan.Driver(
        fact_windows.Window(fact_windows.EVENTS, frozenset({CART}), frozenset({"skincare"}), 14), True
    )
    assert purchase.driver == bitmap_plan.Driver(
        fact_windows.Window(fact_windows.PURCHASES, frozenset(), frozenset({"skincare"}), 90), False
    )
    # One statement for the three parts, each behind its member's mask.
    statement = plan.statement()
    assert statement is plan.statement()
    assert "event_recency" in statement.sql and "purchase_recency" in statement.sql
    assert statement.sql.count("substr(g.needs") == 3


def test_what_no_bitmap_holds_stays_in_the_residual() -> None:
    unbucketed = fact(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_GE, 30)
    not_equal = fact(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_NE, 30)
    is_set = fact(field(Field.PROFILE_FIELD_CITY), Op.OPERATOR_IS_SET)
    mixed = any_of(tag("color", Match.TAG_MATCH_ANY_OF, "red"), unbucketed)
    for rule in (unbucketed, not_equal, is_set, mixed, all_of(unbucketed, mixed)):
        assert bitmap_plan.plan(rule, {}, BUCKETED) is None, rule
    # Unbucketed by this index: city is then a residual test.
    assert bitmap_plan.plan(city(Op.OPERATOR_EQ, "Hangzhou"), {}, frozenset()) is None
    # A driver alone is worth a plan, one of members a rule wants or of those it does not.
    carted = fact(event_count(14, event_kinds=[CART]), Op.OPERATOR_GE, 1)
    plan = bitmap_plan.plan(all_of(carted, not_equal), {}, BUCKETED)
    assert plan is not None and plan.bitmap is None
    assert [p.driver is not None and p.driver.positive for p in plan.parts] == [True, False]
    plan = bitmap_plan.plan(not_(carted), {}, BUCKETED)
    assert plan is not None and plan.parts[0].driver is not None and not plan.parts[0].driver.positive


def test_references_are_opened_into_the_conjunction() -> None:
    inner = all_of(tag("color", Match.TAG_MATCH_ANY_OF, "red"), city(Op.OPERATOR_EQ, "Hangzhou"))
    references = {"inner": inner}
    rule = all_of(member_of("inner"), not_(member_of("inner")))
    plan = bitmap_plan.plan(rule, references, BUCKETED)
    assert plan is not None and not plan.parts
    assert not plan.candidates(FakeBitmaps(1))
    plan = bitmap_plan.plan(
        any_of(member_of("inner"), tag("size", Match.TAG_MATCH_HAS_ANY_VALUE)), references, BUCKETED
    )
    assert plan is not None and not plan.parts


def test_an_enum_name_outside_the_enum_is_left_to_the_statement() -> None:
    rule = Rule(condition=fact(field(Field.PROFILE_FIELD_GENDER), Op.OPERATOR_EQ, "NOT_A_GENDER").condition)
    assert bitmap_plan.plan(rule, {}, BUCKETED) is None
    rule = fact(field(Field.PROFILE_FIELD_CITY_TIER), Op.OPERATOR_IN, "CITY_TIER_1", "CITY_TIER_NEW_1")
    plan = bitmap_plan.plan(rule, {}, BUCKETED)
    expected = bitmap_plan.ProfileSet("city_tier", ("CITY_TIER_1", "CITY_TIER_NEW_1"))
    assert plan is not None and plan.bitmap == expected


def test_empty_lists_are_everyone_and_no_one() -> None:
    bitmaps = FakeBitmaps(2)
    everyone = bitmap_plan.plan(all_of(all_of(), tag("color", Match.TAG_MATCH_NONE_OF, "red")), {}, BUCKETED)
    assert everyone is not None
    assert everyone.candidates(bitmaps) == BitMap(MEMBERS) - bitmaps.tag("color", ["red"])
    no_one = bitmap_plan.plan(any_of(), {}, BUCKETED)
    assert no_one is not None and not no_one.candidates(bitmaps)
    assert isinstance(audience_pb2.AudienceRule(), Rule)
