"""Level benefits as data: validated with the level policy and returned by it, and granted by
GrantLevelBenefits (the month's coupon of a member's level, the birthday coupon in their birthday
month), once per member, benefit and period, however many runs. Umbrella's policy is changed for
a test and restored after it (its other members are few: the assertions read our members' own
coupons)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from google.type import date_pb2
from memberops.tasks.v1 import coupons_pb2, levels_pb2, tasks_service_pb2

from tests.audience import helpers as audience
from tests.conftest import UMBRELLA
from tests.grpc_helpers import bad
from tests.tasks import coupon_helpers
from tests.tasks.points_helpers import earn
from tests.tasks.task_helpers import member

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

TOP = 2  # the default policy's gold tier


async def get_policy(stub: TasksStub) -> levels_pb2.LevelPolicy:
    return await stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=UMBRELLA)


def with_benefits(policy: levels_pb2.LevelPolicy, tier: int, **benefits: Any) -> levels_pb2.LevelPolicy:
    changed = levels_pb2.LevelPolicy()
    changed.CopyFrom(policy)
    changed.tiers[tier].benefits.CopyFrom(levels_pb2.LevelBenefits(**benefits))
    return changed


async def update_policy(stub: TasksStub, policy: levels_pb2.LevelPolicy) -> levels_pb2.LevelPolicy:
    request = tasks_service_pb2.UpdateLevelPolicyRequest(policy=policy)
    return await stub.UpdateLevelPolicy(request, metadata=UMBRELLA)


@pytest.fixture
async def policy(tasks_stub: TasksStub) -> AsyncIterator[levels_pb2.LevelPolicy]:
    """Umbrella's policy as it was, put back after the test."""
    before = await get_policy(tasks_stub)
    yield before
    await update_policy(tasks_stub, before)


async def grant(stub: TasksStub) -> tasks_service_pb2.GrantLevelBenefitsResponse:
    return await stub.GrantLevelBenefits(tasks_service_pb2.GrantLevelBenefitsRequest(), metadata=UMBRELLA)


async def template(stub: TasksStub, **fields: Any) -> str:
    made = await coupon_helpers.create(stub, metadata=UMBRELLA, per_member_limit=12, **fields)
    return f"couponTemplates/{made.template_id}"


async def coupons_of(stub: TasksStub, member_id: str) -> list[tuple[str, str]]:
    """(template id, source arm) of the member's coupons, sorted."""
    request = tasks_service_pb2.ListMemberCouponsRequest(member_id=member_id)
    page = await stub.ListMemberCoupons(request, metadata=UMBRELLA)
    return sorted((c.template_id, c.source.arm) for c in page.coupons)


async def gold_member(
    stub: TasksStub, tagging: TaggingStub, top: levels_pb2.LevelTier, **profile: Any
) -> str:
    m = await member(tagging, metadata=UMBRELLA, **profile)
    await earn(stub, m, top.min_growth, metadata=UMBRELLA)  # growth raises the level at once
    return m


async def test_benefits_are_checked_and_kept_with_the_policy(
    tasks_stub: TasksStub, policy: levels_pb2.LevelPolicy
) -> None:
    path = f"policy.tiers[{TOP}].benefits"
    for benefits, field, words in (
        ({"points_multiplier_percent": 99}, "points_multiplier_percent", "100-1000"),
        ({"points_multiplier_percent": 1001}, "points_multiplier_percent", "100-1000"),
        ({"monthly_coupon_template": "free-shipping"}, "monthly_coupon_template", "couponTemplates/"),
        (
            {"birthday_coupon_template": "couponTemplates/Bad!"},
            "birthday_coupon_template",
            "couponTemplates/",
        ),
        (
            {"monthly_coupon_template": "couponTemplates/no-such-template"},
            "monthly_coupon_template",
            "not exist",
        ),
    ):
        await bad(update_policy(tasks_stub, with_benefits(policy, TOP, **benefits)), f"{path}.{field}", words)
    assert (await get_policy(tasks_stub)).version == policy.version

    shipping = await template(tasks_stub)
    wanted = with_benefits(
        policy,
        TOP,
        points_multiplier_percent=150,
        monthly_coupon_template=shipping,
        birthday_coupon_template="",
    )
    updated = await update_policy(tasks_stub, wanted)
    assert updated.tiers[TOP].benefits == levels_pb2.LevelBenefits(
        points_multiplier_percent=150, monthly_coupon_template=shipping
    )
    assert (await get_policy(tasks_stub)).tiers[TOP].benefits == updated.tiers[TOP].benefits


async def test_monthly_and_birthday_coupons_are_granted_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, policy: levels_pb2.LevelPolicy
) -> None:
    monthly, birthday = await template(tasks_stub), await template(tasks_stub)
    await update_policy(
        tasks_stub,
        with_benefits(policy, TOP, monthly_coupon_template=monthly, birthday_coupon_template=birthday),
    )
    now = dt.datetime.now(dt.UTC)  # the policy's zone is UTC
    other_month = now.month % 12 + 1
    top = policy.tiers[TOP]
    born_now = await gold_member(
        tasks_stub, tagging_stub, top, birthday=date_pb2.Date(year=1990, month=now.month, day=1)
    )
    born_later = await gold_member(
        tasks_stub, tagging_stub, top, birthday=date_pb2.Date(year=1990, month=other_month, day=1)
    )
    base = await member(tagging_stub, metadata=UMBRELLA)
    await earn(tasks_stub, base, 10, metadata=UMBRELLA)

    # Two runs at once, then a third: each coupon once.
    runs = await asyncio.gather(grant(tasks_stub), grant(tasks_stub))
    assert sum(r.birthday_coupons for r in runs) >= 1 and sum(r.monthly_coupons for r in runs) >= 2
    again = await grant(tasks_stub)
    assert (again.monthly_coupons, again.birthday_coupons, again.out_of_stock) == (0, 0, 0)
    monthly_id, birthday_id = (name.removeprefix("couponTemplates/") for name in (monthly, birthday))
    assert await coupons_of(tasks_stub, born_now) == sorted(
        [(monthly_id, "monthly"), (birthday_id, "birthday")]
    )
    assert await coupons_of(tasks_stub, born_later) == [(monthly_id, "monthly")]
    assert await coupons_of(tasks_stub, base) == []


async def test_a_template_out_of_stock_is_counted_and_tried_again(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, policy: levels_pb2.LevelPolicy
) -> None:
    scarce = await template(tasks_stub, total_stock=1)
    await update_policy(tasks_stub, with_benefits(policy, TOP, monthly_coupon_template=scarce))
    members = [await gold_member(tasks_stub, tagging_stub, policy.tiers[TOP]) for _ in range(2)]
    first = await grant(tasks_stub)
    assert first.monthly_coupons == 1 and first.out_of_stock >= 1
    held = [await coupons_of(tasks_stub, m) for m in members]
    assert sorted(len(h) for h in held) == [0, 1]
    # Nothing was taken for the member left without: the next run tries again.
    second = await grant(tasks_stub)
    assert second.monthly_coupons == 0 and second.out_of_stock == first.out_of_stock


async def test_as_of_must_not_be_ahead(tasks_stub: TasksStub) -> None:
    request = tasks_service_pb2.GrantLevelBenefitsRequest(
        as_of=coupon_helpers.stamp(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    )
    await bad(tasks_stub.GrantLevelBenefits(request, metadata=UMBRELLA), "as_of")


async def test_a_granted_coupons_threshold_follows_the_members_tag(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, policy: levels_pb2.LevelPolicy
) -> None:
    dimension = await audience.manual_dimension(tagging_stub, ["low", "high"], metadata=UMBRELLA)
    thresholds = coupons_pb2.TagThresholds(dimension=dimension, thresholds={"high": 20_000, "low": 3_000})
    banded = await template(tasks_stub, tag_thresholds=thresholds, threshold_minor=5_000)
    await update_policy(tasks_stub, with_benefits(policy, TOP, monthly_coupon_template=banded))
    high, none = [await gold_member(tasks_stub, tagging_stub, policy.tiers[TOP]) for _ in range(2)]
    await audience.give(tagging_stub, dimension, "high", [high], metadata=UMBRELLA)
    await grant(tasks_stub)
    request = tasks_service_pb2.ListMemberCouponsRequest
    got = [
        [
            c.threshold_minor
            for c in (await tasks_stub.ListMemberCoupons(request(member_id=m), metadata=UMBRELLA)).coupons
        ]
        for m in (high, none)
    ]
    assert got == [[20_000], [5_000]]
