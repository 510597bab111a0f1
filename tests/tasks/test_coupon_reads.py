"""What a coupon holds and how it is read: tag thresholds, validity, by code, by member and state
(EXPIRED derived), figures per campaign arm, erasure, and bad input."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from runtime.db import Database
from tests.audience import helpers as audience
from tests.conftest import ACME, TENANT_ACME, unique
from tests.erasure_helpers import pseudonym, rows_naming
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import create, issue, stamp

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Clock, Members

State = coupons_pb2.CouponState


async def test_a_tag_threshold_follows_the_members_band_at_issue(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, members: Members
) -> None:
    dimension = await audience.manual_dimension(tagging_stub, ["low", "high"])
    high, low, none = await members.new(), await members.new(), await members.new()
    await audience.give(tagging_stub, dimension, "high", [high])
    await audience.give(tagging_stub, dimension, "low", [low])
    thresholds = coupons_pb2.TagThresholds(dimension=dimension, thresholds={"high": 20_000, "low": 3_000})
    made = await create(tasks_stub, tag_thresholds=thresholds, threshold_minor=5_000)
    assert dict(made.tag_thresholds.thresholds) == {"high": 20_000, "low": 3_000}
    got = [(await issue(tasks_stub, made.template_id, m)).threshold_minor for m in (high, low, none)]
    assert got == [20_000, 3_000, 5_000]


async def test_validity_counts_days_from_issue_or_follows_a_fixed_window(
    tasks_stub: TasksStub, members: Members
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=7)
    window = await create(tasks_stub, valid_days=0, valid_from=stamp(start), valid_until=stamp(end))
    coupon = await issue(tasks_stub, window.template_id, await members.new())
    assert (coupon.valid_from.ToDatetime(dt.UTC), coupon.valid_until.ToDatetime(dt.UTC)) == (start, end)
    open_start = await create(tasks_stub, valid_days=0, valid_until=stamp(end))
    coupon = await issue(tasks_stub, open_start.template_id, await members.new())
    assert coupon.valid_from == coupon.issue_time
    ended = await create(tasks_stub, valid_days=0, valid_until=stamp(now - dt.timedelta(hours=1)))
    late = await failure(issue(tasks_stub, ended.template_id, await members.new()))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_coupon_is_read_by_its_code(tasks_stub: TasksStub, members: Members) -> None:
    made = await create(tasks_stub, percent_off=coupons_pb2.PercentOff(percent=20, max_discount_minor=500))
    coupon = await issue(tasks_stub, made.template_id, await members.new())
    got = await tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=coupon.name), metadata=ACME)
    assert got == coupon and (got.percent_off.percent, got.percent_off.max_discount_minor) == (20, 500)
    missing = await failure(
        tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name="coupons/ABC-not_ours"), metadata=ACME)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await bad(
        tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name="coupons/a b"), metadata=ACME), "name"
    )


async def test_a_members_coupons_list_newest_first_by_state_with_expired_derived(
    clocked_stub: TasksStub, clock: Clock, members: Members, db: Database
) -> None:
    member = await members.new()
    short = await create(clocked_stub, valid_days=1)
    long = await create(clocked_stub, valid_days=60, per_member_limit=5)
    expiring = await issue(clocked_stub, short.template_id, member)
    used = await issue(clocked_stub, long.template_id, member)
    kept = await issue(clocked_stub, long.template_id, member)
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute(
            "UPDATE tasks.coupons SET state = 2, order_id = $2, use_time = now() WHERE code = $1",
            used.code,
            unique("order"),
        )

    async def listed(*states: coupons_pb2.CouponState.ValueType, size: int = 100) -> list[str]:
        codes: list[str] = []
        token = ""
        while True:
            request = tasks_service_pb2.ListMemberCouponsRequest(
                member_id=member,
                states=states,
                page_size=size,
                page_token=token,
            )
            reply = await clocked_stub.ListMemberCoupons(request, metadata=ACME)
            codes += [f"{c.code}:{c.state}" for c in reply.coupons]
            if not reply.next_page_token:
                return codes
            token = reply.next_page_token

    available, used_state, expired = (
        State.COUPON_STATE_AVAILABLE,
        State.COUPON_STATE_USED,
        State.COUPON_STATE_EXPIRED,
    )
    assert await listed(size=1) == [
        f"{kept.code}:{available}",
        f"{used.code}:{used_state}",
        f"{expiring.code}:{available}",
    ]
    saved = clock.time
    try:
        clock.advance(days=2)
        assert await listed() == [
            f"{kept.code}:{available}",
            f"{used.code}:{used_state}",
            f"{expiring.code}:{expired}",
        ]
        assert await listed(expired) == [f"{expiring.code}:{expired}"]
        assert await listed(available, used_state) == [
            f"{kept.code}:{available}",
            f"{used.code}:{used_state}",
        ]
    finally:
        clock.set(saved)
    await bad(
        clocked_stub.ListMemberCoupons(
            tasks_service_pb2.ListMemberCouponsRequest(member_id=member, states=[State.ValueType(9)]),
            metadata=ACME,
        ),
        "states[0]",
    )
    await bad(
        clocked_stub.ListMemberCoupons(
            tasks_service_pb2.ListMemberCouponsRequest(member_id=""), metadata=ACME
        ),
        "member_id",
    )


async def test_stats_count_issued_and_used_coupons_per_arm(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    campaign = f"journeys/{unique('j')}"
    made = await create(tasks_stub)
    a1 = await issue(tasks_stub, made.template_id, await members.new(), campaign=campaign, arm="a")
    await issue(tasks_stub, made.template_id, await members.new(), campaign=campaign, arm="a")
    await issue(tasks_stub, made.template_id, await members.new(), campaign=campaign, arm="b")
    await issue(tasks_stub, made.template_id, await members.new(), campaign=unique("other"), arm="a")
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute(
            """UPDATE tasks.coupons SET state = 2, order_id = $2, use_time = now(), order_amount_minor = 8800
               WHERE code = $1""",
            a1.code,
            unique("order"),
        )
    reply = await tasks_stub.GetCouponStats(
        tasks_service_pb2.GetCouponStatsRequest(campaign=campaign), metadata=ACME
    )
    assert [(a.arm, a.issued, a.used, a.order_amount_minor) for a in reply.arms] == [
        ("a", 2, 1, 8800),
        ("b", 1, 0, 0),
    ]
    template = await tasks_stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name=made.name), metadata=ACME
    )
    assert (template.issued, template.used) == (4, 1)
    await bad(tasks_stub.GetCouponStats(tasks_service_pb2.GetCouponStatsRequest(), metadata=ACME), "campaign")


async def test_bad_issues_name_their_fields(tasks_stub: TasksStub, members: Members) -> None:
    made = await create(tasks_stub)
    member = await members.new()
    await bad(issue(tasks_stub, made.template_id, "bad id"), "member_id")
    await bad(issue(tasks_stub, made.template_id, member, campaign="x" * 129), "source.campaign")
    await bad(issue(tasks_stub, made.template_id, member, arm="\x00"), "source.arm")
    request = tasks_service_pb2.IssueCouponRequest(template="tasks/x", member_id=member, request_id="r")
    await bad(tasks_stub.IssueCoupon(request, metadata=ACME), "template")
    unknown = await failure(issue(tasks_stub, made.template_id, unique("nobody")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_erasure_moves_coupons_to_the_pseudonym(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    made = await create(tasks_stub, per_member_limit=2)
    member, to = await members.noted(db), pseudonym()
    coupon = await issue(tasks_stub, made.template_id, member, request_id=f"welcome-{member}")
    erase = tasks_service_pb2.EraseMemberDataRequest(member_id=member, pseudonym=to)
    changed = dict((await tasks_stub.EraseMemberData(erase, metadata=ACME)).changed_rows)
    assert (changed["coupons"], changed["coupon_holdings"]) == (1, 1)
    assert await rows_naming(db, "tasks", member) == {}
    moved = await tasks_stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=coupon.name), metadata=ACME)
    assert (moved.member_id, moved.request_id) == (to, f"welcome-{to}")
