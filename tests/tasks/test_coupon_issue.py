"""Issuing coupons: over gRPC (IssueCoupon) and inside a caller's transaction (issuing.issue)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tasks.v1 import coupons_pb2

from runtime.db import Database
from services.tasks.coupons import codes, issuing
from services.tasks.coupons.issuing import MemberTag, Source
from tests.conftest import TENANT_ACME, unique
from tests.grpc_helpers import failure
from tests.tasks.coupon_helpers import create, issue

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

State = coupons_pb2.CouponState


async def test_an_issued_coupon_carries_the_terms_and_a_retry_returns_it(
    tasks_stub: TasksStub, members: Members
) -> None:
    made = await create(tasks_stub, total_stock=5, categories=["shoes"])
    member = await members.new()
    first = await issue(
        tasks_stub, made.template_id, member, "iss-1" + unique(), campaign="journeys/x", arm="a"
    )
    assert codes.CODE.match(first.code) and first.name == f"coupons/{first.code}"
    assert (first.member_id, first.template_id, first.template_version) == (member, made.template_id, 1)
    assert (first.state, first.amount_off.amount_minor, first.threshold_minor) == (
        State.COUPON_STATE_AVAILABLE,
        1000,
        5000,
    )
    assert list(first.categories) == ["shoes"]
    assert first.valid_until.ToDatetime() - first.valid_from.ToDatetime() == dt.timedelta(days=30)
    assert (first.source.campaign, first.source.arm) == ("journeys/x", "a")
    again = await issue(
        tasks_stub, made.template_id, member, first.request_id, campaign="journeys/x", arm="a"
    )
    assert again == first
    other = await failure(issue(tasks_stub, made.template_id, member, first.request_id, campaign="other"))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_issuing_inside_a_transaction_refuses_cleanly_and_keeps_the_transaction(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    made = await create(tasks_stub, total_stock=1)
    member, other = await members.new(), await members.new()
    now = dt.datetime.now(dt.UTC)
    async with db.transaction(TENANT_ACME) as conn:
        coupon = await issuing.issue(
            conn,
            TENANT_ACME,
            made.template_id,
            member,
            source=Source("rewards/x"),
            key=unique(),
            tag=None,
            now=now,
        )
        with pytest.raises(issuing.MemberLimitReached):
            await issuing.issue(
                conn, TENANT_ACME, made.template_id, member, source=Source(), key=unique(), tag=None, now=now
            )
        with pytest.raises(issuing.OutOfStock):
            await issuing.issue(
                conn,
                TENANT_ACME,
                made.template_id,
                other,
                source=Source(),
                key=unique(),
                tag=MemberTag("", None),
                now=now,
            )
        again = await issuing.issue(
            conn,
            TENANT_ACME,
            made.template_id,
            member,
            source=Source("rewards/x"),
            key=coupon.request_id,
            tag=None,
            now=now,
        )
        assert again == coupon
        assert (
            await conn.fetchval("SELECT count(*) FROM tasks.coupons WHERE template_id = $1", made.template_id)
            == 1
        )


async def test_a_taken_code_is_drawn_again_and_the_member_counted_once(
    tasks_stub: TasksStub, members: Members, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await create(tasks_stub, per_member_limit=2)
    member = await members.new()
    taken = await issue(tasks_stub, made.template_id, await members.new())
    real = codes.new_codes
    monkeypatch.setattr(codes, "new_codes", lambda count: [taken.code, *real(count - 1)])
    now = dt.datetime.now(dt.UTC)
    async with db.transaction(TENANT_ACME) as conn:
        coupon = await issuing.issue(
            conn, TENANT_ACME, made.template_id, member, source=Source(), key=unique(), tag=None, now=now
        )
        held = await conn.fetchval(
            "SELECT held FROM tasks.coupon_holdings WHERE template_id = $1 AND member_id = $2",
            made.template_id,
            member,
        )
    assert coupon.code != taken.code and codes.CODE.match(coupon.code)
    assert held == 1
