"""The built-in tag catalog, seeded for every tenant when the tagging service starts.

Each entry is an ordinary definition: a tenant changes its thresholds or windows with
`UpdateTagDefinition` (a new version) or retires it, and seeding never overwrites either, since it
only creates dimensions that do not exist yet. Amounts are in minor units (100 = 1.00).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from memberops.tagging.v1 import facts_pb2, member_pb2, models_pb2, rules_pb2

from services.tagging.catalog import Cardinality, Category, DefinitionInput, Kind, Refresh, TagValue

DEFAULT_ZONE = "Asia/Shanghai"
Fn = rules_pb2.AggregateFunction
Op = rules_pb2.Operator
Field = rules_pb2.ProfileField


def _number(value: float) -> rules_pb2.Value:
    return rules_pb2.Value(number=value)


def _field(
    field: rules_pb2.ProfileField.ValueType, op: rules_pb2.Operator.ValueType, *values: rules_pb2.Value
) -> rules_pb2.Rule:
    return rules_pb2.Rule(
        condition=rules_pb2.Condition(operand=rules_pb2.Operand(field=field), operator=op, values=values)
    )


def _aggregate(
    function: rules_pb2.AggregateFunction.ValueType,
    window_days: int,
    op: rules_pb2.Operator.ValueType,
    *values: rules_pb2.Value,
) -> rules_pb2.Rule:
    operand = rules_pb2.Operand(aggregate=rules_pb2.Aggregate(function=function, window_days=window_days))
    return rules_pb2.Rule(condition=rules_pb2.Condition(operand=operand, operator=op, values=values))


def _all(*rules: rules_pb2.Rule) -> rules_pb2.Rule:
    return rules_pb2.Rule(all=rules_pb2.RuleList(rules=rules))


def _fact(dimension: str, display: str, values: Sequence[TagValue]) -> DefinitionInput:
    return DefinitionInput(
        dimension=dimension,
        display_name=display,
        category=Category.CROWD,
        kind=Kind.FACT,
        refresh_policy=Refresh.REAL_TIME,
        cardinality=Cardinality.SINGLE,
        values=tuple(values),
    )


def _model(
    dimension: str,
    display: str,
    category: Category,
    refresh: Refresh,
    cardinality: Cardinality,
    model: models_pb2.Model,
) -> DefinitionInput:
    return DefinitionInput(
        dimension=dimension,
        display_name=display,
        category=category,
        kind=Kind.MODEL,
        refresh_policy=refresh,
        cardinality=cardinality,
        values=(),
        model=model,
    )


def _gender() -> DefinitionInput:
    names = {"female": "GENDER_FEMALE", "male": "GENDER_MALE", "other": "GENDER_OTHER"}
    return _fact(
        "gender",
        "Gender",
        [
            TagValue(
                value,
                value.title(),
                _field(Field.PROFILE_FIELD_GENDER, Op.OPERATOR_EQ, rules_pb2.Value(text=enum)),
            )
            for value, enum in names.items()
        ],
    )


def _age_band() -> DefinitionInput:
    bands = [(18, 25), (26, 35), (36, 45), (46, 55)]
    values = [
        TagValue(
            f"{low}-{high}",
            f"{low}-{high}",
            _field(Field.PROFILE_FIELD_AGE, Op.OPERATOR_BETWEEN, _number(low), _number(high)),
        )
        for low, high in bands
    ]
    values.append(
        TagValue("56+", "56 and over", _field(Field.PROFILE_FIELD_AGE, Op.OPERATOR_GE, _number(56)))
    )
    return _fact("age_band", "Age band", values)


def _city_tier() -> DefinitionInput:
    values = []
    for name in member_pb2.CityTier.keys():  # noqa: SIM118 (an enum wrapper, not a dict)
        if name == "CITY_TIER_UNSPECIFIED":
            continue
        code = name.removeprefix("CITY_TIER_").lower()
        rule = _field(Field.PROFILE_FIELD_CITY_TIER, Op.OPERATOR_EQ, rules_pb2.Value(text=name))
        values.append(TagValue(code, code.replace("_", " ").title(), rule))
    return _fact("city_tier", "City tier", values)


# The tasks service's default level tiers; a tenant whose level policy names other codes updates
# this dimension to them (the tasks service writes each member's level to `profile.level`).
LEVEL_CODES = ("bronze", "silver", "gold")


def _level() -> DefinitionInput:
    values = [
        TagValue(
            code, code.title(), _field(Field.PROFILE_FIELD_LEVEL, Op.OPERATOR_EQ, rules_pb2.Value(text=code))
        )
        for code in LEVEL_CODES
    ]
    return dataclasses.replace(_fact("level", "Membership level", values), category=Category.MEMBER)


def _purchase_frequency() -> DefinitionInput:
    """Orders per month over the last 90 days, for members who bought in them."""
    bought = _aggregate(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 90, Op.OPERATOR_GE, _number(1))

    def per_month(op: rules_pb2.Operator.ValueType, bound: float) -> rules_pb2.Rule:
        return _aggregate(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, 90, op, _number(bound))

    values = [
        TagValue("le_1_per_month", "1 or fewer a month", _all(bought, per_month(Op.OPERATOR_LT, 2))),
        TagValue("2_3_per_month", "2-3 a month", _all(bought, per_month(Op.OPERATOR_LT, 4))),
        TagValue("4_5_per_month", "4-5 a month", _all(bought, per_month(Op.OPERATOR_LT, 6))),
        TagValue("6_plus_per_month", "6 or more a month", bought),
    ]
    return _rule("purchase_frequency", "Purchase frequency", Category.TRANSACTION, values)


def _average_order_amount() -> DefinitionInput:
    """Net amount per order over the last 365 days, in bands of 100, 200 and 500 (minor units x100)."""

    def below(amount: int) -> rules_pb2.Rule:
        return _aggregate(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_AVG, 365, Op.OPERATOR_LT, _number(amount * 100))

    values = [
        TagValue("lt_100", "Under 100", below(100)),
        TagValue("100_200", "100-200", below(200)),
        TagValue("200_500", "200-500", below(500)),
        TagValue(
            "500_plus",
            "500 and over",
            _aggregate(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_AVG, 365, Op.OPERATOR_IS_SET),
        ),
    ]
    return _rule("average_order_amount", "Average order amount", Category.CONSUMPTION, values)


def _loyalty() -> DefinitionInput:
    """Loyalty by purchase frequency: orders in the last 365 days."""

    def at_least(count: int) -> rules_pb2.Rule:
        return _aggregate(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 365, Op.OPERATOR_GE, _number(count))

    values = [
        TagValue("loyal", "Loyal (12+ orders a year)", at_least(12)),
        TagValue("regular", "Regular (4-11)", at_least(4)),
        TagValue("occasional", "Occasional (2-3)", at_least(2)),
        TagValue("one_time", "One-time", at_least(1)),
    ]
    return _rule("loyalty", "Loyalty", Category.MEMBER, values)


def _rule(dimension: str, display: str, category: Category, values: Sequence[TagValue]) -> DefinitionInput:
    return DefinitionInput(
        dimension=dimension,
        display_name=display,
        category=category,
        kind=Kind.RULE,
        refresh_policy=Refresh.REAL_TIME,
        cardinality=Cardinality.SINGLE,
        values=tuple(values),
    )


def _models() -> list[DefinitionInput]:
    m, cart, favourite = models_pb2, facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_FAVOURITE
    single, multi, real_time, scheduled = (
        Cardinality.SINGLE,
        Cardinality.MULTI,
        Refresh.REAL_TIME,
        Refresh.SCHEDULED,
    )
    return [
        _model(
            "categories_bought", "Categories bought", Category.CONSUMPTION, real_time, multi,
            m.Model(categories_bought=m.CategoriesBought(window_days=365)),
        ),
        _model(
            "rfm_segment", "RFM segment (mean split)", Category.TRANSACTION, scheduled, single,
            m.Model(rfm_mean_split=m.RfmMeanSplit(window_days=365)),
        ),
        _model(
            "rfm_quintile_segment", "RFM segment (quintiles)", Category.TRANSACTION, scheduled, single,
            m.Model(rfm_quintiles=m.RfmQuintiles(window_days=365)),
        ),
        _model(
            "lifecycle", "Lifecycle stage", Category.MEMBER, real_time, single,
            m.Model(lifecycle=m.Lifecycle(new_days=30, active_days=90, churn_days=180)),
        ),
        _model(
            "category_preference", "Preferred categories", Category.CONSUMPTION, scheduled, multi,
            m.Model(category_preference=m.CategoryPreference(window_days=365, top_n=3)),
        ),
        _model(
            "interest", "Interested, not bought", Category.BEHAVIOUR, real_time, multi,
            m.Model(interest=m.Interest(window_days=14, event_kinds=[cart, favourite])),
        ),
        _model(
            "repurchase_due", "Repurchase due", Category.TRANSACTION, scheduled, single,
            m.Model(repurchase_due=m.RepurchaseDue(window_days=365, min_orders=2, tolerance_percent=100)),
        ),
        _model(
            "preferred_send_hour", "Preferred send hour", Category.MARKETING, scheduled, single,
            m.Model(preferred_send_hour=m.PreferredSendHour(window_days=180, default_time_zone=DEFAULT_ZONE)),
        ),
    ]  # fmt: skip


def definitions() -> list[DefinitionInput]:
    """Every built-in dimension, in the catalog's order."""
    return [
        _gender(),
        _age_band(),
        _city_tier(),
        _level(),
        _purchase_frequency(),
        _average_order_amount(),
        _loyalty(),
        *_models(),
    ]
