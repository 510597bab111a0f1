"""Claiming coupons: who may claim, the per-member limit and the stock under concurrency, retries."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from services.tasks.coupons import issuing, member_coupons
from tests.audience import helpers as audience
from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import claim, create
from tests.waiting import until

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members


async def outcome(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def test_a_claim_takes_a_coupon_once_and_a_retry_returns_it(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True, total_stock=10)
    member = await members.new()
    first = await claim(tasks_stub, made.template_id, member, request_id=unique("clm"))
    assert (first.member_id, first.source.campaign) == (member, "claims")
    assert await claim(tasks_stub, made.template_id, member, request_id=first.request_id) == first
    limit = await failure(claim(tasks_stub, made.template_id, member))
    assert limit.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = await failure(
        claim(tasks_stub, made.template_id, await members.new(), request_id=first.request_id)
    )
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_only_claimable_templates_and_known_members_claim(
    tasks_stub: TasksStub, members: Members
) -> None:
    closed = await create(tasks_stub)
    refused = await failure(claim(tasks_stub, closed.template_id, await members.new()))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    open_ = await create(tasks_stub, claimable=True)
    unknown = await failure(claim(tasks_stub, open_.template_id, unique("nobody")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    missing = await failure(claim(tasks_stub, unique("ct"), await members.new()))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await bad(claim(tasks_stub, open_.template_id, "bad id"), "member_id")
    empty = tasks_service_pb2.ClaimCouponRequest(template=open_.name, member_id=await members.new())
    await bad(tasks_stub.ClaimCoupon(empty, metadata=ACME), "request_id")


async def test_the_claim_audience_decides_who_may_claim(
    tasks_stub: TasksStub, audience_stub: AudienceStub, tagging_stub: TaggingStub
) -> None:
    batch = unique("batch")
    made = await audience.create(audience_stub, audience.in_batch(batch))
    inside = await audience.member(tagging_stub, batch)
    outside = await audience.member(tagging_stub, unique("batch"))
    template = await create(tasks_stub, claimable=True, claim_audience=f"audiences/{made.audience_id}")
    assert template.claim_audience == f"audiences/{made.audience_id}"
    assert (await claim(tasks_stub, template.template_id, inside)).member_id == inside
    refused = await failure(claim(tasks_stub, template.template_id, outside))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_thousand_concurrent_claims_of_a_hundred_coupons_issue_exactly_a_hundred(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True, total_stock=100)
    crowd = await members.many(1000)
    outcomes = await asyncio.gather(*(outcome(claim(tasks_stub, made.template_id, m)) for m in crowd))
    assert (outcomes.count("OK"), outcomes.count("RESOURCE_EXHAUSTED")) == (100, 900)
    got = await tasks_stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name=made.name), metadata=ACME
    )
    assert (got.issued, got.stock_left) == (100, 0)


async def test_concurrent_claims_of_one_member_stop_at_the_per_member_limit(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True, per_member_limit=3)
    member = await members.new()
    outcomes = await asyncio.gather(
        *(outcome(claim(tasks_stub, made.template_id, member)) for _ in range(30))
    )
    assert (outcomes.count("OK"), outcomes.count("RESOURCE_EXHAUSTED")) == (3, 27)


async def test_concurrent_retries_of_one_claim_issue_one_coupon(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True, per_member_limit=5)
    member, request_id = await members.new(), unique("clm")
    coupons = await asyncio.gather(
        *(claim(tasks_stub, made.template_id, member, request_id) for _ in range(20))
    )
    assert len({c.code for c in coupons}) == 1


async def test_retries_of_a_claim_answer_its_coupon_once_the_limit_and_the_stock_are_used_up(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True, per_member_limit=1, total_stock=1)
    member, request_id = await members.new(), unique("clm")
    coupons = await asyncio.gather(
        *(claim(tasks_stub, made.template_id, member, request_id) for _ in range(20))
    )
    assert len({c.code for c in coupons}) == 1
    out = await failure(claim(tasks_stub, made.template_id, await members.new()))
    assert out.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await claim(tasks_stub, made.template_id, member, request_id) == coupons[0]
    limit = await failure(claim(tasks_stub, made.template_id, member))
    assert limit.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_claims_racing_an_update_carry_the_terms_of_the_version_they_name(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True)
    crowd = await members.many(60)
    changed = coupons_pb2.CouponTemplate()
    changed.CopyFrom(made)
    changed.amount_off.amount_minor = 2000
    update = tasks_stub.UpdateCouponTemplate(
        tasks_service_pb2.UpdateCouponTemplateRequest(template=changed), metadata=ACME
    )
    claims = [claim(tasks_stub, made.template_id, m) for m in crowd]
    results = await asyncio.gather(*claims[:30], update, *claims[30:])
    updated, coupons = results[30], [*results[:30], *results[31:]]
    assert isinstance(updated, coupons_pb2.CouponTemplate) and updated.version == 2
    terms = {
        (c.template_version, c.amount_off.amount_minor) for c in coupons if isinstance(c, coupons_pb2.Coupon)
    }
    assert terms <= {(1, 1000), (2, 2000)}
    assert len(coupons) == 60


async def test_claims_arriving_while_one_is_at_the_database_go_as_one_group(
    tasks_stub: TasksStub, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions 160 and 161: six concurrent claims of one template, the statements held at the
    database door. The first goes alone; the other five wait in the service, and go together as
    one statement once it is done. All six are issued."""
    made = await create(tasks_stub, claimable=True, total_stock=10)
    arrived: list[object] = []
    entered: list[int] = []
    door = asyncio.Event()
    real_new, real_write = issuing.new_coupon, issuing.write_group

    def counted_new(template: Any, *args: Any) -> Any:
        if template.template_id == made.template_id:
            arrived.append(args)
        return real_new(template, *args)

    async def held_write(pool: Any, tenant_id: str, template: Any, coupons: Any) -> Any:
        if template.template_id == made.template_id:
            entered.append(len(coupons))
            await door.wait()
        return await real_write(pool, tenant_id, template, coupons)

    # The claim hands its coupon to the group right after making it, without waiting in between.
    monkeypatch.setattr(member_coupons, "new_coupon", counted_new)
    monkeypatch.setattr(member_coupons, "write_group", held_write)
    claimers = [await members.new() for _ in range(6)]
    calls = [asyncio.create_task(claim(tasks_stub, made.template_id, m)) for m in claimers]
    await until(lambda: len(arrived) == 6 and len(entered) >= 1, "six claims at the door")
    assert entered == [1]
    door.set()
    coupons = await asyncio.gather(*calls)
    assert entered == [1, 5]
    assert sorted(c.member_id for c in coupons) == sorted(claimers)
    assert len({c.code for c in coupons}) == 6
