"""The coupon template catalog: create, update (versions), read, list and retire templates.

A claim audience must exist when a template names one (asked of the audience service). Issuing
reads templates through `current`, which keeps what it read for a moment: the stock update of an
issue proves the version and state it used are still current, so a stale read only costs a retry.
"""

from __future__ import annotations

import time
from typing import Protocol

from runtime import page_tokens
from runtime.db import Database
from runtime.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.tasks.coupons import template_store
from services.tasks.coupons.issuing import template_from_row
from services.tasks.coupons.templates import Definition, State, Template, content_hash, to_body, validate
from services.tasks.points import ledger

CACHE_SECONDS = 2.0


class Audiences(Protocol):
    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool: ...


class CouponTemplates:
    def __init__(self, db: Database, audiences: Audiences) -> None:
        self._db = db
        self._audiences = audiences
        self._recent: dict[tuple[str, str], tuple[float, Template]] = {}

    async def _check_audience(self, tenant_id: str, d: Definition) -> None:
        if d.claim_audience_id and not await self._audiences.audience_exists(tenant_id, d.claim_audience_id):
            raise InvalidArgument.field(
                "template.claim_audience", f"audiences/{d.claim_audience_id} does not exist"
            )

    async def create(self, tenant_id: str, d: Definition) -> Template:
        validate(d)
        await self._check_audience(tenant_id, d)
        body = to_body(d)
        digest = content_hash(body)
        async with self._db.transaction(tenant_id) as conn:
            if not await template_store.insert_template(conn, tenant_id, d.template_id, body, digest):
                row = await template_store.template(conn, d.template_id)
                assert row is not None
                if row.version != 1 or row.content_hash != digest:
                    raise AlreadyExists(f"couponTemplates/{d.template_id} exists with other content")
            row = await template_store.template(conn, d.template_id)
        assert row is not None
        return template_from_row(row)

    async def update(self, tenant_id: str, d: Definition, expected_version: int) -> Template:
        validate(d)
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        await self._check_audience(tenant_id, d)
        assert d.discount is not None
        body = to_body(d)
        digest = content_hash(body)
        name = f"couponTemplates/{d.template_id}"
        async with self._db.transaction(tenant_id) as conn:
            row = await template_store.lock_template(conn, d.template_id)
            if row is None:
                raise NotFound(f"{name} not found")
            if row.content_hash != digest:
                if expected_version and expected_version != row.version:
                    raise Aborted(f"{name} is at version {row.version}, not {expected_version}")
                if row.discount_kind != d.discount.kind:
                    raise InvalidArgument.field(
                        "template.discount", f"the discount kind of {name} cannot change"
                    )
                if row.state == State.RETIRED:
                    raise FailedPrecondition(f"{name} is retired")
                if not await template_store.add_version(
                    conn, tenant_id, d.template_id, row.version + 1, body, digest
                ):
                    raise FailedPrecondition(
                        f"total_stock {d.total_stock} is below the {row.issued} coupons already issued"
                    )
            row = await template_store.template(conn, d.template_id)
        self._recent.pop((tenant_id, d.template_id), None)
        assert row is not None
        return template_from_row(row)

    async def get(self, tenant_id: str, template_id: str) -> Template:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await template_store.template(conn, template_id)
        if row is None:
            raise NotFound(f"couponTemplates/{template_id} not found")
        return template_from_row(row)

    async def current(self, tenant_id: str, template_id: str, *, fresh: bool = False) -> Template:
        """The template as read at most CACHE_SECONDS ago (now, when `fresh`)."""
        key = (tenant_id, template_id)
        hit = self._recent.get(key)
        if hit is not None and not fresh and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        template = await self.get(tenant_id, template_id)
        self._recent[key] = (time.monotonic(), template)
        return template

    async def list_page(
        self, tenant_id: str, size: int, token: str, show_retired: bool
    ) -> tuple[list[Template], str]:
        limit = ledger.page_size(size)
        scope = "couponTemplates/all" if show_retired else "couponTemplates/active"
        after = page_tokens.decode_one(token, scope, str) or ""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await template_store.templates(
                conn, after, limit + 1, None if show_retired else State.ACTIVE
            )
        page = [template_from_row(r) for r in rows[:limit]]
        return page, page_tokens.encode(scope, page[-1].template_id) if len(rows) > limit else ""

    async def retire(self, tenant_id: str, template_id: str) -> Template:
        async with self._db.transaction(tenant_id) as conn:
            await template_store.retire_template(conn, template_id)
            row = await template_store.template(conn, template_id)
        self._recent.pop((tenant_id, template_id), None)
        if row is None:
            raise NotFound(f"couponTemplates/{template_id} not found")
        return template_from_row(row)
