"""Coupon templates over gRPC: the natural key, versions, the stock floor, retiring, listing and
the fields bad input names."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import claim, create, issue, stamp, template

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

State = coupons_pb2.CouponTemplateState


async def update(
    stub: TasksStub, made: coupons_pb2.CouponTemplate, expected_version: int = 0, **fields: object
) -> coupons_pb2.CouponTemplate:
    changed = coupons_pb2.CouponTemplate()
    changed.CopyFrom(made)
    for name, value in fields.items():
        if isinstance(value, coupons_pb2.AmountOff | coupons_pb2.PercentOff):
            getattr(changed, name).CopyFrom(value)
        else:
            setattr(changed, name, value)
    request = tasks_service_pb2.UpdateCouponTemplateRequest(
        template=changed, expected_version=expected_version
    )
    return await stub.UpdateCouponTemplate(request, metadata=ACME)


async def test_create_is_idempotent_by_the_template_id_and_other_content_already_exists(
    tasks_stub: TasksStub,
) -> None:
    made = await create(tasks_stub, total_stock=100, per_member_limit=0, skus=["sku-1"])
    assert (made.name, made.version, made.state) == (
        f"couponTemplates/{made.template_id}",
        1,
        State.COUPON_TEMPLATE_STATE_ACTIVE,
    )
    assert (made.per_member_limit, made.issued, made.stock_left, made.unlimited, made.used) == (
        1,
        0,
        100,
        False,
        0,
    )
    again = await create(
        tasks_stub, template_id=made.template_id, total_stock=100, per_member_limit=1, skus=["sku-1"]
    )
    assert again == made
    other = await failure(create(tasks_stub, template_id=made.template_id, total_stock=99, skus=["sku-1"]))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await tasks_stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name=made.name), metadata=ACME
    )
    assert got == made


async def test_update_stores_versions_and_issued_coupons_keep_their_terms(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, total_stock=3)
    member = await members.new()
    first = await issue(tasks_stub, made.template_id, member)
    same = await update(tasks_stub, made)
    assert same.version == 1
    v2 = await update(
        tasks_stub, made, amount_off=coupons_pb2.AmountOff(amount_minor=2000), threshold_minor=9000
    )
    assert (v2.version, v2.amount_off.amount_minor, v2.issued, v2.stock_left) == (2, 2000, 1, 2)
    assert (
        await update(
            tasks_stub, v2, amount_off=coupons_pb2.AmountOff(amount_minor=2000), threshold_minor=9000
        )
    ).version == 2
    stale = await failure(update(tasks_stub, v2, expected_version=1, display_name="late"))
    assert stale.code() == grpc.StatusCode.ABORTED
    second = await issue(tasks_stub, made.template_id, await members.new())
    assert (second.template_version, second.amount_off.amount_minor, second.threshold_minor) == (
        2,
        2000,
        9000,
    )
    kept = await tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=first.name), metadata=ACME)
    assert (kept.template_version, kept.amount_off.amount_minor, kept.threshold_minor) == (1, 1000, 5000)
    kind = await failure(update(tasks_stub, v2, percent_off=coupons_pb2.PercentOff(percent=10)))
    assert kind.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_stock_cannot_drop_below_what_was_issued(tasks_stub: TasksStub, members: Members) -> None:
    made = await create(tasks_stub, total_stock=5)
    for _ in range(2):
        await issue(tasks_stub, made.template_id, await members.new())
    below = await failure(update(tasks_stub, made, total_stock=1))
    assert below.code() == grpc.StatusCode.FAILED_PRECONDITION
    exact = await update(tasks_stub, made, total_stock=2)
    assert (exact.issued, exact.stock_left, exact.unlimited) == (2, 0, False)
    out = await failure(issue(tasks_stub, made.template_id, await members.new()))
    assert out.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    unlimited = await update(tasks_stub, exact, total_stock=0)
    assert (unlimited.stock_left, unlimited.unlimited) == (0, True)
    assert (await issue(tasks_stub, made.template_id, await members.new())).template_version == 3


async def test_a_retired_template_issues_nothing_and_its_coupons_stay(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, claimable=True)
    member = await members.new()
    held = await issue(tasks_stub, made.template_id, member)
    retire = tasks_service_pb2.RetireCouponTemplateRequest(name=made.name)
    retired = await tasks_stub.RetireCouponTemplate(retire, metadata=ACME)
    assert retired.state == State.COUPON_TEMPLATE_STATE_RETIRED
    assert await tasks_stub.RetireCouponTemplate(retire, metadata=ACME) == retired
    for call in (
        issue(tasks_stub, made.template_id, await members.new()),
        claim(tasks_stub, made.template_id, await members.new()),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        await failure(update(tasks_stub, retired, display_name="x"))
    ).code() == grpc.StatusCode.FAILED_PRECONDITION
    kept = await tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=held.name), metadata=ACME)
    assert kept.state == coupons_pb2.COUPON_STATE_AVAILABLE


async def test_list_pages_through_templates_and_hides_retired_ones_unless_asked(
    tasks_stub: TasksStub,
) -> None:
    made = [await create(tasks_stub) for _ in range(3)]
    await tasks_stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=made[0].name), metadata=ACME
    )

    async def listed(show_retired: bool) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            request = tasks_service_pb2.ListCouponTemplatesRequest(
                page_size=1000, page_token=token, show_retired=show_retired
            )
            reply = await tasks_stub.ListCouponTemplates(request, metadata=ACME)
            names += [t.template_id for t in reply.templates]
            if not reply.next_page_token:
                return names
            token = reply.next_page_token

    ids = {t.template_id for t in made}
    assert ids & set(await listed(False)) == ids - {made[0].template_id}
    assert ids <= set(await listed(True))
    first = await tasks_stub.ListCouponTemplates(
        tasks_service_pb2.ListCouponTemplatesRequest(page_size=1, show_retired=True), metadata=ACME
    )
    assert len(first.templates) == 1 and first.next_page_token


async def test_bad_templates_name_their_fields(tasks_stub: TasksStub) -> None:
    async def refused(path: str, **fields: object) -> None:
        request = tasks_service_pb2.CreateCouponTemplateRequest(template=template(**fields))
        await bad(tasks_stub.CreateCouponTemplate(request, metadata=ACME), path)

    now = dt.datetime.now(dt.UTC)
    await refused("template.template_id", template_id="Bad Id")
    await refused("template.amount_off.amount_minor", amount_off=coupons_pb2.AmountOff(amount_minor=0))
    await refused("template.percent_off.percent", percent_off=coupons_pb2.PercentOff(percent=100))
    await refused("template.threshold_minor", threshold_minor=-1)
    await refused("template.valid_until", valid_until=stamp(now + dt.timedelta(days=1)))
    await refused("template.valid_days", valid_days=3651)
    await refused("template.total_stock", total_stock=100_000_001)
    await refused("template.per_member_limit", per_member_limit=1001)
    await refused("template.categories[0]", categories=[""])
    await refused("template.claim_audience", claimable=True, claim_audience="nope")
    await refused(
        "template.tag_thresholds.thresholds",
        tag_thresholds=coupons_pb2.TagThresholds(dimension="average_order_amount"),
    )
    await refused("template.claim_audience", claimable=True, claim_audience=f"audiences/{unique('missing')}")
    no_discount = coupons_pb2.CouponTemplate(template_id=unique("ct"), valid_days=1)
    await bad(
        tasks_stub.CreateCouponTemplate(
            tasks_service_pb2.CreateCouponTemplateRequest(template=no_discount), metadata=ACME
        ),
        "template.discount",
    )
    await bad(
        tasks_stub.CreateCouponTemplate(tasks_service_pb2.CreateCouponTemplateRequest(), metadata=ACME),
        "template",
    )
    await bad(
        tasks_stub.GetCouponTemplate(
            tasks_service_pb2.GetCouponTemplateRequest(name="tasks/x"), metadata=ACME
        ),
        "name",
    )
    missing = await failure(
        tasks_stub.GetCouponTemplate(
            tasks_service_pb2.GetCouponTemplateRequest(name=f"couponTemplates/{unique('ct')}"), metadata=ACME
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
