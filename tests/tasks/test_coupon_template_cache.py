"""The template cache issuing reads through (`CouponTemplates.current`): callers that find it
expired together share one read, a caller that asks for a fresh read gets its own."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from runtime.db import Database
from runtime.errors import NotFound
from services.tasks.coupons.catalog import CouponTemplates
from services.tasks.coupons.templates import Template
from tests.conftest import TENANT_ACME, unique
from tests.tasks.coupon_helpers import create

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


class NoAudiences:
    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool:
        return False


def counted(catalog: CouponTemplates, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The template ids `catalog` reads from the database, one entry a read."""
    reads: list[str] = []
    real = catalog.get

    async def get(tenant_id: str, template_id: str) -> Template:
        reads.append(template_id)
        return await real(tenant_id, template_id)

    monkeypatch.setattr(catalog, "get", get)
    return reads


async def test_concurrent_callers_share_one_read_and_a_fresh_caller_reads_again(
    tasks_stub: TasksStub, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await create(tasks_stub)
    catalog = CouponTemplates(db, NoAudiences())
    reads = counted(catalog, monkeypatch)
    got = await asyncio.gather(*(catalog.current(TENANT_ACME, made.template_id) for _ in range(16)))
    assert reads == [made.template_id]
    assert {t.version for t in got} == {1} and all(t is got[0] for t in got)
    assert await catalog.current(TENANT_ACME, made.template_id) is got[0]
    assert reads == [made.template_id]
    await asyncio.gather(*(catalog.current(TENANT_ACME, made.template_id, fresh=True) for _ in range(2)))
    assert reads == [made.template_id] * 3


async def test_every_caller_sharing_a_read_gets_its_not_found(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = CouponTemplates(db, NoAudiences())
    reads = counted(catalog, monkeypatch)
    missing = unique()
    answers = await asyncio.gather(
        *(catalog.current(TENANT_ACME, missing) for _ in range(4)), return_exceptions=True
    )
    assert reads == [missing]
    assert all(isinstance(a, NotFound) for a in answers)
    with pytest.raises(NotFound):
        await catalog.current(TENANT_ACME, missing)
    assert reads == [missing, missing]
