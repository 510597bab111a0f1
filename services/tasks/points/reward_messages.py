"""Reward management between protobuf and the domain: the fields issue 23 added to `Reward`, and
UpdateReward's request (used by messages.py and api.py)."""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2
from memberops.tasks.v1 import tasks_service_pb2

from runtime.errors import InvalidArgument
from services.tasks.points.rewards import Update
from services.tasks.points.rewards_store import Change, Reward

TEMPLATE_PREFIX = "couponTemplates/"
MAX_NAME = 128


def template_id(name: str, path: str = "reward.coupon_template") -> str:
    """The template id in `couponTemplates/{template_id}` ("" for no template)."""
    if not name:
        return ""
    template = name.removeprefix(TEMPLATE_PREFIX)
    if not name.startswith(TEMPLATE_PREFIX) or not template or len(name) > MAX_NAME:
        raise InvalidArgument.field(path, "must be couponTemplates/{template_id}")
    return template


def managed_fields(reward: Reward) -> dict[str, Any]:
    """Reward's description, coupon template, per-member limit, state, version and update time."""
    update_time = timestamp_pb2.Timestamp()
    update_time.FromDatetime(reward.update_time)
    return {
        "description": reward.description,
        "coupon_template": f"{TEMPLATE_PREFIX}{reward.coupon_template}" if reward.coupon_template else "",
        "per_member_limit": reward.per_member_limit,
        "state": reward.state,
        "version": reward.version,
        "update_time": update_time,
    }


def update_from_proto(request: tasks_service_pb2.UpdateRewardRequest) -> Update:
    if not request.HasField("reward"):
        raise InvalidArgument.field("reward", "is required")
    reward = request.reward
    return Update(
        reward_id=reward.reward_id,
        change=Change(
            display_name=reward.display_name,
            description=reward.description,
            price=reward.price,
            per_member_limit=reward.per_member_limit,
            add_stock=request.add_stock,
        ),
        kind=reward.kind,
        win_odds_bp=reward.win_odds_bp,
        coupon_template=template_id(reward.coupon_template),
        initial_stock=reward.initial_stock,
        expected_version=request.expected_version,
    )
