"""Protobuf <-> domain for the economy rules' RPCs."""

from __future__ import annotations

from memberops.tasks.v1 import levels_pb2, points_pb2

from runtime.errors import Violations
from services.tasks.economy.order_earning import Rule
from services.tasks.levels.levels import Benefits
from services.tasks.points import ledger


def rule_from_proto(message: points_pb2.OrderEarningRule, v: Violations) -> Rule:
    """The rule asked for; an unset expiry policy means NEVER. Violations name `rule.…`."""
    expiry = ledger.expiry(
        v, message.expiry_policy, message.expiry_days, default=ledger.ExpiryPolicy.NEVER, prefix="rule."
    )
    return Rule(
        enabled=message.enabled,
        minor_units_per_point=message.minor_units_per_point,
        expiry=expiry,
        return_window_days=message.return_window_days,
    )


def rule_to_proto(rule: Rule) -> points_pb2.OrderEarningRule:
    message = points_pb2.OrderEarningRule(
        enabled=rule.enabled,
        minor_units_per_point=rule.minor_units_per_point,
        expiry_policy=int(rule.expiry.policy),  # type: ignore[arg-type]
        expiry_days=rule.expiry.days,
        return_window_days=rule.return_window_days,
        version=rule.version,
    )
    if rule.update_time is not None:
        message.update_time.FromDatetime(rule.update_time)
    return message


def benefits_from_proto(message: levels_pb2.LevelBenefits) -> Benefits:
    return Benefits(
        points_multiplier_percent=message.points_multiplier_percent,
        monthly_coupon_template=message.monthly_coupon_template,
        birthday_coupon_template=message.birthday_coupon_template,
    )


def benefits_to_proto(benefits: Benefits) -> levels_pb2.LevelBenefits:
    return levels_pb2.LevelBenefits(
        points_multiplier_percent=benefits.points_multiplier_percent,
        monthly_coupon_template=benefits.monthly_coupon_template,
        birthday_coupon_template=benefits.birthday_coupon_template,
    )
