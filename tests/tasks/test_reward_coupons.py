"""Coupon rewards: a redemption issues one coupon of the reward's template in the spend's
transaction (a retry answers the same code), and a template that cannot issue refuses the whole
redemption, with nothing spent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import coupons_pb2, rewards_pb2, tasks_service_pb2

from tests.audience import helpers as audience
from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import create as create_template
from tests.tasks.points_helpers import balance, earn
from tests.tasks.reward_helpers import create, listed, redeem

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

COUPON = rewards_pb2.REWARD_KIND_COUPON


async def coupon_reward(stub: TasksStub, **template_fields: object) -> tuple[coupons_pb2.CouponTemplate, str]:
    template = await create_template(stub, **template_fields)
    reward = await create(stub, kind=COUPON, price=100, coupon_template=template.name)
    assert reward.coupon_template == template.name
    return template, reward.reward_id


async def coupon(stub: TasksStub, code: str) -> coupons_pb2.Coupon:
    return await stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=f"coupons/{code}"), metadata=ACME)


async def test_a_redemption_issues_one_coupon_and_a_retry_answers_the_same_code(
    tasks_stub: TasksStub, members: Members
) -> None:
    template, reward_id = await coupon_reward(tasks_stub, per_member_limit=5)
    member = await members.new()
    await earn(tasks_stub, member, 1000)
    request_id = unique("req")
    first = await redeem(tasks_stub, member, reward_id, request_id)
    assert first.coupon_code and first.points == 100
    assert await redeem(tasks_stub, member, reward_id, request_id) == first
    issued = await coupon(tasks_stub, first.coupon_code)
    assert (issued.member_id, issued.template_id, issued.source.campaign) == (
        member,
        template.template_id,
        f"rewards/{reward_id}",
    )
    assert issued.state == coupons_pb2.COUPON_STATE_AVAILABLE
    second = await redeem(tasks_stub, member, reward_id)
    assert second.coupon_code not in ("", first.coupon_code)
    assert (await balance(tasks_stub, member)).available == 800
    held = await tasks_stub.ListMemberCoupons(
        tasks_service_pb2.ListMemberCouponsRequest(member_id=member), metadata=ACME
    )
    assert sorted(c.code for c in held.coupons) == sorted([first.coupon_code, second.coupon_code])
    # A reward without a template issues no code.
    plain = await create(tasks_stub, kind=COUPON, price=10)
    assert (await redeem(tasks_stub, member, plain.reward_id)).coupon_code == ""


async def test_a_template_that_cannot_issue_refuses_the_redemption_and_nothing_is_spent(
    tasks_stub: TasksStub, members: Members
) -> None:
    _, limited = await coupon_reward(tasks_stub, per_member_limit=1)
    _, scarce = await coupon_reward(tasks_stub, total_stock=1, per_member_limit=5)
    retired_template, retired = await coupon_reward(tasks_stub)
    member = await members.new()
    await earn(tasks_stub, member, 1000)

    await redeem(tasks_stub, member, limited)
    at_limit = await failure(redeem(tasks_stub, member, limited))
    assert at_limit.code() == grpc.StatusCode.FAILED_PRECONDITION
    await redeem(tasks_stub, member, scarce)
    gone = await failure(redeem(tasks_stub, member, scarce))
    assert gone.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await tasks_stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=retired_template.name), metadata=ACME
    )
    refused = await failure(redeem(tasks_stub, member, retired))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Two redemptions went through; the three refused spent nothing and counted nothing.
    assert (await balance(tasks_stub, member)).available == 800
    entries = await tasks_stub.ListLedgerEntries(
        tasks_service_pb2.ListLedgerEntriesRequest(member_id=member, page_size=100), metadata=ACME
    )
    assert sorted(e.delta for e in entries.entries) == [-100, -100, 1000]


async def test_a_limited_stock_of_the_reward_is_not_taken_by_a_refused_issue(
    tasks_stub: TasksStub, members: Members
) -> None:
    template = await create_template(tasks_stub, total_stock=1, per_member_limit=5)
    reward = await create(tasks_stub, kind=COUPON, price=100, initial_stock=5, coupon_template=template.name)
    member = await members.new()
    await earn(tasks_stub, member, 1000)
    await redeem(tasks_stub, member, reward.reward_id)
    gone = await failure(redeem(tasks_stub, member, reward.reward_id))
    assert gone.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await listed(tasks_stub))[reward.reward_id].stock == 4
    assert (await balance(tasks_stub, member)).available == 900


async def test_the_coupon_carries_the_members_tag_threshold(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, members: Members
) -> None:
    dimension = await audience.manual_dimension(tagging_stub, ["low", "high"])
    high, none = await members.new(), await members.new()
    await audience.give(tagging_stub, dimension, "high", [high])
    thresholds = coupons_pb2.TagThresholds(dimension=dimension, thresholds={"high": 20_000})
    _, reward_id = await coupon_reward(tasks_stub, tag_thresholds=thresholds, threshold_minor=5_000)
    for member in (high, none):
        await earn(tasks_stub, member, 100)
    codes = [(await redeem(tasks_stub, m, reward_id)).coupon_code for m in (high, none)]
    assert [(await coupon(tasks_stub, c)).threshold_minor for c in codes] == [20_000, 5_000]


async def test_a_coupon_reward_needs_a_template_that_issues(tasks_stub: TasksStub) -> None:
    await bad(
        create(tasks_stub, kind=COUPON, price=1, coupon_template=f"couponTemplates/{unique('ct')}"),
        "reward.coupon_template",
        "does not exist",
    )
    template = await create_template(tasks_stub)
    await tasks_stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=template.name), metadata=ACME
    )
    retired = await failure(create(tasks_stub, kind=COUPON, price=1, coupon_template=template.name))
    assert retired.code() == grpc.StatusCode.FAILED_PRECONDITION
