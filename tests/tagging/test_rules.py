"""The rule language: validation names each bad node; compiled rules decide right on real data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
from google.type import date_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, rules_pb2, tagging_service_pb2

from runtime.db import Database
from runtime.errors import InvalidArgument, Violations
from services.tagging import rules
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.facts_helpers import (
    a_refund,
    an_event,
    an_order,
    record_events,
    record_order,
    record_refund,
    stamp,
)
from tests.tagging.rule_builders import (
    ALWAYS,
    Field,
    Fn,
    Op,
    agg,
    all_of,
    any_of,
    attribute,
    cond,
    field,
    not_,
)

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


async def evaluate(
    db: Database, value_rules: Sequence[rules_pb2.Rule | None], members: list[str], *, single: bool = True
) -> dict[str, list[int]]:
    for i, rule in enumerate(value_rules):
        violations = Violations()
        if rule is not None:
            rules.validate(rule, violations, f"values[{i}].rule")
        violations.raise_if_any()
    # Values named by their index, so tests compare positions.
    compiled = rules.compile_dimension(
        [(str(i), rule) for i, rule in enumerate(value_rules)], single=single, filtered=True
    )
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(compiled.sql, *compiled.args(NOW, members))
    return {row["member_id"]: [int(value) for value in row["tag_values"]] for row in rows}


async def member(stub: Stub, **profile: Any) -> str:
    member_id = unique()
    attributes = profile.pop("attributes", {})
    message = member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(**profile))
    message.attributes.update(attributes)
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=message), metadata=ACME)
    return member_id


async def orders(stub: Stub, member_id: str, days_ago: Sequence[int], **fields: Any) -> list[facts_pb2.Order]:
    return [
        await record_order(stub, an_order(member_id, paid_time=stamp(NOW - dt.timedelta(days=d)), **fields))
        for d in days_ago
    ]


async def test_purchase_frequency_bands(tagging_stub: Stub, db: Database) -> None:
    per_month = agg(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, window_days=90)
    bands = [
        cond(per_month, Op.OPERATOR_GE, 6),
        cond(per_month, Op.OPERATOR_BETWEEN, 4, 5.99),
        cond(per_month, Op.OPERATOR_BETWEEN, 2, 3.99),
        ALWAYS,
    ]
    none, some, many = [await member(tagging_stub) for _ in range(3)]
    await orders(tagging_stub, some, [5, 20, 35, 50, 65, 80])  # 6 in 90 days: 2/month
    await orders(tagging_stub, many, [d * 6 + 1 for d in range(14)] + [200, 400])  # 14 in window: 4.67/month
    assert await evaluate(db, bands, [none, some, many]) == {none: [3], some: [2], many: [1]}


async def test_profile_fields_and_attributes(tagging_stub: Stub, db: Database) -> None:
    young = await member(
        tagging_stub,
        gender=member_pb2.GENDER_FEMALE,
        birthday=date_pb2.Date(year=2000, month=6, day=1),
        city_tier=member_pb2.CITY_TIER_1,
        attributes={"vip": True, "children": 2, "segment": "gold"},
    )
    older = await member(tagging_stub, birthday=date_pb2.Date(year=1970, month=1, day=1))
    checks = [
        all_of(
            cond(field(Field.PROFILE_FIELD_GENDER), Op.OPERATOR_EQ, "GENDER_FEMALE"),
            cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_BETWEEN, 26, 35),
            cond(field(Field.PROFILE_FIELD_CITY_TIER), Op.OPERATOR_IN, "CITY_TIER_1", "CITY_TIER_NEW_1"),
            cond(attribute("vip"), Op.OPERATOR_EQ, True),
            cond(attribute("children"), Op.OPERATOR_GE, 2),
            cond(attribute("segment"), Op.OPERATOR_NOT_IN, "silver"),
        ),
        cond(attribute("vip"), Op.OPERATOR_IS_NOT_SET),
    ]
    assert await evaluate(db, checks, [young, older], single=False) == {young: [0], older: [1]}


async def test_refunds_and_line_filters_count_net(tagging_stub: Stub, db: Database) -> None:
    buyer = await member(tagging_stub)
    kept, returned = await orders(tagging_stub, buyer, [3, 4])
    await record_refund(
        tagging_stub, a_refund(returned.order_id, refund_time=stamp(NOW - dt.timedelta(days=1)))
    )
    await record_refund(
        tagging_stub,
        a_refund(
            kept.order_id,
            refund_time=stamp(NOW - dt.timedelta(days=1)),
            amount_minor=2_000,
            lines=[facts_pb2.RefundLine(line_id="2", quantity=1)],
        ),
    )
    figures = [
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 30), Op.OPERATOR_EQ, 1),  # the full refund is gone
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM, 30), Op.OPERATOR_EQ, 25_800 - 2_000),
        cond(
            agg(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM, 30, categories=["makeup"]), Op.OPERATOR_EQ, 2 * 2_000
        ),
        cond(agg(Fn.AGGREGATE_FUNCTION_ITEM_COUNT, 30), Op.OPERATOR_EQ, 2 + 2),
        cond(agg(Fn.AGGREGATE_FUNCTION_DISTINCT_CATEGORIES), Op.OPERATOR_EQ, 2),
        cond(agg(Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_ORDER), Op.OPERATOR_EQ, 3),
        cond(
            agg(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_MAX, 30, brands=["acme"]), Op.OPERATOR_EQ, 19_800 + 4_000
        ),
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 2), Op.OPERATOR_EQ, 0),  # window excludes both
    ]
    assert await evaluate(db, figures, [buyer], single=False) == {buyer: list(range(len(figures)))}


async def test_interest_carted_but_never_bought(tagging_stub: Stub, db: Database) -> None:
    makeup = ["makeup"]
    carted = agg(
        Fn.AGGREGATE_FUNCTION_EVENT_COUNT,
        14,
        categories=makeup,
        event_kinds=[facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_FAVOURITE],
    )
    interest = all_of(
        cond(carted, Op.OPERATOR_GT, 0),
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, categories=makeup), Op.OPERATOR_EQ, 0),
    )
    browser, buyer, stale = [await member(tagging_stub) for _ in range(3)]
    recent = stamp(NOW - dt.timedelta(days=2))
    await record_events(
        tagging_stub, [an_event(m, category="makeup", occur_time=recent) for m in (browser, buyer)]
    )
    await record_events(
        tagging_stub, [an_event(stale, category="makeup", occur_time=stamp(NOW - dt.timedelta(days=30)))]
    )
    await orders(tagging_stub, buyer, [100])  # its order has a makeup line
    assert await evaluate(db, [interest], [browser, buyer, stale]) == {browser: [0], buyer: [], stale: []}


async def test_facts_after_the_evaluation_time_are_ignored(tagging_stub: Stub, db: Database) -> None:
    buyer = await member(tagging_stub)
    await orders(tagging_stub, buyer, [-1])  # paid a day after NOW (and before the real clock)
    assert await evaluate(db, [cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT), Op.OPERATOR_EQ, 0)], [buyer]) == {
        buyer: [0]
    }


async def test_not_and_any_treat_unknown_as_false(tagging_stub: Stub, db: Database) -> None:
    nobody = await member(tagging_stub)  # no birthday: age is unset
    age_over_30 = cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_GT, 30)
    result = await evaluate(db, [not_(age_over_30), any_of(age_over_30), age_over_30], [nobody], single=False)
    assert result == {nobody: [0]}


def _c(operand: rules_pb2.Operand, op: int, *values: rules_pb2.Value) -> rules_pb2.Rule:
    return rules_pb2.Rule(condition=rules_pb2.Condition(operand=operand, operator=op, values=values))  # type: ignore[arg-type]


def _deep(depth: int) -> rules_pb2.Rule:
    rule = ALWAYS
    for _ in range(depth):
        rule = not_(rule)
    return rule


BAD_RULES: list[tuple[str, rules_pb2.Rule, str]] = [
    ("empty rule", rules_pb2.Rule(), "r"),
    ("no operand", _c(rules_pb2.Operand(), Op.OPERATOR_EQ, rules_pb2.Value(number=1)), "r.condition.operand"),
    ("unknown field", cond(field(99), Op.OPERATOR_EQ, 1), "r.condition.operand.field"),
    ("no operator", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_UNSPECIFIED, 1), "r.condition.operator"),
    ("wrong type", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_EQ, "thirty"), "r.condition.values[0]"),
    (
        "unknown gender",
        cond(field(Field.PROFILE_FIELD_GENDER), Op.OPERATOR_EQ, "GENDER_X"),
        "r.condition.values[0]",
    ),
    ("order on text", cond(field(Field.PROFILE_FIELD_CITY), Op.OPERATOR_LT, "M"), "r.condition.operator"),
    ("between one", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_BETWEEN, 1), "r.condition.values"),
    (
        "between reversed",
        cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_BETWEEN, 9, 1),
        "r.condition.values",
    ),
    ("mixed types", cond(attribute("x"), Op.OPERATOR_IN, 1, "a"), "r.condition.values"),
    ("bad attribute", cond(attribute("no spaces"), Op.OPERATOR_EQ, 1), "r.condition.operand.attribute"),
    ("no function", cond(agg(0), Op.OPERATOR_GT, 1), "r.condition.operand.aggregate.function"),
    (
        "absurd window",
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 99_999), Op.OPERATOR_GT, 1),
        "r.condition.operand.aggregate.window_days",
    ),
    (
        "negative window",
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, -1), Op.OPERATOR_GT, 1),
        "r.condition.operand.aggregate.window_days",
    ),
    (
        "per month, all time",
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH), Op.OPERATOR_GT, 1),
        "r.condition.operand.aggregate.window_days",
    ),
    (
        "event kind on orders",
        cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, event_kinds=[1]), Op.OPERATOR_GT, 1),
        "r.condition.operand.aggregate.filter.event_kinds",
    ),
    ("NaN", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_GT, float("nan")), "r.condition.values[0]"),
    ("set with value", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_IS_SET, 1), "r.condition.values"),
    (
        "nested bad",
        all_of(ALWAYS, any_of(cond(field(99), Op.OPERATOR_EQ, 1))),
        "r.all.rules[1].any.rules[0].condition.operand.field",
    ),
    ("too deep", _deep(12), "r" + ".not" * 10),
]


@pytest.mark.parametrize(("case", "rule", "path"), BAD_RULES, ids=[c[0] for c in BAD_RULES])
def test_invalid_rules_name_the_failing_node(case: str, rule: rules_pb2.Rule, path: str) -> None:
    violations = Violations()
    rules.validate(rule, violations, "r")
    with pytest.raises(InvalidArgument) as caught:
        violations.raise_if_any()
    assert path in {v.field for v in caught.value.violations}, caught.value.violations


def test_caller_text_is_bound_never_spliced() -> None:
    evil = "x'); DROP TABLE tagging.members; --"
    compiled = rules.compile_dimension(
        [
            ("v1", cond(field(Field.PROFILE_FIELD_CITY), Op.OPERATOR_EQ, evil)),
            (evil, cond(attribute("a.b"), Op.OPERATOR_EQ, evil)),
        ],
        single=True,
        filtered=False,
    )
    assert evil not in compiled.sql
    assert "a.b" not in compiled.sql
    assert compiled.params.count(evil) == 3
