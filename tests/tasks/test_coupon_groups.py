"""Issues grouped into one statement (issuing.write_group, tasks.issue_coupons): all or nothing, and
a group that cannot be written whole is issued one by one with each issue's own answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from memberops.tasks.v1 import tasks_service_pb2

from runtime.db import Database
from services.tasks.coupons import codes, coupon_store, issuing
from services.tasks.coupons.coupon_store import CouponRow, NewCoupon
from services.tasks.coupons.issuing import Source
from services.tasks.coupons.templates import Template
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tasks.coupon_helpers import create, issue

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

NOW = dt.datetime.now(dt.UTC)


class Singles:
    """Counts the issues written alone (tasks.issue_coupon) and the groups (tasks.issue_coupons)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alone = 0
        self.groups = 0
        real_issue, real_group = coupon_store.issue, coupon_store.issue_group

        async def counted_issue(*args: Any) -> Any:
            self.alone += 1
            return await real_issue(*args)

        async def counted_group(*args: Any) -> Any:
            self.groups += 1
            return await real_group(*args)

        monkeypatch.setattr(coupon_store, "issue", counted_issue)
        monkeypatch.setattr(coupon_store, "issue_group", counted_group)


async def template_of(db: Database, template_id: str) -> Template:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        return await issuing.current_template(conn, template_id)


async def made(tasks_stub: TasksStub, db: Database, **fields: Any) -> tuple[str, Template]:
    """A new template's id and the template as the service reads it."""
    template_id = (await create(tasks_stub, **fields)).template_id
    return template_id, await template_of(db, template_id)


def coupons_for(
    template: Template, members: Sequence[str], keys: Sequence[str] | None = None
) -> list[NewCoupon]:
    keys = keys or [unique("grp") for _ in members]
    return [
        issuing.new_coupon(template, member, Source("claims"), key, None, NOW)
        for member, key in zip(members, keys, strict=True)
    ]


async def written(db: Database, template_id: str) -> tuple[int, int]:
    """(coupons of the template, units of its stock taken)."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        count = await conn.fetchval("SELECT count(*) FROM tasks.coupons WHERE template_id = $1", template_id)
    return count, (await template_of(db, template_id)).issued


async def test_a_group_is_written_in_one_statement_with_each_members_coupon(
    tasks_stub: TasksStub, members: Members, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    template_id, template = await made(tasks_stub, db, total_stock=10, per_member_limit=2)
    crowd = [await members.new() for _ in range(3)]
    counted = Singles(monkeypatch)
    # One member twice: their holding counts both.
    group = coupons_for(template, [*crowd, crowd[0]])
    outcomes = await issuing.write_group(db.pool, TENANT_ACME, template, group)
    assert (counted.groups, counted.alone) == (1, 0)
    assert all(isinstance(o, CouponRow) for o in outcomes)
    rows = [o for o in outcomes if isinstance(o, CouponRow)]
    assert [(r.member_id, r.request_id) for r in rows] == [(c.member_id, c.request_id) for c in group]
    assert all(codes.CODE.match(r.code) for r in rows) and len({r.code for r in rows}) == 4
    assert {(r.template_version, r.amount_minor, r.threshold_minor, r.source_campaign) for r in rows} == {
        (1, 1000, 5000, "claims")
    }
    assert await written(db, template_id) == (4, 4)
    # The member who took two is at the limit: alone, refused.
    again = await issuing.write_group(db.pool, TENANT_ACME, template, coupons_for(template, [crowd[0]]))
    assert isinstance(again[0], issuing.MemberLimitReached)


async def test_a_group_with_a_retry_a_full_member_or_a_taken_code_is_issued_one_by_one(
    tasks_stub: TasksStub, members: Members, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    template_id, template = await made(tasks_stub, db, total_stock=10)
    full, fresh, later = await members.new(), await members.new(), await members.new()
    first = await issue(tasks_stub, template_id, full, campaign="claims")
    counted = Singles(monkeypatch)
    group = coupons_for(template, [full, fresh, full], [first.request_id, unique("grp"), unique("grp")])
    outcomes = await issuing.write_group(db.pool, TENANT_ACME, template, group)
    assert (counted.groups, counted.alone) == (1, 3)
    assert isinstance(outcomes[0], CouponRow) and outcomes[0].code == first.code
    assert isinstance(outcomes[1], CouponRow) and outcomes[1].member_id == fresh
    assert isinstance(outcomes[2], issuing.MemberLimitReached)
    assert await written(db, template_id) == (2, 2)
    # A code already taken refuses the group; alone, the issue draws others.
    taken = outcomes[1].code
    real = codes.new_codes
    monkeypatch.setattr(codes, "new_codes", lambda count: [taken, *real(count - 1)])
    late = await issuing.write_group(
        db.pool, TENANT_ACME, template, coupons_for(template, [later, await members.new()])
    )
    assert all(isinstance(o, CouponRow) and o.code != taken for o in late)
    assert await written(db, template_id) == (4, 4)


async def test_a_group_the_stock_cannot_cover_issues_what_is_left(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    template_id, template = await made(tasks_stub, db, total_stock=3)
    group = coupons_for(template, [await members.new() for _ in range(5)])
    outcomes = await issuing.write_group(db.pool, TENANT_ACME, template, group)
    assert [type(o).__name__ for o in outcomes] == ["CouponRow"] * 3 + ["OutOfStock"] * 2
    assert await written(db, template_id) == (3, 3)


async def test_a_request_id_twice_in_a_group_issues_one_coupon(
    tasks_stub: TasksStub, members: Members, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    template_id, template = await made(tasks_stub, db, total_stock=10)
    member, key = await members.new(), unique("grp")
    counted = Singles(monkeypatch)
    outcomes = await issuing.write_group(
        db.pool, TENANT_ACME, template, coupons_for(template, [member] * 2, [key] * 2)
    )
    assert (counted.groups, counted.alone) == (1, 2)
    assert isinstance(outcomes[0], CouponRow) and outcomes[1] == outcomes[0]
    assert await written(db, template_id) == (1, 1)


async def test_a_group_of_a_changed_template_is_stale_and_writes_nothing(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    template_id, template = await made(tasks_stub, db, total_stock=10)
    changed = await tasks_stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name=f"couponTemplates/{template_id}"), metadata=ACME
    )
    changed.amount_off.amount_minor = 2000
    await tasks_stub.UpdateCouponTemplate(
        tasks_service_pb2.UpdateCouponTemplateRequest(template=changed), metadata=ACME
    )
    outcomes = await issuing.write_group(
        db.pool, TENANT_ACME, template, coupons_for(template, [await members.new() for _ in range(3)])
    )
    assert all(isinstance(o, issuing.Stale) for o in outcomes)
    assert await written(db, template_id) == (0, 0)


async def test_a_request_id_issued_meanwhile_is_a_unique_violation_of_the_group(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    """The statement itself: a request id another call wrote raises, and nothing of the group stays."""
    template_id, template = await made(tasks_stub, db, total_stock=10)
    group = coupons_for(template, [await members.new() for _ in range(2)])
    with pytest.raises(asyncpg.UniqueViolationError):
        await coupon_store.issue_group(
            db.pool,
            TENANT_ACME,
            [group[0], group[1], group[0]],
            codes.new_codes(3),
            5,
            issuing.stock_owner(template_id),
        )
    assert await written(db, template_id) == (0, 0)


async def test_a_group_that_meets_a_conflict_is_issued_one_by_one(
    tasks_stub: TasksStub, members: Members, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock with a caller's transaction aborts the group's statement, which wrote nothing:
    its issues go alone, each answered as it would be."""
    template_id, template = await made(tasks_stub, db, total_stock=10)
    counted = Singles(monkeypatch)
    aborted: list[int] = []

    async def deadlocked(pool: Any, tenant_id: str, coupons: Sequence[NewCoupon], *rest: Any) -> Any:
        aborted.append(len(coupons))
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    monkeypatch.setattr(coupon_store, "issue_group", deadlocked)
    group = coupons_for(template, [await members.new() for _ in range(3)])
    outcomes = await issuing.write_group(db.pool, TENANT_ACME, template, group)
    assert (aborted, counted.alone) == ([3], 3)
    assert [o.member_id for o in outcomes if isinstance(o, CouponRow)] == [c.member_id for c in group]
    assert await written(db, template_id) == (3, 3)
